//! `make run`: the local kvgate stack — nats-server, the kvgate-sync sidecar, 4 mock
//! workers serving Qwen/Qwen3-0.6B and Envoy with the kvgate filter on 127.0.0.1:8080
//! (admin 127.0.0.1:9901) — until Ctrl-C, which stops everything it started.

use clap::Parser;
use kvgate_stack::{Stack, StackOptions, MODEL};
use std::path::PathBuf;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(
    name = "kvgate-stack",
    about = "Run the local kvgate stack until Ctrl-C"
)]
struct Args {
    /// Number of mock workers.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Envoy listener port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Envoy admin port.
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
    /// Directory for logs, rendered configs and the mock workers' request log.
    #[arg(long, default_value = "target/run")]
    dir: PathBuf,
    /// Filter configuration overrides (JSON object, keys from the README table).
    #[arg(long, default_value = r#"{"decision_header": true}"#)]
    plugin: String,
    /// Envoy worker threads.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::path::absolute(&args.dir)?;
    let _ = std::fs::remove_file(dir.join("mock-requests.jsonl"));
    let mut opts = StackOptions::new(&dir);
    opts.workers = args.workers;
    opts.plugin = serde_json::from_str(&args.plugin)?;
    opts.concurrency = args.concurrency;
    opts.ports = Some((args.port, args.admin_port));
    eprintln!(
        "kvgate: starting nats-server, kvgate-sync, {} mock workers and Envoy (logs in {}) ...",
        args.workers,
        dir.display()
    );
    let stack = Stack::start(&opts)?;
    let workers: Vec<String> = stack
        .workers
        .iter()
        .map(|w| format!("{}={}", w.instance_id, w.endpoint))
        .collect();
    println!(
        r#"
kvgate is running.
  gateway   http://127.0.0.1:{port}   (Envoy + kvgate filter)
  admin     http://127.0.0.1:{admin}/stats/prometheus   (kvgate_* metrics)
  sidecar   {sidecar}/v1/state
  workers   {workers}
  requests  {log}

Try (send it twice: the second goes to the worker that cached the prefix):
  curl -s -i http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"{MODEL}","messages":[{{"role":"system","content":"You are a helpful assistant who answers in detail."}},{{"role":"user","content":"Why is the sky blue?"}}]}}'

Ctrl-C stops everything."#,
        port = stack.envoy.port,
        admin = stack.envoy.admin_port,
        sidecar = stack
            .sidecar
            .as_ref()
            .map(|s| s.url(""))
            .unwrap_or_default(),
        workers = workers.join(" "),
        log = stack.request_log.display(),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(tokio::signal::ctrl_c())?;
    eprintln!("kvgate: stopping ...");
    drop(stack);
    Ok(())
}
