//! The load sweep in virtual time: every policy on the same trace at loads ×1…×5 of its
//! rate, with 4 and 8 engines, several seeds each, plus hit ratio against KV capacity —
//! hundreds of runs in minutes, because nothing waits for a wall clock.
//!
//! Each run ([`sim`]) replays the trace onto `kvgate_mock::scheduler::Scheduler`s (the
//! scheduler and time model of `mock-worker`) in a discrete-event simulation. kvgate is
//! not re-implemented: `kvgate_approx` and `kvgate_events` are the `kvgate-engine` VMs the
//! filter runs ([`gateway`]); the other policies are [`crate::policy`]'s driver-side
//! routers; `oracle` is the lookahead oracle ([`oracle`]).
//!
//! **Arrivals.** Request `i` of the trace arrives at `spread(tᵢ) / load`. Mooncake
//! timestamps come in buckets (the conversation trace: every ~3 s); `spread` places the
//! requests sharing one timestamp at sorted uniform offsets in `[t, t_next)` where
//! `t_next` is the next distinct timestamp (at most the trace's most common gap
//! between timestamps), drawn from the run's seed, keeping their trace order.
//!
//! **Figures.** Per run: engine-side TTFT p50 / p99 (queue wait + prefill until the
//! first token, trace ms), token hit ratio, mean engine utilisation (busy time / makespan).
//! Per point: the mean over seeds and the half-width of its 95 % interval (Student t with
//! seeds − 1 degrees of freedom). Seeds are common to the policies of a point (same
//! arrivals), so policies are compared on identical traffic.

pub mod gateway;
pub mod oracle;
pub mod plot;
pub mod sim;
pub mod tables;

use crate::policy::PolicyKind;
use crate::stats::{mean, percentile, round, t95_half_width, t95_prediction_half_width};
use crate::trace::{synth_tokens, Trace, TurnPrompt};
use crate::{BenchError, Cancel, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kvgate_engine::ModelFiles;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The policies of the sweep, in report order.
pub const SWEEP_POLICIES: [PolicyKind; 7] = [
    PolicyKind::RoundRobin,
    PolicyKind::Random,
    PolicyKind::LeastLoad,
    PolicyKind::CharPrefix,
    PolicyKind::KvgateApprox,
    PolicyKind::KvgateEvents,
    PolicyKind::Oracle,
];

/// What the sweep runs.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Arrival-rate multipliers with `reference_workers` engines; with N engines each is
    /// scaled by N / `reference_workers`, so every engine count sees the same load per
    /// engine, from light to saturated.
    pub loads: Vec<f64>,
    /// The engine count `loads` are given for.
    pub reference_workers: usize,
    /// Engine counts.
    pub workers: Vec<usize>,
    /// Seeds per point.
    pub seeds: u64,
    /// First seed.
    pub seed: u64,
    /// Where the replayed window starts in the trace, seconds (the trace is cut there by
    /// the caller; recorded in the report).
    pub trace_start: f64,
    /// Trace seconds replayed (from the window's start).
    pub trace_seconds: f64,
    /// KV pool per engine for the load sweep, blocks.
    pub num_gpu_blocks: usize,
    /// Pool sizes of the capacity sweep.
    pub capacity_blocks: Vec<usize>,
    /// Load of the capacity sweep.
    pub capacity_load: f64,
    /// Engines of the capacity sweep.
    pub capacity_workers: usize,
    /// Output-token cap.
    pub max_output_tokens: u32,
    /// Policies.
    pub policies: Vec<PolicyKind>,
    /// Runs in parallel.
    pub threads: usize,
    /// Envoy worker threads (kvgate VMs) in the simulated gateway.
    pub vms: usize,
    /// KV event → decision delay, trace ms.
    pub event_delay_ms: f64,
    /// Tick of the simulated VMs, trace ms.
    pub tick_ms: f64,
    /// Router keys for the kvgate policies (plugin configuration).
    pub plugin: serde_json::Value,
    /// Show a progress bar.
    pub progress: bool,
}

