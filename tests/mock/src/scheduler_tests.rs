//! Unit tests of the scheduler in virtual time: batching, chunked prefill, prefix hits,
//! FIFO admission, preemption and the time model (no sleeping, no wall clock).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;
use crate::sequence::FILLER_TEXT;
use crate::timing::{decode_ms, prefill_ms};
use std::collections::HashSet;

fn filler() -> Arc<Filler> {
    Arc::new(Filler::new(
        FILLER_TEXT
            .split_inclusive(' ')
            .enumerate()
            .map(|(i, w)| (9000 + i as u32, w.to_string()))
            .collect(),
    ))
}

fn cfg(blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        block_size: 16,
        num_gpu_blocks: blocks,
        max_num_seqs: 256,
        max_num_batched_tokens: 8192,
        watermark: 0.0,
    }
}

fn req(id: SeqId, prompt: Vec<u32>, max_tokens: usize, now: f64) -> NewRequest {
    NewRequest {
        id,
        prompt,
        max_tokens,
        hash_seed: 1337,
        prefilled: false,
        arrival_ms: now,
    }
}

fn prompt(base: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| base + i).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// Steps until idle; returns all results and the final virtual time.
fn drain(s: &mut Scheduler, mut now: f64) -> (Vec<StepResult>, f64) {
    let mut all = Vec::new();
    let mut guard = 0;
    while s.has_work() {
        let r = s.step(now);
        now = r.end_ms;
        all.push(r);
        guard += 1;
        assert!(guard < 100_000, "scheduler did not converge");
    }
    (all, now)
}

#[test]
fn one_request_prefill_then_decode_steps() {
    let mut s = Scheduler::new(cfg(1000), 0, filler());
    s.submit(req(1, prompt(1, 100), 4, 0.0)).unwrap();
    let r = s.step(0.0);
    assert!(
        close(r.duration_ms, prefill_ms(100)),
        "the prefill pass has no decode term"
    );
    assert_eq!(r.outputs.len(), 1);
    let first = r.outputs[0].first.unwrap();
    assert_eq!((first.hit_tokens, first.prompt_tokens), (0, 100));
    assert!(close(first.sim_ttft_ms, prefill_ms(100)));
    // 6 full prompt blocks stored at the end of the prefill, in one parent-less run.
    match r.events.as_slice() {
        [KvEventData::Stored {
            parent: None,
            blocks,
        }] => assert_eq!(blocks.len(), 6),
        other => panic!("unexpected events {other:?}"),
    }
    let mut now = r.end_ms;
    for k in 1..4 {
        let usage = s.cache().usage();
        let r = s.step(now);
        assert!(close(r.duration_ms, decode_ms(usage)));
        assert_eq!(r.outputs[0].index, k);
        assert_eq!(r.outputs[0].finished, k == 3);
        now = r.end_ms;
    }
    assert!(!s.has_work());
    assert_eq!(s.cache().active_blocks(), 0);
    let st = s.stats();
    assert_eq!(
        (
            st.completed,
            st.generated_tokens,
            st.computed_prefill_tokens
        ),
        (1, 4, 100)
    );
}

#[test]
fn a_repeated_prompt_hits_the_cache_but_computes_at_least_one_token() {
    let mut s = Scheduler::new(cfg(1000), 0, filler());
    s.submit(req(1, prompt(1, 96), 1, 0.0)).unwrap();
    let (_, now) = drain(&mut s, 0.0);
    s.submit(req(2, prompt(1, 96), 1, now)).unwrap();
    let r = s.step(now);
    // 96 tokens = 6 full blocks; vLLM recomputes the last block to get logits.
    assert_eq!(r.outputs[0].first.unwrap().hit_tokens, 80);
    assert!(close(r.duration_ms, prefill_ms(16)));
    assert!(
        r.events.is_empty(),
        "the recomputed block was cached already"
    );
    s.submit(req(3, prompt(1, 100), 1, r.end_ms)).unwrap();
    let r = s.step(r.end_ms);
    assert_eq!(r.outputs[0].first.unwrap().hit_tokens, 96);
    assert_eq!(s.stats().cached_hit_tokens, 176);
}

#[test]
fn long_prompts_are_prefilled_in_chunks_of_the_token_budget() {
    let mut s = Scheduler::new(cfg(4000), 0, filler());
    s.submit(req(1, prompt(1, 20_000), 2, 0.0)).unwrap();
    let durations: Vec<f64> = (0..3)
        .scan(0.0, |now, _| {
            let r = s.step(*now);
            *now = r.end_ms;
            Some((r.duration_ms, r.outputs.len()))
        })
        .map(|(d, n)| {
            assert!(n <= 1);
            d
        })
        .collect();
    assert!(close(durations[0], prefill_ms(8192)));
    assert!(close(durations[1], prefill_ms(8192)));
    assert!(close(durations[2], prefill_ms(20_000 - 2 * 8192)));
    assert_eq!(s.stats().generated_tokens, 1);
}

