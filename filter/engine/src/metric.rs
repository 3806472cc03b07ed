//! The filter's metrics, named in one place: what each counter, histogram and gauge is
//! called (Envoy shows them as `wasmcustom.kvgate.*`) and what kind of stat it is.
//!
//! Gauges are Envoy-wide (every VM moves the same stat), except the per-VM memory gauges:
//! `kvgate.vm_memory_bytes.<role>.vm_<tag>` is the Wasm linear memory of one VM (pages ×
//! 64 KiB, `<tag>` its random 16-hex-digit id). `<role>` is `tokenizing` for a VM that has
//! handled an HTTP stream (it loads and runs the tokenizer; Envoy's worker threads) and
//! `main_thread` for one that has not (Envoy's main-thread VMs never do; a worker VM reports
//! here until its first stream, then sets this gauge to 0 and reports as `tokenizing`).
//! Updated on every tick and after a model load.

use crate::outcome::{Degraded, ForwardReason};
use kvgate_core::WorkerId;

/// Most workers with a pick counter of their own per VM; later ones count as `other`.
pub const MAX_PICK_STATS: usize = 64;

/// A stage of the decision, timed in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// The whole decision.
    Decision,
    /// JSON parse and validation.
    Parse,
    /// Chat template rendering.
    Template,
    /// Tokenization.
    Tokenize,
    /// Block hashing and index lookup.
    Hash,
    /// Cost formula and selection.
    Score,
}

/// A gauge of the requests this Envoy has in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Inflight {
    /// Booked requests.
    Requests,
    /// Queued prefill tokens.
    PrefillTokens,
    /// Active decode blocks.
    DecodeBlocks,
}

/// The worker a pick counter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PickStat {
    /// One of the first [`MAX_PICK_STATS`] workers seen.
    Worker(WorkerId),
    /// Every later worker.
    Other,
}

/// What a VM does, for its memory gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmRole {
    /// Has handled HTTP streams: loads models and tokenizes.
    Tokenizing,
    /// Has not handled a stream (Envoy's main-thread VMs): never loads a model.
    MainThread,
}

impl VmRole {
    /// The role's part of the gauge name.
    pub fn as_str(&self) -> &'static str {
        match self {
            VmRole::Tokenizing => "tokenizing",
            VmRole::MainThread => "main_thread",
        }
    }
}

/// Every metric of the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Requests routed with headers.
    Routed,
    /// Requests forwarded without a decision under fail-open.
    FailOpen,
    /// Requests answered 503 under fail-closed.
    FailClosed,
    /// Requests answered `overload_status` because every worker was busy.
    NoCapacity,
    /// Requests forwarded unrouted by design.
    Passthrough,
    /// Requests answered with a 4xx for bad input.
    Rejected,
    /// Decisions made on load alone.
    Degraded(Degraded),
    /// Requests forwarded unrouted, by reason.
    Forwarded(ForwardReason),
    /// Sync frames applied.
    SyncFrames,
    /// Sync frames refused.
    SyncFrameErrors,
    /// Failed sidecar calls.
    SyncFailures,
    /// Bookkeeping steps dropped while the sidecar did not answer.
    BookDropped,
    /// Streams held at their headers without a body callback, resumed unrouted.
    WatchdogResumed,
    /// Ledger updates that gave up after repeated compare-and-swap conflicts.
    LedgerContended,
    /// Prefill workers taken out of prefill picks after a decode worker could not reach
    /// them.
    PrefillQuarantined,
    /// Stage latency histogram (µs).
    Stage(Stage),
    /// Blocks of the prompt the chosen worker held.
    MatchedBlocks,
    /// Prompt tokens per decision.
    PromptTokens,
    /// Segment-cache hits.
    SegmentHits,
    /// Segment-cache misses.
    SegmentMisses,
    /// Renders whose tools list was reused from the tools cache.
    ToolsHits,
    /// Renders whose tools list was converted (and cached when it fits).
    ToolsMisses,
    /// Blocks in this VM's index copy (gauge).
    IndexBlocks,
    /// Envoy-wide in-flight bookkeeping (gauge).
    Inflight(Inflight),
    /// Decisions per chosen worker.
    Picks(PickStat),
    /// Local error replies by code.
    Error(&'static str),
    /// Time to load one model (tokenizer + template) in a VM, ms.
    ModelLoadMs,
    /// One VM's Wasm linear memory in bytes (gauge), by role and VM tag.
    VmMemory(VmRole, u64),
    /// Requests held until their VM loaded the model's tokenizer (sidecar mode).
    ModelWaitParked,
    /// Requests whose wait for the tokenizer reached `model_wait_ms`: decided without it.
    ModelWaitTimedOut,
}

