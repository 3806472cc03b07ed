//! Retry pacing: exponential backoff with a cap and optional jitter, with time as input.
//! The filter's sidecar calls and the sidecar's NATS/ZMQ reconnects use this one type.

/// Exponential backoff: `base_ms · 2^failures`, capped at `max_ms`, plus up to
/// `jitter_pct` % of that delay drawn from the caller's RNG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    jitter_pct: u64,
    failures: u32,
    until_ms: u64,
}

impl Backoff {
    /// A backoff starting at `base_ms` and doubling up to `max_ms`, without jitter.
    pub const fn new(base_ms: u64, max_ms: u64) -> Self {
        Backoff {
            base_ms,
            max_ms,
            jitter_pct: 0,
            failures: 0,
            until_ms: 0,
        }
    }

    /// The same, adding up to `pct` % random jitter to each delay.
    pub const fn with_jitter(mut self, pct: u64) -> Self {
        self.jitter_pct = pct;
        self
    }

    /// The delay after `failures` consecutive failures (before jitter).
    pub fn delay_ms(&self, failures: u32) -> u64 {
        let factor = 1u64.checked_shl(failures.min(32)).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// The delay after `failures` failures with jitter drawn from `rng`.
    pub fn jittered_ms(&self, failures: u32, rng: &mut fastrand::Rng) -> u64 {
        let d = self.delay_ms(failures);
        d + rng.u64(0..=d.saturating_mul(self.jitter_pct) / 100)
    }

    /// Records a failure at `now_ms`; returns when the next attempt may start.
    pub fn failed(&mut self, now_ms: u64) -> u64 {
        self.failures = self.failures.saturating_add(1);
        self.until_ms = now_ms.saturating_add(self.delay_ms(self.failures));
        self.until_ms
    }

    /// Records a success: the next failure starts from `base_ms` again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.until_ms = 0;
    }

    /// Whether an attempt may start at `now_ms`.
    pub fn ready(&self, now_ms: u64) -> bool {
        now_ms >= self.until_ms
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_on_success() {
        let mut b = Backoff::new(100, 3_200);
        assert!(b.ready(0));
        assert_eq!(b.failed(1_000), 1_200);
        assert!(!b.ready(1_199));
        assert!(b.ready(1_200));
        assert_eq!(b.failed(2_000), 2_400);
        for _ in 0..10 {
            b.failed(5_000);
        }
        assert_eq!(b.failed(10_000), 13_200, "capped at 3.2 s");
        b.succeeded();
        assert!(b.ready(0));
        assert_eq!(b.failed(0), 200);
        assert_eq!(b.delay_ms(u32::MAX), 3_200, "no overflow");
    }

    #[test]
    fn jitter_stays_within_its_share() {
        let b = Backoff::new(100, 5_000).with_jitter(20);
        let mut rng = fastrand::Rng::with_seed(1);
        for f in 0..10 {
            let d = b.delay_ms(f);
            let j = b.jittered_ms(f, &mut rng);
            assert!(j >= d && j <= d + d / 5, "{f}: {j} vs {d}");
        }
    }
}
