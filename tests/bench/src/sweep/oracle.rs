//! The lookahead oracle: the upper bound of routing. For each candidate engine it clones
//! that engine's exact scheduler state (KV cache, waiting queue, running sequences,
//! chunked-prefill progress), submits the request to the clone and runs the clone's
//! passes forward until the request's first token; it picks the engine with the least
//! simulated time to first token. It knows everything now but not the future arrivals
//! (a greedy oracle): what a router with perfect information could do per request.

use kvgate_mock::scheduler::Scheduler;
use kvgate_mock::sequence::NewRequest;

/// Passes simulated at most per candidate (a guard; a request is served long before).
const MAX_PASSES: usize = 100_000;

/// Simulated time to first token of `req` (arriving at `now_ms`) on an engine in state
/// `sched` whose current pass ends at `busy_until` (None when idle); infinite when the
/// engine would never serve it.
pub fn lookahead_ttft(
    sched: &Scheduler,
    busy_until: Option<f64>,
    req: &NewRequest,
    now_ms: f64,
) -> f64 {
    lookahead_within(sched, busy_until, req, now_ms, f64::INFINITY)
}

/// [`lookahead_ttft`], given up (infinite) as soon as the simulated time passes `bound`
/// (a candidate already known to be worse than the best one so far).
pub fn lookahead_within(
    sched: &Scheduler,
    busy_until: Option<f64>,
    req: &NewRequest,
    now_ms: f64,
    bound: f64,
) -> f64 {
    let mut t = busy_until.unwrap_or(now_ms).max(now_ms);
    if t - now_ms >= bound {
        return f64::INFINITY;
    }
    let mut s = sched.clone();
    if s.submit(req.clone()).is_err() {
        return f64::INFINITY;
    }
    for _ in 0..MAX_PASSES {
        if t - now_ms >= bound {
            return f64::INFINITY;
        }
        let r = s.step(t);
        if let Some(o) = r.outputs.iter().find(|o| o.id == req.id && o.index == 0) {
            return o.first.map_or(r.end_ms - now_ms, |f| f.sim_ttft_ms);
        }
        if r.duration_ms <= 0.0 {
            return f64::INFINITY;
        }
        t = r.end_ms;
    }
    f64::INFINITY
}

/// The engine (index) with the least simulated TTFT for `req`; ties go to the engine
/// with the least queued prefill, then the first. Engines are simulated least-queued
/// first, each only until it is no better than the best so far (which changes nothing
/// in the result, only the time it takes).
pub fn pick(engines: &[(&Scheduler, Option<f64>)], req: &NewRequest, now_ms: f64) -> usize {
    let mut order: Vec<(u64, usize)> = engines
        .iter()
        .enumerate()
        .map(|(i, (s, _))| (s.load().active_prefill_tokens, i))
        .collect();
    order.sort_unstable();
    let mut best = (usize::MAX, f64::INFINITY);
    for (_, i) in order {
        let Some((s, busy)) = engines.get(i) else {
            continue;
        };
        // `bound` is exclusive: an engine tying with the best is not preferred.
        let t = lookahead_within(s, *busy, req, now_ms, best.1);
        if t < best.1 {
            best = (i, t);
        }
    }
    if best.0 == usize::MAX {
        0
    } else {
        best.0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use kvgate_mock::scheduler::SchedulerConfig;
    use kvgate_mock::sequence::Filler;
    use std::sync::Arc;

    fn req(id: u64, prompt: Vec<u32>, at: f64) -> NewRequest {
        NewRequest {
            id,
            prompt,
            max_tokens: 4,
            hash_seed: kvgate_core::hash::block_seed(None, None),
            prefilled: false,
            arrival_ms: at,
        }
    }

    fn run_until_idle(s: &mut Scheduler, mut t: f64) -> f64 {
        while s.has_work() {
            let r = s.step(t);
            t = r.end_ms;
        }
        t
    }

    #[test]
    fn prefers_the_cached_engine_then_the_idle_one_and_matches_the_real_run() {
        let filler = Arc::new(Filler::new(Vec::new()));
        let cfg = SchedulerConfig::default();
        let mut a = Scheduler::new(cfg.clone(), 0, filler.clone());
        let mut b = Scheduler::new(cfg, 0, filler);
        let prompt: Vec<u32> = (0..4000).collect();
        a.submit(req(1, prompt.clone(), 0.0)).unwrap();
        let t = run_until_idle(&mut a, 0.0);
        // Engine a holds the prefix: the oracle sends the repeat there.
        let mut again = prompt.clone();
        again.extend(100_000..100_016u32);
        let r = req(2, again, t);
        assert_eq!(pick(&[(&b, None), (&a, None)], &r, t), 1);
        // The prediction is exactly what the engine then does.
        let predicted = lookahead_ttft(&a, None, &r, t);
        a.submit(r).unwrap();
        let first = a.step(t);
        assert!((first.outputs[0].first.unwrap().sim_ttft_ms - predicted).abs() < 1e-9);
        // A long queue on the cached engine sends a new prompt to the idle one.
        for i in 0..6u64 {
            let p: Vec<u32> = (0..8000).map(|x| x + 10_000 * (i as u32 + 1)).collect();
            b.submit(req(10 + i, p, t)).unwrap();
        }
        let fresh = req(3, (500_000..504_000).collect(), t);
        assert_eq!(pick(&[(&b, Some(t + 5.0)), (&a, None)], &fresh, t), 1);
    }
}
