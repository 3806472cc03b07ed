//! THE cost formula and the selection among scored candidates.
//!
//! For a request of `isl` prompt tokens (`request_blocks = ceil(isl / bs)`) and a
//! candidate (worker, dp rank) holding `overlap` leading blocks of it:
//!
//! ```text
//! raw_prefill_blocks = (active_prefill_tokens + isl) / bs          (0 if prefill tracking is off)
//! decay              = 1 / (1 + credit_decay · ((active_prefill_tokens − min_active_prefill) / bs) / request_blocks)
//! credit_blocks      = overlap_score_credit · decay · overlap
//! decode_blocks      = active_decode_blocks + new_blocks            (blocks of this request not yet active there)
//! logit              = prefill_load_scale · max(0, raw_prefill_blocks − credit_blocks)
//!                      + decode_blocks + decode_active_request_weight · active_requests
//! ```
//! Lower is better. With the defaults (credit 1, decay 0, scale 1) this is Dynamo 1.x's
//! `(active_prefill + isl − overlap·bs) / bs + decode_blocks`. A decode-only pool with
//! prefill tracking off and credit > 0 uses `max(0, decode_blocks − credit_blocks)`.
//!
//! Selection: temperature 0 takes the minimum logit; ties go to the candidate holding the
//! fewest cached blocks (Dynamo 1.x; it spreads new prefixes onto empty workers), then
//! uniformly at random from a seeded RNG (newest Dynamo breaks every tie at random).
//! Temperature T > 0 samples with `p ∝ exp(−((logit − min) / (max − min)) / T)`, uniform
//! when all logits are equal.

use crate::types::WorkerKey;
use std::fmt::Write as _;

/// Formula parameters for one selection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreParams {
    /// Prompt tokens.
    pub isl_tokens: u64,
    /// Tokens per block.
    pub block_size: u32,
    /// `overlap_score_credit`.
    pub credit: f64,
    /// `overlap_score_credit_decay`.
    pub credit_decay: f64,
    /// `prefill_load_scale`.
    pub prefill_load_scale: f64,
    /// `decode_active_request_weight`.
    pub active_request_weight: f64,
    /// Whether the prefill term is tracked.
    pub track_prefill: bool,
    /// Decode-pool form of the formula.
    pub decode_pool: bool,
    /// Softmax temperature.
    pub temperature: f64,
}

/// What the formula needs to know about one candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Candidate {
    /// The (worker, dp rank).
    pub worker: WorkerKey,
    /// Leading blocks of the request it holds.
    pub overlap_blocks: u32,
    /// Queued prefill tokens on it.
    pub active_prefill_tokens: u64,
    /// Active decode blocks on it.
    pub active_decode_blocks: u64,
    /// Blocks of this request not yet active on it.
    pub new_blocks: u64,
    /// In-flight requests on it.
    pub active_requests: u64,
    /// Blocks it holds in the index (tie-breaker).
    pub cached_blocks: u64,
}

/// One candidate with its cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    /// The input.
    pub candidate: Candidate,
    /// Prefill term before scaling, in blocks.
    pub prefill_blocks: f64,
    /// Credit for cached blocks.
    pub credit_blocks: f64,
    /// Decode term in blocks.
    pub decode_blocks: f64,
    /// The cost (lower is better).
    pub logit: f64,
}

/// Scores every candidate with the formula in the module documentation.
pub fn score(p: &ScoreParams, candidates: &[Candidate]) -> Vec<Scored> {
    let bs = f64::from(p.block_size.max(1));
    let isl = p.isl_tokens as f64;
    let request_blocks = (p.isl_tokens.div_ceil(u64::from(p.block_size.max(1)))).max(1) as f64;
    let min_prefill = candidates
        .iter()
        .map(|c| c.active_prefill_tokens)
        .min()
        .unwrap_or(0);
    candidates
        .iter()
        .map(|c| {
            let prefill_blocks = if p.track_prefill {
                (c.active_prefill_tokens as f64 + isl) / bs
            } else {
                0.0
            };
            let decay = if p.track_prefill && p.credit_decay > 0.0 {
                let excess = (c.active_prefill_tokens - min_prefill) as f64 / bs;
                1.0 / (1.0 + p.credit_decay * excess / request_blocks)
            } else {
                1.0
            };
            let credit_blocks = p.credit * decay * f64::from(c.overlap_blocks);
            let decode_blocks = (c.active_decode_blocks + c.new_blocks) as f64;
            let requests = p.active_request_weight * c.active_requests as f64;
            let logit = if p.decode_pool && !p.track_prefill && p.credit > 0.0 {
                (decode_blocks - credit_blocks).max(0.0) + requests
            } else {
                p.prefill_load_scale * (prefill_blocks - credit_blocks).max(0.0)
                    + decode_blocks
                    + requests
            };
            Scored {
                candidate: *c,
                prefill_blocks,
                credit_blocks,
                decode_blocks,
                logit,
            }
        })
        .collect()
}

