//! Fuzz target `sync_codec`: the sidecar → filter sync frame on arbitrary bytes.
//!
//! `sync::decode` must never panic. A frame that decodes re-encodes to bytes that decode to
//! the same frame (the same bytes, unless the input used over-long varints), and `SyncState::apply` applies it to a `PrefixIndex` exactly as a
//! plain set of (worker, sequence hash) pairs would change: to an empty index (a fresh
//! filter VM) and, positioned at the frame's `from_version`, to an index that already holds
//! entries. A refused frame (discontinuous, or an op naming a worker outside the dictionary)
//! leaves index and position untouched. The worker table of the frame is walked as the
//! router does (`WorkerInfo::keys`).

use std::collections::BTreeSet;

use crate::MAX_PAYLOAD;
use kvgate_core::index::PrefixIndex;
use kvgate_core::sync::{self, Op, SyncFrame, SyncState};
use kvgate_core::WorkerKey;

type Entries = BTreeSet<(WorkerKey, u64)>;

fn entries(index: &PrefixIndex) -> Entries {
    index.iter().collect()
}

/// What the frame's ops do to a plain set, or `None` if an op names no worker.
fn expected(frame: &SyncFrame, before: &Entries) -> Option<Entries> {
    let mut set = if frame.snapshot {
        Entries::new()
    } else {
        before.clone()
    };
    for op in &frame.ops {
        match *op {
            Op::Insert(w, seq) => {
                set.insert((*frame.keys.get(w as usize)?, seq.0));
            }
            Op::Remove(w, seq) => {
                set.remove(&(*frame.keys.get(w as usize)?, seq.0));
            }
            Op::Clear(w) => {
                let key = *frame.keys.get(w as usize)?;
                set.retain(|(k, _)| *k != key);
            }
        }
    }
    Some(set)
}

fn check_apply(frame: &SyncFrame, mut state: SyncState, index: &mut PrefixIndex) {
    let before = entries(index);
    let position = state;
    let result = state.apply(frame, index);
    let after = entries(index);
    match (result, position.accepts(frame)) {
        (Ok(n), _) => {
            assert_eq!(n, frame.ops.len());
            let want = expected(frame, &before).expect("applied a frame with a bad worker ref");
            assert_eq!(after, want, "index differs from the frame's ops");
            assert_eq!(
                state,
                SyncState {
                    epoch: frame.epoch,
                    version: frame.to_version
                }
            );
            assert_eq!(index.entries(), want.len() as u64);
            for key in want.iter().map(|(k, _)| *k).collect::<BTreeSet<_>>() {
                let n = want.iter().filter(|(k, _)| *k == key).count() as u64;
                assert_eq!(index.worker_blocks(&key), n, "worker_blocks of {key}");
            }
        }
        (Err(e), accepted) => {
            assert_eq!(after, before, "refused frame ({e}) changed the index");
            assert_eq!(state, position, "refused frame moved the position");
            if accepted {
                assert!(
                    expected(frame, &before).is_none(),
                    "frame refused ({e}) although it continues and its ops are valid"
                );
            }
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(frame) = sync::decode(data, MAX_PAYLOAD) else {
        return;
    };
    // postcard accepts over-long varints, so the bytes themselves need not be canonical;
    // the encoding of the decoded frame is, and decodes to the same frame.
    let canonical = sync::encode(&frame);
    assert!(canonical.len() <= data.len(), "re-encoding grew the frame");
    if canonical != data {
        assert_eq!(sync::decode(&canonical, MAX_PAYLOAD).as_ref(), Ok(&frame));
    }

    // A fresh VM.
    check_apply(&frame, SyncState::default(), &mut PrefixIndex::new());

    // A VM at the frame's start version with an index that already holds entries (some of
    // them the frame's own workers).
    let mut index = PrefixIndex::new();
    let mut keys: Vec<WorkerKey> = frame.keys.iter().take(4).copied().collect();
    keys.push(WorkerKey::new(1, 0));
    for (i, key) in keys.iter().enumerate() {
        for seq in 0..=i as u64 {
            index.insert(*key, seq);
        }
    }
    let at = SyncState {
        epoch: frame.epoch,
        version: frame.from_version,
    };
    check_apply(&frame, at, &mut index);

    // The worker table as the router walks it.
    for w in frame.workers.iter().flatten() {
        let _ = w.keys().take(1 << 12).count();
    }
}
