//! `kvgate-bench` (`make bench`): routing quality on real traces and the gateway's cost in
//! the request path, measured side by side in one run on this machine.
//!
//! ```text
//! trace ─► load generator ─► Envoy (baseline, or + kvgate) ─► 4 mock engines ─► KV events ─► NATS ─► kvgate-sync
//!           (policies)          ▲ x-gateway-destination-endpoint      │ /kvgate/stats deltas
//!                               └ driver-side policies set it         └ hit ratio, per-worker load
//! ```
//!
//! Phases, each reported in `target/bench/report.json` (see [`report`]):
//! 1. **Quality** ([`quality`]): one trace ([`trace`]: Mooncake JSONL, ShareGPT JSON,
//!    MT-bench JSONL) is replayed through the real stack once per policy ([`policy`]), on
//!    the same mock engines, their caches cleared in between; then, on a fleet of 8
//!    engines at the same load per engine, the few policies the real-vs-virtual agreement
//!    needs ([`BenchConfig::real_runs`]). Each replay set is compared with virtual-time
//!    replays of the same traffic ([`sweep::agreement`]). Driver-side policies
//!    (`round_robin`, `random`, `least_load`, `char_prefix`, `oracle`) pick the worker
//!    themselves and send the pick through a plain Envoy (`override_host` honours
//!    `x-gateway-destination-endpoint`); `kvgate_approx` and `kvgate_events` go through
//!    Envoy with the filter, `epp` through Envoy's ext_proc to kvgate's endpoint picker
//!    ([`epp`]).
//! 2. **Overhead** ([`overhead`]): plain Envoy vs Envoy + kvgate vs Envoy + ext_proc to
//!    kvgate's endpoint picker (listeners with `exact_balance`) in front of the same
//!    trivial upstream (`kvgate-echo`, [`echo`]),
//!    driven by a load generator in its own process (`kvgate-loadgen`, [`loadgen`]), both
//!    pinned away from Envoy: closed-loop capacity and open-loop latency at fixed rates,
//!    Envoy CPU per request (+ the picker's), for first-seen 2k/16k chats, multi-turn and agentic bodies;
//!    the filter's own histograms give the in-VM breakdown and its gauges each VM's memory.
//! 3. **Sidecar** ([`sidecar`]): KV events ingested per second per core, and the
//!    event → decision visibility lag through NATS, the sidecar and the filter.
//!
//! Times in the quality phase are reported in the trace's time scale (wall time ×
//! `--speedup`, since the engines run that much faster than real time), and raw.

// Test support reads JSON documents with `value["key"]`, which yields Null instead of
// panicking on reads; slices are bounds-checked by construction here.
#![allow(clippy::indexing_slicing)]

pub mod client;
pub mod echo;
pub mod epp;
pub mod loadgen;
pub mod model;
pub mod overhead;
pub mod plot;
pub mod policy;
pub mod quality;
pub mod report;
pub mod sidecar;
pub mod stats;
pub mod sweep;
pub mod sys;
pub mod trace;

use kvgate_stack::{Envoy, EnvoyKind, EnvoyOptions, Nats, Sidecar, StackError, Tools, Worker};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why the bench failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A process of the stack could not be started.
    #[error(transparent)]
    Stack(#[from] StackError),
    /// File or process I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The trace could not be read.
    #[error("trace {path}: {detail}")]
    Trace {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
    /// An HTTP exchange failed.
    #[error("http: {0}")]
    Http(String),
    /// NATS failed.
    #[error("nats: {0}")]
    Nats(String),
    /// JSON encoding or decoding failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The picture could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
    /// Interrupted (Ctrl-C).
    #[error("interrupted")]
    Interrupted,
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

/// Result of the bench.
pub type Result<T> = std::result::Result<T, BenchError>;

/// A cancellation flag set by Ctrl-C; every phase checks it and returns early, so the
/// processes it started are stopped by their handles.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Sets the flag.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether it is set.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// `Err(Interrupted)` once set.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(BenchError::Interrupted)
        } else {
            Ok(())
        }
    }
}

