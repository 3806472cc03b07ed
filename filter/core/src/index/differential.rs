//! Differential test: [`super::KvIndexer`] against an obviously-correct reference model
//! (per worker, a set of full prefixes as token-hash vectors) over random event and
//! query sequences.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::KvIndexer;
use crate::events::{KvEvent, KvEventData, StorageTier, StoredBlock};
use crate::hash::sequence_hashes;
use crate::types::WorkerKey;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

/// The reference: per worker, engine block id → the full list of local hashes from the
/// root to that block (the prefix it represents). Overlap = longest run of request
/// prefixes, from length 1, each present as some block's prefix.
#[derive(Default)]
struct Reference {
    workers: BTreeMap<WorkerKey, BTreeMap<u64, Vec<u64>>>,
}

impl Reference {
    fn apply(&mut self, e: &KvEvent) {
        match &e.data {
            KvEventData::Stored { parent, blocks } => {
                let w = self.workers.entry(e.worker).or_default();
                let mut path = match parent {
                    None => vec![],
                    Some(p) => match w.get(p) {
                        Some(path) => path.clone(),
                        None => return,
                    },
                };
                for b in blocks {
                    path.push(b.tokens_hash);
                    w.insert(b.external, path.clone());
                }
            }
            KvEventData::Removed { blocks } => {
                if let Some(w) = self.workers.get_mut(&e.worker) {
                    for b in blocks {
                        w.remove(b);
                    }
                }
            }
            KvEventData::Cleared => {
                self.workers.remove(&e.worker);
            }
        }
    }

    fn overlap(&self, worker: &WorkerKey, request: &[u64]) -> u32 {
        let Some(w) = self.workers.get(worker) else {
            return 0;
        };
        let prefixes: BTreeSet<&Vec<u64>> = w.values().collect();
        let mut n = 0;
        for len in 1..=request.len() {
            if prefixes.contains(&request[..len].to_vec()) {
                n = len as u32;
            } else {
                break;
            }
        }
        n
    }
}

#[derive(Debug, Clone)]
enum Op {
    Store {
        worker: u8,
        rank: u8,
        parent: Option<u8>,
        ext: Vec<u8>,
        tokens: Vec<u8>,
    },
    Remove {
        worker: u8,
        rank: u8,
        ext: Vec<u8>,
    },
    Clear {
        worker: u8,
        rank: u8,
    },
    Query {
        tokens: Vec<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..3, 0u8..2, proptest::option::of(0u8..24), proptest::collection::vec(0u8..24, 1..5), proptest::collection::vec(0u8..4, 1..5))
            .prop_map(|(worker, rank, parent, ext, tokens)| Op::Store { worker, rank, parent, ext, tokens }),
        3 => (0u8..3, 0u8..2, proptest::collection::vec(0u8..24, 1..4)).prop_map(|(worker, rank, ext)| Op::Remove { worker, rank, ext }),
        1 => (0u8..3, 0u8..2).prop_map(|(worker, rank)| Op::Clear { worker, rank }),
        4 => proptest::collection::vec(0u8..4, 0..7).prop_map(|tokens| Op::Query { tokens }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn indexer_matches_reference(ops in proptest::collection::vec(op(), 1..60)) {
        let mut ix = KvIndexer::new();
        let mut model = Reference::default();
        let mut ids: BTreeMap<WorkerKey, u64> = BTreeMap::new();
        for op in ops {
            let mut next = |k: WorkerKey| { let e = ids.entry(k).or_insert(0); *e += 1; *e };
            let event = match op {
                Op::Store { worker, rank, parent, ext, tokens } => {
                    let k = WorkerKey::new(worker as u64, rank as u32);
                    let n = ext.len().min(tokens.len());
                    // Engines give distinct ids to distinct blocks within one event.
                    let mut seen = BTreeSet::new();
                    let blocks: Vec<StoredBlock> = ext[..n].iter().zip(&tokens[..n])
                        .filter(|(e, _)| seen.insert(**e))
                        .map(|(&e, &t)| StoredBlock { external: e as u64, tokens_hash: 1000 + t as u64 })
                        .collect();
                    KvEvent { worker: k, event_id: next(k), tier: StorageTier::Device,
                        data: KvEventData::Stored { parent: parent.map(|p| p as u64), blocks } }
                }
                Op::Remove { worker, rank, ext } => {
                    let k = WorkerKey::new(worker as u64, rank as u32);
                    KvEvent { worker: k, event_id: next(k), tier: StorageTier::Device,
                        data: KvEventData::Removed { blocks: ext.iter().map(|&e| e as u64).collect() } }
                }
                Op::Clear { worker, rank } => {
                    let k = WorkerKey::new(worker as u64, rank as u32);
                    KvEvent { worker: k, event_id: next(k), tier: StorageTier::Device, data: KvEventData::Cleared }
                }
                Op::Query { tokens } => {
                    let local: Vec<u64> = tokens.iter().map(|&t| 1000 + t as u64).collect();
                    let seq = sequence_hashes(&local);
                    let got = ix.index().overlap(&seq);
                    for w in 0..3u64 { for r in 0..2u32 {
                        let k = WorkerKey::new(w, r);
                        prop_assert_eq!(got.of(&k), model.overlap(&k, &local), "worker {} query {:?}", k, local);
                    }}
                    continue;
                }
            };
            model.apply(&event);
            let out = ix.apply(&event);
            prop_assert!(out.gap.is_none() && !out.duplicate);
        }
    }
}