impl Default for SweepConfig {
    fn default() -> Self {
        SweepConfig {
            loads: vec![1.0, 2.0, 3.0, 4.0, 5.0],
            reference_workers: 4,
            workers: vec![4, 8],
            seeds: 3,
            seed: 7,
            trace_start: 0.0,
            trace_seconds: 150.0,
            num_gpu_blocks: 65_536,
            capacity_blocks: vec![16_384, 32_768, 65_536],
            capacity_load: 2.0,
            capacity_workers: 4,
            max_output_tokens: 32,
            policies: SWEEP_POLICIES.to_vec(),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            vms: 2,
            event_delay_ms: 50.0,
            tick_ms: 100.0,
            plugin: ttft_profile(),
            progress: true,
        }
    }
}

impl SweepConfig {
    /// The arrival-rate multipliers of the load sweep with `workers` engines.
    pub fn loads_for(&self, workers: usize) -> Vec<f64> {
        self.loads
            .iter()
            .map(|&l| self.scaled(l, workers))
            .collect()
    }

    /// Load `load`, given for `reference_workers` engines, with `workers` engines: scaled
    /// by `workers / reference_workers`, the same load per engine.
    pub fn scaled(&self, load: f64, workers: usize) -> f64 {
        load * workers as f64 / self.reference_workers.max(1) as f64
    }
}

/// The router keys the kvgate policies run with unless told otherwise: the cost counts
/// prefill only (`router_track_active_blocks: false`) — queued prefill, decayed by time,
/// plus the request's own uncached prefill — which is what time to first token waits
/// for; Dynamo's default also adds the decode blocks of in-flight requests.
pub fn ttft_profile() -> serde_json::Value {
    serde_json::json!({"router_track_active_blocks": false})
}

/// One policy at one point.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PolicyPoint {
    /// Policy name.
    pub name: String,
    /// Engine-side TTFT median, trace ms (mean over seeds).
    pub ttft_p50_ms: f64,
    /// Half-width of its 95 % interval.
    pub ttft_p50_ci95_ms: f64,
    /// TTFT 99th percentile, trace ms (mean over seeds).
    pub ttft_p99_ms: f64,
    /// Half-width of its 95 % interval.
    pub ttft_p99_ci95_ms: f64,
    /// Token hit ratio (mean over seeds).
    pub hit_ratio: f64,
    /// Half-width of its 95 % interval.
    pub hit_ratio_ci95: f64,
    /// Mean engine utilisation under this policy.
    pub utilization: f64,
    /// Requests per run.
    pub requests: usize,
    /// Requests not routed or refused, summed over seeds (0 expected).
    pub failed: u64,
    /// Mean wall seconds of one run.
    pub run_wall_s: f64,
}

/// One (workers, load) point of the load sweep.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SweepPoint {
    /// Engines.
    pub workers: usize,
    /// Arrival-rate multiplier.
    pub load: f64,
    /// Mean engine utilisation under round-robin (the offered load's measure).
    pub utilization: f64,
    /// Seeds.
    pub seeds: u64,
    /// Per policy.
    pub policies: Vec<PolicyPoint>,
}

/// One pool size of the capacity sweep.
#[derive(Debug, Clone, Serialize, Default)]
pub struct CapacityPoint {
    /// Engines.
    pub workers: usize,
    /// Load.
    pub load: f64,
    /// KV pool per engine, blocks.
    pub num_gpu_blocks: usize,
    /// Seeds.
    pub seeds: u64,
    /// Per policy.
    pub policies: Vec<PolicyPoint>,
}

