//! Time-decayed queued prefill: how much of the prefill booked on a worker is probably
//! still to run. Each worker's prefill throughput is learned from when its booked
//! prefills finish (first token), and its queue of unfinished prefills is drained in
//! routing order at that rate, so a prefill booked long ago weighs less than one booked
//! just now. No constant describes an engine: until a worker has finished
//! [`MIN_SAMPLES`] prefills its booked prefill counts in full.
//!
//! ```text
//! finish of a prefill of T tokens booked at s, at time t:
//!   service = t − max(s, previous finish on the worker)      (FIFO: it waited for that one)
//!   rate    = Σ β^k·T_k / Σ β^k·service_k                    (tokens per ms, recent weigh more)
//! queue q₁…qₙ (oldest first), now:
//!   cursor  = max(q₁.since, previous finish)
//!   for each qᵢ: start = max(cursor, qᵢ.since); end = start + Tᵢ/rate; cursor = end
//!                remaining += Tᵢ − rate·clamp(now − start, 0, Tᵢ/rate)
//! ```

use crate::load::QueuedPrefill;
use crate::types::WorkerKey;
use hashbrown::HashMap;

/// Finished prefills a worker needs before its rate is used.
pub const MIN_SAMPLES: u32 = 3;

/// Weight kept by older samples at each new one (β).
const KEEP: f64 = 0.9;

/// One worker's learned prefill throughput.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrefillRate {
    tokens: f64,
    service_ms: f64,
    samples: u32,
    last_done_ms: u64,
}

impl PrefillRate {
    /// A prefill of `tokens` booked at `since_ms` finished at `now_ms`.
    pub fn observe(&mut self, tokens: u64, since_ms: u64, now_ms: u64) {
        let start = since_ms.max(self.last_done_ms);
        self.last_done_ms = self.last_done_ms.max(now_ms);
        if tokens == 0 || now_ms <= start {
            return;
        }
        self.tokens = self.tokens * KEEP + tokens as f64;
        self.service_ms = self.service_ms * KEEP + (now_ms - start) as f64;
        self.samples = self.samples.saturating_add(1);
    }

    /// Tokens per ms, once learned.
    pub fn tokens_per_ms(&self) -> Option<f64> {
        (self.samples >= MIN_SAMPLES && self.service_ms > 0.0 && self.tokens > 0.0)
            .then(|| self.tokens / self.service_ms)
    }

    /// Of `queue` (oldest first), the tokens probably still to prefill at `now_ms`; all
    /// of them while the rate is not learned.
    pub fn remaining(&self, queue: &[QueuedPrefill], now_ms: u64) -> u64 {
        let total: u64 = queue.iter().map(|q| q.tokens).sum();
        let Some(rate) = self.tokens_per_ms() else {
            return total;
        };
        let Some(first) = queue.first() else {
            return 0;
        };
        let now = now_ms as f64;
        let mut cursor = first.since_ms.max(self.last_done_ms) as f64;
        let mut left = 0.0;
        for q in queue {
            let tokens = q.tokens as f64;
            let start = cursor.max(q.since_ms as f64);
            let duration = tokens / rate;
            let done = (now - start).clamp(0.0, duration) * rate;
            left += tokens - done;
            cursor = start + duration;
        }
        (left.round() as u64).min(total)
    }
}

/// Learned prefill rates of every worker a VM routes to.
#[derive(Debug, Clone, Default)]
pub struct PrefillRates {
    rates: HashMap<WorkerKey, PrefillRate>,
}

impl PrefillRates {
    /// No worker learned yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A prefill booked on `worker` finished (see [`PrefillRate::observe`]).
    pub fn observe(&mut self, worker: WorkerKey, done: QueuedPrefill, now_ms: u64) {
        self.rates
            .entry(worker)
            .or_default()
            .observe(done.tokens, done.since_ms, now_ms);
    }

    /// `worker`'s rate, if it has one.
    pub fn rate(&self, worker: &WorkerKey) -> Option<&PrefillRate> {
        self.rates.get(worker)
    }

    /// Booked prefill tokens of `worker` still to run at `now_ms`: `booked` (every
    /// booked token, queued or not known in time) less what the drain of `queue` (the
    /// part whose booking time is known) says has run.
    pub fn decayed(
        &self,
        worker: &WorkerKey,
        booked: u64,
        queue: &[QueuedPrefill],
        now_ms: u64,
    ) -> u64 {
        let Some(rate) = self.rates.get(worker) else {
            return booked;
        };
        let queued: u64 = queue.iter().map(|q| q.tokens).sum();
        let ran = queued.saturating_sub(rate.remaining(queue, now_ms));
        booked.saturating_sub(ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(tokens: u64, since_ms: u64) -> QueuedPrefill {
        QueuedPrefill { tokens, since_ms }
    }

    /// A worker that prefilled 1000-token requests back to back, 100 ms each.
    fn learned() -> PrefillRate {
        let mut r = PrefillRate::default();
        for i in 0..5u64 {
            r.observe(1000, i * 100, (i + 1) * 100);
        }
        r
    }

    #[test]
    fn the_rate_is_learned_from_back_to_back_prefills() {
        let r = learned();
        let rate = r.tokens_per_ms().unwrap_or_default();
        assert!((rate - 10.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn a_prefill_queued_behind_another_is_timed_from_the_previous_finish() {
        let mut r = PrefillRate::default();
        // Both booked at 0; the second finishes at 200 after the first at 100.
        r.observe(1000, 0, 100);
        r.observe(1000, 0, 200);
        r.observe(1000, 0, 300);
        let rate = r.tokens_per_ms().unwrap_or_default();
        assert!((rate - 10.0).abs() < 1e-9, "{rate}");
    }

    #[test]
    fn nothing_decays_before_min_samples() {
        let mut r = PrefillRate::default();
        r.observe(1000, 0, 100);
        r.observe(1000, 100, 200);
        assert_eq!(r.tokens_per_ms(), None);
        assert_eq!(r.remaining(&[q(1000, 200)], 10_000), 1000);
    }

    #[test]
    fn the_queue_drains_in_order_at_the_rate() {
        let r = learned(); // 10 tokens/ms, last finish at 500
        let queue = [q(1000, 500), q(2000, 520)];
        assert_eq!(r.remaining(&queue, 500), 3000);
        // 50 ms in: half of the first.
        assert_eq!(r.remaining(&queue, 550), 2500);
        // The first ends at 600, the second runs 600..800.
        assert_eq!(r.remaining(&queue, 700), 1000);
        assert_eq!(r.remaining(&queue, 900), 0);
    }

    #[test]
    fn an_idle_gap_does_not_count_as_progress() {
        let r = learned(); // last finish at 500
                           // Booked at 1000 on an idle worker: nothing ran before 1000.
        assert_eq!(r.remaining(&[q(1000, 1000)], 1000), 1000);
        assert_eq!(r.remaining(&[q(1000, 1000)], 1050), 500);
    }

    #[test]
    fn booked_tokens_without_a_time_stay_in_full() {
        let mut rates = PrefillRates::new();
        let w = WorkerKey::new(1, 0);
        let other = WorkerKey::new(2, 0);
        for i in 0..5u64 {
            rates.observe(w, q(1000, i * 100), (i + 1) * 100);
        }
        // 1000 queued with a time (half run at 550) + 400 reported by a replica.
        assert_eq!(rates.decayed(&w, 1400, &[q(1000, 500)], 550), 900);
        // A worker never seen keeps everything.
        assert_eq!(rates.decayed(&other, 1400, &[q(1000, 500)], 550), 1400);
    }
}
