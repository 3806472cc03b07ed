//! The load soak, shared by the short test (`make test`) and the `kvgate-soak` binary
//! (`make soak`): the whole stack (Envoy + filter, sidecar, NATS, mock workers with
//! small KV pools so their caches fill, evict and the index churns) under a fixed rate
//! of requests from a finite set of prompts; RSS of Envoy and the sidecar sampled from
//! `/proc` every few seconds; per-window latency percentiles and errors.
//!
//! **Memory bound.** After the warm-up, the peak RSS of the second half of the run may
//! exceed the peak of the first half by at most [`GROWTH_BOUND_FRACTION`] of it plus
//! [`GROWTH_BOUND_KIB`] (allocator and V8 heap noise); a leak proportional to the
//! number of requests breaks it.

use super::load::{Load, LoadConfig, Sample};
use super::observe::{envoy_inflight, quantile, rss_kib, Booked};
use super::report::Table;
use kvgate_stack::{Stack, StackError, StackOptions};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Allowed growth of the second-half RSS peak over the first-half peak, as a fraction.
pub const GROWTH_BOUND_FRACTION: f64 = 0.05;
/// Allowed growth of the second-half RSS peak over the first-half peak, absolute (KiB).
pub const GROWTH_BOUND_KIB: u64 = 8 * 1024;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// Where the stack's logs go.
    pub dir: PathBuf,
    /// Length of the measured run (after the warm-up).
    pub duration: Duration,
    /// Warm-up before measuring (caches fill, V8 compiles).
    pub warmup: Duration,
    /// Requests per second.
    pub rate: f64,
    /// Mock workers.
    pub workers: usize,
    /// KV blocks per mock worker (small: caches fill and evict during the run).
    pub kv_blocks: usize,
    /// Latency percentile window.
    pub window: Duration,
    /// RSS sampling period.
    pub sample_every: Duration,
}

impl SoakConfig {
    /// A run of `duration` at `rate` requests/s with files under `dir`.
    pub fn new(dir: PathBuf, duration: Duration, rate: f64) -> Self {
        SoakConfig {
            dir,
            duration,
            warmup: Duration::from_secs(10),
            rate,
            workers: 4,
            kv_blocks: 1024,
            window: Duration::from_secs(60),
            sample_every: Duration::from_secs(5),
        }
    }
}

/// One latency window.
#[derive(Debug, Clone)]
pub struct Window {
    /// Start, seconds since the measured run began.
    pub from_s: f64,
    /// Requests that ended in it.
    pub requests: usize,
    /// Failed requests.
    pub errors: usize,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// One memory sample.
#[derive(Debug, Clone, Copy)]
pub struct MemSample {
    /// Seconds since the measured run began.
    pub t_s: f64,
    /// Envoy RSS, KiB.
    pub envoy_kib: u64,
    /// Sidecar RSS, KiB.
    pub sidecar_kib: u64,
}

/// RSS peaks of one process in both halves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Growth {
    /// Peak of the first half, KiB.
    pub first_kib: u64,
    /// Peak of the second half, KiB.
    pub second_kib: u64,
}

impl Growth {
    fn of(samples: &[MemSample], f: impl Fn(&MemSample) -> u64) -> Growth {
        let half = samples.len() / 2;
        let peak = |s: &[MemSample]| s.iter().map(&f).max().unwrap_or(0);
        Growth {
            first_kib: peak(samples.get(..half).unwrap_or_default()),
            second_kib: peak(samples.get(half..).unwrap_or_default()),
        }
    }

    /// The allowed second-half peak.
    pub fn bound_kib(&self) -> u64 {
        self.first_kib + (self.first_kib as f64 * GROWTH_BOUND_FRACTION) as u64 + GROWTH_BOUND_KIB
    }

    /// Within the bound.
    pub fn ok(&self) -> bool {
        self.second_kib <= self.bound_kib()
    }

    /// Growth in KiB (negative: shrank).
    pub fn delta_kib(&self) -> i64 {
        self.second_kib as i64 - self.first_kib as i64
    }
}