/// Picks one scored candidate (see the module documentation); None when empty.
pub fn select(scored: &[Scored], temperature: f64, rng: &mut fastrand::Rng) -> Option<usize> {
    if scored.is_empty() {
        return None;
    }
    let min = scored.iter().map(|s| s.logit).fold(f64::INFINITY, f64::min);
    let max = scored
        .iter()
        .map(|s| s.logit)
        .fold(f64::NEG_INFINITY, f64::max);
    if temperature <= 0.0 || !(max - min).is_finite() {
        return argmin_with_ties(scored, min, rng);
    }
    if max == min {
        return Some(rng.usize(..scored.len()));
    }
    let range = max - min;
    let weights: Vec<f64> = scored
        .iter()
        .map(|s| (-((s.logit - min) / range) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    let u = rng.f64() * total;
    let mut acc = 0.0;
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        if u <= acc {
            return Some(i);
        }
    }
    Some(scored.len() - 1)
}

fn argmin_with_ties(scored: &[Scored], min: f64, rng: &mut fastrand::Rng) -> Option<usize> {
    let best: Vec<usize> = (0..scored.len())
        .filter(|&i| scored.get(i).is_some_and(|s| s.logit == min))
        .collect();
    let fewest = best
        .iter()
        .filter_map(|&i| scored.get(i))
        .map(|s| s.candidate.cached_blocks)
        .min()?;
    let tied: Vec<usize> = best
        .into_iter()
        .filter(|&i| {
            scored
                .get(i)
                .is_some_and(|s| s.candidate.cached_blocks == fewest)
        })
        .collect();
    match tied.len() {
        0 => None,
        1 => tied.first().copied(),
        n => tied.get(rng.usize(..n)).copied(),
    }
}

/// Formats scored candidates as ` | w ov=.. pf=.. dc=.. logit=..` segments; `chosen` gets a `*`.
pub fn explain_candidates(scored: &[Scored], chosen: Option<usize>) -> String {
    let mut s = String::new();
    for (i, c) in scored.iter().enumerate() {
        let _ = write!(
            s,
            " | {} ov={} pf={} dc={} logit={:.2}{}",
            c.candidate.worker,
            c.candidate.overlap_blocks,
            c.candidate.active_prefill_tokens,
            c.candidate.active_decode_blocks + c.candidate.new_blocks,
            c.logit,
            if Some(i) == chosen { "*" } else { "" }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn params() -> ScoreParams {
        ScoreParams {
            isl_tokens: 160,
            block_size: 16,
            credit: 1.0,
            credit_decay: 0.0,
            prefill_load_scale: 1.0,
            active_request_weight: 0.0,
            track_prefill: true,
            decode_pool: false,
            temperature: 0.0,
        }
    }

    fn cand(w: u64, overlap: u32, prefill: u64, decode: u64) -> Candidate {
        Candidate {
            worker: WorkerKey::new(w, 0),
            overlap_blocks: overlap,
            active_prefill_tokens: prefill,
            active_decode_blocks: decode,
            new_blocks: 10 - u64::from(overlap).min(10),
            ..Default::default()
        }
    }

    #[test]
    fn formula_matches_dynamo_1x_with_defaults() {
        // (active_prefill + isl − overlap·bs)/bs + decode_blocks
        let s = score(&params(), &[cand(1, 4, 32, 5)]);
        let expected = (32.0 + 160.0 - 4.0 * 16.0) / 16.0 + (5.0 + 6.0);
        assert!((s[0].logit - expected).abs() < 1e-9);
    }

    #[test]
    fn decay_shrinks_credit_on_busier_workers() {
        let p = ScoreParams {
            credit_decay: 1.0,
            ..params()
        };
        let s = score(&p, &[cand(1, 5, 0, 0), cand(2, 5, 160, 0)]);
        assert_eq!(s[0].credit_blocks, 5.0);
        // excess = 160/16 = 10 blocks, request_blocks = 10 → decay = 1/2
        assert!((s[1].credit_blocks - 2.5).abs() < 1e-9);
    }

    #[test]
    fn argmin_then_fewest_cached_then_random() {
        let mut rng = fastrand::Rng::with_seed(7);
        let s = score(
            &params(),
            &[cand(1, 0, 0, 0), cand(2, 8, 0, 0), cand(3, 0, 0, 0)],
        );
        assert_eq!(select(&s, 0.0, &mut rng), Some(1));
        let mut a = cand(1, 0, 0, 0);
        a.cached_blocks = 100;
        let b = cand(2, 0, 0, 0);
        let s = score(&params(), &[a, b]);
        for _ in 0..20 {
            assert_eq!(select(&s, 0.0, &mut rng), Some(1));
        }
        let s = score(&params(), &[cand(1, 0, 0, 0), cand(2, 0, 0, 0)]);
        let picks: std::collections::BTreeSet<_> =
            (0..64).map(|_| select(&s, 0.0, &mut rng)).collect();
        assert_eq!(picks.len(), 2, "exact ties are broken at random");
    }

    #[test]
    fn temperature_sampling_prefers_lower_cost() {
        let mut rng = fastrand::Rng::with_seed(1);
        let s = score(&params(), &[cand(1, 10, 0, 0), cand(2, 0, 0, 0)]);
        let n = 2000;
        let low = (0..n)
            .filter(|_| select(&s, 0.5, &mut rng) == Some(0))
            .count();
        // p(low) = 1 / (1 + e^-2) ≈ 0.88
        assert!(low > n * 80 / 100 && low < n * 95 / 100, "{low}");
        assert_eq!(select(&[], 0.5, &mut rng), None);
    }

    #[test]
    fn explain_is_one_line() {
        let s = score(&params(), &[cand(1, 0, 0, 0), cand(2, 8, 0, 0)]);
        let e = explain_candidates(&s, Some(1));
        assert!(!e.contains('\n'));
        assert!(e.contains("2/0 ov=8"), "{e}");
        assert!(e.contains('*'));
    }
}
