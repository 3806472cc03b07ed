//! Writing the index and the worker table: KV events from any source (with gap →
//! resync handling), worker resets, and discovery updates (a worker that leaves takes
//! its index entries, load reports and replica bookkeeping with it).
//!
//! **Gap policy.** When a publisher's event ids skip ahead, events were lost and the
//! sidecar no longer knows which blocks that (worker, dp rank) holds. Dynamo asks the
//! worker for its buffered events or a full tree dump; kvgate instead drops every index
//! entry of that (worker, dp rank) (`KvIndexer::reset_worker_key`, shipped to the
//! filter as a `Clear`), marks it *cold* in `/v1/state` and the `cold_workers` gauge,
//! and lets live events rebuild it. Routing stays correct, just less cache-aware for
//! that worker until it stores new blocks: a wrong "cached" claim is worse than a
//! missed hit. A `Cleared` event from the worker ends the cold mark, and so does a
//! recovery: the sidecar asks a cold worker for a dump of its cache
//! (`crate::nats::recovery`) and [`Hub::apply_recovery`] replaces its entries with it.

use super::{Hub, State};
use crate::discovery::Update;
use crate::time::now_ms;
use kvgate_core::events::{KvEvent, KvEventData};
use kvgate_core::{WorkerId, WorkerKey};

impl Hub {
    /// Applies KV events from `source` (a metrics label: `nats`, `jetstream`, `legacy`,
    /// `zmq`).
    pub fn apply_kv(&self, source: &'static str, events: &[KvEvent]) {
        if events.is_empty() {
            return;
        }
        let now = now_ms();
        let mut st = self.lock();
        let mut changed = false;
        for ev in events {
            let out = st.indexer.apply(ev);
            if out.duplicate {
                self.metrics.duplicates.inc();
                st.totals.duplicates += 1;
                continue;
            }
            let kind = match ev.data {
                KvEventData::Stored { .. } => "stored",
                KvEventData::Removed { .. } => "removed",
                KvEventData::Cleared => "cleared",
            };
            self.metrics
                .events_applied
                .get_or_create(&[("source", source), ("kind", kind)])
                .inc();
            st.totals.events += 1;
            if out.dropped_blocks > 0 {
                self.metrics
                    .dropped_blocks
                    .inc_by(out.dropped_blocks as u64);
            }
            if !out.deltas.is_empty() {
                st.log.record(&out.deltas);
                changed = true;
            }
            if matches!(ev.data, KvEventData::Cleared) {
                st.cold.remove(&ev.worker);
            }
            if let Some(gap) = out.gap {
                tracing::warn!(
                    worker = %gap.worker, expected = gap.expected, got = gap.got, source,
                    "KV event gap: resetting the worker's index entries"
                );
                self.metrics.gaps.get_or_create(&[("source", source)]).inc();
                st.totals.gaps += 1;
                self.reset_locked(&mut st, gap.worker, now);
                changed = true;
            }
        }
        st.status.last_event_ms = now;
        if changed {
            self.gauges(&st);
            drop(st);
            self.notify();
        }
    }

    fn reset_locked(&self, st: &mut State, key: WorkerKey, now: u64) {
        let deltas = st.indexer.reset_worker_key(key);
        st.log.record(&deltas);
        st.cold.insert(key, now);
        self.metrics.resyncs.inc();
        st.totals.resyncs += 1;
    }

    /// Resets one (worker, dp rank) after a loss its source could not repair (e.g. a
    /// vLLM replay that no longer has the missing batches; `gap`: counted as a gap of
    /// `source`) or after its publisher restarted.
    pub fn resync_worker(&self, source: &'static str, key: WorkerKey, gap: bool) {
        let mut st = self.lock();
        if gap {
            self.metrics.gaps.get_or_create(&[("source", source)]).inc();
            st.totals.gaps += 1;
        }
        self.reset_locked(&mut st, key, now_ms());
        self.gauges(&st);
        drop(st);
        self.notify();
    }

    /// The (worker, dp rank) keys marked cold, with when.
    pub fn cold_keys(&self) -> Vec<(WorkerKey, u64)> {
        self.lock().cold.iter().map(|(k, t)| (*k, *t)).collect()
    }

    /// Replaces `key`'s entries with a dump of the worker's cache as of `last_event_id`
    /// and ends its cold mark. False (nothing changed) when the dump is older than
    /// events already applied, or the key is no longer cold or no longer a worker's.
    pub fn apply_recovery(&self, key: WorkerKey, events: &[KvEvent], last_event_id: u64) -> bool {
        let mut st = self.lock();
        if !st.cold.contains_key(&key) {
            return false;
        }
        let Some(deltas) = st.indexer.apply_dump(key, events, last_event_id) else {
            return false;
        };
        st.log.record(&deltas);
        st.cold.remove(&key);
        self.gauges(&st);
        drop(st);
        self.notify();
        true
    }

    /// Applies a discovery update.
    pub fn discovery(&self, update: Update) {
        let mut st = self.lock();
        let change = match update {
            Update::Replace(source, infos) => st.table.replace(source, infos),
            Update::Upsert(source, info, lease) => st.table.upsert(source, info, lease),
            Update::Remove(source, id) => st.table.remove(source, id),
        };
        if change.changed {
            for id in &change.removed {
                tracing::info!(worker_id = id, "worker left");
            }
            self.workers_changed(&mut st, &change.removed);
            drop(st);
            self.notify();
        }
    }

    /// Bumps the worker table version and forgets everything about `removed` workers.
    pub(crate) fn workers_changed(&self, st: &mut State, removed: &[WorkerId]) {
        st.gens.workers += 1;
        for &id in removed {
            let deltas = st.indexer.remove_worker(id);
            st.log.record(&deltas);
            st.reports.retain(|k, _| k.worker_id != id);
            let keys: Vec<WorkerKey> = st
                .replicas
                .loads()
                .map(|(k, _)| k)
                .chain(st.own_book.loads().map(|(k, _)| k))
                .filter(|k| k.worker_id == id)
                .collect();
            for k in &keys {
                st.replicas.remove_worker(k);
                st.own_book.remove_worker(k);
            }
            st.forget_freed_replicas();
            st.cold.retain(|k, _| k.worker_id != id);
            st.gens.loads += 1;
        }
        self.gauges(st);
    }
}
