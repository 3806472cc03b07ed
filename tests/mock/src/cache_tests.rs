//! Unit tests of the block cache: LRU order, reference counts, capacity, and events
//! checked against a reference index rebuilt from the events alone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;
use kvgate_core::hash::{local_block_hash, sequence_hashes};
use std::collections::HashMap as StdMap;

/// Hashes of `n` blocks whose tokens are `prefix_id * 1000 + i` (so sequences sharing a
/// `prefix_id` share blocks).
fn hashes(ids: &[u32]) -> Vec<BlockHash> {
    let local: Vec<u64> = ids
        .iter()
        .map(|&i| local_block_hash(&[i, i + 1, i + 2, i + 3], 1337))
        .collect();
    sequence_hashes(&local)
        .into_iter()
        .zip(local)
        .map(|(sequence, local)| BlockHash { sequence, local })
        .collect()
}

/// Runs a whole request: acquire the cached prefix, allocate and commit the rest.
fn run(cache: &mut BlockCache, hs: &[BlockHash]) -> Vec<BlockId> {
    let seqs: Vec<u64> = hs.iter().map(|h| h.sequence).collect();
    let hit = cache.match_prefix(&seqs);
    let mut held = cache.acquire_prefix(&seqs, hit);
    let new = cache.allocate(hs.len() - hit).unwrap();
    let parent = hit.checked_sub(1).map(|i| seqs[i]);
    let pairs: Vec<(BlockId, BlockHash)> = new.into_iter().zip(hs[hit..].iter().copied()).collect();
    held.extend(cache.commit(parent, &pairs, &[]));
    held
}

/// A reference index that only sees events: hash → parent.
#[derive(Default)]
struct RefIndex {
    blocks: StdMap<u64, Option<u64>>,
}

impl RefIndex {
    fn apply(&mut self, ev: &KvEventData) {
        match ev {
            KvEventData::Stored { parent, blocks } => {
                if let Some(p) = parent {
                    assert!(
                        self.blocks.contains_key(p),
                        "stored with unknown parent {p}"
                    );
                }
                let mut prev = *parent;
                for b in blocks {
                    assert!(
                        self.blocks.insert(b.external, prev).is_none(),
                        "stored twice: {}",
                        b.external
                    );
                    prev = Some(b.external);
                }
            }
            KvEventData::Removed { blocks } => {
                assert!(!blocks.is_empty());
                for h in blocks {
                    assert!(self.blocks.remove(h).is_some(), "removed unknown {h}");
                }
            }
            KvEventData::Cleared => self.blocks.clear(),
        }
    }

    fn check(&mut self, cache: &mut BlockCache) {
        for ev in cache.drain_events() {
            self.apply(&ev);
        }
        let mut mine: Vec<u64> = self.blocks.keys().copied().collect();
        mine.sort_unstable();
        assert_eq!(
            mine,
            cache.cached_hashes(),
            "index from events differs from the cache"
        );
        for info in cache.cached_blocks() {
            assert_eq!(
                self.blocks.get(&info.sequence_hash).copied().flatten(),
                info.parent
            );
        }
        let u = cache.usage_counts();
        assert!(u.used_blocks <= u.capacity_blocks);
        assert_eq!(u.free_blocks + u.used_blocks, u.capacity_blocks);
    }
}

#[test]
fn stores_once_with_parent_links_and_hits_on_reuse() {
    let mut c = BlockCache::new(10);
    let hs = hashes(&[1, 2, 3]);
    let held = run(&mut c, &hs);
    let ev = c.drain_events();
    assert_eq!(
        ev,
        vec![KvEventData::Stored {
            parent: None,
            blocks: hs
                .iter()
                .map(|h| StoredBlock {
                    external: h.sequence,
                    tokens_hash: h.local
                })
                .collect(),
        }]
    );
    assert_eq!(c.active_blocks(), 3);
    c.release(&held);
    assert_eq!(c.active_blocks(), 0);
    assert_eq!(c.usage_counts().evictable_blocks, 3);
    // A longer request with the same prefix hits 3 blocks and stores one, parent-linked.
    let longer = hashes(&[1, 2, 3, 4]);
    let seqs: Vec<u64> = longer.iter().map(|h| h.sequence).collect();
    assert_eq!(c.match_prefix(&seqs), 3);
    let held = run(&mut c, &longer);
    assert_eq!(held.len(), 4);
    assert_eq!(
        c.drain_events(),
        vec![KvEventData::Stored {
            parent: Some(longer[2].sequence),
            blocks: vec![StoredBlock {
                external: longer[3].sequence,
                tokens_hash: longer[3].local
            }],
        }]
    );
}

#[test]
fn lru_evicts_tail_first_and_least_recent_first() {
    let mut c = BlockCache::new(6);
    let a = hashes(&[1, 2, 3]);
    let b = hashes(&[7, 8, 9]);
    let ha = run(&mut c, &a);
    let hb = run(&mut c, &b);
    c.release(&ha);
    c.release(&hb);
    c.drain_events();
    // a was released first; within a request the tail goes first.
    let order: Vec<u64> = [a[2], a[1], a[0], b[2], b[1], b[0]]
        .iter()
        .map(|h| h.sequence)
        .collect();
    assert_eq!(c.eviction_order(), order);
    // Touching a (a hit) moves it behind b.
    let ha = run(&mut c, &a);
    c.release(&ha);
    let order: Vec<u64> = [b[2], b[1], b[0], a[2], a[1], a[0]]
        .iter()
        .map(|h| h.sequence)
        .collect();
    assert_eq!(c.eviction_order(), order);
    // Two new blocks evict b's two deepest blocks, in one Removed event.
    let _new = c.allocate(2).unwrap();
    assert_eq!(
        c.drain_events(),
        vec![KvEventData::Removed {
            blocks: vec![b[2].sequence, b[1].sequence]
        }]
    );
}

