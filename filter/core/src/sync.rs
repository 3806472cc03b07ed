//! The sidecar → filter sync codec: versioned snapshots and deltas of the prefix index,
//! plus the worker table, remote loads and the model list, in one compact binary frame
//! (postcard; block hashes as fixed 8-byte integers).
//!
//! The sidecar records every index change in a bounded [`SyncLog`]; the filter asks for
//! "everything since version N of epoch E" and gets either the deltas or, when N is too
//! old or E changed (sidecar restart), a snapshot. [`SyncState::apply`] applies a frame
//! to a [`PrefixIndex`] and refuses one that does not continue its version.

use crate::index::{IndexDelta, PrefixIndex};
use crate::load::WorkerLoad;
use crate::types::WorkerKey;
use crate::workers::WorkerInfo;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Wire version of the frame; bumped on incompatible change (2: workers carry their LoRA
/// adapters).
pub const CODEC_VERSION: u8 = 2;

/// A sequence hash on the wire: fixed 8 bytes, little-endian.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hash64(#[serde(with = "postcard::fixint::le")] pub u64);

/// One index change, with the worker as an index into [`SyncFrame::keys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Worker `w` holds `seq`.
    Insert(u32, Hash64),
    /// Worker `w` no longer holds `seq`.
    Remove(u32, Hash64),
    /// Worker `w` holds nothing.
    Clear(u32),
}

/// Load of a worker as the sidecar sees it from other gateway replicas and worker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RemoteLoad {
    /// The (worker, dp rank).
    pub worker: WorkerKey,
    /// Bookkeeping of other gateway replicas (replica sync).
    pub replicas: WorkerLoad,
    /// KV blocks in use, as the worker reported.
    pub kv_used_blocks: Option<u64>,
    /// Active decode blocks, as the worker reported.
    pub active_decode_blocks: Option<u64>,
    /// Queued prefill tokens, as the worker reported.
    pub active_prefill_tokens: Option<u64>,
}

/// A model the sidecar can serve tokenizer files for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelEntry {
    /// Served model name.
    pub name: String,
    /// Tokens per KV block for this model.
    pub block_size: u32,
    /// Content hash of tokenizer.json + chat template (changes when they change).
    pub files_digest: String,
}

/// The files of one model as the sidecar serves them (`GET /v1/models/files`, postcard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelFiles {
    /// Served model name.
    pub name: String,
    /// Tokens per KV block.
    pub block_size: u32,
    /// `tokenizer.json`, or its packed form (`kvgate_prompt::pack_tokenizer`: what the
    /// sidecar serves for BPE models).
    pub tokenizer_json: Vec<u8>,
    /// `tokenizer_config.json` (with `chat_template`).
    pub tokenizer_config_json: Vec<u8>,
}

/// One bookkeeping step of a request routed by a gateway, sent by the filter to its
/// sidecar (`POST /v1/bookkeeping`, postcard [`BookBatch`]) so the sidecar can share it
/// with other gateway replicas (replica sync).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BookKind {
    /// The request was routed with this plan.
    Add(crate::load::RequestPlan),
    /// Its first response byte arrived.
    PrefillDone,
    /// It streamed this many more output tokens.
    OutputTokens(u64),
    /// It ended.
    Free,
}

/// A bookkeeping step of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookEvent {
    /// Gateway-unique request id (VM tag and stream id; never client-controlled).
    pub request_id: u64,
    /// What happened.
    pub kind: BookKind,
}

/// Bookkeeping steps sent together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BookBatch {
    /// The steps, in order.
    pub events: Vec<BookEvent>,
}

/// One sync response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncFrame {
    /// Sidecar epoch (random per sidecar start).
    pub epoch: u64,
    /// Version the deltas start from (ignored for snapshots).
    pub from_version: u64,
    /// Version after applying this frame.
    pub to_version: u64,
    /// Whether this is a full snapshot (the receiver clears its index first).
    pub snapshot: bool,
    /// Worker dictionary for [`Op`]s.
    pub keys: Vec<WorkerKey>,
    /// Index changes, in order.
    pub ops: Vec<Op>,
    /// The whole worker table, when it changed (always in snapshots).
    pub workers: Option<Vec<WorkerInfo>>,
    /// Remote loads, when they changed (replaces the previous list).
    pub loads: Option<Vec<RemoteLoad>>,
    /// Models with tokenizer files, when the list changed.
    pub models: Option<Vec<ModelEntry>>,
    /// Milliseconds since the sidecar last heard from its event sources (staleness).
    pub source_age_ms: u64,
}

