//! The filter's metrics as Envoy stats (`/stats/prometheus` shows them with the
//! `wasmcustom` prefix): decisions by outcome, stage latencies, matched blocks, picks per
//! worker, errors by kind, sync health, and the bookkeeping of requests in flight.

use crate::engine::{Counters, Timings};
use kvgate_core::load::WorkerLoad;
use kvgate_core::WorkerKey;
use proxy_wasm::hostcalls::{define_metric, increment_metric, record_metric};
use proxy_wasm::types::MetricType;
use std::collections::HashMap;

fn id(kind: MetricType, name: &str) -> Option<u32> {
    define_metric(kind, name).ok()
}

fn inc(m: Option<u32>, by: u64) {
    if let (Some(m), true) = (m, by > 0) {
        let _ = increment_metric(m, by as i64);
    }
}

/// Moves a gauge shared by every VM of the Envoy by this VM's change `old → new`.
fn shift(m: Option<u32>, old: u64, new: u64) {
    if let (Some(m), true) = (m, old != new) {
        let _ = increment_metric(m, new as i64 - old as i64);
    }
}

fn rec(m: Option<u32>, v: u64) {
    if let Some(m) = m {
        let _ = record_metric(m, v);
    }
}

/// Metric ids of one VM.
pub struct Metrics {
    routed: Option<u32>,
    fail_open: Option<u32>,
    fail_closed: Option<u32>,
    no_capacity: Option<u32>,
    passthrough: Option<u32>,
    rejected: Option<u32>,
    stale_index: Option<u32>,
    no_tokenizer: Option<u32>,
    frames: Option<u32>,
    frame_errors: Option<u32>,
    decision_us: Option<u32>,
    parse_us: Option<u32>,
    template_us: Option<u32>,
    tokenize_us: Option<u32>,
    hash_us: Option<u32>,
    score_us: Option<u32>,
    matched_blocks: Option<u32>,
    prompt_tokens: Option<u32>,
    segment_hits: Option<u32>,
    segment_misses: Option<u32>,
    index_blocks: Option<u32>,
    sync_failures: Option<u32>,
    inflight_requests: Option<u32>,
    inflight_prefill_tokens: Option<u32>,
    inflight_decode_blocks: Option<u32>,
    inflight_last: WorkerLoad,
    picks: HashMap<u64, Option<u32>>,
    errors: HashMap<&'static str, Option<u32>>,
    last: Counters,
}

impl Metrics {
    /// Defines every metric (idempotent per VM).
    pub fn define() -> Self {
        use MetricType::{Counter, Gauge, Histogram};
        Metrics {
            routed: id(Counter, "kvgate.decisions.routed"),
            fail_open: id(Counter, "kvgate.decisions.fail_open"),
            fail_closed: id(Counter, "kvgate.decisions.fail_closed"),
            no_capacity: id(Counter, "kvgate.decisions.no_capacity"),
            passthrough: id(Counter, "kvgate.decisions.passthrough"),
            rejected: id(Counter, "kvgate.decisions.rejected"),
            stale_index: id(Counter, "kvgate.degraded.stale_index"),
            no_tokenizer: id(Counter, "kvgate.degraded.no_tokenizer"),
            frames: id(Counter, "kvgate.sync.frames"),
            frame_errors: id(Counter, "kvgate.sync.frame_errors"),
            decision_us: id(Histogram, "kvgate.decision_us"),
            parse_us: id(Histogram, "kvgate.parse_us"),
            template_us: id(Histogram, "kvgate.template_us"),
            tokenize_us: id(Histogram, "kvgate.tokenize_us"),
            hash_us: id(Histogram, "kvgate.hash_us"),
            score_us: id(Histogram, "kvgate.score_us"),
            matched_blocks: id(Histogram, "kvgate.matched_blocks"),
            prompt_tokens: id(Histogram, "kvgate.prompt_tokens"),
            segment_hits: id(Counter, "kvgate.segment_cache.hits"),
            segment_misses: id(Counter, "kvgate.segment_cache.misses"),
            index_blocks: id(Gauge, "kvgate.index_blocks"),
            sync_failures: id(Counter, "kvgate.sync.failures"),
            inflight_requests: id(Gauge, "kvgate.inflight.requests"),
            inflight_prefill_tokens: id(Gauge, "kvgate.inflight.prefill_tokens"),
            inflight_decode_blocks: id(Gauge, "kvgate.inflight.decode_blocks"),
            inflight_last: WorkerLoad::default(),
            picks: HashMap::new(),
            errors: HashMap::new(),
            last: Counters::default(),
        }
    }

