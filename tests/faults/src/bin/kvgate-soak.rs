//! `make soak`: the long load soak — the whole local stack under a fixed request rate for
//! ten minutes (by default), sampling Envoy's and the sidecar's memory, with latency
//! percentiles per minute. Writes `report.md` and `report.json` to `--out`, prints the
//! report, and exits 1 when a request failed, memory grew beyond the stated bound, or
//! bookkeeping was left in flight.

use clap::Parser;
use kvgate_faults::report;
use kvgate_faults::soak::{self, SoakConfig};
use std::path::PathBuf;
use std::time::Duration;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(name = "kvgate-soak", about = "Run the kvgate load soak")]
struct Args {
    /// Measured minutes (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Requests per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Warm-up seconds.
    #[arg(long, default_value_t = 20)]
    warmup_secs: u64,
    /// Latency window seconds.
    #[arg(long, default_value_t = 60)]
    window_secs: u64,
    /// Mock workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Where the report goes.
    #[arg(long, default_value = "target/soak")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = std::path::absolute(&args.out)?;
    let dir = out.join("stack");
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = SoakConfig::new(dir, Duration::from_secs_f64(args.minutes * 60.0), args.rate);
    cfg.warmup = Duration::from_secs(args.warmup_secs);
    cfg.window = Duration::from_secs(args.window_secs);
    cfg.workers = args.workers;
    eprintln!(
        "kvgate-soak: {:.1} min at {} requests/s (+{} s warm-up); stack logs in {}",
        args.minutes,
        args.rate,
        args.warmup_secs,
        cfg.dir.display()
    );
    let r = soak::run(&cfg, |m, samples| {
        let failed = samples.iter().filter(|s| s.failed()).count();
        eprintln!(
            "  t={:>5.0} s  requests={:>6}  failed={failed}  envoy={:.1} MiB  sidecar={:.1} MiB",
            m.t_s,
            samples.len(),
            m.envoy_kib as f64 / 1024.0,
            m.sidecar_kib as f64 / 1024.0
        );
    })?;
    let md = r.markdown();
    report::write(&out.join("report.md"), &md)?;
    report::write(
        &out.join("report.json"),
        &serde_json::to_string_pretty(&r.json())?,
    )?;
    println!("{md}");
    if !r.ok() {
        anyhow::bail!("soak failed (errors, memory growth or bookkeeping left in flight)");
    }
    Ok(())
}
