//! Tests of [`super::ApproxIndex`]: expiry, refresh, pruning order, the cap, worker
//! removal, and a randomized differential test against a plain map of pairs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use crate::index::PrefixIndex;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

fn w(i: u64) -> WorkerKey {
    WorkerKey::new(i, 0)
}

#[test]
fn predictions_expire_and_refresh() {
    let mut a = ApproxIndex::new(1000, 100);
    let q = a.quantum_ms();
    assert!(q <= 1000 / 64 && q.is_power_of_two());
    a.record(w(1), &[1, 2], 0);
    a.record(w(1), &[1], 500);
    assert_eq!(a.overlap(&[1, 2]).of(&w(1)), 2);
    assert!(a.expire(999).is_empty());
    let gone = a.expire(1000);
    assert_eq!(
        gone,
        vec![IndexDelta::Remove {
            worker: w(1),
            seq: 2
        }]
    );
    assert_eq!(a.overlap(&[1, 2]).of(&w(1)), 1);
    // 500 + 1000 rounded up to the quantum.
    let until = 1500u64.div_ceil(q) * q;
    assert!(a.expire(until - 1).is_empty());
    assert_eq!(
        a.expire(until),
        vec![IndexDelta::Remove {
            worker: w(1),
            seq: 1
        }]
    );
    assert!(a.index().is_empty());
}

#[test]
fn lazy_records_and_queries_skip_expired_pairs_until_a_sweep_is_worth_it() {
    let mut a = ApproxIndex::new(64_000, 1 << 20);
    let q = a.quantum_ms();
    // A large table: 8,192 pairs that expire at 64 s, 16 that live longer.
    let old: Vec<u64> = (0..8192).collect();
    a.record_lazily(w(1), &old, 0);
    a.record_lazily(w(2), &[1, 2], 0);
    a.record_lazily(w(2), &[100_000, 100_001], 40_000);
    assert_eq!(a.overlap_at(&[0, 1, 2], 63_000).of(&w(1)), 3);
    // Expired at 64 s (+ at most one quantum): queries no longer see them, unswept.
    let later = 64_000 + q;
    assert_eq!(a.overlap_at(&[0, 1, 2], later).of(&w(1)), 0);
    assert_eq!(a.overlap_at(&[1, 2], later).of(&w(2)), 0);
    assert_eq!(a.overlap_at(&[100_000, 100_001], later).of(&w(2)), 2);
    assert_eq!(a.index().entries(), 8196, "nothing swept yet");
    // A lazy record of an expired pair refreshes it in place.
    a.record_lazily(w(1), &[0], later);
    assert_eq!(a.overlap_at(&[0], later).of(&w(1)), 1);
    // The sweep: worth it (almost all of the table is due); it drops only the expired.
    assert!(a.expire_when_worth_it(later));
    assert_eq!(a.index().entries(), 3);
    assert!(a.index().contains(&w(1), 0));
    assert!(!a.expire_when_worth_it(later), "nothing due");

    // Few due pairs in a large table: not worth a sweep yet, and still invisible.
    let mut b = ApproxIndex::new(64_000, 1 << 20);
    b.record_lazily(w(1), &(0..8192).collect::<Vec<u64>>(), 10_000);
    b.record_lazily(w(2), &[5, 6], 0);
    assert!(!b.expire_when_worth_it(64_000 + q));
    assert_eq!(b.overlap_at(&[5, 6], 64_000 + q).of(&w(2)), 0);
    assert_eq!(b.index().entries(), 8194);
    assert!(b.expire_when_worth_it(80_000 + q));
    assert_eq!(b.index().entries(), 0);
}

#[test]
fn an_older_record_does_not_shorten_a_prediction() {
    let mut a = ApproxIndex::new(6400, 100);
    a.record(w(1), &[1], 1000);
    a.record(w(1), &[1], 0);
    let until = 7400u64.div_ceil(a.quantum_ms()) * a.quantum_ms();
    assert!(a.expire(until - 1).is_empty());
    assert_eq!(a.expire(until).len(), 1);
}

