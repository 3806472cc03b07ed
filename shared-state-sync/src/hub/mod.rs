//! The hub: the one piece of state every source writes and every sink reads — the KV
//! indexer and its sync log, the worker table, worker load reports, the bookkeeping of
//! this gateway and of other replicas, the model list, and readiness — behind one
//! mutex, with a `watch` channel that wakes long polls on every change.
//!
//! Nothing awaits while holding the lock; decoding happens before taking it.

mod book;
mod frames;
mod index;
mod view;

pub use frames::News;
pub use view::state_json;

use crate::metrics::{gauge_value, Metrics};
use crate::time::now_ms;
use crate::workers::WorkerTable;
use kvgate_core::events::metrics::WorkerLoadReport;
use kvgate_core::index::KvIndexer;
use kvgate_core::load::LoadBook;
use kvgate_core::sync::{ModelEntry, SyncLog};
use kvgate_core::WorkerKey;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// Settings the hub needs.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// Deltas kept in the sync log.
    pub sync_log_size: usize,
    /// Send worker table, loads and models at least this often.
    pub meta_refresh_ms: u64,
    /// Answer a long poll for load changes alone at most this often.
    pub loads_interval_ms: u64,
    /// Expiry of unfreed bookkeeping.
    pub active_request_ttl_ms: u64,
    /// Default tokens per block (for replica events without a prefill hint).
    pub block_size: u32,
    /// Whether the router tracks prefill tokens (sent in replica events).
    pub track_prefill_tokens: bool,
    /// Readiness conditions pending at start (e.g. `nats`, `kv-events`).
    pub initially_pending: Vec<&'static str>,
}

/// Running totals shown in `/v1/state` (the Prometheus metrics carry the same, labelled).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Totals {
    /// KV events applied.
    pub events: u64,
    /// Messages that failed to decode.
    pub decode_errors: u64,
    /// Gaps detected.
    pub gaps: u64,
    /// Worker resets after gaps.
    pub resyncs: u64,
    /// Duplicate events ignored.
    pub duplicates: u64,
    /// Replica events applied from other routers.
    pub replica_in: u64,
    /// Replica events published.
    pub replica_out: u64,
    /// Load reports applied.
    pub load_reports: u64,
}

/// Change counters of the parts of a frame other than the index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Gens {
    pub workers: u64,
    pub loads: u64,
    pub models: u64,
}

/// What one filter (sync client) was last sent.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClientView {
    pub sent: Gens,
    pub last_full_ms: u64,
    pub last_loads_ms: u64,
    pub last_seen_ms: u64,
}

/// A request this gateway routed (from `POST /v1/bookkeeping`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct OwnRequest {
    pub decode: WorkerKey,
    pub prefill: Option<WorkerKey>,
}

/// Liveness of the event sources and readiness.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    pub pending: BTreeSet<&'static str>,
    pub nats_connected: bool,
    pub nats_used: bool,
    pub nats_down_since_ms: u64,
    pub last_event_ms: u64,
    pub started_ms: u64,
    pub last_tick_ms: u64,
}

/// A housekeeping tick this much later than the previous one means the process was
/// stopped (SIGSTOP, a paused VM, CPU starvation): that time is not held against leases.
const PAUSE_MS: u64 = 1_000;

/// Everything behind the lock.
pub struct State {
    pub(crate) indexer: KvIndexer,
    pub(crate) log: SyncLog,
    pub(crate) table: WorkerTable,
    pub(crate) reports: HashMap<WorkerKey, WorkerLoadReport>,
    pub(crate) replicas: LoadBook<(u64, String)>,
    pub(crate) replica_plans: HashMap<(u64, String), kvgate_core::load::RequestPlan>,
    pub(crate) replica_alias: HashMap<(u64, String), (u64, String)>,
    pub(crate) own_book: LoadBook<u64>,
    pub(crate) own: HashMap<u64, OwnRequest>,
    pub(crate) models: Vec<ModelEntry>,
    pub(crate) gens: Gens,
    pub(crate) cold: BTreeMap<WorkerKey, u64>,
    pub(crate) clients: HashMap<String, ClientView>,
    pub(crate) status: Status,
    pub(crate) totals: Totals,
}

impl State {
    /// Drops plans and aliases of replica requests no longer booked.
    pub(crate) fn forget_freed_replicas(&mut self) {
        let replicas = &self.replicas;
        self.replica_plans.retain(|k, _| replicas.contains(k));
        let plans = &self.replica_plans;
        self.replica_alias
            .retain(|_, base| plans.contains_key(base));
    }

    /// Version of the worker table (bumped on every change).
    pub fn workers_gen(&self) -> u64 {
        self.gens.workers
    }

    /// The worker table.
    pub fn workers(&self) -> Vec<kvgate_core::workers::WorkerInfo> {
        self.table.list()
    }
}

/// The shared state of one sidecar.
pub struct Hub {
    state: Mutex<State>,
    tx: watch::Sender<u64>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Settings.
    pub settings: HubSettings,
    /// Random epoch of this process (never 0).
    pub epoch: u64,
    /// Random router id of this sidecar for replica sync (53-bit, never 0).
    pub router_id: u64,
}