#[test]
fn continuous_batching_adds_prefill_to_a_decoding_batch() {
    let mut s = Scheduler::new(cfg(1000), 0, filler());
    s.submit(req(1, prompt(1, 64), 10, 0.0)).unwrap();
    let r = s.step(0.0);
    s.submit(req(2, prompt(500, 32), 10, r.end_ms)).unwrap();
    let usage_before = s.cache().usage();
    let r2 = s.step(r.end_ms);
    // Request 2's prefill (32 tokens) and request 1's decode share the pass.
    assert_eq!(r2.prefill_tokens, 32);
    assert_eq!(r2.decoded, 1);
    assert_eq!(r2.outputs.len(), 2);
    assert!(r2.duration_ms > prefill_ms(32));
    assert!(r2.duration_ms >= prefill_ms(32) + decode_ms(usage_before).min(decode_ms(1.0)));
}

#[test]
fn max_num_seqs_queues_requests_fifo() {
    let mut c = cfg(1000);
    c.max_num_seqs = 2;
    let mut s = Scheduler::new(c, 0, filler());
    for id in 1..=3 {
        s.submit(req(id, prompt(id as u32 * 100, 20), 3, 0.0))
            .unwrap();
    }
    let r = s.step(0.0);
    let ids: HashSet<SeqId> = r.outputs.iter().map(|o| o.id).collect();
    assert_eq!(ids, HashSet::from([1, 2]));
    assert_eq!(s.stats().queue_depth, 1);
    let (rest, _) = drain(&mut s, r.end_ms);
    let third_first = rest
        .iter()
        .flat_map(|r| &r.outputs)
        .find(|o| o.id == 3 && o.index == 0)
        .unwrap();
    assert!(
        third_first.first.unwrap().sim_ttft_ms > r.duration_ms,
        "request 3 waited for a slot"
    );
}

#[test]
fn pool_pressure_preempts_and_everything_still_completes() {
    // 12 blocks for three sequences that grow to 5 blocks each.
    let mut s = Scheduler::new(cfg(12), 0, filler());
    for id in 1..=3 {
        s.submit(req(id, prompt(id as u32 * 1000, 40), 40, 0.0))
            .unwrap();
    }
    let (results, _) = drain(&mut s, 0.0);
    assert!(s.stats().preemptions > 0);
    for id in 1..=3 {
        let idx: Vec<usize> = results
            .iter()
            .flat_map(|r| &r.outputs)
            .filter(|o| o.id == id)
            .map(|o| o.index)
            .collect();
        assert_eq!(
            idx,
            (0..40).collect::<Vec<_>>(),
            "request {id} streamed every token once, in order"
        );
    }
    assert_eq!(s.cache().active_blocks(), 0);
    assert!(
        s.stats().computed_prefill_tokens > 120,
        "preempted work was recomputed"
    );
}

#[test]
fn decode_blocks_are_stored_when_they_fill_up() {
    let mut s = Scheduler::new(cfg(100), 0, filler());
    s.submit(req(1, prompt(1, 16), 17, 0.0)).unwrap();
    let (results, _) = drain(&mut s, 0.0);
    let stored: Vec<&KvEventData> = results.iter().flat_map(|r| &r.events).collect();
    // Block 0 (prompt) at the prefill; block 1 (16 generated tokens) once computed.
    assert_eq!(stored.len(), 2);
    let first_hash = match stored[0] {
        KvEventData::Stored {
            parent: None,
            blocks,
        } => blocks[0].external,
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(stored[1], KvEventData::Stored { parent: Some(p), blocks } if *p == first_hash && blocks.len() == 1)
    );
}

#[test]
fn transferred_prefills_cost_nothing() {
    let mut s = Scheduler::new(cfg(100), 0, filler());
    let mut r = req(1, prompt(1, 64), 2, 0.0);
    r.prefilled = true;
    s.submit(r).unwrap();
    let res = s.step(0.0);
    assert_eq!(res.duration_ms, 0.0);
    assert_eq!(res.outputs.len(), 1);
    assert_eq!(s.stats().transferred_prefill_tokens, 64);
    assert_eq!(s.stats().computed_prefill_tokens, 0);
    assert_eq!(
        res.events.len(),
        1,
        "the transferred blocks are cached and published"
    );
}

