//! The per-VM metric state that turns the engine's counters and decisions into metric
//! moves on a [`Host`] (the names are in `metric`).

pub use crate::engine::Counters;
use crate::host::{Host, MetricOp};
pub use crate::metric::{Inflight, Metric, MetricKind, PickStat, Stage, MAX_PICK_STATS};
use crate::outcome::{Degraded, ForwardReason, Route, Timings};
use kvgate_core::load::WorkerLoad;
use kvgate_core::{WorkerId, WorkerKey};
use std::collections::HashSet;

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
        count(host, Metric::ToolsHits, u64::from(r.tools.0));
        count(host, Metric::ToolsMisses, u64::from(r.tools.1));
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
