//! Fuzz target `index_ops`: arbitrary sequences of KV events, resyncs, approximate-mode
//! predictions and overlap queries against the index, checking its invariants.
//!
//! The input drives (through `arbitrary`) a `KvIndexer` with events of a few workers and dp
//! ranks over a small pool of block ids and token hashes (so parents, duplicates, re-stores,
//! id gaps and publisher restarts are frequent), plus an `ApproxIndex`. After every step:
//! * the `IndexDelta`s reported so far, applied to a fresh `PrefixIndex`, reproduce the
//!   indexer's index exactly (this is what the filter's copy relies on);
//! * the same deltas shipped through the sync codec (`SyncLog` → frame → `encode` →
//!   `decode` → `SyncState::apply`, with a short log so snapshots happen too) reproduce it;
//! * the index's counters agree with its contents (`entries`, `worker_blocks`, `len`,
//!   `holders`, `contains`);
//! * an overlap query gives every worker the length of its run of leading blocks
//!   (`contains` from block 0), never more than the query's length, with its tree size.

use std::collections::{BTreeMap, BTreeSet};

use crate::MAX_PAYLOAD;
use arbitrary::Arbitrary;
use kvgate_core::events::{KvEvent, KvEventData, StorageTier, StoredBlock};
use kvgate_core::index::{ApproxIndex, IndexDelta, KvIndexer, PrefixIndex};
use kvgate_core::sync::{self, SyncLog, SyncState};
use kvgate_core::WorkerKey;

/// How a step picks its event id.
#[derive(Debug, Arbitrary)]
pub enum EventId {
    Next,
    Same,
    Skip(u8),
    Restart(bool),
    Raw(u64),
}

/// What a KV event of a step carries.
#[derive(Debug, Arbitrary)]
pub enum Data {
    Stored {
        parent: Option<u8>,
        blocks: Vec<(u8, u8)>,
    },
    Removed(Vec<u8>),
    Cleared,
}

/// One step of the index driver.
#[derive(Debug, Arbitrary)]
pub enum Step {
    Event {
        worker: u8,
        id: EventId,
        offloaded: bool,
        data: Data,
    },
    ResetKey(u8),
    RemoveWorker(u8),
    Query(Vec<u8>),
    Sync,
    Predict {
        worker: u8,
        picks: Vec<u8>,
        dt_ms: u16,
    },
    Expire(u16),
}

fn key(w: u8) -> WorkerKey {
    WorkerKey::new(u64::from(w % 3), u32::from(w / 3 % 2))
}

