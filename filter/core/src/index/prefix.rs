//! The matching structure: sequence hash → set of worker slots, with the overlap query
//! that walks a request's sequence hashes from block 0 and stops as soon as no worker
//! holds the next block.

use super::slots::{SlotSet, SlotTable};
use super::IndexDelta;
use crate::types::WorkerKey;
use hashbrown::HashMap;

/// Per-worker overlap of one request: the number of leading blocks each worker holds,
/// and how many blocks each worker holds in total (Dynamo's tie-breaker).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlapScores {
    /// Matched leading blocks per worker (workers with 0 are absent).
    pub scores: HashMap<WorkerKey, u32>,
    /// Total indexed blocks per worker with any block (the "tree size").
    pub tree_sizes: HashMap<WorkerKey, u64>,
}

impl OverlapScores {
    /// Matched blocks of `worker` (0 when absent).
    pub fn of(&self, worker: &WorkerKey) -> u32 {
        self.scores.get(worker).copied().unwrap_or(0)
    }

    /// Total indexed blocks of `worker`.
    pub fn tree_size(&self, worker: &WorkerKey) -> u64 {
        self.tree_sizes.get(worker).copied().unwrap_or(0)
    }
}

/// Sequence hash → holders. Insert, remove and overlap are O(1) per block.
#[derive(Debug, Clone, Default)]
pub struct PrefixIndex {
    blocks: HashMap<u64, SlotSet>,
    slots: SlotTable,
    counts: Vec<u64>,
}

