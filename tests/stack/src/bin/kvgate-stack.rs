//! `make run`: the local kvgate stack — nats-server, the kvgate-sync sidecar, 4 mock
//! workers serving Qwen/Qwen3-0.6B and Envoy with the kvgate filter on 127.0.0.1:8080
//! (admin 127.0.0.1:9901) — until Ctrl-C or SIGTERM, which stop everything it started.

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
    // Each run starts clean: logs, rendered configs, tokens and the request log of the
    // previous run go (nats-server's store is emptied when it starts).
    kvgate_stack::clear_run_files(&dir)?;
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
    let sidecar = stack.sidecar.as_ref();
    let nats = stack.nats.as_ref().map(|n| n.url()).unwrap_or_default();
    let token_file = sidecar
        .map(|s| dir.join(format!("sidecar-{}.token", s.port)))
        .unwrap_or_default();
    let logs: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".log"))
        .collect();
    println!(
        r#"
kvgate is running.
  gateway   http://127.0.0.1:{port}   (Envoy + kvgate filter; config {dir}/envoy.yaml)
  admin     http://127.0.0.1:{admin}/stats/prometheus   (kvgate_* metrics)
  sidecar   {sidecar_url}/v1/state   (kvgate-sync; API token in {token})
  nats      {nats}   namespace `dynamo`, component `backend`, JetStream store {dir}/nats
  workers   {workers}
  requests  {log}
  logs      {dir}/{{{logs}}}

Point your own workers at it: publish KV events to {nats} as namespace `dynamo`,
component `backend` (Dynamo's subjects), and announce them on `namespace.dynamo.kvgate.workers`
(shared-state-sync/README.md); Envoy only sends traffic to endpoints its `workers` cluster lists.

Try (send it twice: the second goes to the worker that cached the prefix):
  curl -s -i http://127.0.0.1:{port}/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"{MODEL}","messages":[{{"role":"system","content":"You are a helpful assistant who answers in detail."}},{{"role":"user","content":"Why is the sky blue?"}}]}}'

Ctrl-C (or SIGTERM) stops everything."#,
        port = stack.envoy.port,
        admin = stack.envoy.admin_port,
        dir = dir.display(),
        sidecar_url = sidecar.map(|s| s.url("")).unwrap_or_default(),
        token = token_file.display(),
        workers = workers.join(" "),
        log = stack.request_log.display(),
        logs = logs.join(","),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = tokio::signal::ctrl_c() => r,
                _ = term.recv() => Ok(()),
            }
        })?;
    eprintln!("kvgate: stopping ...");
    drop(stack);
    Ok(())
}