#[test]
fn referenced_blocks_are_never_evicted_and_capacity_is_enforced() {
    let mut c = BlockCache::new(4);
    let a = hashes(&[1, 2, 3]);
    let _held = run(&mut c, &a);
    assert_eq!(c.available(), 1);
    assert_eq!(
        c.allocate(2),
        Err(CacheFull {
            needed: 2,
            available: 1
        })
    );
    // The failed allocation changed nothing.
    assert!(c
        .drain_events()
        .iter()
        .all(|e| matches!(e, KvEventData::Stored { .. })));
    assert_eq!(c.usage_counts().used_blocks, 3);
    let one = c.allocate(1).unwrap();
    assert_eq!(c.available(), 0);
    c.release(&one);
    assert_eq!(c.available(), 1, "a private block is freed outright");
    assert!(
        c.drain_events().is_empty(),
        "private blocks never produce events"
    );
}

#[test]
fn concurrent_duplicates_are_stored_once_and_deduplicated() {
    let mut c = BlockCache::new(10);
    let a = hashes(&[1, 2]);
    // Two requests miss at the same time and both compute the blocks.
    let p1 = c.allocate(2).unwrap();
    let p2 = c.allocate(2).unwrap();
    assert_eq!(c.usage_counts().used_blocks, 4);
    let pairs1: Vec<_> = p1.iter().copied().zip(a.iter().copied()).collect();
    let pairs2: Vec<_> = p2.iter().copied().zip(a.iter().copied()).collect();
    let h1 = c.commit(None, &pairs1, &[]);
    let h2 = c.commit(None, &pairs2, &[]);
    assert_eq!(h1, h2, "the second request uses the cached copies");
    assert_eq!(c.usage_counts().used_blocks, 2);
    assert_eq!(c.drain_events().len(), 1);
    c.release(&h1);
    assert_eq!(
        c.usage_counts().evictable_blocks,
        0,
        "still referenced by the other request"
    );
    c.release(&h2);
    assert_eq!(c.usage_counts().evictable_blocks, 2);
}

#[test]
fn clear_publishes_cleared_and_detaches_blocks_in_use() {
    let mut c = BlockCache::new(10);
    let a = hashes(&[1, 2]);
    let held = run(&mut c, &a);
    let b = hashes(&[5]);
    let hb = run(&mut c, &b);
    c.release(&hb);
    c.drain_events();
    c.clear();
    assert_eq!(c.drain_events(), vec![KvEventData::Cleared]);
    assert!(c.cached_hashes().is_empty());
    assert_eq!(
        c.usage_counts().used_blocks,
        2,
        "blocks in use stay allocated"
    );
    // Continuing the detached sequence: its parent is gone, so nothing is stored.
    let more = hashes(&[1, 2, 3]);
    let p = c.allocate(1).unwrap();
    let _ = c.commit(Some(more[1].sequence), &[(p[0], more[2])], &[]);
    assert!(c.drain_events().is_empty());
    c.release(&held);
    c.release(&p);
    assert_eq!(c.usage_counts().used_blocks, 0);
    assert!(
        c.drain_events().is_empty(),
        "detached blocks are freed silently"
    );
}

#[test]
fn random_workload_matches_the_event_reference() {
    for seed in 0..20u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut c = BlockCache::new(24);
        let mut idx = RefIndex::default();
        let mut live: Vec<Vec<BlockId>> = Vec::new();
        for _ in 0..400 {
            match rng.u32(0..10) {
                0..=5 => {
                    // Prompts share prefixes: a random walk over a small tree of ids.
                    let len = rng.usize(1..6);
                    let ids: Vec<u32> = (0..len).map(|d| (d as u32) * 10 + rng.u32(0..3)).collect();
                    let hs = hashes(&ids);
                    let seqs: Vec<u64> = hs.iter().map(|h| h.sequence).collect();
                    let hit = c.match_prefix(&seqs);
                    // Acquiring the hit takes unreferenced hit blocks off the evictable list.
                    if c.available() - c.unreferenced_among(&seqs[..hit]) >= hs.len() - hit {
                        live.push(run(&mut c, &hs));
                    }
                }
                6..=8 if !live.is_empty() => {
                    let i = rng.usize(0..live.len());
                    let held = live.swap_remove(i);
                    c.release(&held);
                }
                9 if rng.u32(0..8) == 0 => c.clear(),
                _ => {}
            }
            idx.check(&mut c);
            let active: usize = c.usage_counts().active_blocks;
            assert!(active <= c.usage_counts().used_blocks);
        }
        for held in live.drain(..) {
            c.release(&held);
        }
        idx.check(&mut c);
        assert_eq!(c.active_blocks(), 0);
        assert_eq!(c.usage_counts().used_blocks, c.cached_hashes().len());
    }
}