/// How the sweep was run.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SweepSetup {
    /// Trace file.
    pub trace: String,
    /// Where the replayed window starts in the trace, seconds.
    pub trace_start_s: f64,
    /// Trace seconds replayed.
    pub trace_seconds: f64,
    /// Requests per run.
    pub requests: usize,
    /// How arrivals inside a timestamp bucket are spread.
    pub arrivals: String,
    /// Width of the trace's timestamp buckets, ms.
    pub bucket_ms: f64,
    /// KV pool per engine, blocks (load sweep).
    pub num_gpu_blocks: usize,
    /// Output-token cap.
    pub max_output_tokens: u32,
    /// kvgate VMs (Envoy worker threads) simulated.
    pub vms: usize,
    /// KV event → decision delay, trace ms.
    pub event_delay_ms: f64,
    /// Runs.
    pub runs: usize,
    /// Threads.
    pub threads: usize,
    /// Router keys given to the kvgate policies (beyond the defaults).
    pub router: serde_json::Value,
    /// Wall seconds.
    pub elapsed_s: f64,
}

/// One done-when target of issue 13, checked on the sweep.
#[derive(Debug, Clone, Serialize)]
pub struct TargetCheck {
    /// What is checked.
    pub target: String,
    /// Whether it holds.
    pub holds: bool,
    /// The figures.
    pub detail: String,
}

/// The sweep's figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SweepReport {
    /// Setup.
    pub setup: SweepSetup,
    /// Load sweep.
    pub points: Vec<SweepPoint>,
    /// Capacity sweep.
    pub capacity: Vec<CapacityPoint>,
    /// Targets.
    pub targets: Vec<TargetCheck>,
}

/// The requests of `trace` with spread arrivals for `seed`, at load `load` (Mooncake
/// prompts only; chat turns are skipped). Also returns the bucket width.
pub fn requests(
    trace: &Trace,
    seed: u64,
    load: f64,
    max_output: u32,
) -> (Vec<sim::SimRequest>, f64) {
    let mut items: Vec<(f64, Arc<Vec<u32>>, usize)> = Vec::new();
    for s in &trace.sessions {
        for t in &s.turns {
            if let TurnPrompt::Blocks {
                hash_ids,
                input_length,
            } = &t.prompt
            {
                items.push((
                    s.start_ms,
                    Arc::new(synth_tokens(hash_ids, *input_length)),
                    t.max_tokens.min(max_output.max(1)) as usize,
                ));
            }
        }
    }
    let starts: Vec<f64> = items.iter().map(|i| i.0).collect();
    let (spread, bucket) = spread_arrivals(&starts, seed);
    let load = if load > 0.0 { load } else { 1.0 };
    let mut out: Vec<sim::SimRequest> = items
        .into_iter()
        .zip(spread)
        .map(|((_, tokens, max_tokens), at)| sim::SimRequest {
            arrival_ms: at / load,
            tokens,
            max_tokens,
        })
        .collect();
    out.sort_by(|a, b| a.arrival_ms.total_cmp(&b.arrival_ms));
    (out, bucket)
}

/// Whether `trace` has requests the virtual-time replay can run (Mooncake prompts).
pub fn replayable(trace: &Trace) -> bool {
    trace.sessions.iter().any(|s| {
        s.turns
            .iter()
            .any(|t| matches!(t.prompt, TurnPrompt::Blocks { .. }))
    })
}

/// Spreads requests sharing a timestamp over `[t, t_next)` (see the module docs); returns
/// the new times (same order) and the bucket width used.
pub fn spread_arrivals(starts: &[f64], seed: u64) -> (Vec<f64>, f64) {
    let mut distinct: Vec<f64> = starts.to_vec();
    distinct.sort_by(f64::total_cmp);
    distinct.dedup();
    let mut gaps: HashMap<u64, usize> = HashMap::new();
    for w in distinct.windows(2) {
        if let [a, b] = w {
            *gaps.entry((b - a).round() as u64).or_default() += 1;
        }
    }
    let bucket = gaps
        .iter()
        .max_by_key(|(g, n)| (**n, **g))
        .map_or(0.0, |(g, _)| *g as f64);
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed_a77a);
    let mut out = starts.to_vec();
    let mut i = 0;
    while i < starts.len() {
        let t = starts.get(i).copied().unwrap_or(0.0);
        let mut j = i;
        while starts.get(j).is_some_and(|&x| x == t) {
            j += 1;
        }
        if j - i > 1 && bucket > 0.0 {
            let next = distinct
                .iter()
                .copied()
                .find(|&x| x > t)
                .map_or(bucket, |x| (x - t).min(bucket));
            let mut offs: Vec<f64> = (i..j).map(|_| rng.f64() * next).collect();
            offs.sort_by(f64::total_cmp);
            for (k, o) in (i..j).zip(offs) {
                if let Some(slot) = out.get_mut(k) {
                    *slot = t + o;
                }
            }
        }
        i = j;
    }
    (out, bucket)
}

