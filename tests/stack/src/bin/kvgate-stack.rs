//! `make run`: the local kvgate stack — nats-server, the kvgate-sync sidecar, 4 mock
//! workers serving Qwen/Qwen3-0.6B and Envoy with the kvgate filter on 127.0.0.1:8080
//! (admin 127.0.0.1:9901) — until Ctrl-C or SIGTERM, which stop everything it started.
//! Flags start the other topologies: prefill/decode workers, data-parallel ranks,
//! vLLM-ZMQ-only workers without NATS, several gateways on one sidecar.

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
    /// Disaggregated serving: the first N workers are prefill workers, the rest decode
    /// workers (0: every worker aggregated).
    #[arg(long, default_value_t = 0)]
    prefill: usize,
    /// Data-parallel ranks per worker (each rank its own scheduler, cache and events).
    #[arg(long, default_value_t = 1)]
    dp_size: u32,
    /// Workers publish only vLLM's native ZMQ KV events (one PUB socket per dp rank) and
    /// no NATS is started: the sidecar reads the worker table from `DIR/workers.json`.
    #[arg(long)]
    zmq_only: bool,
    /// Gateways (Envoys with the filter) sharing the one sidecar, on consecutive ports
    /// from `--port` and `--admin-port`.
    #[arg(long, default_value_t = 1)]
    gateways: usize,
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
    opts.prefill_workers = args.prefill;
    opts.dp_size = args.dp_size.max(1);
    opts.zmq_only = args.zmq_only;
    opts.gateways = args.gateways.max(1);
    if args.prefill >= args.workers {
        anyhow::bail!(
            "--prefill {} leaves no decode worker among --workers {}",
            args.prefill,
            args.workers
        );
    }
    eprintln!(
        "kvgate: starting {}kvgate-sync, {} mock workers and {} Envoy(s) (logs in {}) ...",
        if args.zmq_only { "" } else { "nats-server, " },
        args.workers,
        opts.gateways,
        dir.display()
    );
    let stack = Stack::start(&opts)?;
    let workers: Vec<String> = stack
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| match opts.role_of(i + 1) {
            "aggregated" => format!("{}={}", w.instance_id, w.endpoint),
            role => format!("{}={} ({role})", w.instance_id, w.endpoint),
        })
        .collect();
    let more_gateways: String = stack
        .more_envoys
        .iter()
        .map(|e| {
            format!(
                "\n  gateway   http://127.0.0.1:{}   (admin {}; same sidecar)",
                e.port, e.admin_port
            )
        })
        .collect();
    let point = match &stack.nats {
        Some(n) => format!(
            "Point your own workers at it: publish KV events to {} as namespace `dynamo`,\n\
             component `backend` (Dynamo's subjects), and announce them on\n\
             `namespace.dynamo.kvgate.workers` (shared-state-sync/README.md); Envoy only sends\n\
             traffic to endpoints its `workers` cluster lists.",
            n.url()
        ),
        None => format!(
            "Point your own vLLM workers at it: add them to {}/workers.json with their\n\
             `zmq_events` endpoint (vLLM's --kv-events-config; rank r publishes on its port + r)\n\
             and `dp_size`; the sidecar reloads the file. Envoy only sends traffic to endpoints\n\
             its `workers` cluster lists.",
            dir.display()
        ),
    };
    let nats_line = match &stack.nats {
        Some(n) => format!(
            "{}   namespace `dynamo`, component `backend`, JetStream store {}/nats",
            n.url(),
            dir.display()
        ),
        None => format!(
            "none (--zmq-only: vLLM ZMQ events, worker table {}/workers.json)",
            dir.display()
        ),
    };
    let sidecar = stack.sidecar.as_ref();
    let token_file = sidecar
        .and_then(|s| s.token_file.clone())
        .unwrap_or_default();
    let logs: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".log"))
        .collect();
    println!(
        r#"
kvgate is running.
  gateway   http://127.0.0.1:{port}   (Envoy + kvgate filter; config {dir}/envoy.yaml){more_gateways}
  admin     http://127.0.0.1:{admin}/stats/prometheus   (kvgate_* metrics)
  sidecar   {sidecar_url}/v1/state   (kvgate-sync; API token in {token})
  nats      {nats_line}
  workers   {workers}   (dp ranks per worker: {dp})
  requests  {log}
  logs      {dir}/{{{logs}}}

{point}

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
        dp = opts.dp_size,
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
