//! The picker's Prometheus metrics, in the sidecar's registry under `kvgate_sync_epp_`:
//! the engine's own stats (the filter's `kvgate.*` names as the `name` label) and the
//! picker's streams and readiness.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The engine stat a sample belongs to (`kvgate.decisions.routed`, ...).
pub type StatLabel = [(&'static str, String); 1];

fn histogram() -> Histogram {
    // 1 .. ~1e7: microseconds of a stage, blocks, tokens, milliseconds of a model load.
    Histogram::new(exponential_buckets(1.0, 4.0, 12))
}

/// Every metric of the picker.
#[derive(Debug)]
pub struct EppMetrics {
    /// The engine's counters, by stat name.
    pub engine_counters: Family<StatLabel, Counter>,
    /// The engine's gauges (in-flight bookkeeping, index blocks), by stat name.
    pub engine_gauges: Family<StatLabel, Gauge>,
    /// The engine's histograms (stage µs, matched blocks, prompt tokens), by stat name.
    pub engine_histograms: Family<StatLabel, Histogram, fn() -> Histogram>,
    /// ext_proc streams opened (one per HTTP request through the gateway).
    pub streams: Counter,
    /// ext_proc streams open now.
    pub open_streams: Gauge,
    /// Whether the picker is ready (index synced, tokenizers loaded): 0/1.
    pub ready: Gauge,
}

impl Default for EppMetrics {
    fn default() -> Self {
        EppMetrics {
            engine_counters: Family::default(),
            engine_gauges: Family::default(),
            engine_histograms: Family::new_with_constructor(histogram),
            streams: Counter::default(),
            open_streams: Gauge::default(),
            ready: Gauge::default(),
        }
    }
}

impl EppMetrics {
    /// Registers every metric in `r` (the sidecar's registry, sub-prefix `epp`).
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "engine",
            "The picker engine's counters, by filter stat name",
            self.engine_counters.clone(),
        );
        r.register(
            "engine_gauge",
            "The picker engine's gauges, by filter stat name",
            self.engine_gauges.clone(),
        );
        r.register(
            "engine_histogram",
            "The picker engine's histograms, by filter stat name",
            self.engine_histograms.clone(),
        );
        r.register(
            "streams",
            "ext_proc streams opened (one per request)",
            self.streams.clone(),
        );
        r.register(
            "open_streams",
            "ext_proc streams open now",
            self.open_streams.clone(),
        );
        r.register(
            "ready",
            "Whether the endpoint picker is ready",
            self.ready.clone(),
        );
    }
}
