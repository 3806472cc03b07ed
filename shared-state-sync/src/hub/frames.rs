//! Sync frames for the filter: whether a long poll has anything to answer yet, and the
//! frame itself — index deltas (or a snapshot) from the sync log, plus the worker table,
//! loads and models when that client has not seen their latest version, or when its
//! periodic full refresh is due.
//!
//! Clients are told apart by the optional `client` query parameter (one Envoy's filter
//! is one client; its VMs share one position). Several Envoys behind one sidecar without
//! distinct `client` values still converge through the periodic refresh.

use super::{book::remote_loads, Hub, State};
use crate::metrics::gauge_value;
use kvgate_core::sync::SyncFrame;
use std::time::Duration;

/// Most clients remembered; the least recently seen is forgotten first.
const MAX_CLIENTS: usize = 64;

/// What a long poll should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum News {
    /// Answer now.
    Now,
    /// Only loads changed: answer after this much longer (rate limit).
    After(Duration),
    /// Nothing new: wait for a change.
    Nothing,
}

fn needs_snapshot(st: &State, epoch: u64, since: u64) -> bool {
    epoch != st.log.epoch() || since < st.log.oldest() || since > st.log.version()
}

impl Hub {
    /// Whether `client`, at `since` of `epoch`, has anything new at `now`.
    pub fn news(&self, client: &str, epoch: u64, since: u64, now: u64) -> News {
        let st = self.lock();
        if needs_snapshot(&st, epoch, since) || st.log.version() > since {
            return News::Now;
        }
        let view = st.clients.get(client).copied().unwrap_or_default();
        if view.sent.workers != st.gens.workers || view.sent.models != st.gens.models {
            return News::Now;
        }
        if view.sent.loads != st.gens.loads {
            let next = view
                .last_loads_ms
                .saturating_add(self.settings.loads_interval_ms);
            return if now >= next {
                News::Now
            } else {
                News::After(Duration::from_millis(next - now))
            };
        }
        News::Nothing
    }

    /// The frame answering `client` at `since` of `epoch`, and its encoding.
    pub fn frame(&self, client: &str, epoch: u64, since: u64, now: u64) -> (SyncFrame, Vec<u8>) {
        let mut st = self.lock();
        let mut frame = st.log.frame_since(epoch, since, st.indexer.index());
        let mut view = st.clients.get(client).copied().unwrap_or_default();
        let refresh = frame.snapshot
            || now.saturating_sub(view.last_full_ms) >= self.settings.meta_refresh_ms;
        let gens = st.gens;
        if refresh || view.sent.workers != gens.workers {
            frame.workers = Some(st.table.list());
        }
        if refresh || view.sent.loads != gens.loads {
            frame.loads = Some(remote_loads(&st));
            view.last_loads_ms = now;
        }
        if refresh || view.sent.models != gens.models {
            frame.models = Some(st.models.clone());
        }
        if refresh {
            view.last_full_ms = now;
        }
        view.sent = gens;
        view.last_seen_ms = now;
        frame.source_age_ms = Self::source_age(&st, now);
        if !st.clients.contains_key(client) && st.clients.len() >= MAX_CLIENTS {
            if let Some(oldest) = st
                .clients
                .iter()
                .min_by_key(|(_, v)| v.last_seen_ms)
                .map(|(k, _)| k.clone())
            {
                st.clients.remove(&oldest);
            }
        }
        st.clients.insert(client.to_string(), view);
        let lag = if frame.snapshot {
            st.log.version()
        } else {
            st.log.version().saturating_sub(since)
        };
        self.gauges(&st);
        drop(st);
        let bytes = kvgate_core::sync::encode(&frame);
        let m = &self.metrics;
        let kind = if frame.snapshot { "snapshot" } else { "delta" };
        m.frames_served.get_or_create(&[("type", kind)]).inc();
        m.frame_bytes.inc_by(bytes.len() as u64);
        m.sync_lag_versions.set(gauge_value(lag));
        (frame, bytes)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::hub::HubSettings;
    use kvgate_core::events::{KvEvent, KvEventData, StorageTier, StoredBlock};
    use kvgate_core::index::PrefixIndex;
    use kvgate_core::sync::{decode, SyncState};
    use kvgate_core::WorkerKey;

    fn hub() -> Hub {
        Hub::new(HubSettings {
            sync_log_size: 100,
            meta_refresh_ms: 5000,
            loads_interval_ms: 100,
            active_request_ttl_ms: 1000,
            block_size: 16,
            track_prefill_tokens: true,
            initially_pending: vec![],
        })
    }

    fn stored(id: u64, ext: u64, hash: u64) -> KvEvent {
        KvEvent {
            worker: WorkerKey::new(7, 0),
            event_id: id,
            tier: StorageTier::Device,
            data: KvEventData::Stored {
                parent: None,
                blocks: vec![StoredBlock {
                    external: ext,
                    tokens_hash: hash,
                }],
            },
        }
    }

    #[test]
    fn snapshot_then_deltas_then_quiet() {
        let h = hub();
        h.apply_kv("test", &[stored(0, 1, 11)]);
        assert_eq!(h.news("", 0, 0, 1000), News::Now);
        let (f, bytes) = h.frame("", 0, 0, 1000);
        assert!(f.snapshot && f.workers.is_some() && f.loads.is_some());
        let mut state = SyncState::default();
        let mut index = PrefixIndex::new();
        state
            .apply(&decode(&bytes, 1 << 20).unwrap(), &mut index)
            .unwrap();
        assert_eq!(index.entries(), 1);
        assert_eq!(h.news("", state.epoch, state.version, 1001), News::Nothing);
        h.apply_kv("test", &[stored(1, 2, 12)]);
        assert_eq!(h.news("", state.epoch, state.version, 1002), News::Now);
        let (f, _) = h.frame("", state.epoch, state.version, 1002);
        assert!(!f.snapshot && f.ops.len() == 1 && f.workers.is_none());
        // The periodic refresh re-sends the tables.
        let (f, _) = h.frame("", state.epoch, state.version + 1, 7000);
        assert!(f.workers.is_some() && f.models.is_some());
    }

    #[test]
    fn gap_resets_the_worker() {
        let h = hub();
        h.apply_kv("test", &[stored(0, 1, 11), stored(1, 2, 12)]);
        h.apply_kv("test", &[stored(5, 3, 13)]);
        let st = h.lock();
        assert_eq!(st.totals.gaps, 1);
        assert_eq!(st.indexer.index().worker_blocks(&WorkerKey::new(7, 0)), 0);
        assert!(st.cold.contains_key(&WorkerKey::new(7, 0)));
    }
}