/// Why a frame could not be decoded or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// Not a frame of this codec version.
    #[error("sync frame is malformed: {0}")]
    Malformed(String),
    /// Larger than the configured limit.
    #[error("sync frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Size.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// A delta that does not continue the receiver's version (resync with a snapshot).
    #[error("sync frame continues version {from} of epoch {epoch}, but the index is at {have} of epoch {have_epoch}")]
    Discontinuous {
        /// Frame's start version.
        from: u64,
        /// Frame's epoch.
        epoch: u64,
        /// Receiver's version.
        have: u64,
        /// Receiver's epoch.
        have_epoch: u64,
    },
    /// An op names a worker outside the dictionary.
    #[error("sync op refers to worker #{0} outside the frame's dictionary")]
    BadWorkerRef(u32),
}

/// Encodes a frame: one version byte, then postcard.
pub fn encode(frame: &SyncFrame) -> Vec<u8> {
    let mut out = vec![CODEC_VERSION];
    // postcard cannot fail on these types (no maps with non-string keys, no unsized seqs).
    if let Ok(body) = postcard::to_allocvec(frame) {
        out.extend_from_slice(&body);
    }
    out
}

/// Decodes a frame of at most `limit` bytes.
pub fn decode(bytes: &[u8], limit: usize) -> Result<SyncFrame, SyncError> {
    if bytes.len() > limit {
        return Err(SyncError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    match bytes.split_first() {
        Some((&CODEC_VERSION, body)) => {
            let (frame, rest): (SyncFrame, &[u8]) =
                postcard::take_from_bytes(body).map_err(|e| SyncError::Malformed(e.to_string()))?;
            if !rest.is_empty() {
                return Err(SyncError::Malformed(format!(
                    "{} trailing bytes",
                    rest.len()
                )));
            }
            Ok(frame)
        }
        Some((v, _)) => Err(SyncError::Malformed(format!(
            "codec version {v}, expected {CODEC_VERSION}"
        ))),
        None => Err(SyncError::Malformed("empty".into())),
    }
}

/// Builds the op list of a frame from index deltas.
#[derive(Debug, Default)]
struct OpBuilder {
    keys: Vec<WorkerKey>,
    by_key: HashMap<WorkerKey, u32>,
    ops: Vec<Op>,
}

impl OpBuilder {
    fn key(&mut self, w: WorkerKey) -> u32 {
        if let Some(&i) = self.by_key.get(&w) {
            return i;
        }
        let i = self.keys.len() as u32;
        self.keys.push(w);
        self.by_key.insert(w, i);
        i
    }

    fn push(&mut self, d: &IndexDelta) {
        let op = match *d {
            IndexDelta::Insert { worker, seq } => Op::Insert(self.key(worker), Hash64(seq)),
            IndexDelta::Remove { worker, seq } => Op::Remove(self.key(worker), Hash64(seq)),
            IndexDelta::ClearWorker { worker } => Op::Clear(self.key(worker)),
        };
        self.ops.push(op);
    }
}

/// The sidecar's bounded history of index changes.
#[derive(Debug, Clone)]
pub struct SyncLog {
    epoch: u64,
    version: u64,
    log: VecDeque<IndexDelta>,
    max_log: usize,
}

impl SyncLog {
    /// A log for `epoch` keeping at most `max_log` deltas.
    pub fn new(epoch: u64, max_log: usize) -> Self {
        Self {
            epoch,
            version: 0,
            log: VecDeque::new(),
            max_log: max_log.max(1),
        }
    }

    /// The epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The current version (number of deltas ever recorded).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Records deltas (already applied to the sidecar's index).
    pub fn record(&mut self, deltas: &[IndexDelta]) {
        for d in deltas {
            self.log.push_back(*d);
            self.version += 1;
        }
        while self.log.len() > self.max_log {
            self.log.pop_front();
        }
    }

    /// Oldest version a delta frame can start from.
    pub fn oldest(&self) -> u64 {
        self.version - self.log.len() as u64
    }

    /// Index changes since `since` of `epoch`: deltas when possible, else a snapshot of
    /// `index`. Worker table, loads and models are left for the caller to fill.
    pub fn frame_since(&self, epoch: u64, since: u64, index: &PrefixIndex) -> SyncFrame {
        let mut b = OpBuilder::default();
        let continuous = epoch == self.epoch && since >= self.oldest() && since <= self.version;
        let snapshot = !continuous;
        if snapshot {
            for (w, seq) in index.iter() {
                b.push(&IndexDelta::Insert { worker: w, seq });
            }
        } else {
            let skip = (since - self.oldest()) as usize;
            for d in self.log.iter().skip(skip) {
                b.push(d);
            }
        }
        SyncFrame {
            epoch: self.epoch,
            from_version: if snapshot { 0 } else { since },
            to_version: self.version,
            snapshot,
            keys: b.keys,
            ops: b.ops,
            ..Default::default()
        }
    }
}

/// The receiver's position in the sidecar's history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Epoch of the last applied frame (0 = none yet).
    pub epoch: u64,
    /// Version reached.
    pub version: u64,
}

impl SyncState {
    /// Whether `frame` can be applied at this position.
    pub fn accepts(&self, frame: &SyncFrame) -> bool {
        frame.snapshot || (frame.epoch == self.epoch && frame.from_version == self.version)
    }

    /// Applies the index part of `frame` to `index` and advances. A snapshot replaces
    /// the index; a delta must continue the current version.
    pub fn apply(
        &mut self,
        frame: &SyncFrame,
        index: &mut PrefixIndex,
    ) -> Result<usize, SyncError> {
        if !self.accepts(frame) {
            return Err(SyncError::Discontinuous {
                from: frame.from_version,
                epoch: frame.epoch,
                have: self.version,
                have_epoch: self.epoch,
            });
        }
        let deltas = frame_deltas(frame)?;
        if frame.snapshot {
            index.clear();
        }
        for d in &deltas {
            index.apply(d);
        }
        self.epoch = frame.epoch;
        self.version = frame.to_version;
        Ok(deltas.len())
    }
}

/// The index deltas a frame carries.
pub fn frame_deltas(frame: &SyncFrame) -> Result<Vec<IndexDelta>, SyncError> {
    let key = |i: u32| {
        frame
            .keys
            .get(i as usize)
            .copied()
            .ok_or(SyncError::BadWorkerRef(i))
    };
    frame
        .ops
        .iter()
        .map(|op| {
            Ok(match *op {
                Op::Insert(w, Hash64(seq)) => IndexDelta::Insert {
                    worker: key(w)?,
                    seq,
                },
                Op::Remove(w, Hash64(seq)) => IndexDelta::Remove {
                    worker: key(w)?,
                    seq,
                },
                Op::Clear(w) => IndexDelta::ClearWorker { worker: key(w)? },
            })
        })
        .collect()
}

/// Percent-encodes a query value of a sidecar URL (`/v1/models/files?name=…`).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn w(i: u64) -> WorkerKey {
        WorkerKey::new(i, 0)
    }

    #[test]
    fn deltas_then_snapshot_after_truncation_or_new_epoch() {
        let mut sidecar = PrefixIndex::new();
        let mut log = SyncLog::new(42, 3);
        let mut filter = PrefixIndex::new();
        let mut state = SyncState::default();

        let d1 = [
            IndexDelta::Insert {
                worker: w(1),
                seq: u64::MAX,
            },
            IndexDelta::Insert {
                worker: w(2),
                seq: 5,
            },
        ];
        for d in &d1 {
            sidecar.apply(d);
        }
        log.record(&d1);
        let f = log.frame_since(state.epoch, state.version, &sidecar);
        assert!(f.snapshot, "first contact is a snapshot");
        let bytes = encode(&f);
        state
            .apply(&decode(&bytes, 1 << 20).unwrap(), &mut filter)
            .unwrap();
        assert_eq!(filter.holders(u64::MAX), vec![w(1)]);

        let d2 = [IndexDelta::Remove {
            worker: w(2),
            seq: 5,
        }];
        sidecar.apply(&d2[0]);
        log.record(&d2);
        let f = log.frame_since(state.epoch, state.version, &sidecar);
        assert!(!f.snapshot);
        assert_eq!(f.ops.len(), 1);
        state.apply(&f, &mut filter).unwrap();
        assert!(filter.holders(5).is_empty());

        // A frame that does not continue is refused.
        let stale = SyncFrame {
            epoch: 42,
            from_version: 0,
            to_version: 9,
            ..Default::default()
        };
        assert!(matches!(
            state.apply(&stale, &mut filter),
            Err(SyncError::Discontinuous { .. })
        ));

        // Falling behind the bounded log → snapshot.
        let many: Vec<IndexDelta> = (10..20)
            .map(|s| IndexDelta::Insert {
                worker: w(3),
                seq: s,
            })
            .collect();
        for d in &many {
            sidecar.apply(d);
        }
        log.record(&many);
        let f = log.frame_since(state.epoch, state.version, &sidecar);
        assert!(f.snapshot);
        state.apply(&f, &mut filter).unwrap();
        assert_eq!(filter.entries(), sidecar.entries());
        assert_eq!(state.version, log.version());
    }

    #[test]
    fn codec_rejects_garbage() {
        assert!(matches!(decode(&[], 10), Err(SyncError::Malformed(_))));
        assert!(matches!(
            decode(&[9, 1, 2], 10),
            Err(SyncError::Malformed(_))
        ));
        assert!(matches!(
            decode(&[1; 100], 10),
            Err(SyncError::TooLarge { .. })
        ));
        let f = SyncFrame {
            keys: vec![],
            ops: vec![Op::Clear(3)],
            ..Default::default()
        };
        assert_eq!(frame_deltas(&f), Err(SyncError::BadWorkerRef(3)));
    }

    /// Postcard has no optional fields: every worker field must round-trip, with and
    /// without adapters (a skipped empty list once made every frame "trailing bytes").
    #[test]
    fn workers_round_trip_with_and_without_adapters() {
        let json = r#"[{"instance_id": 1, "endpoint": "10.0.0.1:8000", "model": "m"},
            {"instance_id": 2, "endpoint": "10.0.0.2:8000", "model": "m", "lora_adapters": ["a", "b"]}]"#;
        let workers: Vec<WorkerInfo> = serde_json::from_str(json).unwrap();
        let f = SyncFrame {
            workers: Some(workers.clone()),
            ..Default::default()
        };
        let back = decode(&encode(&f), 1 << 20).unwrap();
        assert_eq!(back.workers, Some(workers));
    }

    #[test]
    fn ten_bytes_per_op() {
        let f = SyncFrame {
            keys: vec![w(1)],
            ops: (0..1000)
                .map(|s| Op::Insert(0, Hash64(u64::MAX - s)))
                .collect(),
            ..Default::default()
        };
        let n = encode(&f).len();
        assert!(n < 1000 * 10 + 64, "{n}");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, 1 << 20);
        }

        #[test]
        fn roundtrip(ops in proptest::collection::vec((0u32..3, any::<u64>(), 0u8..3), 0..50), epoch in any::<u64>()) {
            let f = SyncFrame {
                epoch,
                keys: vec![w(1), w(2), WorkerKey::new(u64::MAX, 7)],
                ops: ops.iter().map(|&(k, s, o)| match o { 0 => Op::Insert(k, Hash64(s)), 1 => Op::Remove(k, Hash64(s)), _ => Op::Clear(k) }).collect(),
                ..Default::default()
            };
            prop_assert_eq!(decode(&encode(&f), 1 << 20).unwrap(), f);
        }
    }
}