    /// Exports counter increments since the last call.
    pub fn export(&mut self, c: &Counters) {
        let l = self.last;
        inc(self.routed, c.routed - l.routed);
        inc(self.fail_open, c.fail_open - l.fail_open);
        inc(self.fail_closed, c.fail_closed - l.fail_closed);
        inc(self.no_capacity, c.no_capacity - l.no_capacity);
        inc(self.passthrough, c.passthrough - l.passthrough);
        inc(self.rejected, c.rejected - l.rejected);
        inc(self.stale_index, c.stale_index - l.stale_index);
        inc(self.no_tokenizer, c.no_tokenizer - l.no_tokenizer);
        inc(self.frames, c.frames - l.frames);
        inc(self.frame_errors, c.frame_errors - l.frame_errors);
        self.last = *c;
    }

    /// Records one routed decision.
    pub fn decision(
        &mut self,
        t: &Timings,
        worker_id: u64,
        matched: u32,
        tokens: usize,
        segments: (u32, u32),
    ) {
        rec(self.decision_us, t.total_us);
        rec(self.parse_us, t.parse_us);
        rec(self.template_us, t.template_us);
        rec(self.tokenize_us, t.tokenize_us);
        rec(self.hash_us, t.hash_us);
        rec(self.score_us, t.score_us);
        rec(self.matched_blocks, u64::from(matched));
        rec(self.prompt_tokens, tokens as u64);
        inc(self.segment_hits, u64::from(segments.0));
        inc(self.segment_misses, u64::from(segments.1));
        let m = *self
            .picks
            .entry(worker_id)
            .or_insert_with(|| id(MetricType::Counter, &format!("kvgate.picks.{worker_id}")));
        inc(m, 1);
    }

    /// Counts an error reply by kind.
    pub fn error(&mut self, kind: &'static str) {
        let m = *self
            .errors
            .entry(kind)
            .or_insert_with(|| id(MetricType::Counter, &format!("kvgate.errors.{kind}")));
        inc(m, 1);
    }

    /// Records how long loading one model (tokenizer + chat template) took in this VM.
    pub fn model_load_ms(ms: u64) {
        rec(id(MetricType::Histogram, "kvgate.model_load_ms"), ms);
    }

    /// Sets the index size gauge.
    pub fn index_blocks(&self, n: usize) {
        rec(self.index_blocks, n as u64);
    }

    /// Sets this VM's share of the in-flight gauges (requests, queued prefill tokens,
    /// active decode blocks) to the sum of its booked `loads`. Every VM of the Envoy adds
    /// only its own change, so the gauges show the whole Envoy's bookkeeping, which is
    /// exactly zero when nothing is in flight.
    pub fn in_flight(&mut self, loads: &[(WorkerKey, WorkerLoad)]) {
        let total = loads
            .iter()
            .fold(WorkerLoad::default(), |a, (_, l)| a.plus(*l));
        let last = self.inflight_last;
        shift(self.inflight_requests, last.requests, total.requests);
        shift(
            self.inflight_prefill_tokens,
            last.prefill_tokens,
            total.prefill_tokens,
        );
        shift(
            self.inflight_decode_blocks,
            last.decode_blocks,
            total.decode_blocks,
        );
        self.inflight_last = total;
    }

    /// Counts a failed sidecar call.
    pub fn sync_failure(&self) {
        inc(self.sync_failures, 1);
    }
}
