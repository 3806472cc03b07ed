//! The mock engine's time model (Dynamo mocker's polynomial fit) and its clocks.
//!
//! One forward pass ("step") lasts `prefill_ms(T) + decode_ms(u)` where `T` is the number
//! of *uncached* prompt tokens computed in the pass and `u` the KV usage fraction, each
//! term present only when the pass has prefill / decode work (DYNAMO-CONTRACT §7):
//!
//! ```text
//! prefill_ms(T) = 4.209989e-7·T² + 1.518344e-2·T + 16.50142      (T > 0, else 0)
//! decode_ms(u)  = max(1, −25.74·u² + 54.01·u + 5.74)              (decoding seqs > 0, else 0)
//! ```
//!
//! The scheduler core never reads a clock: it is handed the simulated time in
//! milliseconds. The async driver turns wall time into simulated time with
//! [`WallClock`] (`--speedup` multiplies it); tests use [`ManualClock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Prefill cost coefficients: `a·T² + b·T + c` milliseconds.
pub const PREFILL_POLY: (f64, f64, f64) = (4.209989e-7, 1.518344e-2, 16.50142);
/// Decode cost coefficients: `a·u² + b·u + c` milliseconds, floored at [`DECODE_FLOOR_MS`].
pub const DECODE_POLY: (f64, f64, f64) = (-25.74, 54.01, 5.74);
/// The smallest duration of a decode step, in milliseconds.
pub const DECODE_FLOOR_MS: f64 = 1.0;

/// Milliseconds a pass spends computing `uncached_tokens` prompt tokens (0 when none).
pub fn prefill_ms(uncached_tokens: u64) -> f64 {
    if uncached_tokens == 0 {
        return 0.0;
    }
    let t = uncached_tokens as f64;
    let (a, b, c) = PREFILL_POLY;
    a * t * t + b * t + c
}

/// Milliseconds of one decode step at KV usage fraction `usage` (clamped to `0..=1`).
pub fn decode_ms(usage: f64) -> f64 {
    let u = if usage.is_finite() {
        usage.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (a, b, c) = DECODE_POLY;
    (a * u * u + b * u + c).max(DECODE_FLOOR_MS)
}

/// Duration of one pass: prefill term if it computed prompt tokens, decode term if any
/// sequence decoded (a sequence finishing its prefill emits its first token for free).
pub fn step_ms(uncached_tokens: u64, decoding_seqs: usize, usage: f64) -> f64 {
    let decode = if decoding_seqs > 0 {
        decode_ms(usage)
    } else {
        0.0
    };
    prefill_ms(uncached_tokens) + decode
}

/// A source of simulated time in milliseconds.
pub trait Clock: Send + Sync {
    /// The current simulated time in milliseconds since the clock's origin.
    fn now_ms(&self) -> f64;
}

/// Wall time since creation, multiplied by `speedup` (a speedup of 20 makes one wall
/// second worth 20 simulated seconds).
#[derive(Debug, Clone)]
pub struct WallClock {
    origin: Instant,
    speedup: f64,
}

impl WallClock {
    /// A clock starting now, running `speedup` times faster than wall time (values
    /// that are not finite and positive count as 1).
    pub fn new(speedup: f64) -> Self {
        Self {
            origin: Instant::now(),
            speedup: sanitize_speedup(speedup),
        }
    }

    /// The speedup factor.
    pub fn speedup(&self) -> f64 {
        self.speedup
    }

    /// Wall-clock duration of `sim_ms` simulated milliseconds.
    pub fn wall_duration(&self, sim_ms: f64) -> std::time::Duration {
        std::time::Duration::from_secs_f64((sim_ms / self.speedup).max(0.0) / 1000.0)
    }

    /// The wall-clock instant of simulated time `sim_ms`.
    pub fn instant_at(&self, sim_ms: f64) -> Instant {
        self.origin + self.wall_duration(sim_ms)
    }
}

impl Clock for WallClock {
    fn now_ms(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * 1000.0 * self.speedup
    }
}

/// Replaces a non-finite or non-positive speedup by 1.
pub fn sanitize_speedup(speedup: f64) -> f64 {
    if speedup.is_finite() && speedup > 0.0 {
        speedup
    } else {
        1.0
    }
}

/// A clock that only moves when told to: virtual time for tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    micros: AtomicU64,
}

impl ManualClock {
    /// A clock at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `ms` milliseconds (negative values are ignored).
    pub fn advance(&self, ms: f64) {
        let micros = (ms.max(0.0) * 1000.0).round() as u64;
        self.micros.fetch_add(micros, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> f64 {
        self.micros.load(Ordering::SeqCst) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn prefill_matches_the_published_fit() {
        assert_eq!(prefill_ms(0), 0.0);
        // 4.209989e-7·1e6 + 1.518344e-2·1000 + 16.50142
        assert!(close(prefill_ms(1000), 32.1058589));
        assert!(prefill_ms(8192) > prefill_ms(4096));
    }

    #[test]
    fn decode_matches_the_published_fit_and_floor() {
        assert!(close(decode_ms(0.0), 5.74));
        assert!(close(decode_ms(0.5), 26.31));
        assert!(close(decode_ms(1.0), -25.74 + 54.01 + 5.74));
        assert!(close(decode_ms(-3.0), 5.74));
        assert!(close(decode_ms(f64::NAN), 5.74));
        assert!(decode_ms(0.0) >= DECODE_FLOOR_MS);
    }

    #[test]
    fn step_adds_only_present_terms() {
        assert_eq!(step_ms(0, 0, 0.5), 0.0);
        assert!(close(step_ms(0, 3, 0.5), 26.31));
        assert!(close(step_ms(1000, 0, 0.5), 32.1058589));
        assert!(close(step_ms(1000, 2, 0.5), 32.1058589 + 26.31));
    }

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let c = ManualClock::new();
        assert_eq!(c.now_ms(), 0.0);
        c.advance(12.5);
        c.advance(-4.0);
        assert!(close(c.now_ms(), 12.5));
    }

    #[test]
    fn speedup_scales_wall_durations() {
        let c = WallClock::new(20.0);
        assert_eq!(
            c.wall_duration(1000.0),
            std::time::Duration::from_millis(50)
        );
        assert_eq!(WallClock::new(0.0).speedup(), 1.0);
        assert_eq!(sanitize_speedup(f64::INFINITY), 1.0);
    }
}