#[derive(Debug, Clone)]
struct Job {
    key: (usize, u64, usize, u64), // (workers, load×1000, blocks, seed)
    spec: sim::RunSpec,
    load: f64,
}

struct Done {
    key: (usize, u64, usize, u64),
    policy: PolicyKind,
    result: sim::RunResult,
}

fn load_key(load: f64) -> u64 {
    (load * 1000.0).round() as u64
}

/// Model files the kvgate VMs load (Qwen3-0.6B's tokenizer, as the filter does).
pub fn model_files(model_dir: &Path) -> Result<Arc<ModelFiles>> {
    let read = |f: &str| {
        std::fs::read(model_dir.join(f)).map_err(|e| {
            BenchError::Failed(format!(
                "{}/{f}: {e} (run `make setup` to fetch the tokenizer)",
                model_dir.display()
            ))
        })
    };
    Ok(Arc::new(ModelFiles {
        name: gateway::SIM_MODEL.into(),
        block_size: 16,
        tokenizer_json: read("tokenizer.json")?,
        tokenizer_config_json: read("tokenizer_config.json")?,
    }))
}

/// Runs `jobs` on `threads` threads; results in any order.
fn run_jobs(
    jobs: Vec<Job>,
    inputs: &HashMap<(u64, u64), Arc<Vec<sim::SimRequest>>>,
    files: &Arc<ModelFiles>,
    threads: usize,
    bar: &ProgressBar,
    cancel: &Cancel,
) -> Result<Vec<Done>> {
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Done>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut pool = gateway::ModelPool::new();
                loop {
                    if cancel.is_cancelled() {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(job) = jobs.get(i) else {
                        return;
                    };
                    let Some(reqs) = inputs.get(&(job.key.3, load_key(job.load))) else {
                        return;
                    };
                    match sim::run(&job.spec, reqs, files, &mut pool) {
                        Ok(result) => {
                            done.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push(Done {
                                    key: job.key,
                                    policy: job.spec.policy,
                                    result,
                                })
                        }
                        Err(e) => {
                            *failure.lock().unwrap_or_else(PoisonError::into_inner) =
                                Some(format!("{} run: {e}", job.spec.policy.name()));
                            cancel.cancel();
                        }
                    }
                    bar.inc(1);
                }
            });
        }
    });
    if let Some(f) = failure.into_inner().unwrap_or_else(PoisonError::into_inner) {
        return Err(BenchError::Failed(f));
    }
    cancel.check()?;
    Ok(done.into_inner().unwrap_or_else(PoisonError::into_inner))
}

/// Each run's TTFT p50 and hit ratio.
fn p50s_and_hits(runs: &[&sim::RunResult]) -> (Vec<f64>, Vec<f64>) {
    runs.iter()
        .map(|r| (percentile(&r.ttft_ms, 50.0), r.hit_ratio()))
        .unzip()
}