/// What kind of Envoy stat a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution.
    Histogram,
}

impl Metric {
    /// The stat name.
    pub fn name(&self) -> String {
        let fixed = match self {
            Metric::Routed => "kvgate.decisions.routed",
            Metric::FailOpen => "kvgate.decisions.fail_open",
            Metric::FailClosed => "kvgate.decisions.fail_closed",
            Metric::NoCapacity => "kvgate.decisions.no_capacity",
            Metric::Passthrough => "kvgate.decisions.passthrough",
            Metric::Rejected => "kvgate.decisions.rejected",
            Metric::Degraded(d) => return format!("kvgate.degraded.{}", d.as_str()),
            Metric::Forwarded(r) => return format!("kvgate.forwarded.{}", r.as_str()),
            Metric::SyncFrames => "kvgate.sync.frames",
            Metric::SyncFrameErrors => "kvgate.sync.frame_errors",
            Metric::SyncFailures => "kvgate.sync.failures",
            Metric::BookDropped => "kvgate.sync.bookkeeping_dropped",
            Metric::WatchdogResumed => "kvgate.watchdog.resumed",
            Metric::LedgerContended => "kvgate.ledger.contended",
            Metric::PrefillQuarantined => "kvgate.prefill.quarantined",
            Metric::Stage(s) => match s {
                Stage::Decision => "kvgate.decision_us",
                Stage::Parse => "kvgate.parse_us",
                Stage::Template => "kvgate.template_us",
                Stage::Tokenize => "kvgate.tokenize_us",
                Stage::Hash => "kvgate.hash_us",
                Stage::Score => "kvgate.score_us",
            },
            Metric::MatchedBlocks => "kvgate.matched_blocks",
            Metric::PromptTokens => "kvgate.prompt_tokens",
            Metric::SegmentHits => "kvgate.segment_cache.hits",
            Metric::SegmentMisses => "kvgate.segment_cache.misses",
            Metric::ToolsHits => "kvgate.tools_cache.hits",
            Metric::ToolsMisses => "kvgate.tools_cache.misses",
            Metric::IndexBlocks => "kvgate.index_blocks",
            Metric::Inflight(i) => match i {
                Inflight::Requests => "kvgate.inflight.requests",
                Inflight::PrefillTokens => "kvgate.inflight.prefill_tokens",
                Inflight::DecodeBlocks => "kvgate.inflight.decode_blocks",
            },
            Metric::Picks(PickStat::Worker(id)) => return format!("kvgate.picks.{id}"),
            Metric::Picks(PickStat::Other) => "kvgate.picks.other",
            Metric::Error(code) => return format!("kvgate.errors.{code}"),
            Metric::ModelLoadMs => "kvgate.model_load_ms",
            Metric::ModelWaitParked => "kvgate.model_wait.parked",
            Metric::ModelWaitTimedOut => "kvgate.model_wait.timed_out",
            Metric::VmMemory(role, tag) => {
                return format!("kvgate.vm_memory_bytes.{}.vm_{tag:016x}", role.as_str())
            }
        };
        fixed.to_string()
    }

    /// The stat kind.
    pub fn kind(&self) -> MetricKind {
        match self {
            Metric::Stage(_)
            | Metric::MatchedBlocks
            | Metric::PromptTokens
            | Metric::ModelLoadMs => MetricKind::Histogram,
            Metric::IndexBlocks | Metric::Inflight(_) | Metric::VmMemory(..) => MetricKind::Gauge,
            _ => MetricKind::Counter,
        }
    }
}
