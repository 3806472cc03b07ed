//! Applying sidecar sync frames to this VM (index, worker table, remote loads, model
//! list), and composing the snapshot frame the sync leader leaves in shared data for VMs
//! that fell behind the ring.

use crate::engine::Engine;
use crate::fleet::Fleet;
use kvgate_core::sync::{self, ModelEntry, SyncError, SyncFrame};
use std::collections::HashMap;

/// Largest sync frame accepted (a snapshot of ~6M index entries).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// What a frame changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Index operations applied.
    pub ops: usize,
    /// Whether the worker table was replaced.
    pub workers_changed: bool,
    /// Models whose files must be fetched: (name, digest).
    pub want_models: Vec<(String, String)>,
}

impl Engine {
    /// The (epoch, version) to ask the sidecar for changes since.
    pub fn sync_position(&self) -> (u64, u64) {
        (self.sync.epoch, self.sync.version)
    }

    /// Forgets the sync position, so the next request to the sidecar gets a snapshot.
    pub fn reset_sync(&mut self) {
        self.sync = kvgate_core::sync::SyncState::default();
    }

    /// Applies an encoded frame.
    pub fn apply_frame_bytes(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<SyncOutcome, SyncError> {
        let frame = sync::decode(bytes, MAX_FRAME_BYTES)
            .inspect_err(|_| self.counters.frame_errors += 1)?;
        self.apply_frame(&frame, now_ms)
    }

    /// Applies a decoded frame: a snapshot replaces everything, a delta must continue.
    pub fn apply_frame(
        &mut self,
        frame: &SyncFrame,
        now_ms: u64,
    ) -> Result<SyncOutcome, SyncError> {
        let ops = self
            .sync
            .apply(frame, &mut self.index)
            .inspect_err(|_| self.counters.frame_errors += 1)?;
        let mut out = SyncOutcome {
            ops,
            ..Default::default()
        };
        if let Some(workers) = &frame.workers {
            self.fleet = Fleet::new(workers.clone());
            out.workers_changed = true;
        }
        if let Some(loads) = &frame.loads {
            self.remote = loads.iter().map(|l| (l.worker, *l)).collect();
        }
        if let Some(models) = &frame.models {
            self.model_entries = models.clone();
            let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            self.models.retain(|k, _| names.contains(&k.as_str()));
            for m in models {
                if self.want_model(&m.name, &m.files_digest, m.block_size) {
                    out.want_models
                        .push((m.name.clone(), m.files_digest.clone()));
                }
            }
        }
        self.last_sync_ms = Some(now_ms);
        self.source_age_ms = frame.source_age_ms;
        self.counters.frames += 1;
        Ok(out)
    }

    /// A snapshot frame of this VM's whole view (the leader stores it for laggards).
    pub fn snapshot_frame(&self) -> Vec<u8> {
        let mut keys = Vec::new();
        let mut slot: HashMap<kvgate_core::WorkerKey, u32> = HashMap::new();
        let mut ops = Vec::with_capacity(self.index.entries() as usize);
        for (w, seq) in self.index.iter() {
            let i = *slot.entry(w).or_insert_with(|| {
                keys.push(w);
                (keys.len() - 1) as u32
            });
            ops.push(sync::Op::Insert(i, sync::Hash64(seq)));
        }
        let frame = SyncFrame {
            epoch: self.sync.epoch,
            from_version: 0,
            to_version: self.sync.version,
            snapshot: true,
            keys,
            ops,
            workers: Some(self.fleet.all().to_vec()),
            loads: Some(self.remote.values().copied().collect()),
            models: Some(self.model_entries.clone()),
            source_age_ms: self.source_age_ms,
        };
        sync::encode(&frame)
    }

    /// Model entries of the last model list.
    pub fn model_entries(&self) -> &[ModelEntry] {
        &self.model_entries
    }
}