/// Mean and 95 % half-width of a policy's runs.
pub fn summarize(name: &str, runs: &[&sim::RunResult]) -> PolicyPoint {
    let (p50, hit) = p50s_and_hits(runs);
    let p99: Vec<f64> = runs.iter().map(|r| percentile(&r.ttft_ms, 99.0)).collect();
    let util: Vec<f64> = runs.iter().map(|r| r.utilization).collect();
    PolicyPoint {
        name: name.to_string(),
        ttft_p50_ms: round(mean(&p50), 1),
        ttft_p50_ci95_ms: round(t95_half_width(&p50), 1),
        ttft_p99_ms: round(mean(&p99), 1),
        ttft_p99_ci95_ms: round(t95_half_width(&p99), 1),
        hit_ratio: round(mean(&hit), 4),
        hit_ratio_ci95: round(t95_half_width(&hit), 4),
        utilization: round(mean(&util), 3),
        requests: runs.first().map_or(0, |r| r.ttft_ms.len()),
        failed: runs.iter().map(|r| r.unrouted + r.refused).sum(),
        run_wall_s: round(mean(&runs.iter().map(|r| r.wall_s).collect::<Vec<_>>()), 2),
    }
}

fn bar(progress: bool, len: u64) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>14} [{bar:32}] {pos}/{len} runs ({elapsed}, ETA {eta})",
    ) {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_prefix("virtual sweep");
    b
}

