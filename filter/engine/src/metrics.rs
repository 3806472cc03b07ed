//! The filter's metrics, named in one place: what each counter, histogram and gauge is
//! called (Envoy shows them as `wasmcustom.kvgate.*`), and the per-VM state that turns the
//! engine's counters and decisions into metric moves on a [`Host`].

use crate::decide::Timings;
use crate::host::{Host, MetricOp};
use crate::outcome::{Degraded, ForwardReason, Route};
use kvgate_core::load::WorkerLoad;
use kvgate_core::{WorkerId, WorkerKey};
use std::collections::HashSet;

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
            Metric::IndexBlocks | Metric::Inflight(_) => MetricKind::Gauge,
            _ => MetricKind::Counter,
        }
    }
}

/// Counters the engine keeps as it decides; [`MetricsState::export`] turns their growth
/// into metric moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Decisions made with routing headers.
    pub routed: u64,
    /// Requests forwarded without a decision under fail-open.
    pub fail_open: u64,
    /// Requests answered 503 under fail-closed.
    pub fail_closed: u64,
    /// Requests rejected because every worker was busy.
    pub no_capacity: u64,
    /// Requests not routed by design (unknown model passthrough, unsupported content).
    pub passthrough: u64,
    /// Requests rejected for bad input.
    pub rejected: u64,
    /// Decisions made on load alone because the index was stale.
    pub stale_index: u64,
    /// Decisions made on load alone because the model's tokenizer was not loaded.
    pub no_tokenizer: u64,
    /// Sync frames applied.
    pub frames: u64,
    /// Sync frames refused (discontinuous or malformed).
    pub frame_errors: u64,
    /// Prefill workers quarantined on a decode worker's report.
    pub prefill_quarantined: u64,
}

/// One VM's metric bookkeeping: what it exported last, its share of the in-flight gauges,
/// and which workers have a pick counter.
#[derive(Debug, Default)]
pub struct MetricsState {
    last: Counters,
    inflight_last: WorkerLoad,
    picks: HashSet<WorkerId>,
}

fn count(host: &dyn Host, m: Metric, by: u64) {
    if by > 0 {
        host.metric(m, MetricOp::Count(by));
    }
}

fn shift(host: &dyn Host, m: Metric, old: u64, new: u64) {
    if old != new {
        let delta = i64::try_from(new).unwrap_or(i64::MAX) - i64::try_from(old).unwrap_or(0);
        host.metric(m, MetricOp::Shift(delta));
    }
}

impl MetricsState {
    /// Exports the counters' growth since the last call.
    pub fn export(&mut self, host: &dyn Host, c: &Counters) {
        let l = self.last;
        let pairs = [
            (Metric::Routed, c.routed, l.routed),
            (Metric::FailOpen, c.fail_open, l.fail_open),
            (Metric::FailClosed, c.fail_closed, l.fail_closed),
            (Metric::NoCapacity, c.no_capacity, l.no_capacity),
            (Metric::Passthrough, c.passthrough, l.passthrough),
            (Metric::Rejected, c.rejected, l.rejected),
            (
                Metric::Degraded(Degraded::StaleIndex),
                c.stale_index,
                l.stale_index,
            ),
            (
                Metric::Degraded(Degraded::NoTokenizer),
                c.no_tokenizer,
                l.no_tokenizer,
            ),
            (Metric::SyncFrames, c.frames, l.frames),
            (Metric::SyncFrameErrors, c.frame_errors, l.frame_errors),
            (
                Metric::PrefillQuarantined,
                c.prefill_quarantined,
                l.prefill_quarantined,
            ),
        ];
        for (m, now, before) in pairs {
            count(host, m, now.saturating_sub(before));
        }
        self.last = *c;
    }

    /// Records one routed decision: stage times, match, segment cache and the pick.
    pub fn decision(&mut self, host: &dyn Host, r: &Route) {
        let t: &Timings = &r.timings;
        for (stage, v) in [
            (Stage::Decision, t.total_us),
            (Stage::Parse, t.parse_us),
            (Stage::Template, t.template_us),
            (Stage::Tokenize, t.tokenize_us),
            (Stage::Hash, t.hash_us),
            (Stage::Score, t.score_us),
        ] {
            host.metric(Metric::Stage(stage), MetricOp::Record(v));
        }
        host.metric(
            Metric::MatchedBlocks,
            MetricOp::Record(u64::from(r.matched_blocks)),
        );
        host.metric(
            Metric::PromptTokens,
            MetricOp::Record(r.prompt_tokens as u64),
        );
        count(host, Metric::SegmentHits, u64::from(r.segments.0));
        count(host, Metric::SegmentMisses, u64::from(r.segments.1));
        let id = r.worker.worker_id;
        let stat = if self.picks.contains(&id) || self.picks.len() < MAX_PICK_STATS {
            self.picks.insert(id);
            PickStat::Worker(id)
        } else {
            PickStat::Other
        };
        count(host, Metric::Picks(stat), 1);
    }

    /// Counts a forward by reason.
    pub fn forwarded(&mut self, host: &dyn Host, reason: ForwardReason) {
        count(host, Metric::Forwarded(reason), 1);
    }

    /// Counts a local error reply.
    pub fn error(&mut self, host: &dyn Host, code: &'static str) {
        count(host, Metric::Error(code), 1);
    }

    /// Sets this VM's share of the in-flight gauges to the sum of its booked `loads`.
    /// Every VM moves the shared gauges only by its own change, so they show the whole
    /// Envoy's bookkeeping, exactly zero when nothing is in flight.
    pub fn in_flight(&mut self, host: &dyn Host, loads: &[(WorkerKey, WorkerLoad)]) {
        let total = loads
            .iter()
            .fold(WorkerLoad::default(), |a, (_, l)| a.plus(*l));
        let last = self.inflight_last;
        shift(
            host,
            Metric::Inflight(Inflight::Requests),
            last.requests,
            total.requests,
        );
        shift(
            host,
            Metric::Inflight(Inflight::PrefillTokens),
            last.prefill_tokens,
            total.prefill_tokens,
        );
        shift(
            host,
            Metric::Inflight(Inflight::DecodeBlocks),
            last.decode_blocks,
            total.decode_blocks,
        );
        self.inflight_last = total;
    }
}