impl PrefixIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `worker` holds `seq`; returns whether that is new.
    pub fn insert(&mut self, worker: WorkerKey, seq: u64) -> bool {
        let slot = self.slots.intern(worker);
        let added = self.blocks.entry(seq).or_default().insert(slot);
        if added {
            if self.counts.len() <= slot as usize {
                self.counts.resize(slot as usize + 1, 0);
            }
            if let Some(c) = self.counts.get_mut(slot as usize) {
                *c += 1;
            }
        }
        added
    }

    /// Records that `worker` no longer holds `seq`; returns whether it did.
    pub fn remove(&mut self, worker: WorkerKey, seq: u64) -> bool {
        let Some(slot) = self.slots.get(&worker) else {
            return false;
        };
        let Some(set) = self.blocks.get_mut(&seq) else {
            return false;
        };
        let removed = set.remove(slot);
        if set.is_empty() {
            self.blocks.remove(&seq);
        }
        if removed {
            if let Some(c) = self.counts.get_mut(slot as usize) {
                *c = c.saturating_sub(1);
            }
        }
        removed
    }

    /// Removes every block of `worker` and frees its slot. O(blocks in the index).
    pub fn clear_worker(&mut self, worker: WorkerKey) {
        let Some(slot) = self.slots.get(&worker) else {
            return;
        };
        if self.counts.get(slot as usize).copied().unwrap_or(0) > 0 {
            self.blocks.retain(|_, set| {
                set.remove(slot);
                !set.is_empty()
            });
        }
        if let Some(c) = self.counts.get_mut(slot as usize) {
            *c = 0;
        }
        self.slots.release(&worker);
    }

    /// Empties the index.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Applies one delta; returns whether the index changed.
    pub fn apply(&mut self, delta: &IndexDelta) -> bool {
        match *delta {
            IndexDelta::Insert { worker, seq } => self.insert(worker, seq),
            IndexDelta::Remove { worker, seq } => self.remove(worker, seq),
            IndexDelta::ClearWorker { worker } => {
                let had = self.worker_blocks(&worker) > 0;
                self.clear_worker(worker);
                had
            }
        }
    }

    /// Whether `worker` holds `seq`.
    pub fn contains(&self, worker: &WorkerKey, seq: u64) -> bool {
        match (self.slots.get(worker), self.blocks.get(&seq)) {
            (Some(slot), Some(set)) => set.contains(slot),
            _ => false,
        }
    }

    /// The workers holding `seq`.
    pub fn holders(&self, seq: u64) -> Vec<WorkerKey> {
        self.blocks
            .get(&seq)
            .map(|set| set.iter().filter_map(|s| self.slots.key(s)).collect())
            .unwrap_or_default()
    }

    /// Number of blocks `worker` holds.
    pub fn worker_blocks(&self, worker: &WorkerKey) -> u64 {
        self.slots
            .get(worker)
            .and_then(|s| self.counts.get(s as usize).copied())
            .unwrap_or(0)
    }

    /// Number of distinct sequence hashes indexed.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Total (block, holder) pairs.
    pub fn entries(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Every worker that holds at least one block.
    pub fn workers(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.slots.keys().filter(|k| self.worker_blocks(k) > 0)
    }

    /// Every (worker, sequence hash) pair, in no particular order (for snapshots).
    pub fn iter(&self) -> impl Iterator<Item = (WorkerKey, u64)> + '_ {
        self.blocks.iter().flat_map(move |(&seq, set)| {
            set.iter()
                .filter_map(move |s| self.slots.key(s).map(|k| (k, seq)))
        })
    }

    /// Overlap of a request given its sequence hashes in prefix order. Walks from block
    /// 0 and stops at the first block no surviving worker holds.
    pub fn overlap(&self, sequence: &[u64]) -> OverlapScores {
        let mut out = OverlapScores::default();
        let mut iter = sequence.iter();
        let Some(first) = iter.next() else {
            return out;
        };
        let Some(first_set) = self.blocks.get(first) else {
            return out;
        };
        let mut alive = first_set.clone();
        let mut depth: u32 = 1;
        for seq in iter {
            if alive.is_empty() {
                break;
            }
            let next = self.blocks.get(seq).cloned().unwrap_or_default();
            let d = depth;
            alive.retain_in(&next, |slot| {
                if let Some(k) = self.slots.key(slot) {
                    out.scores.insert(k, d);
                }
            });
            depth += 1;
        }
        for slot in alive.iter() {
            if let Some(k) = self.slots.key(slot) {
                out.scores.insert(k, depth);
            }
        }
        for k in out.scores.keys() {
            out.tree_sizes.insert(*k, self.worker_blocks(k));
        }
        out
    }

    /// Total indexed blocks per worker, for every worker (for tie-breaks of workers with
    /// no overlap).
    pub fn tree_sizes(&self) -> HashMap<WorkerKey, u64> {
        self.slots
            .keys()
            .map(|k| (k, self.worker_blocks(&k)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(i: u64) -> WorkerKey {
        WorkerKey::new(i, 0)
    }

    #[test]
    fn overlap_counts_leading_blocks_per_worker() {
        let mut idx = PrefixIndex::new();
        for s in [1, 2, 3] {
            idx.insert(w(1), s);
        }
        for s in [1, 2] {
            idx.insert(w(2), s);
        }
        idx.insert(w(3), 2); // holds block 1 but not block 0: overlap 0
        let o = idx.overlap(&[1, 2, 3, 4]);
        assert_eq!(o.of(&w(1)), 3);
        assert_eq!(o.of(&w(2)), 2);
        assert_eq!(o.of(&w(3)), 0);
        assert_eq!(o.tree_size(&w(1)), 3);
    }

    #[test]
    fn remove_and_clear_worker() {
        let mut idx = PrefixIndex::new();
        idx.insert(w(1), 1);
        idx.insert(w(1), 2);
        idx.insert(w(2), 1);
        assert!(idx.remove(w(1), 2));
        assert!(!idx.remove(w(1), 2));
        assert_eq!(idx.overlap(&[1, 2]).of(&w(1)), 1);
        idx.clear_worker(w(1));
        assert_eq!(idx.worker_blocks(&w(1)), 0);
        assert_eq!(idx.holders(1), vec![w(2)]);
        assert_eq!(idx.entries(), 1);
    }

    #[test]
    fn empty_queries() {
        let idx = PrefixIndex::new();
        assert!(idx.overlap(&[]).scores.is_empty());
        assert!(idx.overlap(&[7]).scores.is_empty());
    }
}
