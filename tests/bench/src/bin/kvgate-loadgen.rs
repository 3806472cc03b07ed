//! `kvgate-loadgen`: the overhead phase's load generator ([`kvgate_bench::loadgen`]) as a
//! process of its own, so it can be pinned away from Envoy and built in release. Reads a
//! plan of bodies and a run specification, runs it on one thread and prints the result
//! as one JSON object.

use anyhow::Context;
use clap::Parser;
use kvgate_bench::loadgen::{self, LoadSpec, Plan, PlanFile};
use std::path::PathBuf;
use std::sync::Arc;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(
    name = "kvgate-loadgen",
    about = "Closed- or open-loop HTTP/1.1 load with exact µs latencies and the gateway's CPU per request"
)]
struct Args {
    /// The bodies: a JSON file `{"templates": [...]}` ({{SEQ}} and {{CYCLE}} are filled in).
    #[arg(long)]
    plan: PathBuf,
    /// The run, as JSON (`kvgate_bench::loadgen::LoadSpec`).
    #[arg(long)]
    spec: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec: LoadSpec = serde_json::from_str(&args.spec).context("--spec")?;
    let file: PlanFile = serde_json::from_slice(
        &std::fs::read(&args.plan).with_context(|| args.plan.display().to_string())?,
    )
    .with_context(|| args.plan.display().to_string())?;
    let plan = Plan::new(&file);
    anyhow::ensure!(!plan.is_empty(), "{}: no templates", args.plan.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(loadgen::run(&spec, Arc::new(plan)));
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