/// Runs the load and capacity sweeps on `trace` (cut to `cfg.trace_seconds` by the caller
/// or here) with the kvgate VMs loading `files`.
pub fn run(
    cfg: &SweepConfig,
    trace: &Trace,
    files: &Arc<ModelFiles>,
    cancel: &Cancel,
) -> Result<SweepReport> {
    let started = std::time::Instant::now();
    let seeds: Vec<u64> = (0..cfg.seeds.max(1)).map(|i| cfg.seed + i).collect();
    let gw = gateway::GatewayConfig {
        use_kv_events: true,
        vms: cfg.vms.max(1),
        event_delay_ms: cfg.event_delay_ms,
        tick_ms: cfg.tick_ms,
        plugin: cfg.plugin.clone(),
    };
    let mut inputs = HashMap::new();
    let mut bucket = 0.0;
    let mut loads: Vec<f64> = cfg.workers.iter().flat_map(|&w| cfg.loads_for(w)).collect();
    loads.push(cfg.capacity_load);
    loads.sort_by(f64::total_cmp);
    loads.dedup_by(|a, b| load_key(*a) == load_key(*b));
    for &seed in &seeds {
        for &load in &loads {
            let (r, b) = requests(trace, seed, load, cfg.max_output_tokens);
            bucket = b;
            inputs.insert((seed, load_key(load)), Arc::new(r));
        }
    }
    let n_requests = inputs.values().next().map_or(0, |r| r.len());
    if n_requests == 0 {
        return Err(BenchError::Failed(
            "the virtual-time sweep needs a Mooncake-format trace (hash_ids)".into(),
        ));
    }
    let mut jobs = Vec::new();
    let spec = |policy, workers, blocks, seed| sim::RunSpec {
        policy,
        workers,
        num_gpu_blocks: blocks,
        seed,
        gateway: gw.clone(),
    };
    for &w in &cfg.workers {
        for load in cfg.loads_for(w) {
            for &seed in &seeds {
                for &p in &cfg.policies {
                    jobs.push(Job {
                        key: (w, load_key(load), cfg.num_gpu_blocks, seed),
                        spec: spec(p, w, cfg.num_gpu_blocks, seed),
                        load,
                    });
                }
            }
        }
    }
    let cap_policies: Vec<PolicyKind> = [PolicyKind::KvgateEvents, PolicyKind::Oracle]
        .into_iter()
        .filter(|p| cfg.policies.contains(p))
        .collect();
    for &blocks in &cfg.capacity_blocks {
        for &seed in &seeds {
            for &p in &cap_policies {
                let key = (
                    cfg.capacity_workers,
                    load_key(cfg.capacity_load),
                    blocks,
                    seed,
                );
                if jobs.iter().any(|j| j.key == key && j.spec.policy == p) {
                    continue;
                }
                jobs.push(Job {
                    key,
                    spec: spec(p, cfg.capacity_workers, blocks, seed),
                    load: cfg.capacity_load,
                });
            }
        }
    }
    // The costliest runs first, so the threads finish together.
    jobs.sort_by_key(|j| {
        let cost = match j.spec.policy {
            PolicyKind::Oracle => 4,
            PolicyKind::KvgateApprox | PolicyKind::KvgateEvents => 2,
            _ => 1,
        } * j.spec.workers as u64;
        std::cmp::Reverse(cost)
    });
    let total = jobs.len();
    let pb = bar(cfg.progress, total as u64);
    let done = run_jobs(jobs, &inputs, files, cfg.threads, &pb, cancel)?;
    pb.finish();
    let runs_of = |key: (usize, u64, usize, u64), p: PolicyKind| -> Option<&sim::RunResult> {
        done.iter()
            .find(|d| d.key == key && d.policy == p)
            .map(|d| &d.result)
    };
    let mut points = Vec::new();
    for &w in &cfg.workers {
        for load in cfg.loads_for(w) {
            let mut policies = Vec::new();
            let mut util = 0.0;
            for &p in &cfg.policies {
                let runs: Vec<&sim::RunResult> = seeds
                    .iter()
                    .filter_map(|&s| runs_of((w, load_key(load), cfg.num_gpu_blocks, s), p))
                    .collect();
                let point = summarize(p.name(), &runs);
                if p == PolicyKind::RoundRobin {
                    util = point.utilization;
                }
                policies.push(point);
            }
            points.push(SweepPoint {
                workers: w,
                load,
                utilization: util,
                seeds: cfg.seeds,
                policies,
            });
        }
    }
    let mut capacity = Vec::new();
    for &blocks in &cfg.capacity_blocks {
        let mut policies = Vec::new();
        for &p in &cap_policies {
            let runs: Vec<&sim::RunResult> = seeds
                .iter()
                .filter_map(|&s| {
                    runs_of(
                        (cfg.capacity_workers, load_key(cfg.capacity_load), blocks, s),
                        p,
                    )
                })
                .collect();
            policies.push(summarize(p.name(), &runs));
        }
        capacity.push(CapacityPoint {
            workers: cfg.capacity_workers,
            load: cfg.capacity_load,
            num_gpu_blocks: blocks,
            seeds: cfg.seeds,
            policies,
        });
    }
    let targets = check_targets(&points, &capacity);
    Ok(SweepReport {
        setup: SweepSetup {
            trace: trace.path.clone(),
            trace_start_s: cfg.trace_start,
            trace_seconds: cfg.trace_seconds,
            requests: n_requests,
            arrivals: "requests sharing a trace timestamp arrive at sorted seeded-uniform offsets in [t, next timestamp) (at most the most common gap), then every time is divided by the load".into(),
            bucket_ms: bucket,
            num_gpu_blocks: cfg.num_gpu_blocks,
            max_output_tokens: cfg.max_output_tokens,
            vms: cfg.vms,
            event_delay_ms: cfg.event_delay_ms,
            runs: total,
            threads: cfg.threads,
            router: cfg.plugin.clone(),
            elapsed_s: round(started.elapsed().as_secs_f64(), 1),
        },
        points,
        capacity,
        targets,
    })
}

