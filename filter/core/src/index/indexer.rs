//! Event-driven indexing: applies [`KvEvent`]s (engine block ids with parent links) to a
//! [`PrefixIndex`], keeps each worker's engine-id → sequence-hash map, detects event-id
//! gaps and duplicates, and reports every membership change as an [`IndexDelta`].

use super::prefix::PrefixIndex;
use super::IndexDelta;
use crate::events::{KvEvent, KvEventData, StorageTier};
use crate::hash::chain;
use crate::types::{WorkerId, WorkerKey};
use hashbrown::HashMap;

/// Event ids that were skipped: events between `expected` and `got - 1` were lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventGap {
    /// The publisher.
    pub worker: WorkerKey,
    /// The id that should have come next.
    pub expected: u64,
    /// The id that came.
    pub got: u64,
}

/// What applying one event did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Membership changes of the prefix index, in order.
    pub deltas: Vec<IndexDelta>,
    /// Set when the event id skipped ahead: the caller should resync the worker.
    pub gap: Option<EventGap>,
    /// The event was already applied (id not above the last seen) and was ignored.
    pub duplicate: bool,
    /// Stored blocks dropped because their parent block is unknown.
    pub dropped_blocks: usize,
    /// The event was for a non-device tier and was ignored.
    pub ignored_tier: bool,
}

#[derive(Debug, Default, Clone)]
struct WorkerState {
    /// Engine block id → sequence hash.
    by_external: HashMap<u64, u64>,
    /// Sequence hash → number of engine blocks with it (engines may hold duplicates).
    refs: HashMap<u64, u32>,
    last_event_id: Option<u64>,
}

/// Applies KV events to a prefix index, per (worker, dp rank).
#[derive(Debug, Clone, Default)]
pub struct KvIndexer {
    index: PrefixIndex,
    workers: HashMap<WorkerKey, WorkerState>,
}

impl KvIndexer {
    /// An empty indexer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The prefix index built so far.
    pub fn index(&self) -> &PrefixIndex {
        &self.index
    }

    /// The last event id applied for `worker`.
    pub fn last_event_id(&self, worker: &WorkerKey) -> Option<u64> {
        self.workers.get(worker).and_then(|w| w.last_event_id)
    }

    /// Every (worker, dp rank) with state.
    pub fn workers(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        self.workers.keys().copied()
    }

    /// Applies one event.
    ///
    /// Ids must increase by one per (worker, dp rank) (Dynamo starts at 0, some publishers
    /// at 1). An id at or below the last seen is a duplicate and ignored, except id 0 or 1
    /// after a higher id, which means the publisher restarted: its previous blocks are
    /// dropped first. `Cleared` clears the event's (worker, dp rank), as Dynamo does. A jump ahead is applied and
    /// reported as a [`EventGap`] so the caller can resync.
    pub fn apply(&mut self, event: &KvEvent) -> ApplyOutcome {
        let mut out = ApplyOutcome::default();
        let key = event.worker;
        let last = self.workers.get(&key).and_then(|w| w.last_event_id);
        if let Some(last) = last {
            if event.event_id <= last {
                if event.event_id <= 1 && last > 1 {
                    self.clear_key(key, &mut out.deltas);
                } else {
                    out.duplicate = true;
                    return out;
                }
            } else if event.event_id > last + 1 {
                out.gap = Some(EventGap {
                    worker: key,
                    expected: last + 1,
                    got: event.event_id,
                });
            }
        }
        self.workers.entry(key).or_default().last_event_id = Some(event.event_id);
        if event.tier != StorageTier::Device {
            out.ignored_tier = true;
            return out;
        }
        match &event.data {
            KvEventData::Stored { parent, blocks } => {
                let state = self.workers.entry(key).or_default();
                let mut prev = match parent {
                    None => None,
                    Some(p) => match state.by_external.get(p) {
                        Some(&s) => Some(s),
                        None => {
                            out.dropped_blocks = blocks.len();
                            return out;
                        }
                    },
                };
                for b in blocks {
                    let seq = match prev {
                        None => b.tokens_hash,
                        Some(p) => chain(p, b.tokens_hash),
                    };
                    if let Some(old) = state.by_external.insert(b.external, seq) {
                        if old != seq
                            && release_ref(&mut state.refs, old)
                            && self.index.remove(key, old)
                        {
                            out.deltas.push(IndexDelta::Remove {
                                worker: key,
                                seq: old,
                            });
                        }
                        if old == seq {
                            prev = Some(seq);
                            continue;
                        }
                    }
                    *state.refs.entry(seq).or_insert(0) += 1;
                    if self.index.insert(key, seq) {
                        out.deltas.push(IndexDelta::Insert { worker: key, seq });
                    }
                    prev = Some(seq);
                }
            }
            KvEventData::Removed { blocks } => {
                let state = self.workers.entry(key).or_default();
                for ext in blocks {
                    if let Some(seq) = state.by_external.remove(ext) {
                        if release_ref(&mut state.refs, seq) && self.index.remove(key, seq) {
                            out.deltas.push(IndexDelta::Remove { worker: key, seq });
                        }
                    }
                }
            }
            KvEventData::Cleared => self.clear_key(key, &mut out.deltas),
        }
        out
    }

