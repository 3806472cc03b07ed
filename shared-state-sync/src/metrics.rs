//! Prometheus metrics of the sidecar (`GET /metrics`, text exposition format).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A one-label set.
pub type Label = [(&'static str, &'static str); 1];
/// A two-label set.
pub type Labels2 = [(&'static str, &'static str); 2];

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    /// KV events applied to the index, by source and kind (stored, removed, cleared).
    pub events_applied: Family<Labels2, Counter>,
    /// Messages that could not be decoded, by source.
    pub decode_errors: Family<Label, Counter>,
    /// Event-id or batch-sequence gaps detected, by source.
    pub gaps: Family<Label, Counter>,
    /// Workers reset (index entries dropped) to resynchronise after a gap.
    pub resyncs: Counter,
    /// Replay requests sent to vLLM replay sockets.
    pub zmq_replays: Counter,
    /// Recovery queries to cold workers, by result (dump, stale, no_answer, error).
    pub recoveries: Family<Label, Counter>,
    /// Events ignored as already applied.
    pub duplicates: Counter,
    /// Stored blocks dropped because their parent block was unknown.
    pub dropped_blocks: Counter,
    /// Workers in the table.
    pub workers: Gauge,
    /// Workers marked cold after a resync.
    pub cold_workers: Gauge,
    /// (worker, block) entries in the index.
    pub index_entries: Gauge,
    /// Index version (deltas recorded since start).
    pub index_version: Gauge,
    /// Sync frames served, by type (snapshot, delta).
    pub frames_served: Family<Label, Counter>,
    /// Bytes of sync frames served.
    pub frame_bytes: Counter,
    /// Milliseconds since the event sources were last known live (as sent to the filter).
    pub source_age_ms: Gauge,
    /// Versions the last served filter was behind when it asked (sync lag).
    pub sync_lag_versions: Gauge,
    /// Replica-sync events, by direction (in, out) — `in` counts other routers' events.
    pub replica_events: Family<Label, Counter>,
    /// Other routers' requests in the replica bookkeeping.
    pub replica_requests: Gauge,
    /// Bookkeeping steps received from the filter.
    pub bookkeeping_events: Counter,
    /// Worker load reports applied.
    pub load_reports: Counter,
    /// Worker announcements received.
    pub announcements: Counter,
    /// Whether the NATS connection is up (0/1).
    pub nats_connected: Gauge,
    /// Whether the sidecar is ready (0/1).
    pub ready: Gauge,
    /// The endpoint picker's metrics (`kvgate_sync_epp_*`, with `--epp`).
    #[cfg(feature = "epp")]
    pub epp: std::sync::Arc<crate::epp::metrics::EppMetrics>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `kvgate_sync_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kvgate_sync");
        let m = Metrics {
            registry: Registry::default(),
            events_applied: Family::default(),
            decode_errors: Family::default(),
            gaps: Family::default(),
            resyncs: Counter::default(),
            zmq_replays: Counter::default(),
            recoveries: Family::default(),
            duplicates: Counter::default(),
            dropped_blocks: Counter::default(),
            workers: Gauge::default(),
            cold_workers: Gauge::default(),
            index_entries: Gauge::default(),
            index_version: Gauge::default(),
            frames_served: Family::default(),
            frame_bytes: Counter::default(),
            source_age_ms: Gauge::default(),
            sync_lag_versions: Gauge::default(),
            replica_events: Family::default(),
            replica_requests: Gauge::default(),
            bookkeeping_events: Counter::default(),
            load_reports: Counter::default(),
            announcements: Counter::default(),
            nats_connected: Gauge::default(),
            ready: Gauge::default(),
            #[cfg(feature = "epp")]
            epp: Default::default(),
        };
        let r = &mut registry;
        r.register(
            "events_applied",
            "KV events applied, by source and kind",
            m.events_applied.clone(),
        );
        r.register(
            "decode_errors",
            "Messages that could not be decoded, by source",
            m.decode_errors.clone(),
        );
        r.register(
            "gaps",
            "Event-id or batch-sequence gaps detected, by source",
            m.gaps.clone(),
        );
        r.register(
            "resyncs",
            "Worker index resets after a gap",
            m.resyncs.clone(),
        );
        r.register(
            "recoveries",
            "Recovery queries to cold workers (worker KV query), by result",
            m.recoveries.clone(),
        );
        r.register(
            "zmq_replays",
            "Replay requests sent to vLLM replay sockets",
            m.zmq_replays.clone(),
        );
        r.register(
            "duplicates",
            "KV events ignored as already applied",
            m.duplicates.clone(),
        );
        r.register(
            "dropped_blocks",
            "Stored blocks dropped for an unknown parent",
            m.dropped_blocks.clone(),
        );
        r.register("workers", "Workers in the table", m.workers.clone());
        r.register(
            "cold_workers",
            "Workers whose index is being rebuilt after a resync",
            m.cold_workers.clone(),
        );
        r.register(
            "index_entries",
            "(worker, block) entries in the index",
            m.index_entries.clone(),
        );
        r.register(
            "index_version",
            "Index version (deltas recorded since start)",
            m.index_version.clone(),
        );
        r.register(
            "frames_served",
            "Sync frames served, by type",
            m.frames_served.clone(),
        );
        r.register(
            "frame_bytes",
            "Bytes of sync frames served",
            m.frame_bytes.clone(),
        );
        r.register(
            "source_age_ms",
            "Milliseconds since the event sources were last known live",
            m.source_age_ms.clone(),
        );
        r.register(
            "sync_lag_versions",
            "Versions the filter was behind at its last request",
            m.sync_lag_versions.clone(),
        );
        r.register(
            "replica_events",
            "Replica-sync events, by direction",
            m.replica_events.clone(),
        );
        r.register(
            "replica_requests",
            "Other routers' requests in the replica bookkeeping",
            m.replica_requests.clone(),
        );
        r.register(
            "bookkeeping_events",
            "Bookkeeping steps received from the filter",
            m.bookkeeping_events.clone(),
        );
        r.register(
            "load_reports",
            "Worker load reports applied",
            m.load_reports.clone(),
        );
        r.register(
            "announcements",
            "Worker announcements received",
            m.announcements.clone(),
        );
        r.register(
            "nats_connected",
            "Whether the NATS connection is up",
            m.nats_connected.clone(),
        );
        r.register("ready", "Whether the sidecar is ready", m.ready.clone());
        #[cfg(feature = "epp")]
        m.epp.register(r.sub_registry_with_prefix("epp"));
        Metrics { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Clamps a count into a gauge value.
pub fn gauge_value(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