#[test]
fn bounded_size_drops_oldest() {
    let mut a = ApproxIndex::new(1_000_000, 3);
    a.set_prune_target_ratio(1.0);
    a.record(w(1), &[1], 0);
    a.record(w(1), &[2], 100_000);
    a.record(w(2), &[3], 200_000);
    let d = a.record(w(1), &[4], 300_000);
    assert_eq!(
        d,
        vec![
            IndexDelta::Remove {
                worker: w(1),
                seq: 1
            },
            IndexDelta::Insert {
                worker: w(1),
                seq: 4
            }
        ]
    );
    assert_eq!(a.index().len(), 3);
    assert!(!a.index().contains(&w(1), 1));
    // Refreshing 2 makes 3 the oldest.
    a.record(w(1), &[2], 400_000);
    a.record(w(1), &[5], 500_000);
    assert!(!a.index().contains(&w(2), 3));
    assert!(a.index().contains(&w(1), 2));
    assert_eq!(a.index().entries(), 3);
}

#[test]
fn a_full_index_prunes_to_the_target_ratio() {
    // A TTL of 2^24 - 1 ms has a quantum of 2^17 ms: one record per quantum, each older
    // than the next.
    let mut a = ApproxIndex::new((1 << 24) - 1, 100);
    let q = a.quantum_ms();
    for t in 0..100u64 {
        a.record(w(t % 3), &[t], t * q);
    }
    assert_eq!(a.index().entries(), 100);
    let d = a.record(w(0), &[1000], 100 * q);
    // Down to 80, then the new one: the 20 oldest go.
    let removed: Vec<u64> = d
        .iter()
        .filter_map(|d| match d {
            IndexDelta::Remove { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(removed, (0..20).collect::<Vec<_>>());
    assert_eq!(a.index().entries(), 81);
}

#[test]
fn the_cap_holds_within_one_long_record() {
    let mut a = ApproxIndex::new(120_000, 50);
    let seq: Vec<u64> = (0..500).map(|i| i * 7919 + 1).collect();
    let d = a.record(w(1), &seq, 0);
    assert!(a.index().entries() <= 50);
    let mut mirror = PrefixIndex::new();
    for x in &d {
        mirror.apply(x);
    }
    assert_eq!(mirror.entries(), a.index().entries());
}

#[test]
fn remove_worker_forgets_only_that_worker() {
    let mut a = ApproxIndex::new(10_000, 100);
    a.record(w(1), &[1, 2, 3], 0);
    a.record(w(2), &[1, 2], 0);
    a.remove_worker(w(1));
    assert_eq!(a.overlap(&[1, 2, 3]).of(&w(1)), 0);
    assert_eq!(a.overlap(&[1, 2, 3]).of(&w(2)), 2);
    assert_eq!(a.index().entries(), 2);
    assert_eq!(a.index().len(), 2);
    assert_eq!(a.index().worker_blocks(&w(2)), 2);
    // Expiry after removal still reports only the remaining pairs.
    assert_eq!(a.expire(20_000).len(), 2);
    assert!(a.index().is_empty());
}

#[test]
fn overlap_and_tree_sizes_over_shared_blocks() {
    let mut a = ApproxIndex::new(10_000, 100);
    a.record(w(1), &[1, 2, 3], 0);
    a.record(w(2), &[1, 2], 0);
    a.record(w(3), &[2], 0);
    let o = a.overlap(&[1, 2, 3, 4]);
    assert_eq!(o.of(&w(1)), 3);
    assert_eq!(o.of(&w(2)), 2);
    assert_eq!(o.of(&w(3)), 0);
    assert_eq!(o.tree_size(&w(1)), 3);
    assert_eq!(a.index().holders_of(2), vec![w(1), w(2), w(3)]);
}

#[test]
fn a_fresh_index_keeps_its_first_prediction_at_wall_clock_time() {
    // Real clocks start near 1.8e12 ms: the first record moves the base to its own expiry,
    // and a lazy query right after must still see it (it once did not).
    for ttl in [64u64, 120_000] {
        let mut a = ApproxIndex::new(ttl, 100);
        let t = 1_780_000_000_123u64;
        a.record_lazily(w(1), &[1, 2, 3], t);
        assert_eq!(a.overlap_at(&[1, 2, 3], t).of(&w(1)), 3, "ttl {ttl}");
        assert_eq!(
            a.overlap_at(&[1, 2, 3], t + ttl - 1).of(&w(1)),
            3,
            "ttl {ttl}"
        );
        assert!(!a.expire_when_worth_it(t + ttl - 1));
        let end = (t + ttl).div_ceil(a.quantum_ms()) * a.quantum_ms();
        assert_eq!(a.overlap_at(&[1, 2, 3], end).of(&w(1)), 0, "ttl {ttl}");
        assert!(a.expire_when_worth_it(end));
        assert_eq!(a.index().entries(), 0);
    }
}

#[test]
fn months_of_uptime_move_the_time_base() {
    // A 64 ms TTL has a 1 ms quantum: 16 bits of it wrap after about a minute.
    let mut a = ApproxIndex::new(64, 10);
    let mut t = 0u64;
    for i in 0..5_000u64 {
        t += 997;
        a.record(w(1), &[i % 4], t);
        a.record(w(1), &[i % 4 + 10], t + 30);
        assert_eq!(a.index().entries(), 2);
        assert!(a.expire(t + 63).is_empty());
        assert_eq!(a.expire(t + 64).len(), 1);
        assert_eq!(a.expire(t + 94).len(), 1);
    }
    assert!(t > 4_000_000);
}

impl ApproxView<'_> {
    fn holders_of(&self, seq: u64) -> Vec<WorkerKey> {
        self.a
            .holders(seq, 0)
            .filter_map(|s| self.a.slots.key(u32::from(s)))
            .collect()
    }
}

/// The reference: a plain map of pairs to their expiry, with pruning by sorting.
struct Reference {
    pairs: BTreeMap<(u64, u32), (WorkerKey, u64)>,
    slots: SlotTable,
    ttl: u64,
    q: u64,
    max: usize,
    prune_to: usize,
}

impl Reference {
    fn expire(&mut self, now: u64) -> Vec<IndexDelta> {
        let gone: Vec<(u64, u32)> = self
            .pairs
            .iter()
            .filter(|(_, (_, u))| *u <= now)
            .map(|(k, _)| *k)
            .collect();
        self.take(&gone)
    }

    fn take(&mut self, keys: &[(u64, u32)]) -> Vec<IndexDelta> {
        let mut keys = keys.to_vec();
        keys.sort();
        keys.iter()
            .map(|k| {
                let (worker, _) = self.pairs.remove(k).unwrap();
                IndexDelta::Remove { worker, seq: k.0 }
            })
            .collect()
    }

    fn record(&mut self, worker: WorkerKey, seqs: &[u64], now: u64) -> Vec<IndexDelta> {
        let mut d = self.expire(now);
        if seqs.is_empty() {
            return d;
        }
        let slot = self.slots.intern(worker);
        let until = (now + self.ttl).div_ceil(self.q) * self.q;
        for &s in seqs {
            if let Some((_, u)) = self.pairs.get_mut(&(s, slot)) {
                *u = (*u).max(until);
                continue;
            }
            if self.pairs.len() >= self.max {
                // Oldest first; equally old ones by tie bucket, then hash and slot.
                let mut order: Vec<(u64, usize, (u64, u32))> = self
                    .pairs
                    .iter()
                    .map(|(k, (_, u))| (*u, tie_bucket(k.0), *k))
                    .collect();
                order.sort();
                let n = self.pairs.len() - self.prune_to;
                let gone: Vec<(u64, u32)> = order[..n].iter().map(|(_, _, k)| *k).collect();
                d.extend(self.take(&gone));
            }
            self.pairs.insert((s, slot), (worker, until));
            d.push(IndexDelta::Insert { worker, seq: s });
        }
        d
    }

    fn remove_worker(&mut self, worker: WorkerKey) {
        if let Some(slot) = self.slots.get(&worker) {
            self.pairs.retain(|k, _| k.1 != slot);
            self.slots.release(&worker);
        }
    }

    fn overlap(&self, worker: WorkerKey, req: &[u64]) -> u32 {
        let Some(slot) = self.slots.get(&worker) else {
            return 0;
        };
        req.iter()
            .take_while(|s| self.pairs.contains_key(&(**s, slot)))
            .count() as u32
    }
}

#[derive(Debug, Clone)]
enum Op {
    Record {
        worker: u8,
        start: u8,
        len: u8,
        dt: u16,
    },
    Expire {
        dt: u16,
    },
    Jump,
    RemoveWorker {
        worker: u8,
    },
    Query {
        start: u8,
        len: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..5, 0u8..40, 0u8..12, 0u16..400)
            .prop_map(|(worker, start, len, dt)| Op::Record { worker, start, len, dt }),
        2 => (0u16..1500).prop_map(|dt| Op::Expire { dt }),
        1 => Just(Op::Jump),
        1 => (0u8..5).prop_map(|worker| Op::RemoveWorker { worker }),
        3 => (0u8..40, 1u8..12).prop_map(|(start, len)| Op::Query { start, len }),
    ]
}

/// A request's blocks: a run of a chain, with hashes spread over the whole u64 range.
fn blocks(start: u8, len: u8) -> Vec<u64> {
    (u64::from(start)..u64::from(start) + u64::from(len))
        .map(|i| (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn matches_a_plain_map(
        ttl in prop_oneof![Just(64u64), Just(1000), Just(120_000)],
        max in 1usize..60,
        ratio in prop_oneof![Just(0.0f64), Just(0.5), Just(0.8), Just(1.0)],
        ops in prop::collection::vec(op(), 1..120),
        start in prop_oneof![Just(0u64), Just(1_780_000_000_000)],
        shards in prop_oneof![Just(1usize), Just(2), Just(8)],
    ) {
        let mut a = ApproxIndex::with_shards(ttl, max, shards);
        a.set_prune_target_ratio(ratio);
        let mut r = Reference {
            pairs: BTreeMap::new(),
            slots: SlotTable::default(),
            ttl,
            q: a.quantum_ms(),
            max,
            prune_to: a.prune_to,
        };
        let mut mirror = PrefixIndex::new();
        let mut now = start;
        for op in ops {
            match op {
                Op::Record { worker, start, len, dt } => {
                    now += u64::from(dt);
                    let seqs = blocks(start, len);
                    let got = a.record(w(u64::from(worker)), &seqs, now);
                    let want = r.record(w(u64::from(worker)), &seqs, now);
                    prop_assert_eq!(&got, &want);
                    for d in &got {
                        prop_assert!(mirror.apply(d), "delta changes nothing: {:?}", d);
                    }
                }
                Op::Expire { dt } => {
                    now += u64::from(dt);
                    let got = a.expire(now);
                    prop_assert_eq!(&got, &r.expire(now));
                    for d in &got {
                        prop_assert!(mirror.apply(d));
                    }
                }
                Op::Jump => {
                    now += 10_000_000;
                }
                Op::RemoveWorker { worker } => {
                    a.remove_worker(w(u64::from(worker)));
                    r.remove_worker(w(u64::from(worker)));
                    mirror.clear_worker(w(u64::from(worker)));
                }
                Op::Query { start, len } => {
                    let req = blocks(start, len);
                    let o = a.overlap(&req);
                    // A lazy query sees what a sweep would leave.
                    let mut swept = a.clone();
                    swept.expire(now);
                    let (lazy, exact) = (a.overlap_at(&req, now), swept.overlap(&req));
                    for i in 0..5u64 {
                        prop_assert_eq!(lazy.of(&w(i)), exact.of(&w(i)));
                    }
                    for i in 0..5u64 {
                        prop_assert_eq!(o.of(&w(i)), r.overlap(w(i), &req));
                        if o.of(&w(i)) > 0 {
                            let n = r.pairs.values().filter(|(k, _)| *k == w(i)).count();
                            prop_assert_eq!(o.tree_size(&w(i)), n as u64);
                        }
                    }
                }
            }
            prop_assert!(a.index().entries() as usize <= max);
            prop_assert_eq!(a.index().entries() as usize, r.pairs.len());
            let distinct: BTreeSet<u64> = r.pairs.keys().map(|k| k.0).collect();
            prop_assert_eq!(a.index().len(), distinct.len());
            let got: BTreeSet<(WorkerKey, u64)> = a.index().iter().collect();
            let want: BTreeSet<(WorkerKey, u64)> =
                r.pairs.iter().map(|(k, (wk, _))| (*wk, k.0)).collect();
            let mirrored: BTreeSet<(WorkerKey, u64)> = mirror.iter().collect();
            prop_assert_eq!(&got, &want);
            prop_assert_eq!(&mirrored, &want);
        }
    }
}

/// `n` pseudo-random block hashes (a 64-bit LCG with its high bits folded down), from `x` on.
fn random_blocks(x: &mut u64, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            *x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            *x ^ (*x >> 29)
        })
        .collect()
}

#[test]
fn pruning_equally_old_rows_keeps_the_table_evenly_filled() {
    // Every record in one expiry quantum, five times the cap: each prune drops a share of
    // equally old rows. The table stays evenly filled, so no insert shifts a long run.
    let mut a = ApproxIndex::new(120_000, 10_000);
    let mut x = 1u64;
    for r in 0..400u64 {
        let seq = random_blocks(&mut x, 128);
        a.record_lazily(w(r % 4), &seq, 0);
    }
    assert!(a.index().entries() <= 10_000);
    let mut longest = 0usize;
    for t in &a.shards {
        let mut run = 0usize;
        for meta in &t.meta {
            run = if slot_of(*meta) == EMPTY { 0 } else { run + 1 };
            longest = longest.max(run);
        }
    }
    println!(
        "longest run {longest} of {} rows",
        a.shards.iter().map(|t| t.meta.len()).sum::<usize>()
    );
    assert!(longest < 400, "longest run of occupied rows: {longest}");
}

#[test]
fn a_table_at_dynamo_s_cap_is_sharded_into_small_arrays() {
    // Dynamo's default cap: 128 shards of at most SHARD_HOMES homes (plus slack), each
    // allocated and grown on its own, so none needs megabytes of contiguous memory.
    let mut a = ApproxIndex::new(120_000, 1 << 20);
    assert_eq!(a.shards.len(), 128);
    assert!(a.max_homes <= SHARD_HOMES + SHARD_HOMES / SHARD_SLACK_DEN + 1);
    // A cap that fits one shard keeps one table.
    assert_eq!(ApproxIndex::new(120_000, 10_000).shards.len(), 1);
    let mut x = 1u64;
    let (mut first, mut last) = (Vec::new(), Vec::new());
    for r in 0..9_000u64 {
        let seq = random_blocks(&mut x, 128);
        if r == 0 {
            first = seq.clone();
        }
        a.record_lazily(w(r % 4), &seq, r);
        last = seq;
    }
    // Past the cap (1.15 M records): pruned to the target, every shard within its size,
    // hashes in order across shards, the oldest record gone and the newest found whole.
    let entries = a.index().entries() as usize;
    assert!(
        entries <= 1 << 20 && entries > (1 << 20) * 8 / 10,
        "{entries}"
    );
    for t in &a.shards {
        assert!(t.homes <= a.max_homes);
        assert!(t.meta.len() < 2 * a.max_homes);
    }
    let hashes: Vec<u64> = a.index().iter().map(|(_, h)| h).collect();
    assert_eq!(hashes.len(), entries);
    assert!(hashes.windows(2).all(|p| p[0] <= p[1]));
    assert_eq!(a.overlap(&first).of(&w(0)), 0);
    assert_eq!(a.overlap(&last).of(&w(8_999 % 4)), 128);
}