    fn clear_key(&mut self, key: WorkerKey, deltas: &mut Vec<IndexDelta>) {
        if let Some(state) = self.workers.get_mut(&key) {
            state.by_external.clear();
            state.refs.clear();
        }
        if self.index.worker_blocks(&key) > 0 {
            self.index.clear_worker(key);
            deltas.push(IndexDelta::ClearWorker { worker: key });
        }
    }

    /// Drops everything known about `worker` at one dp rank, but keeps its last event id
    /// (so the stream continues): used to resync after a gap.
    pub fn reset_worker_key(&mut self, key: WorkerKey) -> Vec<IndexDelta> {
        let mut deltas = Vec::new();
        self.clear_key(key, &mut deltas);
        deltas
    }

    /// Replaces what is known about `key` with a dump of the worker's cache (the answer
    /// to a recovery query, see [`crate::events::query`]): its entries are cleared, the
    /// dump's `Stored` events applied in order whatever their ids, and the stream goes
    /// on after `last_event_id`. Refused (None, nothing changed) when events newer than
    /// the dump were applied already: the dump is stale, ask again.
    pub fn apply_dump(
        &mut self,
        key: WorkerKey,
        events: &[KvEvent],
        last_event_id: u64,
    ) -> Option<Vec<IndexDelta>> {
        if self.last_event_id(&key).is_some_and(|l| l > last_event_id) {
            return None;
        }
        let mut deltas = Vec::new();
        self.clear_key(key, &mut deltas);
        self.workers.entry(key).or_default().last_event_id = None;
        for (i, ev) in events.iter().enumerate() {
            let ev = KvEvent {
                worker: key,
                event_id: i as u64 + 1,
                tier: ev.tier,
                data: ev.data.clone(),
            };
            deltas.extend(self.apply(&ev).deltas);
        }
        self.workers.entry(key).or_default().last_event_id = Some(last_event_id);
        Some(deltas)
    }

    /// Forgets a worker instance entirely (every dp rank): used when it leaves.
    pub fn remove_worker(&mut self, worker_id: WorkerId) -> Vec<IndexDelta> {
        let keys: Vec<WorkerKey> = self
            .workers
            .keys()
            .filter(|k| k.worker_id == worker_id)
            .copied()
            .collect();
        let mut deltas = Vec::new();
        for k in keys {
            self.clear_key(k, &mut deltas);
            self.workers.remove(&k);
        }
        deltas
    }

