//! Approximate mode: for workers that publish no KV events, predict their cache from the
//! router's own decisions. Routing a request to a worker records its blocks there for a
//! TTL; a bounded number of predictions is kept (oldest dropped first).

use super::prefix::{OverlapScores, PrefixIndex};
use super::IndexDelta;
use crate::types::WorkerKey;
use hashbrown::HashMap;
use std::collections::VecDeque;

/// Predicted cache contents with per-entry expiry.
#[derive(Debug, Clone)]
pub struct ApproxIndex {
    index: PrefixIndex,
    expiry: HashMap<(WorkerKey, u64), u64>,
    queue: VecDeque<(u64, WorkerKey, u64)>,
    ttl_ms: u64,
    max_entries: usize,
}

impl ApproxIndex {
    /// Predictions live `ttl_ms`; at most `max_entries` (worker, block) pairs are kept.
    pub fn new(ttl_ms: u64, max_entries: usize) -> Self {
        Self {
            index: PrefixIndex::new(),
            expiry: HashMap::new(),
            queue: VecDeque::new(),
            ttl_ms,
            max_entries: max_entries.max(1),
        }
    }

    /// Records that `worker` will hold `sequence` (a request's blocks) from `now_ms` on.
    /// Returns the index changes (inserts of new blocks, removals of pruned ones).
    pub fn record(&mut self, worker: WorkerKey, sequence: &[u64], now_ms: u64) -> Vec<IndexDelta> {
        let mut deltas = self.expire(now_ms);
        let until = now_ms.saturating_add(self.ttl_ms);
        for &seq in sequence {
            self.expiry.insert((worker, seq), until);
            self.queue.push_back((until, worker, seq));
            if self.index.insert(worker, seq) {
                deltas.push(IndexDelta::Insert { worker, seq });
            }
        }
        while self.expiry.len() > self.max_entries {
            match self.queue.pop_front() {
                Some((at, w, s)) => self.drop_if_current(at, w, s, &mut deltas),
                None => break,
            }
        }
        deltas
    }

    /// Drops predictions that expired at or before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<IndexDelta> {
        let mut deltas = Vec::new();
        while let Some(&(at, w, s)) = self.queue.front() {
            if at > now_ms {
                break;
            }
            self.queue.pop_front();
            self.drop_if_current(at, w, s, &mut deltas);
        }
        deltas
    }

    fn drop_if_current(
        &mut self,
        at: u64,
        worker: WorkerKey,
        seq: u64,
        deltas: &mut Vec<IndexDelta>,
    ) {
        if self.expiry.get(&(worker, seq)) == Some(&at) {
            self.expiry.remove(&(worker, seq));
            if self.index.remove(worker, seq) {
                deltas.push(IndexDelta::Remove { worker, seq });
            }
        }
    }

    /// Forgets every prediction for `worker`.
    pub fn remove_worker(&mut self, worker: WorkerKey) {
        self.expiry.retain(|(w, _), _| *w != worker);
        self.index.clear_worker(worker);
    }

    /// Overlap of a request against the predictions (expire first for exactness).
    pub fn overlap(&self, sequence: &[u64]) -> OverlapScores {
        self.index.overlap(sequence)
    }

    /// The predicted index.
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_expire_and_refresh() {
        let w = WorkerKey::new(1, 0);
        let mut a = ApproxIndex::new(1000, 100);
        a.record(w, &[1, 2], 0);
        a.record(w, &[1], 500);
        assert_eq!(a.overlap(&[1, 2]).of(&w), 2);
        let gone = a.expire(1000);
        assert_eq!(gone, vec![IndexDelta::Remove { worker: w, seq: 2 }]);
        assert_eq!(a.overlap(&[1, 2]).of(&w), 1);
        a.expire(1500);
        assert!(a.index().is_empty());
    }

    #[test]
    fn bounded_size_drops_oldest() {
        let w = WorkerKey::new(1, 0);
        let mut a = ApproxIndex::new(10_000, 3);
        a.record(w, &[1, 2, 3, 4], 0);
        assert_eq!(a.index().len(), 3);
        assert!(!a.index().contains(&w, 1));
    }
}