/// The outcome of a soak.
#[derive(Debug, Clone)]
pub struct SoakReport {
    /// The configuration.
    pub config: SoakConfig,
    /// Requests sent in the measured run.
    pub requests: usize,
    /// Failed requests (any, including the warm-up).
    pub errors: usize,
    /// Failures by kind.
    pub error_kinds: std::collections::BTreeMap<String, usize>,
    /// Latency windows.
    pub windows: Vec<Window>,
    /// Memory samples.
    pub memory: Vec<MemSample>,
    /// Envoy RSS growth.
    pub envoy: Growth,
    /// Sidecar RSS growth.
    pub sidecar: Growth,
    /// The filter's in-flight gauges after the load stopped.
    pub inflight_after: Booked,
    /// Whole-run p50 / p99 latency, ms.
    pub overall_ms: (f64, f64),
}

impl SoakReport {
    /// No error, memory within bounds, nothing left booked.
    pub fn ok(&self) -> bool {
        self.errors == 0 && self.envoy.ok() && self.sidecar.ok() && self.inflight_after.is_zero()
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut out = format!(
            "Soak: {:.0} s at {} requests/s after a {:.0} s warm-up, {} mock workers ({} KV blocks each), \
             {} requests, {} errors{}; latency p50 {:.1} ms, p99 {:.1} ms.\n\n",
            c.duration.as_secs_f64(),
            c.rate,
            c.warmup.as_secs_f64(),
            c.workers,
            c.kv_blocks,
            self.requests,
            self.errors,
            if self.error_kinds.is_empty() {
                String::new()
            } else {
                format!(" ({:?})", self.error_kinds)
            },
            self.overall_ms.0,
            self.overall_ms.1,
        );
        let mut t = Table::new(&["window", "requests", "errors", "p50 ms", "p99 ms"]);
        for w in &self.windows {
            t.row(vec![
                format!("{:.0}–{:.0} s", w.from_s, w.from_s + c.window.as_secs_f64()),
                w.requests.to_string(),
                w.errors.to_string(),
                format!("{:.1}", w.p50_ms),
                format!("{:.1}", w.p99_ms),
            ]);
        }
        out.push_str(&t.markdown());
        let mut m = Table::new(&[
            "process",
            "RSS peak 1st half",
            "RSS peak 2nd half",
            "growth",
            "bound",
            "ok",
        ]);
        for (name, g) in [
            ("Envoy (2 wasm VMs)", self.envoy),
            ("kvgate-sync", self.sidecar),
        ] {
            m.row(vec![
                name.into(),
                format!("{:.1} MiB", g.first_kib as f64 / 1024.0),
                format!("{:.1} MiB", g.second_kib as f64 / 1024.0),
                format!("{:+.1} MiB", g.delta_kib() as f64 / 1024.0),
                format!("≤ {:.1} MiB", g.bound_kib() as f64 / 1024.0),
                if g.ok() { "yes" } else { "NO" }.into(),
            ]);
        }
        out.push('\n');
        out.push_str(&m.markdown());
        out.push_str(&format!(
            "\nBound: second-half peak ≤ first-half peak × {:.2} + {} MiB. In flight after the run (filter gauges): {:?}.\n",
            1.0 + GROWTH_BOUND_FRACTION,
            GROWTH_BOUND_KIB / 1024,
            self.inflight_after
        ));
        out
    }

    /// The report as JSON (for tooling).
    pub fn json(&self) -> serde_json::Value {
        json!({
            "duration_s": self.config.duration.as_secs_f64(),
            "rate": self.config.rate,
            "requests": self.requests,
            "errors": self.errors,
            "windows": self.windows.iter().map(|w| json!({"from_s": w.from_s, "requests": w.requests, "errors": w.errors, "p50_ms": w.p50_ms, "p99_ms": w.p99_ms})).collect::<Vec<_>>(),
            "memory": self.memory.iter().map(|m| json!({"t_s": m.t_s, "envoy_kib": m.envoy_kib, "sidecar_kib": m.sidecar_kib})).collect::<Vec<_>>(),
            "envoy_growth_kib": self.envoy.delta_kib(),
            "sidecar_growth_kib": self.sidecar.delta_kib(),
            "ok": self.ok(),
        })
    }
}