impl Hub {
    /// A hub with an empty index.
    pub fn new(settings: HubSettings) -> Hub {
        let epoch = fastrand::u64(1..);
        let now = now_ms();
        let state = State {
            indexer: KvIndexer::new(),
            log: SyncLog::new(epoch, settings.sync_log_size),
            table: WorkerTable::new(),
            reports: HashMap::new(),
            replicas: LoadBook::new(),
            replica_plans: HashMap::new(),
            replica_alias: HashMap::new(),
            own_book: LoadBook::new(),
            own: HashMap::new(),
            models: Vec::new(),
            gens: Gens::default(),
            cold: BTreeMap::new(),
            clients: HashMap::new(),
            status: Status {
                pending: settings.initially_pending.iter().copied().collect(),
                nats_used: settings.initially_pending.contains(&"nats"),
                nats_down_since_ms: now,
                started_ms: now,
                ..Status::default()
            },
            totals: Totals::default(),
        };
        let (tx, _) = watch::channel(0);
        let hub = Hub {
            state: Mutex::new(state),
            tx,
            metrics: Metrics::new(),
            settings,
            epoch,
            router_id: fastrand::u64(1..(1u64 << 53)),
        };
        hub.metrics.ready.set(0);
        hub
    }

    /// The state, locked (a poisoned lock is taken over: every update leaves it valid).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A receiver that sees every change notification.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    /// Wakes every long poll.
    pub fn notify(&self) {
        self.tx.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Marks a readiness condition as met.
    pub fn done(&self, what: &'static str) {
        let mut st = self.lock();
        if st.status.pending.remove(what) {
            tracing::info!(condition = what, "ready condition met");
        }
        self.refresh_ready(&st);
    }

    /// Adds a readiness condition (e.g. a replay that started).
    pub fn pending(&self, what: &'static str) {
        let mut st = self.lock();
        st.status.pending.insert(what);
        self.refresh_ready(&st);
    }

    /// Records the NATS connection state.
    pub fn set_nats_connected(&self, up: bool) {
        let mut st = self.lock();
        if st.status.nats_connected && !up {
            st.status.nats_down_since_ms = now_ms();
        }
        st.status.nats_connected = up;
        self.metrics.nats_connected.set(i64::from(up));
        self.refresh_ready(&st);
    }

    fn refresh_ready(&self, st: &State) {
        self.metrics.ready.set(i64::from(Self::is_ready(st)));
    }

    fn is_ready(st: &State) -> bool {
        st.status.pending.is_empty() && (!st.status.nats_used || st.status.nats_connected)
    }

    /// Whether the sidecar is ready, and if not, why.
    pub fn readiness(&self) -> Result<(), String> {
        let st = self.lock();
        if Self::is_ready(&st) {
            return Ok(());
        }
        let mut why: Vec<String> = st
            .status
            .pending
            .iter()
            .map(|p| format!("waiting for {p}"))
            .collect();
        if st.status.nats_used && !st.status.nats_connected {
            why.push("NATS disconnected".into());
        }
        why.sort();
        why.dedup();
        Err(why.join("; "))
    }

    /// Milliseconds since the event sources were last known live: while the KV-event
    /// replay is pending, the time since start; while NATS is down, since it went down (or since
    /// the last event from any source, if later); else 0.
    pub(crate) fn source_age(st: &State, now: u64) -> u64 {
        if st.status.pending.iter().any(|p| p.ends_with("kv-events")) {
            return now.saturating_sub(st.status.started_ms);
        }
        if !st.status.nats_used || st.status.nats_connected {
            return 0;
        }
        now.saturating_sub(st.status.nats_down_since_ms.max(st.status.last_event_ms))
    }

    /// Refreshes the gauges that mirror the state.
    pub(crate) fn gauges(&self, st: &State) {
        let m = &self.metrics;
        m.workers.set(gauge_value(st.table.len() as u64));
        m.cold_workers.set(gauge_value(st.cold.len() as u64));
        m.index_entries
            .set(gauge_value(st.indexer.index().entries()));
        m.index_version.set(gauge_value(st.log.version()));
        m.replica_requests
            .set(gauge_value(st.replicas.len() as u64));
        m.source_age_ms
            .set(gauge_value(Self::source_age(st, now_ms())));
    }

    /// Refreshes the gauges (before a metrics scrape).
    pub fn tick_gauges(&self) {
        let st = self.lock();
        self.gauges(&st);
    }

    /// Periodic housekeeping: lease expiry, bookkeeping expiry, gauges.
    pub fn tick(&self) {
        let now = now_ms();
        let mut st = self.lock();
        // Announcements cannot arrive while NATS is down or while this process is stopped:
        // that time does not run down workers' leases (else a short outage would drop
        // every worker and its index, which idle prefixes never rebuild).
        let last = std::mem::replace(&mut st.status.last_tick_ms, now);
        let since = if last == 0 {
            0
        } else {
            now.saturating_sub(last)
        };
        let deaf = st.status.nats_used && !st.status.nats_connected;
        if deaf || since > PAUSE_MS {
            st.table.extend_leases(since);
        }
        let change = st.table.expire(now);
        let mut notify = false;
        if change.changed {
            for id in &change.removed {
                tracing::info!(worker_id = id, "worker lease expired");
            }
            self.workers_changed(&mut st, &change.removed);
            notify = true;
        }
        let ttl = self.settings.active_request_ttl_ms;
        if !st.replicas.expire(now, ttl).is_empty() {
            st.forget_freed_replicas();
            st.gens.loads += 1;
            notify = true;
        }
        let expired = st.own_book.expire(now, ttl);
        for id in expired {
            st.own.remove(&id);
        }
        self.gauges(&st);
        drop(st);
        if notify {
            self.notify();
        }
    }

    /// Replaces the model list.
    pub fn set_models(&self, models: Vec<ModelEntry>) {
        let mut st = self.lock();
        if st.models != models {
            st.models = models;
            st.gens.models += 1;
            drop(st);
            self.notify();
        }
    }

    /// Counts a message that could not be decoded.
    pub fn decode_error(&self, source: &'static str, err: &dyn std::fmt::Display) {
        self.metrics
            .decode_errors
            .get_or_create(&[("source", source)])
            .inc();
        self.lock().totals.decode_errors += 1;
        tracing::debug!(source, "undecodable message: {err}");
    }
}