/// Everything the bench is told.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The trace file (format auto-detected).
    pub trace: PathBuf,
    /// Where report.json, report.md and report.svg go.
    pub out_dir: PathBuf,
    /// Logs and rendered configs of the processes.
    pub work_dir: PathBuf,
    /// Mock-engine counts of the real-stack replays: the first runs every policy of
    /// `policies`, each further one those of `real_policies_extra` (see
    /// [`BenchConfig::real_runs`]).
    pub real_workers: Vec<usize>,
    /// The policies replayed on the real stack with the engine counts after the first.
    pub real_policies_extra: Vec<policy::PolicyKind>,
    /// Engine time scale (`mock-worker --speedup`): the trace is replayed this much faster.
    pub speedup: f64,
    /// Arrival-rate multiplier on top of the trace's own rate (2 = twice the traffic),
    /// given for `sweep.reference_workers` engines: with N engines the real stack replays
    /// at this × N / `sweep.reference_workers` (the same load per engine).
    pub load: f64,
    /// Mooncake traces: trace seconds skipped before the replayed window.
    pub trace_start: f64,
    /// Trace seconds to replay (from the window's start).
    pub trace_seconds: f64,
    /// At most this many requests (None = all in the slice).
    pub max_requests: Option<usize>,
    /// Cap on the output tokens of each request.
    pub max_output_tokens: u32,
    /// KV pool of each engine, in 16-token blocks.
    pub num_gpu_blocks: usize,
    /// Sessions per trace second for chat traces (no timestamps of their own).
    pub chat_rate: f64,
    /// Pause between the turns of a chat session, trace milliseconds.
    pub think_ms: f64,
    /// Policies to compare, in order.
    pub policies: Vec<policy::PolicyKind>,
    /// Seed of every random choice.
    pub seed: u64,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// Overhead phase.
    pub overhead: overhead::OverheadConfig,
    /// Sidecar phase.
    pub sidecar: sidecar::SidecarConfig,
    /// The virtual-time sweep.
    pub sweep: sweep::SweepConfig,
    /// Run the virtual-time sweep.
    pub run_sweep: bool,
    /// Run the quality phase.
    pub run_quality: bool,
    /// Run the overhead phase.
    pub run_overhead: bool,
    /// Run the sidecar phase.
    pub run_sidecar: bool,
    /// Show progress bars.
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

impl BenchConfig {
    /// The defaults of `make bench` with trace `trace`, writing under `out_dir`.
    pub fn new(trace: &Path, out_dir: &Path) -> Self {
        BenchConfig {
            trace: trace.to_path_buf(),
            out_dir: out_dir.to_path_buf(),
            work_dir: out_dir.join("run"),
            real_workers: vec![4, 8],
            real_policies_extra: REAL_POLICIES_EXTRA.to_vec(),
            speedup: 10.0,
            load: 1.0,
            trace_start: 0.0,
            trace_seconds: 300.0,
            max_requests: None,
            max_output_tokens: 32,
            num_gpu_blocks: 16_384,
            chat_rate: 2.0,
            think_ms: 2000.0,
            policies: policy::PolicyKind::LIVE.to_vec(),
            seed: 7,
            envoy_concurrency: 2,
            overhead: overhead::OverheadConfig::default(),
            sidecar: sidecar::SidecarConfig::default(),
            sweep: sweep::SweepConfig::default(),
            run_sweep: true,
            run_quality: true,
            run_overhead: true,
            run_sidecar: true,
            progress: true,
            command: String::new(),
        }
    }
}

/// The policies the real stack replays with its engine counts after the first: enough for
/// the real-vs-virtual agreement to show the filter, with and without KV events, matches
/// its virtual-time model next to a driver-side baseline.
pub const REAL_POLICIES_EXTRA: [policy::PolicyKind; 3] = [
    policy::PolicyKind::RoundRobin,
    policy::PolicyKind::KvgateApprox,
    policy::PolicyKind::KvgateEvents,
];

/// NATS, the mock engines and the sidecar of one real-stack replay set (the first is also
/// the sidecar phase's).
pub struct Fleet {
    // Fields drop in this order: the engines and the sidecar stop while NATS still runs
    // (an engine that lost NATS takes seconds to shut down).
    /// The engines (instance ids 1..=n).
    pub workers: Vec<Worker>,
    /// kvgate-sync.
    pub sidecar: Sidecar,
    /// nats-server.
    pub nats: Nats,
    /// Paths of the parts.
    pub tools: Tools,
    /// Logs.
    pub dir: PathBuf,
    /// The engines' shared request log (engine-side TTFT per request).
    pub request_log: PathBuf,
}