/// The real-stack replays `real` (quality phase: rows of `workers` engines of `blocks`
/// blocks at load `load`, arrivals spread with `seed`) next to `cfg.seeds` virtual-time
/// replays of the same slice `trace` (seeds `seed`, `seed + 1`, …) with the same engines
/// and load, row by row (the sweep's lookahead `oracle` is not the real phase's, so it is
/// left out). Every engine count runs in one batch (one model load per thread).
pub fn agreement(
    cfg: &SweepConfig,
    trace: &Trace,
    real: &[crate::quality::PolicyResult],
    blocks: usize,
    seed: u64,
    files: &Arc<ModelFiles>,
    cancel: &Cancel,
) -> Result<Vec<crate::quality::Agreement>> {
    let seeds: Vec<u64> = (0..cfg.seeds.max(1)).map(|i| seed + i).collect();
    let gw = gateway::GatewayConfig {
        use_kv_events: true,
        vms: cfg.vms.max(1),
        event_delay_ms: cfg.event_delay_ms,
        tick_ms: cfg.tick_ms,
        plugin: cfg.plugin.clone(),
    };
    let rows: Vec<(&crate::quality::PolicyResult, PolicyKind)> = real
        .iter()
        .filter_map(|r| PolicyKind::parse(&r.name).map(|p| (r, p)))
        .filter(|(_, p)| *p != PolicyKind::Oracle)
        .collect();
    let mut inputs = HashMap::new();
    let mut jobs = Vec::new();
    for &(r, p) in &rows {
        for &s in &seeds {
            inputs
                .entry((s, load_key(r.load)))
                .or_insert_with(|| Arc::new(requests(trace, s, r.load, cfg.max_output_tokens).0));
            jobs.push(Job {
                key: (r.workers, load_key(r.load), blocks, s),
                spec: sim::RunSpec {
                    policy: p,
                    workers: r.workers,
                    num_gpu_blocks: blocks,
                    seed: s,
                    gateway: gw.clone(),
                },
                load: r.load,
            });
        }
    }
    let pb = bar(cfg.progress, jobs.len() as u64);
    pb.set_prefix("virtual replay");
    let done = run_jobs(jobs, &inputs, files, cfg.threads, &pb, cancel)?;
    pb.finish();
    let mut out = Vec::new();
    for &(r, p) in &rows {
        let key = (r.workers, load_key(r.load));
        let runs: Vec<&sim::RunResult> = done
            .iter()
            .filter(|d| d.policy == p && (d.key.0, d.key.1) == key)
            .map(|d| &d.result)
            .collect();
        let v = summarize(p.name(), &runs);
        // The real run is one more draw, not a mean of seeds: it is judged against the
        // band one more virtual run falls in (rounded as the means are).
        let (p50, hit) = p50s_and_hits(&runs);
        let ttft_pi = round(t95_prediction_half_width(&p50), 1);
        let hit_pi = round(t95_prediction_half_width(&hit), 4);
        let inside = |x: f64, m: f64, band: f64| (x - m).abs() <= band;
        let agree_ttft = inside(r.ttft_p50_ms, v.ttft_p50_ms, ttft_pi);
        let agree_hit = inside(r.hit_ratio, v.hit_ratio, hit_pi);
        out.push(crate::quality::Agreement {
            policy: p.name().to_string(),
            workers: r.workers,
            load: r.load,
            real_ttft_p50_ms: r.ttft_p50_ms,
            virtual_ttft_p50_ms: v.ttft_p50_ms,
            virtual_ttft_p50_ci95_ms: v.ttft_p50_ci95_ms,
            virtual_ttft_p50_pi95_ms: ttft_pi,
            real_hit_ratio: r.hit_ratio,
            virtual_hit_ratio: v.hit_ratio,
            virtual_hit_ratio_ci95: v.hit_ratio_ci95,
            virtual_hit_ratio_pi95: hit_pi,
            seeds: cfg.seeds,
            agree_ttft,
            agree_hit,
            agree: agree_ttft && agree_hit,
        });
    }
    Ok(out)
}

fn policy<'a>(p: &'a SweepPoint, name: &str) -> Option<&'a PolicyPoint> {
    p.policies.iter().find(|x| x.name == name)
}

