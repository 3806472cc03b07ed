//! The oracle's exact view of every engine's prefix cache, kept from the engines' own KV
//! events on NATS (the same messages the sidecar reads, decoded by the same
//! `kvgate_core::events::dynamo` code). The mock engine's external block id is the
//! chained sequence hash, so a worker's cache is a set of sequence hashes and a request's
//! overlap is the run of its leading sequence hashes found there.

use super::{BenchError, Result};
use futures::StreamExt;
use kvgate_core::events::dynamo::{
    decode_kv_message, is_kv_events_subject, kv_events_wildcard, DEFAULT_MAX_PAYLOAD,
};
use kvgate_core::events::KvEventData;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::task::JoinHandle;

/// Cached sequence hashes per worker instance id (dp rank 0).
#[derive(Debug, Default)]
pub struct CacheModel {
    workers: HashMap<u64, HashSet<u64>>,
    /// Events applied.
    pub events: u64,
}

impl CacheModel {
    /// Applies one event.
    pub fn apply(&mut self, worker: u64, data: &KvEventData) {
        self.events += 1;
        let set = self.workers.entry(worker).or_default();
        match data {
            KvEventData::Stored { blocks, .. } => set.extend(blocks.iter().map(|b| b.external)),
            KvEventData::Removed { blocks } => {
                for b in blocks {
                    set.remove(b);
                }
            }
            KvEventData::Cleared => set.clear(),
        }
    }

    /// Leading blocks of `sequence_hashes` cached on `worker`.
    pub fn overlap(&self, worker: u64, sequence_hashes: &[u64]) -> u32 {
        self.workers.get(&worker).map_or(0, |set| {
            sequence_hashes
                .iter()
                .take_while(|h| set.contains(h))
                .count() as u32
        })
    }

    /// Blocks cached on `worker`.
    pub fn cached(&self, worker: u64) -> u64 {
        self.workers.get(&worker).map_or(0, |s| s.len() as u64)
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.workers.clear();
    }
}

/// A [`CacheModel`] fed by a NATS subscription; the task stops on drop.
pub struct LiveModel {
    /// The model.
    pub model: Arc<Mutex<CacheModel>>,
    task: JoinHandle<()>,
}

impl LiveModel {
    /// Subscribes to the KV events of namespace `dynamo`, component `backend` on `url`.
    pub async fn start(url: &str) -> Result<LiveModel> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| BenchError::Nats(e.to_string()))?;
        let mut sub = client
            .subscribe(kv_events_wildcard("dynamo", "backend"))
            .await
            .map_err(|e| BenchError::Nats(e.to_string()))?;
        client
            .flush()
            .await
            .map_err(|e| BenchError::Nats(e.to_string()))?;
        let model = Arc::new(Mutex::new(CacheModel::default()));
        let m = model.clone();
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = sub.next().await {
                if !is_kv_events_subject(&msg.subject) {
                    continue;
                }
                let Ok(decoded) = decode_kv_message(&msg.payload, DEFAULT_MAX_PAYLOAD) else {
                    continue;
                };
                let mut g = m.lock().unwrap_or_else(PoisonError::into_inner);
                for ev in decoded.events {
                    g.apply(ev.worker.worker_id, &ev.data);
                }
            }
        });
        Ok(LiveModel { model, task })
    }

    /// Locks the model.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, CacheModel> {
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for LiveModel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use kvgate_core::events::StoredBlock;

    #[test]
    fn overlap_is_the_leading_run() {
        let mut m = CacheModel::default();
        let stored = |h: &[u64]| KvEventData::Stored {
            parent: None,
            blocks: h
                .iter()
                .map(|&external| StoredBlock {
                    external,
                    tokens_hash: 0,
                })
                .collect(),
        };
        m.apply(1, &stored(&[10, 11, 12]));
        assert_eq!(m.overlap(1, &[10, 11, 13]), 2);
        assert_eq!(m.overlap(2, &[10]), 0);
        m.apply(1, &KvEventData::Removed { blocks: vec![11] });
        assert_eq!(m.overlap(1, &[10, 11, 12]), 1);
        assert_eq!(m.cached(1), 2);
        m.apply(1, &KvEventData::Cleared);
        assert_eq!(m.cached(1), 0);
    }
}