impl Fleet {
    /// Starts NATS, `workers` engines and the sidecar, their logs and files under `dir`
    /// (one directory per fleet: NATS' store, the request log and the logs are per fleet;
    /// ports are free ones).
    pub fn start(cfg: &BenchConfig, tools: &Tools, workers: usize, dir: &Path) -> Result<Fleet> {
        std::fs::create_dir_all(dir)?;
        let nats = Nats::start(tools, dir)?;
        let request_log = dir.join("engine-requests.jsonl");
        let args: Vec<String> = vec![
            "--request-log".into(),
            request_log.display().to_string(),
            "--nats-url".into(),
            nats.url(),
            "--speedup".into(),
            cfg.speedup.to_string(),
            "--num-gpu-blocks".into(),
            cfg.num_gpu_blocks.to_string(),
            "--default-max-tokens".into(),
            cfg.max_output_tokens.to_string(),
        ];
        // Started side by side: each loads its tokenizer before it listens.
        let started: Vec<std::result::Result<Worker, StackError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=workers.max(1) as u64)
                .map(|id| {
                    let args = &args;
                    s.spawn(move || Worker::start(tools, dir, id, args))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(StackError::Io(std::io::Error::other(
                            "a mock engine's start panicked",
                        )))
                    })
                })
                .collect()
        });
        let mut engines = Vec::new();
        for w in started {
            engines.push(w?);
        }
        let sidecar = Sidecar::start(
            tools,
            dir,
            &[
                "--nats-url".into(),
                nats.url(),
                "--model".into(),
                format!("{}={}", kvgate_stack::MODEL, tools.model_dir.display()),
            ],
        )?;
        Ok(Fleet {
            nats,
            workers: engines,
            sidecar,
            tools: tools.clone(),
            dir: dir.to_path_buf(),
            request_log,
        })
    }

    /// The engines' endpoints.
    pub fn endpoints(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.endpoint.clone()).collect()
    }

    /// Starts an Envoy of `kind` in front of `endpoints` with filter configuration
    /// overrides `plugin` (sidecar mode), named `name` in the logs.
    pub fn envoy(
        &self,
        kind: EnvoyKind,
        plugin: Value,
        endpoints: Vec<String>,
        concurrency: u32,
        name: &str,
    ) -> Result<Envoy> {
        let mut config = serde_json::json!({ "sync_wait_ms": 500 });
        if let (Value::Object(c), Value::Object(o)) = (&mut config, plugin) {
            c.extend(o);
        }
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let opts = EnvoyOptions {
            kind,
            plugin_config: config,
            workers: endpoints,
            sidecar_port: self.sidecar.port,
            sidecar_token: self.sidecar.token.clone(),
            concurrency,
            ..EnvoyOptions::default()
        };
        Ok(Envoy::start(&self.tools, &opts, &dir)?)
    }
}