/// The done-when targets of issue 13 on the sweep's figures.
pub fn check_targets(points: &[SweepPoint], capacity: &[CapacityPoint]) -> Vec<TargetCheck> {
    let mut out = Vec::new();
    let mut workers: Vec<usize> = points.iter().map(|p| p.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    for w in workers {
        let mut mine: Vec<&SweepPoint> = points.iter().filter(|p| p.workers == w).collect();
        mine.sort_by(|a, b| a.load.total_cmp(&b.load));
        for p in mine.iter().rev().take(2) {
            let (Some(ev), Some(rr), Some(or)) = (
                policy(p, "kvgate_events"),
                policy(p, "round_robin"),
                policy(p, "oracle"),
            ) else {
                continue;
            };
            out.push(TargetCheck {
                target: format!(
                    "{w} workers ×{}: kvgate_events p50 ≤ 0.5 × round_robin and ≤ 1.15 × oracle, p99 ≤ round_robin (utilisation ≥ 0.7)",
                    p.load
                ),
                holds: ev.ttft_p50_ms <= 0.5 * rr.ttft_p50_ms
                    && ev.ttft_p50_ms <= 1.15 * or.ttft_p50_ms
                    && ev.ttft_p99_ms <= rr.ttft_p99_ms
                    && p.utilization >= 0.7,
                detail: format!(
                    "utilisation {:.2}; p50 {:.0} vs round_robin {:.0} ({:.2}×) and oracle {:.0} ({:.2}×); p99 {:.0} vs {:.0}",
                    p.utilization,
                    ev.ttft_p50_ms,
                    rr.ttft_p50_ms,
                    ev.ttft_p50_ms / rr.ttft_p50_ms.max(1e-9),
                    or.ttft_p50_ms,
                    ev.ttft_p50_ms / or.ttft_p50_ms.max(1e-9),
                    ev.ttft_p99_ms,
                    rr.ttft_p99_ms
                ),
            });
        }
        if let Some(p) = mine.first() {
            if let Some(rr) = policy(p, "round_robin") {
                for name in ["kvgate_approx", "kvgate_events"] {
                    if let Some(k) = policy(p, name) {
                        out.push(TargetCheck {
                            target: format!(
                                "{w} workers ×{} (lowest load): {name} p50 ≤ 1.05 × round_robin",
                                p.load
                            ),
                            holds: k.ttft_p50_ms <= 1.05 * rr.ttft_p50_ms,
                            detail: format!("{:.0} vs {:.0} ms", k.ttft_p50_ms, rr.ttft_p50_ms),
                        });
                    }
                }
            }
        }
        for p in mine.iter().filter(|p| p.load >= 3.0) {
            if let (Some(a), Some(c)) = (policy(p, "kvgate_approx"), policy(p, "char_prefix")) {
                out.push(TargetCheck {
                    target: format!("{w} workers ×{}: kvgate_approx p50 < char_prefix", p.load),
                    holds: a.ttft_p50_ms < c.ttft_p50_ms,
                    detail: format!("{:.0} vs {:.0} ms", a.ttft_p50_ms, c.ttft_p50_ms),
                });
            }
        }
    }
    for c in capacity {
        let ev = c.policies.iter().find(|x| x.name == "kvgate_events");
        let or = c.policies.iter().find(|x| x.name == "oracle");
        if let (Some(ev), Some(or)) = (ev, or) {
            out.push(TargetCheck {
                target: format!(
                    "{} blocks per engine: kvgate_events hit ratio ≥ 0.95 × oracle",
                    c.num_gpu_blocks
                ),
                holds: ev.hit_ratio >= 0.95 * or.hit_ratio,
                detail: format!("{:.3} vs {:.3}", ev.hit_ratio, or.hit_ratio),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn bucketed_arrivals_are_spread_inside_their_bucket_in_order() {
        let starts = [0.0, 0.0, 0.0, 3000.0, 3000.0, 6000.0, 9000.0];
        let (a, bucket) = spread_arrivals(&starts, 1);
        assert_eq!(bucket, 3000.0);
        assert!(a[0] >= 0.0 && a[0] <= a[1] && a[1] <= a[2] && a[2] < 3000.0);
        assert!(a[3] >= 3000.0 && a[4] < 6000.0);
        assert_eq!(a[5], 6000.0, "a lone request keeps its time");
        assert_ne!(spread_arrivals(&starts, 2).0, a, "seeded");
        assert_eq!(spread_arrivals(&starts, 1).0, a, "reproducible");
    }
}