    /// Empties the indexer.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Drops one reference to `seq`; returns true when it was the last one.
fn release_ref(refs: &mut HashMap<u64, u32>, seq: u64) -> bool {
    match refs.get_mut(&seq) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            refs.remove(&seq);
            true
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::StoredBlock;
    use crate::hash::sequence_hashes;

    fn stored(worker: u64, id: u64, parent: Option<u64>, blocks: &[(u64, u64)]) -> KvEvent {
        KvEvent {
            worker: WorkerKey::new(worker, 0),
            event_id: id,
            tier: StorageTier::Device,
            data: KvEventData::Stored {
                parent,
                blocks: blocks
                    .iter()
                    .map(|&(external, tokens_hash)| StoredBlock {
                        external,
                        tokens_hash,
                    })
                    .collect(),
            },
        }
    }

    #[test]
    fn stored_chain_matches_request_sequence_hashes() {
        let mut ix = KvIndexer::new();
        ix.apply(&stored(7, 1, None, &[(100, 11), (101, 12)]));
        ix.apply(&stored(7, 2, Some(101), &[(102, 13)]));
        let seq = sequence_hashes(&[11, 12, 13, 14]);
        assert_eq!(ix.index().overlap(&seq).of(&WorkerKey::new(7, 0)), 3);
    }

    #[test]
    fn unknown_parent_is_dropped_and_gaps_duplicates_are_reported() {
        let mut ix = KvIndexer::new();
        let out = ix.apply(&stored(7, 1, Some(999), &[(100, 11)]));
        assert_eq!(out.dropped_blocks, 1);
        assert!(out.deltas.is_empty());
        let dup = ix.apply(&stored(7, 1, None, &[(100, 11)]));
        assert!(dup.duplicate);
        let gap = ix.apply(&stored(7, 5, None, &[(100, 11)]));
        assert_eq!(
            gap.gap,
            Some(EventGap {
                worker: WorkerKey::new(7, 0),
                expected: 2,
                got: 5
            })
        );
        assert_eq!(gap.deltas.len(), 1);
    }

    #[test]
    fn publisher_restart_drops_old_blocks() {
        let mut ix = KvIndexer::new();
        ix.apply(&stored(7, 1, None, &[(100, 11)]));
        ix.apply(&stored(7, 2, None, &[(200, 21)]));
        let out = ix.apply(&stored(7, 1, None, &[(300, 31)]));
        assert!(!out.duplicate);
        assert_eq!(ix.index().worker_blocks(&WorkerKey::new(7, 0)), 1);
    }

    #[test]
    fn cleared_clears_its_dp_rank_and_duplicates_are_refcounted() {
        let mut ix = KvIndexer::new();
        ix.apply(&stored(7, 1, None, &[(100, 11)]));
        ix.apply(&stored(7, 2, None, &[(101, 11)]));
        let mut e = stored(7, 1, None, &[(100, 11)]);
        e.worker.dp_rank = 1;
        ix.apply(&e);
        let rm = KvEvent {
            worker: WorkerKey::new(7, 0),
            event_id: 3,
            tier: StorageTier::Device,
            data: KvEventData::Removed { blocks: vec![100] },
        };
        assert!(
            ix.apply(&rm).deltas.is_empty(),
            "block 101 still holds the same sequence hash"
        );
        let clr = KvEvent {
            event_id: 4,
            data: KvEventData::Cleared,
            ..rm
        };
        let out = ix.apply(&clr);
        assert_eq!(
            out.deltas,
            vec![IndexDelta::ClearWorker {
                worker: WorkerKey::new(7, 0)
            }]
        );
        assert_eq!(ix.index().worker_blocks(&WorkerKey::new(7, 1)), 1);
    }

    #[test]
    fn a_dump_replaces_the_workers_entries_and_the_stream_continues_after_it() {
        let mut ix = KvIndexer::new();
        let k = WorkerKey::new(3, 0);
        let ev = |id: u64, data: KvEventData| KvEvent {
            worker: k,
            event_id: id,
            tier: StorageTier::Device,
            data,
        };
        let st = |parent: Option<u64>, ext: u64| KvEventData::Stored {
            parent,
            blocks: vec![StoredBlock {
                external: ext,
                tokens_hash: ext * 10,
            }],
        };
        // Lost events 2..4: the live stream jumps, the worker is reset.
        ix.apply(&ev(1, st(None, 1)));
        let out = ix.apply(&ev(5, st(Some(1), 2)));
        assert!(out.gap.is_some());
        ix.reset_worker_key(k);
        assert_eq!(ix.index().worker_blocks(&k), 0);
        // A dump as of event 4 is older than the live event 5 already applied: refused.
        assert!(ix.apply_dump(k, &[ev(0, st(None, 1))], 4).is_none());
        // A dump as of event 6: exactly its blocks, and the stream continues at 7.
        let dump = [
            ev(0, st(None, 1)),
            ev(0, st(Some(1), 2)),
            ev(0, st(Some(2), 3)),
        ];
        let deltas = ix.apply_dump(k, &dump, 6);
        assert!(deltas.is_some_and(|d| !d.is_empty()));
        assert_eq!(ix.index().worker_blocks(&k), 3);
        assert_eq!(ix.last_event_id(&k), Some(6));
        assert!(ix.apply(&ev(6, st(None, 9))).duplicate);
        let out = ix.apply(&ev(7, st(Some(3), 4)));
        assert!(out.gap.is_none() && !out.duplicate);
        assert_eq!(ix.index().worker_blocks(&k), 4);
    }
}