/// Polls `f` every `every` until it returns `Some`, `timeout` passes (None) or the run is
/// cancelled (None).
pub fn poll<T>(
    cancel: &Cancel,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if cancel.is_cancelled() || std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// Runs every enabled phase and writes the report; returns it.
pub fn run(cfg: &BenchConfig, cancel: &Cancel) -> Result<report::Report> {
    let started = std::time::Instant::now();
    let tools = Tools::from_env()?;
    std::fs::create_dir_all(&cfg.out_dir)?;
    let _ = std::fs::remove_dir_all(&cfg.work_dir);
    std::fs::create_dir_all(&cfg.work_dir)?;
    let machine = sys::machine_info(&tools.repo);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    {
        let cancel = cancel.clone();
        rt.spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("kvgate-bench: interrupted, stopping ...");
                cancel.cancel();
            }
        });
    }
    let mut report = report::Report::new(cfg, machine);
    let trace = trace::load(&cfg.trace, &cfg.trace_options())?;
    report.trace = trace.summary();
    let runs = cfg.real_runs();
    eprintln!(
        "kvgate-bench: {} ({}: {} requests in {} sessions, {:.0} trace-s); starting NATS, kvgate-sync and {} mock engines ...",
        cfg.trace.display(),
        trace.format.name(),
        trace.requests(),
        trace.sessions.len(),
        trace.span_ms / 1000.0,
        cfg.workers()
    );
    let mut phase = std::time::Instant::now();
    let mut lap = |name: &str, report: &mut report::Report| {
        report.phase_seconds.insert(
            name.to_string(),
            stats::round(phase.elapsed().as_secs_f64(), 1),
        );
        phase = std::time::Instant::now();
    };
    // The kvgate VMs of the sweep and of the agreement's virtual-time replays (which need
    // a trace with block prompts, as the sweep does).
    let agreement = cfg.run_quality && sweep::replayable(&trace);
    let files = if cfg.run_sweep || agreement {
        Some(sweep::model_files(&tools.model_dir)?)
    } else {
        None
    };
    let mut swept = None;
    if let (true, Some(files)) = (cfg.run_sweep, &files) {
        let mut opts = cfg.trace_options();
        opts.max_seconds = Some(cfg.sweep.trace_seconds).filter(|s| *s > 0.0);
        opts.max_requests = None;
        let slice = trace::load(&cfg.trace, &opts)?;
        eprintln!(
            "kvgate-bench: virtual-time sweep: {} requests ({:.0} trace-s), loads {:?}, {:?} engines, {} seeds, {} threads ...",
            slice.requests(),
            cfg.sweep.trace_seconds,
            cfg.sweep.loads,
            cfg.sweep.workers,
            cfg.sweep.seeds,
            cfg.sweep.threads
        );
        swept = Some(sweep::run(&cfg.sweep, &slice, files, cancel)?);
        cancel.check()?;
        lap("sweep", &mut report);
    }
    let fleet = if (cfg.run_quality && !runs.is_empty()) || cfg.run_sidecar {
        let f = Fleet::start(cfg, &tools, cfg.workers(), &cfg.work_dir)?;
        lap("start", &mut report);
        Some(f)
    } else {
        None
    };
    if let (true, Some(fleet)) = (cfg.run_quality, &fleet) {
        let mut q = quality::report(cfg);
        for (i, run) in runs.iter().enumerate() {
            let own;
            let f = if i == 0 {
                fleet
            } else {
                // A fleet of its own, dropped once its replays are done.
                eprintln!(
                    "kvgate-bench: real stack with {} engines at load ×{} ({}) ...",
                    run.workers,
                    run.load,
                    run.policies
                        .iter()
                        .map(|p| p.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                own = Fleet::start(
                    cfg,
                    &tools,
                    run.workers,
                    &cfg.work_dir.join(format!("engines-{}", run.workers)),
                )?;
                &own
            };
            q.policies
                .extend(quality::run(cfg, run, f, &trace, &rt, cancel)?);
            cancel.check()?;
            lap(&quality_phase(i, run), &mut report);
        }
        if let (true, Some(files)) = (agreement, &files) {
            // The virtual-time replay has no endpoint picker: it models the filter.
            let replayed: Vec<quality::PolicyResult> = q
                .policies
                .iter()
                .filter(|p| policy::PolicyKind::parse(&p.name).is_some_and(|k| !k.via_picker()))
                .cloned()
                .collect();
            q.agreement = sweep::agreement(
                &cfg.sweep,
                &trace,
                &replayed,
                cfg.num_gpu_blocks,
                cfg.seed,
                files,
                cancel,
            )?;
            lap("agreement", &mut report);
        }
        report.quality = Some(q);
    }
    if let Some(s) = swept {
        let q = report
            .quality
            .get_or_insert_with(quality::QualityReport::default);
        q.sweep = s.points;
        q.capacity = s.capacity;
        q.targets = s.targets;
        q.sweep_setup = Some(s.setup);
    }
    if cfg.run_overhead {
        report.overhead = Some(overhead::run(cfg, &tools, &rt, cancel)?);
        cancel.check()?;
        lap("overhead", &mut report);
    }
    if cfg.run_sidecar {
        if let Some(fleet) = &fleet {
            report.sidecar = Some(sidecar::run(cfg, fleet, &rt, cancel)?);
        }
        cancel.check()?;
        lap("sidecar", &mut report);
    }
    drop(fleet);
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.machine.loadavg_end = sys::loadavg();
    report.write(&cfg.out_dir)?;
    plot::draw(&report, &cfg.out_dir.join("report.svg"))?;
    Ok(report)
}

/// The phase-time key of replay set `i`: `quality` for the first, `quality_<N>` (its
/// fleet's start included) for the others.
fn quality_phase(i: usize, run: &quality::RealRun) -> String {
    if i == 0 {
        "quality".to_string()
    } else {
        format!("quality_{}", run.workers)
    }
}

impl BenchConfig {
    /// Engines of the first real-stack replay set (the sidecar phase's fleet too).
    pub fn workers(&self) -> usize {
        self.real_workers
            .iter()
            .copied()
            .find(|&w| w > 0)
            .unwrap_or(4)
    }

    /// The real-stack replay sets: the first engine count with every policy of
    /// `policies`, each further count (repeats and 0 left out) with those of `policies`
    /// that `real_policies_extra` names (a count left with none is left out); each at
    /// `load` scaled to its engine count as the sweep scales its loads
    /// ([`sweep::SweepConfig::scaled`]).
    pub fn real_runs(&self) -> Vec<quality::RealRun> {
        let mut out: Vec<quality::RealRun> = Vec::new();
        for &w in &self.real_workers {
            if w == 0 || out.iter().any(|r| r.workers == w) {
                continue;
            }
            let policies: Vec<policy::PolicyKind> = if out.is_empty() {
                self.policies.clone()
            } else {
                self.policies
                    .iter()
                    .copied()
                    .filter(|p| self.real_policies_extra.contains(p))
                    .collect()
            };
            if policies.is_empty() {
                continue;
            }
            out.push(quality::RealRun {
                workers: w,
                load: self.sweep.scaled(self.load, w),
                policies,
            });
        }
        out
    }

    /// How to cut the trace.
    pub fn trace_options(&self) -> trace::TraceOptions {
        trace::TraceOptions {
            start_seconds: self.trace_start,
            max_seconds: Some(self.trace_seconds).filter(|s| *s > 0.0),
            max_requests: self.max_requests,
            max_output_tokens: self.max_output_tokens,
            chat_rate: self.chat_rate,
            think_ms: self.think_ms,
            seed: self.seed,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use policy::PolicyKind;

    /// The first engine count replays every policy; the next ones the extra set (of the
    /// policies asked for), at the load scaled per engine as the sweep scales its loads.
    #[test]
    fn real_runs_scale_the_load_and_reduce_the_later_counts() {
        let mut cfg = BenchConfig::new(Path::new("t.jsonl"), Path::new("out"));
        let runs = cfg.real_runs();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].workers, runs[0].load, runs[0].policies.as_slice()),
            (4, 1.0, PolicyKind::LIVE.as_slice())
        );
        assert_eq!(
            (runs[1].workers, runs[1].load, runs[1].policies.as_slice()),
            (8, 2.0, REAL_POLICIES_EXTRA.as_slice())
        );
        assert_eq!(runs[1].load, cfg.sweep.loads_for(8)[0] * cfg.load);

        cfg.load = 1.5;
        cfg.real_workers = vec![2, 2, 0, 4, 8];
        cfg.sweep.reference_workers = 2;
        cfg.policies = vec![PolicyKind::Epp, PolicyKind::KvgateEvents];
        let runs = cfg.real_runs();
        let got: Vec<(usize, f64, Vec<PolicyKind>)> = runs
            .into_iter()
            .map(|r| (r.workers, r.load, r.policies))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, 1.5, vec![PolicyKind::Epp, PolicyKind::KvgateEvents]),
                (4, 3.0, vec![PolicyKind::KvgateEvents]),
                (8, 6.0, vec![PolicyKind::KvgateEvents]),
            ]
        );
        assert_eq!(cfg.workers(), 2);

        // No extra policy: only the first count runs.
        cfg.real_policies_extra.clear();
        assert_eq!(cfg.real_runs().len(), 1);
        cfg.real_workers = vec![0, 8];
        assert_eq!(cfg.workers(), 8);
        assert_eq!(cfg.real_runs()[0].workers, 8);
    }
}
