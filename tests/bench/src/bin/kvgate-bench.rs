//! `make bench`: routing quality on a real trace (seven policies on the same 4 mock
//! engines, three of them again on 8), the gateway's overhead against plain Envoy, and the sidecar's ingest rate
//! and event → decision lag, in one run. Writes `report.json`, `report.md` and
//! `report.svg` and prints the tables. `--smoke` is the tiny run `make test` uses to check
//! that the bench still works. See the `kvgate_bench` crate.

use anyhow::{bail, Context};
use clap::Parser;
use kvgate_bench::{self as bench, policy::PolicyKind, BenchConfig, Cancel};
use std::path::PathBuf;

/// Command-line options (defaults: the bounded `make bench` run).
#[derive(Parser, Debug)]
#[command(
    name = "kvgate-bench",
    about = "kvgate benchmarks: routing quality, gateway overhead, sidecar"
)]
struct Args {
    /// Trace: Mooncake JSONL, ShareGPT JSON or MT-bench JSONL (auto-detected).
    #[arg(
        long,
        default_value = "tests/fixtures/traces/mooncake/conversation_trace.jsonl"
    )]
    trace: PathBuf,
    /// Output directory (report.json, report.md, report.svg; logs under run/).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Real stack: mock-engine counts, comma-separated (default 4,8; --smoke 2,4). The first
    /// replays every policy; each further count, on a fleet of its own, those of
    /// --real-policies-extra, at the same load per engine (--load × N / 4).
    #[arg(long, value_delimiter = ',')]
    real_workers: Vec<usize>,
    /// Real stack: the policies replayed with the engine counts after the first,
    /// comma-separated (default round_robin,kvgate_approx,kvgate_events, --smoke
    /// kvgate_events; `none` for none).
    #[arg(long, value_delimiter = ',')]
    real_policies_extra: Vec<String>,
    /// Engine time scale: the trace is replayed this many times faster than real time.
    #[arg(long, default_value_t = 10.0)]
    speedup: f64,
    /// Arrival-rate multiplier on top of the trace's own rate, with 4 engines (with N
    /// engines the real stack replays at this × N / 4, as the sweep scales its loads).
    #[arg(long, default_value_t = 1.0)]
    load: f64,
    /// Mooncake traces: start the replayed window (real stack and sweep) this many trace
    /// seconds in, e.g. 1800 for the conversation trace's second half-hour.
    #[arg(long, default_value_t = 0.0)]
    trace_start: f64,
    /// Trace seconds to replay from the start (0 = all).
    #[arg(long, default_value_t = 300.0)]
    trace_seconds: f64,
    /// At most this many requests.
    #[arg(long)]
    max_requests: Option<usize>,
    /// Cap on output tokens per request.
    #[arg(long, default_value_t = 32)]
    max_output_tokens: u32,
    /// KV pool per engine, in 16-token blocks (real stack and load sweep): 65 536 blocks
    /// are 1 M tokens, an 80 GB GPU's KV cache for an 8B model in fp8.
    #[arg(long, default_value_t = 65_536)]
    num_gpu_blocks: usize,
    /// Virtual-time sweep: trace seconds replayed per run (0 = the whole trace; 150 keeps
    /// the default sweep near 10 minutes on 2 cores).
    #[arg(long, default_value_t = 150.0)]
    sweep_trace_seconds: f64,
    /// Virtual-time sweep: loads (arrival-rate multipliers) with 4 engines, comma-separated;
    /// with N engines each is scaled by N/4 (the same load per engine).
    #[arg(long, value_delimiter = ',', default_values_t = [1.0f64, 2.0, 3.0, 4.0, 5.0])]
    sweep_loads: Vec<f64>,
    /// Virtual-time sweep: engine counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [4usize, 8])]
    sweep_workers: Vec<usize>,
    /// Virtual-time sweep: seeds per point.
    #[arg(long, default_value_t = 3)]
    sweep_seeds: u64,
    /// Virtual-time sweep: runs in parallel (default: the cores).
    #[arg(long)]
    sweep_threads: Option<usize>,
    /// Virtual-time sweep: KV pool sizes of the capacity sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [16384usize, 32768, 65536])]
    capacity_blocks: Vec<usize>,
    /// Virtual-time sweep: load of the capacity sweep.
    #[arg(long, default_value_t = 2.0)]
    capacity_load: f64,
    /// Virtual-time sweep: KV event → decision delay (NATS, sidecar, poll), trace ms.
    #[arg(long, default_value_t = 50.0)]
    event_delay_ms: f64,
    /// Chat traces: sessions per trace second (Poisson arrivals).
    #[arg(long, default_value_t = 2.0)]
    chat_rate: f64,
    /// Chat traces: pause between turns, trace milliseconds.
    #[arg(long, default_value_t = 2000.0)]
    think_ms: f64,
    /// Policies, comma-separated (round_robin,random,least_load,char_prefix,kvgate_approx,kvgate_events,epp,oracle).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Router keys for the kvgate policies (sweep and real stack), a JSON object of the
    /// plugin configuration replacing the default profile
    /// `{"router_track_active_blocks": false}` (e.g. `{}` for Dynamo's defaults).
    #[arg(long)]
    router_config: Option<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    envoy_concurrency: u32,
    /// Overhead: measured seconds per run (each Envoy, each load level).
    #[arg(long, default_value_t = 4.0)]
    overhead_seconds: f64,
    /// Overhead: warm-up seconds per run.
    #[arg(long, default_value_t = 1.0)]
    overhead_warmup: f64,
    /// Overhead: load-generator connections (closed loop: requests in flight).
    #[arg(long, default_value_t = 4)]
    overhead_concurrency: usize,
    /// Overhead: open-loop rates as fractions of the slowest gateway's capacity (the same
    /// rate for every gateway), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [0.25f64, 0.5, 0.75])]
    overhead_loads: Vec<f64>,
    /// Overhead: first-seen chat sizes in prompt tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2048usize, 16384])]
    body_tokens: Vec<usize>,
    /// Overhead: skip the multi-turn and agentic bodies (first-seen chats only).
    #[arg(long)]
    no_warm: bool,
    /// Overhead: do not pin Envoy and the load generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Overhead: leave out the endpoint-picker gateway (Envoy + ext_proc + kvgate-sync --epp).
    #[arg(long)]
    no_epp: bool,
    /// Sidecar: KV events to ingest.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Sidecar: visibility-lag samples.
    #[arg(long, default_value_t = 100)]
    lag_samples: usize,
    /// Phases to skip, comma-separated (sweep, quality, overhead, sidecar).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// The tiny run of `make bench-smoke`: a few requests, short loads; checks the report.
    #[arg(long)]
    smoke: bool,
    /// Convert `--trace` (ShareGPT) into a Mooncake-format trace at this path and exit
    /// (see `kvgate_bench::trace::chat_to_mooncake`; uses --chat-rate, --think-ms, --seed).
    #[arg(long)]
    convert_to_mooncake: Option<PathBuf>,
    /// No progress bars (one line per policy instead).
    #[arg(long)]
    no_progress: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let repo = std::env::var_os("KVGATE_REPO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let resolve = |p: &PathBuf| {
        if p.is_absolute() || p.exists() {
            p.clone()
        } else {
            repo.join(p)
        }
    };
    let out = std::path::absolute(if args.out.is_absolute() {
        args.out.clone()
    } else {
        repo.join(&args.out)
    })?;
    if let Some(dest) = &args.convert_to_mooncake {
        let tools = kvgate_stack::Tools::from_env()?;
        let tok = kvgate_mock::hf::HfTokenizer::load(&tools.model_dir, kvgate_stack::MODEL)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?;
        let src = resolve(&args.trace);
        let text = std::fs::read_to_string(&src)?;
        let lines = bench::trace::chat_to_mooncake(
            &text,
            &tok,
            kvgate_stack::MODEL,
            args.chat_rate,
            args.think_ms,
            args.seed,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", src.display()))?;
        std::fs::write(dest, lines.join("\n") + "\n")?;
        println!(
            "kvgate-bench: wrote {} requests to {}",
            lines.len(),
            dest.display()
        );
        return Ok(());
    }
    let mut cfg = BenchConfig::new(&resolve(&args.trace), &out);
    cfg.command = std::env::args().collect::<Vec<_>>().join(" ");
    if !args.real_workers.is_empty() {
        cfg.real_workers = args.real_workers.clone();
    }
    if !args.real_policies_extra.is_empty() {
        cfg.real_policies_extra = args
            .real_policies_extra
            .iter()
            .filter(|p| p.trim() != "none")
            .map(|p| PolicyKind::parse(p).with_context(|| format!("unknown policy `{p}`")))
            .collect::<anyhow::Result<_>>()?;
    }
    cfg.speedup = args.speedup;
    cfg.load = args.load;
    cfg.trace_start = args.trace_start.max(0.0);
    cfg.trace_seconds = args.trace_seconds;
    cfg.max_requests = args.max_requests;
    cfg.max_output_tokens = args.max_output_tokens.max(1);
    cfg.num_gpu_blocks = args.num_gpu_blocks;
    cfg.chat_rate = args.chat_rate;
    cfg.think_ms = args.think_ms;
    cfg.seed = args.seed;
    cfg.envoy_concurrency = args.envoy_concurrency.max(1);
    cfg.overhead.seconds = args.overhead_seconds;
    cfg.overhead.warmup_s = args.overhead_warmup;
    cfg.overhead.concurrency = args.overhead_concurrency.max(1);
    cfg.overhead.body_tokens = args.body_tokens.clone();
    cfg.overhead.multi_turn = !args.no_warm;
    cfg.overhead.agentic = !args.no_warm;
    cfg.overhead.loads = args
        .overhead_loads
        .iter()
        .copied()
        .filter(|l| *l > 0.0 && l.is_finite())
        .collect();
    cfg.overhead.pin = !args.no_pin;
    cfg.overhead.epp = !args.no_epp;
    cfg.sidecar.events = args.events.max(1);
    cfg.sidecar.lag_samples = args.lag_samples.max(1);
    cfg.progress = !args.no_progress;
    cfg.sweep.trace_seconds = args.sweep_trace_seconds;
    cfg.sweep.trace_start = cfg.trace_start;
    cfg.sweep.loads = args.sweep_loads.clone();
    cfg.sweep.workers = args.sweep_workers.clone();
    cfg.sweep.seeds = args.sweep_seeds.max(1);
    cfg.sweep.seed = args.seed;
    if let Some(t) = args.sweep_threads {
        cfg.sweep.threads = t.max(1);
    }
    cfg.sweep.num_gpu_blocks = args.num_gpu_blocks;
    cfg.sweep.capacity_blocks = args.capacity_blocks.clone();
    cfg.sweep.capacity_load = args.capacity_load;
    cfg.sweep.max_output_tokens = cfg.max_output_tokens;
    cfg.sweep.vms = cfg.envoy_concurrency as usize;
    cfg.sweep.event_delay_ms = args.event_delay_ms;
    cfg.sweep.progress = cfg.progress;
    if let Some(json) = &args.router_config {
        let v: serde_json::Value =
            serde_json::from_str(json).context("--router-config: not JSON")?;
        if !v.is_object() {
            bail!("--router-config: a JSON object of plugin keys");
        }
        cfg.sweep.plugin = v;
    }
    if !args.policies.is_empty() {
        cfg.policies = args
            .policies
            .iter()
            .map(|p| PolicyKind::parse(p).with_context(|| format!("unknown policy `{p}`")))
            .collect::<anyhow::Result<_>>()?;
        // The sweep runs the named policies it knows, in its own order.
        let named = cfg.policies.clone();
        cfg.sweep.policies.retain(|p| named.contains(p));
    }
    for s in &args.skip {
        match s.trim() {
            "sweep" => cfg.run_sweep = false,
            "quality" => cfg.run_quality = false,
            "overhead" => cfg.run_overhead = false,
            "sidecar" => cfg.run_sidecar = false,
            other => bail!("unknown phase `{other}` (sweep, quality, overhead, sidecar)"),
        }
    }
    if args.smoke {
        // Seconds, not minutes: a few requests per policy, short loads, small pools.
        cfg.trace_seconds = 20.0;
        cfg.max_requests = Some(args.max_requests.unwrap_or(16));
        cfg.speedup = 50.0;
        cfg.max_output_tokens = 8;
        cfg.num_gpu_blocks = 16_384;
        cfg.chat_rate = 5.0;
        cfg.think_ms = 200.0;
        // Every body kind, one open-loop level, half-second windows.
        cfg.overhead.seconds = 0.5;
        cfg.overhead.warmup_s = 0.2;
        cfg.overhead.concurrency = 2;
        cfg.overhead.body_tokens = vec![2048];
        cfg.overhead.loads = vec![0.5];
        cfg.sidecar.events = 2_000;
        cfg.sidecar.lag_samples = 10;
        // A tiny sweep: every policy, two loads, two seeds, two pool sizes.
        cfg.sweep.trace_seconds = 20.0;
        cfg.sweep.loads = vec![1.0, 3.0];
        cfg.sweep.workers = vec![2];
        cfg.sweep.reference_workers = 2;
        cfg.sweep.seeds = 2;
        cfg.sweep.num_gpu_blocks = 4_096;
        cfg.sweep.capacity_blocks = vec![2_048, 4_096];
        cfg.sweep.capacity_workers = 2;
        cfg.sweep.max_output_tokens = cfg.max_output_tokens;
        // The real stack at the sweep's engine count, then one policy at twice it (enough
        // to check the second count's rows and agreement).
        if args.real_workers.is_empty() {
            cfg.real_workers = vec![2, 4];
        }
        if args.real_policies_extra.is_empty() {
            cfg.real_policies_extra = vec![PolicyKind::KvgateEvents];
        }
    }
    if cfg.real_workers.iter().all(|&w| w == 0) {
        bail!("--real-workers: at least one engine count above 0");
    }
    let cancel = Cancel::default();
    let report = bench::run(&cfg, &cancel)?;
    println!("\n{}", report.markdown());
    println!(
        "kvgate-bench: wrote {}/report.{{json,md,svg}}",
        cfg.out_dir.display()
    );
    if args.smoke {
        let text = std::fs::read_to_string(cfg.out_dir.join("report.json"))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let runs = if cfg.run_quality {
            cfg.real_runs()
        } else {
            Vec::new()
        };
        let rows: Vec<(usize, PolicyKind)> = runs
            .iter()
            .flat_map(|r| r.policies.iter().map(move |&p| (r.workers, p)))
            .collect();
        let named: Vec<(usize, &str)> = rows.iter().map(|&(w, p)| (w, p.name())).collect();
        let mut problems = bench::report::validate(&v, &named);
        // The virtual-time replay models every policy but the endpoint picker's, and runs
        // only on Mooncake-format traces (as the sweep).
        if v.pointer("/trace/format").and_then(|f| f.as_str()) == Some("mooncake") {
            let modelled: Vec<(usize, &str)> = rows
                .iter()
                .filter(|(_, p)| !p.via_picker())
                .map(|&(w, p)| (w, p.name()))
                .collect();
            problems.extend(bench::report::validate_agreement(&v, &modelled));
        }
        if cfg.run_sweep {
            let sweep: Vec<&str> = cfg.sweep.policies.iter().map(|p| p.name()).collect();
            problems.extend(bench::sweep::tables::validate(&v, &sweep));
        }
        if !problems.is_empty() {
            bail!(
                "the smoke report is incomplete:\n  {}",
                problems.join("\n  ")
            );
        }
        for f in ["report.json", "report.md", "report.svg"] {
            let len = std::fs::metadata(cfg.out_dir.join(f))
                .map(|m| m.len())
                .unwrap_or(0);
            if len == 0 {
                bail!("{f} was not written");
            }
        }
        println!("kvgate-bench: smoke report complete");
    }
    Ok(())
}