#[test]
fn cancel_frees_blocks_and_bad_requests_are_refused() {
    let mut s = Scheduler::new(cfg(10), 0, filler());
    assert_eq!(
        s.submit(req(1, vec![], 1, 0.0)),
        Err(SubmitError::EmptyPrompt)
    );
    assert!(matches!(
        s.submit(req(2, prompt(1, 200), 1, 0.0)),
        Err(SubmitError::TooLong { .. })
    ));
    s.submit(req(3, prompt(1, 40), 130, 0.0)).unwrap_err();
    s.submit(req(4, prompt(1, 40), 10, 0.0)).unwrap();
    assert_eq!(
        s.submit(req(4, prompt(1, 40), 10, 0.0)),
        Err(SubmitError::Duplicate(4))
    );
    s.step(0.0);
    assert!(s.cache().active_blocks() > 0);
    assert!(s.cancel(4));
    assert!(!s.cancel(4));
    assert_eq!(s.cache().active_blocks(), 0);
    assert!(!s.has_work());
    assert_eq!(s.stats().rejected, 4);
}

#[test]
fn random_load_is_consistent() {
    for seed in 0..10u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut c = cfg(64);
        c.max_num_batched_tokens = 256;
        c.max_num_seqs = 8;
        let mut s = Scheduler::new(c, 0, filler());
        let mut want: HashMap<SeqId, usize> = HashMap::new();
        let mut got: HashMap<SeqId, Vec<usize>> = HashMap::new();
        let mut index: HashSet<u64> = HashSet::new();
        let mut now = 0.0;
        for id in 1..=60u64 {
            let len = rng.usize(1..300);
            let base = rng.u32(0..3) * 10_000;
            let max = rng.usize(1..40);
            s.submit(req(id, prompt(base, len), max, now)).unwrap();
            want.insert(id, max);
            for _ in 0..rng.usize(0..4) {
                let r = s.step(now);
                now = r.end_ms;
                for o in &r.outputs {
                    got.entry(o.id).or_default().push(o.index);
                }
                for e in &r.events {
                    match e {
                        KvEventData::Stored { parent, blocks } => {
                            assert!(parent.is_none_or(|p| index.contains(&p)));
                            index.extend(blocks.iter().map(|b| b.external));
                        }
                        KvEventData::Removed { blocks } => {
                            blocks.iter().for_each(|b| assert!(index.remove(b)))
                        }
                        KvEventData::Cleared => index.clear(),
                    }
                }
                let mut cached: Vec<u64> = index.iter().copied().collect();
                cached.sort_unstable();
                assert_eq!(cached, s.cache().cached_hashes());
            }
        }
        let (rest, _) = drain(&mut s, now);
        for o in rest.iter().flat_map(|r| &r.outputs) {
            got.entry(o.id).or_default().push(o.index);
        }
        for (id, max) in want {
            assert_eq!(
                got.get(&id).cloned().unwrap_or_default(),
                (0..max).collect::<Vec<_>>(),
                "seed {seed} request {id}"
            );
        }
        assert_eq!(s.cache().active_blocks(), 0);
    }
}

/// Passes run back to back in simulated time: a pass never admits a request that arrives
/// after it starts, and the next start is the previous end while sequences run, or the
/// first arrival when idle (so a late wake-up of the driver adds nothing to queueing).
#[test]
fn passes_start_back_to_back_and_admit_only_arrived_requests() {
    let mut s = Scheduler::new(cfg(1000), 0, filler());
    assert!(close(s.next_start_ms(5.0), 5.0));
    s.submit(req(1, prompt(1, 100), 4, 10.0)).unwrap();
    // Idle: the next pass starts at the arrival.
    assert!(close(s.next_start_ms(5.0), 10.0));
    // A pass planned before the arrival admits nothing.
    let early = s.step(5.0);
    assert!(early.outputs.is_empty() && close(early.duration_ms, 0.0));
    let r = s.step(s.next_start_ms(5.0));
    let first = r.outputs[0].first.unwrap();
    assert!(close(first.sim_ttft_ms, prefill_ms(100)));
    // Running: the next pass starts where this one ended, whatever the wall clock says.
    s.submit(req(2, prompt(500, 50), 4, r.end_ms + 3.0))
        .unwrap();
    assert!(close(s.next_start_ms(r.end_ms), r.end_ms));
    let next = s.step(r.end_ms);
    assert!(
        next.outputs.iter().all(|o| o.id == 1),
        "request 2 arrives after this pass starts"
    );
}