/// Engine block ids and token hashes come from small pools so they collide.
fn external(b: u8) -> u64 {
    u64::from(b % 24).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn tokens_hash(b: u8) -> u64 {
    u64::from(b % 8) + 1
}

type Entries = BTreeSet<(WorkerKey, u64)>;

fn entries(index: &PrefixIndex) -> Entries {
    index.iter().collect()
}

fn check_counters(index: &PrefixIndex) {
    let all = entries(index);
    assert_eq!(index.entries(), all.len() as u64, "entries()");
    let mut per_worker: BTreeMap<WorkerKey, u64> = BTreeMap::new();
    let mut seqs = BTreeSet::new();
    for (k, s) in &all {
        *per_worker.entry(*k).or_default() += 1;
        seqs.insert(*s);
        assert!(index.contains(k, *s));
    }
    assert_eq!(index.len(), seqs.len(), "len()");
    for (k, n) in &per_worker {
        assert_eq!(index.worker_blocks(k), *n, "worker_blocks({k})");
    }
    let workers: BTreeSet<WorkerKey> = index.workers().collect();
    assert_eq!(workers, per_worker.keys().copied().collect(), "workers()");
    for s in seqs {
        let holders: BTreeSet<WorkerKey> = index.holders(s).into_iter().collect();
        let want: BTreeSet<WorkerKey> = all
            .iter()
            .filter(|(_, x)| *x == s)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(holders, want, "holders({s})");
    }
}

fn check_overlap(index: &PrefixIndex, query: &[u64]) {
    let scores = index.overlap(query);
    let mut keys: BTreeSet<WorkerKey> = index.workers().collect();
    keys.extend(scores.scores.keys().copied());
    for k in keys {
        let run = query.iter().take_while(|s| index.contains(&k, **s)).count();
        assert_eq!(scores.of(&k) as usize, run, "overlap of {k} for {query:?}");
        assert!(run <= query.len());
        if run > 0 {
            assert_eq!(scores.tree_size(&k), index.worker_blocks(&k), "tree size");
        }
    }
}

/// [`check_overlap`] for the approximate index (its own table, read through its view).
fn check_approx_overlap(approx: &ApproxIndex, query: &[u64]) {
    let index = approx.index();
    let scores = approx.overlap(query);
    let mut keys: BTreeSet<WorkerKey> = index.iter().map(|(k, _)| k).collect();
    keys.extend(scores.scores.keys().copied());
    for k in keys {
        let run = query.iter().take_while(|s| index.contains(&k, **s)).count();
        assert_eq!(
            scores.of(&k) as usize,
            run,
            "approx overlap of {k} for {query:?}"
        );
        if run > 0 {
            assert_eq!(
                scores.tree_size(&k),
                index.worker_blocks(&k),
                "approx tree size"
            );
        }
    }
}

fn approx_entries(approx: &ApproxIndex) -> Entries {
    approx.index().iter().collect()
}

struct Mirror {
    /// Every reported delta applied in order.
    replay: PrefixIndex,
    /// The sidecar's log and the filter's synced copy.
    log: SyncLog,
    state: SyncState,
    synced: PrefixIndex,
}

impl Mirror {
    fn record(&mut self, deltas: &[IndexDelta]) {
        for d in deltas {
            self.replay.apply(d);
        }
        self.log.record(deltas);
    }

    fn sync(&mut self, index: &PrefixIndex) {
        let frame = self
            .log
            .frame_since(self.state.epoch, self.state.version, index);
        let bytes = sync::encode(&frame);
        let decoded = sync::decode(&bytes, MAX_PAYLOAD).expect("own frame does not decode");
        assert_eq!(decoded, frame);
        self.state
            .apply(&decoded, &mut self.synced)
            .expect("own frame does not apply");
        assert_eq!(entries(&self.synced), entries(index), "synced copy differs");
    }
}

/// Runs one input.
pub fn run(steps: Vec<Step>) {
    let mut indexer = KvIndexer::new();
    let mut mirror = Mirror {
        replay: PrefixIndex::new(),
        log: SyncLog::new(42, 6),
        state: SyncState::default(),
        synced: PrefixIndex::new(),
    };
    let mut approx = ApproxIndex::new(1_000, 16);
    let mut approx_replay = PrefixIndex::new();
    let mut now_ms = 0u64;

    for step in steps.into_iter().take(256) {
        match step {
            Step::Event {
                worker,
                id,
                offloaded,
                data,
            } => {
                let k = key(worker);
                let last = indexer.last_event_id(&k).unwrap_or(0);
                let event_id = match id {
                    EventId::Next => last.wrapping_add(1),
                    EventId::Same => last,
                    EventId::Skip(n) => last.wrapping_add(2 + u64::from(n)),
                    EventId::Restart(one) => u64::from(one),
                    EventId::Raw(v) => v,
                };
                let data = match data {
                    Data::Stored { parent, blocks } => KvEventData::Stored {
                        parent: parent.map(external),
                        blocks: blocks
                            .iter()
                            .take(16)
                            .map(|&(e, t)| StoredBlock {
                                external: external(e),
                                tokens_hash: tokens_hash(t),
                            })
                            .collect(),
                    },
                    Data::Removed(blocks) => KvEventData::Removed {
                        blocks: blocks.iter().take(16).map(|&b| external(b)).collect(),
                    },
                    Data::Cleared => KvEventData::Cleared,
                };
                let event = KvEvent {
                    worker: k,
                    event_id,
                    tier: if offloaded {
                        StorageTier::Offloaded
                    } else {
                        StorageTier::Device
                    },
                    data,
                };
                let out = indexer.apply(&event);
                if out.duplicate {
                    assert!(out.deltas.is_empty(), "a duplicate changed the index");
                }
                if out.ignored_tier {
                    assert!(
                        out.deltas
                            .iter()
                            .all(|d| matches!(d, IndexDelta::ClearWorker { .. })),
                        "an offloaded event stored or removed device blocks"
                    );
                }
                mirror.record(&out.deltas);
            }
            Step::ResetKey(w) => {
                let deltas = indexer.reset_worker_key(key(w));
                assert_eq!(indexer.index().worker_blocks(&key(w)), 0);
                mirror.record(&deltas);
            }
            Step::RemoveWorker(w) => {
                let id = u64::from(w % 3);
                let deltas = indexer.remove_worker(id);
                assert!(indexer.workers().all(|k| k.worker_id != id));
                mirror.record(&deltas);
            }
            Step::Query(picks) => {
                let known: Vec<u64> = entries(indexer.index()).iter().map(|e| e.1).collect();
                let query: Vec<u64> = picks
                    .iter()
                    .take(32)
                    .map(|&p| match known.get(usize::from(p)) {
                        Some(&s) => s,
                        None => u64::from(p),
                    })
                    .collect();
                check_overlap(indexer.index(), &query);
                check_approx_overlap(&approx, &query);
            }
            Step::Sync => mirror.sync(indexer.index()),
            Step::Predict {
                worker,
                picks,
                dt_ms,
            } => {
                now_ms += u64::from(dt_ms);
                let seqs: Vec<u64> = picks.iter().take(32).map(|&p| u64::from(p % 40)).collect();
                for d in approx.record(key(worker), &seqs, now_ms) {
                    approx_replay.apply(&d);
                }
                assert_eq!(entries(&approx_replay), approx_entries(&approx), "approx");
                assert!(approx.index().entries() <= 16, "approx bound");
            }
            Step::Expire(dt_ms) => {
                now_ms += u64::from(dt_ms);
                for d in approx.expire(now_ms) {
                    approx_replay.apply(&d);
                }
                assert_eq!(entries(&approx_replay), approx_entries(&approx), "approx");
            }
        }
        assert_eq!(
            entries(&mirror.replay),
            entries(indexer.index()),
            "replayed deltas differ from the index"
        );
        check_counters(indexer.index());
    }
    mirror.sync(indexer.index());
    check_counters(&mirror.synced);
}

/// Runs one raw input as libFuzzer would: decoded into steps through `arbitrary`.
pub fn run_bytes(data: &[u8]) {
    let u = arbitrary::Unstructured::new(data);
    if let Ok(steps) = <Vec<Step> as Arbitrary>::arbitrary_take_rest(u) {
        run(steps);
    }
}
