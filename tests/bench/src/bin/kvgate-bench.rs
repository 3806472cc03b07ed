//! `make bench`: routing quality on a real trace (seven policies on the same mock
//! engines), the gateway's overhead against plain Envoy, and the sidecar's ingest rate
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
    /// Mock engines.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Engine time scale: the trace is replayed this many times faster than real time.
    #[arg(long, default_value_t = 10.0)]
    speedup: f64,
    /// Arrival-rate multiplier on top of the trace's own rate.
    #[arg(long, default_value_t = 1.0)]
    load: f64,
    /// Trace seconds to replay from the start (0 = all).
    #[arg(long, default_value_t = 300.0)]
    trace_seconds: f64,
    /// At most this many requests.
    #[arg(long)]
    max_requests: Option<usize>,
    /// Cap on output tokens per request.
    #[arg(long, default_value_t = 32)]
    max_output_tokens: u32,
    /// KV pool per engine, in 16-token blocks.
    #[arg(long, default_value_t = 65_536)]
    num_gpu_blocks: usize,
    /// Chat traces: sessions per trace second (Poisson arrivals).
    #[arg(long, default_value_t = 2.0)]
    chat_rate: f64,
    /// Chat traces: pause between turns, trace milliseconds.
    #[arg(long, default_value_t = 2000.0)]
    think_ms: f64,
    /// Policies, comma-separated (round_robin,random,least_load,char_prefix,kvgate_approx,kvgate_events,oracle).
    #[arg(long, value_delimiter = ',')]
    policies: Vec<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    envoy_concurrency: u32,
    /// Overhead: measured seconds per run.
    #[arg(long, default_value_t = 8.0)]
    overhead_seconds: f64,
    /// Overhead: warm-up seconds per run.
    #[arg(long, default_value_t = 2.0)]
    overhead_warmup: f64,
    /// Overhead: requests in flight.
    #[arg(long, default_value_t = 4)]
    overhead_concurrency: usize,
    /// Overhead: chat body sizes in prompt tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [2048usize, 16384])]
    body_tokens: Vec<usize>,
    /// Overhead: skip the multi-turn (warm segment cache) kvgate runs.
    #[arg(long)]
    no_warm: bool,
    /// Sidecar: KV events to ingest.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Sidecar: visibility-lag samples.
    #[arg(long, default_value_t = 100)]
    lag_samples: usize,
    /// Phases to skip, comma-separated (quality, overhead, sidecar).
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// The tiny run of `make bench-smoke`: a few requests, short loads; checks the report.
    #[arg(long)]
    smoke: bool,
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
    let mut cfg = BenchConfig::new(&resolve(&args.trace), &out);
    cfg.command = std::env::args().collect::<Vec<_>>().join(" ");
    cfg.workers = args.workers.max(1);
    cfg.speedup = args.speedup;
    cfg.load = args.load;
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
    cfg.overhead.warm = !args.no_warm;
    cfg.sidecar.events = args.events.max(1);
    cfg.sidecar.lag_samples = args.lag_samples.max(1);
    cfg.progress = !args.no_progress;
    if !args.policies.is_empty() {
        cfg.policies = args
            .policies
            .iter()
            .map(|p| PolicyKind::parse(p).with_context(|| format!("unknown policy `{p}`")))
            .collect::<anyhow::Result<_>>()?;
    }
    for s in &args.skip {
        match s.trim() {
            "quality" => cfg.run_quality = false,
            "overhead" => cfg.run_overhead = false,
            "sidecar" => cfg.run_sidecar = false,
            other => bail!("unknown phase `{other}` (quality, overhead, sidecar)"),
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
        cfg.overhead.seconds = 1.0;
        cfg.overhead.warmup_s = 0.3;
        cfg.overhead.concurrency = 2;
        cfg.overhead.body_tokens = vec![2048];
        cfg.sidecar.events = 2_000;
        cfg.sidecar.lag_samples = 10;
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
        let names: Vec<&str> = if cfg.run_quality {
            cfg.policies.iter().map(|p| p.name()).collect()
        } else {
            Vec::new()
        };
        let problems = bench::report::validate(&v, &names);
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