/// Runs a soak; `progress` is called after each memory sample.
pub fn run(
    cfg: &SoakConfig,
    mut progress: impl FnMut(&MemSample, &[Sample]),
) -> Result<SoakReport, StackError> {
    let mut opts = StackOptions::new(&cfg.dir);
    opts.workers = cfg.workers;
    opts.worker_args = vec!["--num-gpu-blocks".into(), cfg.kv_blocks.to_string()];
    opts.plugin = json!({"decision_header": true});
    let stack = Stack::start(&opts)?;
    stack.wait_routable(Duration::from_secs(90))?;
    let pid = |p: Option<u32>| p.unwrap_or(0);
    let envoy_pid = pid(stack.envoy.proc.pid());
    let sidecar_pid = pid(stack.sidecar.as_ref().and_then(|s| s.proc.pid()));
    let mut load_cfg = LoadConfig::new(&format!("127.0.0.1:{}", stack.envoy.port));
    load_cfg.rate = cfg.rate;
    load_cfg.threads = 16;
    load_cfg.prefixes = 8;
    load_cfg.questions = Some(400);
    load_cfg.max_tokens = 16;
    let load = Load::start(load_cfg);
    std::thread::sleep(cfg.warmup);
    let t0 = load.elapsed();
    let begin = Instant::now();
    let mut memory = Vec::new();
    while begin.elapsed() < cfg.duration {
        let next = begin + cfg.sample_every * (memory.len() as u32 + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let m = MemSample {
            t_s: begin.elapsed().as_secs_f64(),
            envoy_kib: rss_kib(envoy_pid).unwrap_or(0),
            sidecar_kib: rss_kib(sidecar_pid).unwrap_or(0),
        };
        memory.push(m);
        progress(&m, &load.samples());
    }
    let samples = load.stop();
    // Let the last responses' on_log run, then read the gauges.
    let inflight_after = kvgate_stack::wait_for(Duration::from_secs(10), || {
        Some(envoy_inflight(&stack.envoy)).filter(Booked::is_zero)
    })
    .unwrap_or_else(|| envoy_inflight(&stack.envoy));
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.start >= t0).collect();
    let mut error_kinds = std::collections::BTreeMap::new();
    for s in samples.iter().filter(|s| s.failed()) {
        *error_kinds.entry(s.failure()).or_insert(0) += 1;
    }
    let lat = |v: &[&Sample]| -> Vec<f64> {
        v.iter()
            .filter(|s| !s.failed())
            .map(|s| s.latency.as_secs_f64() * 1000.0)
            .collect()
    };
    let mut windows = Vec::new();
    let mut from = Duration::ZERO;
    while from < cfg.duration {
        let to = from + cfg.window;
        let in_w: Vec<&Sample> = measured
            .iter()
            .copied()
            .filter(|s| s.start >= t0 + from && s.start < t0 + to)
            .collect();
        let l = lat(&in_w);
        windows.push(Window {
            from_s: from.as_secs_f64(),
            requests: in_w.len(),
            errors: in_w.iter().filter(|s| s.failed()).count(),
            p50_ms: quantile(&l, 0.5),
            p99_ms: quantile(&l, 0.99),
        });
        from = to;
    }
    let all = lat(&measured);
    Ok(SoakReport {
        config: cfg.clone(),
        requests: measured.len(),
        errors: samples.iter().filter(|s| s.failed()).count(),
        error_kinds,
        windows,
        envoy: Growth::of(&memory, |m| m.envoy_kib),
        sidecar: Growth::of(&memory, |m| m.sidecar_kib),
        memory,
        inflight_after,
        overall_ms: (quantile(&all, 0.5), quantile(&all, 0.99)),
    })
}
