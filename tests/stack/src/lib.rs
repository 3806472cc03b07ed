//! Launchers for the real local stack — nats-server, the kvgate-sync sidecar, mock
//! workers and Envoy with the kvgate filter — used by `make run` (the `kvgate-stack`
//! binary), the end-to-end tests, the fault tools and the benchmarks. Every process stops
//! when its handle is dropped. The processes are found through [`Tools`] (paths exported
//! by `make`, else the clone's `target/`); nothing here links wasmtime or the mock engine.

mod envoy;
mod epp;
mod nats;
mod proc;
mod tools;
mod workers;

pub use envoy::{render as render_envoy, Envoy, EnvoyKind, EnvoyOptions};
pub use epp::{render_epp, start_epp_envoy, EppEnvoyOptions};
pub use nats::Nats;
pub use proc::{free_port, free_ports, wait_for, Proc, StackError};
pub use tools::{nats_server_path, repo_root, require, wasm_path, Tools};
pub use workers::{new_token, Sidecar, Worker};

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The served model of the local stack.
pub const MODEL: &str = "Qwen/Qwen3-0.6B";

/// What to start.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Mock workers (instance ids 1..=n).
    pub workers: usize,
    /// Extra mock-worker arguments for every worker.
    pub worker_args: Vec<String>,
    /// Extra arguments per worker (index 0 = instance id 1), after `worker_args`.
    pub per_worker_args: Vec<Vec<String>>,
    /// Start nats-server and the sidecar (else: static workers in the filter config).
    pub sidecar: bool,
    /// Extra sidecar arguments.
    pub sidecar_args: Vec<String>,
    /// Filter configuration overrides (merged over the stack's own keys).
    pub plugin: Value,
    /// Envoy worker threads.
    pub concurrency: u32,
    /// Envoy template.
    pub kind: EnvoyKind,
    /// Where logs and rendered configs go.
    pub dir: PathBuf,
    /// Fixed Envoy listener and admin ports (None = free ones).
    pub ports: Option<(u16, u16)>,
    /// Extra endpoints declared in Envoy's worker cluster with no worker behind them yet
    /// (free loopback ports), so a worker started later ([`Stack::add_worker`]) is
    /// routable: Envoy's static cluster only reaches endpoints it was configured with.
    pub spare_endpoints: usize,
    /// VM configuration to use instead of the stack's own (static mode: the model files).
    pub vm_config: Option<String>,
    /// Envoy's `allow_on_headers_stop_iteration` on the filter (default on).
    pub allow_on_headers_stop_iteration: bool,
    /// Gateways (Envoys with the filter) sharing the one sidecar; the first is
    /// [`Stack::envoy`], the others [`Stack::more_envoys`].
    pub gateways: usize,
    /// Data-parallel ranks per worker (`--dp-size`).
    pub dp_size: u32,
    /// The first this many workers are prefill workers, the others decode workers
    /// (0: every worker aggregated).
    pub prefill_workers: usize,
    /// Workers publish only vLLM's native ZMQ stream (one PUB socket per dp rank) and no
    /// NATS at all, as a plain vLLM does: the stack writes their table to
    /// `workers.json` and the sidecar runs with `--no-nats --workers-file`.
    pub zmq_only: bool,
}

impl StackOptions {
    /// Defaults: 4 workers, sidecar on, 2 Envoy threads, files under `dir`.
    pub fn new(dir: &Path) -> Self {
        StackOptions {
            workers: 4,
            worker_args: Vec::new(),
            per_worker_args: Vec::new(),
            sidecar: true,
            sidecar_args: Vec::new(),
            plugin: json!({}),
            concurrency: 2,
            kind: EnvoyKind::Kvgate,
            dir: dir.to_path_buf(),
            ports: None,
            spare_endpoints: 0,
            vm_config: None,
            allow_on_headers_stop_iteration: true,
            gateways: 1,
            dp_size: 1,
            prefill_workers: 0,
            zmq_only: false,
        }
    }

    /// The role of the worker with instance id `id` (1-based): aggregated, or prefill for
    /// the first [`StackOptions::prefill_workers`] and decode for the others.
    pub fn role_of(&self, id: usize) -> &'static str {
        match self.prefill_workers {
            0 => "aggregated",
            n if id <= n => "prefill",
            _ => "decode",
        }
    }

    /// The mock-worker arguments of the worker with instance id `id` (1-based) beyond
    /// the ones every worker gets: role, then `per_worker_args`.
    fn args_of(&self, id: usize) -> Vec<String> {
        let mut args = Vec::new();
        if self.prefill_workers > 0 {
            args.extend(["--role".to_string(), self.role_of(id).to_string()]);
        }
        if let Some(extra) = self.per_worker_args.get(id - 1) {
            args.extend(extra.iter().cloned());
        }
        args
    }
}

/// A running stack. Dropping it stops everything (Envoy first).
pub struct Stack {
    /// Envoy (the first gateway).
    pub envoy: Envoy,
    /// The other gateways sharing the sidecar ([`StackOptions::gateways`]).
    pub more_envoys: Vec<Envoy>,
    /// Mock workers.
    pub workers: Vec<Worker>,
    /// The sidecar.
    pub sidecar: Option<Sidecar>,
    /// nats-server.
    pub nats: Option<Nats>,
    /// Paths of the parts.
    pub tools: Tools,
    /// Logs and configs.
    pub dir: PathBuf,
    /// The mock workers' shared request log.
    pub request_log: PathBuf,
    /// Ports of spare endpoints in Envoy's worker cluster not used yet.
    pub spare_ports: Vec<u16>,
    /// Arguments every mock worker got (NATS URL, request log, `worker_args`).
    worker_args: Vec<String>,
}

impl Stack {
    /// Starts the stack.
    pub fn start(opts: &StackOptions) -> Result<Stack, StackError> {
        let tools = Tools::from_env()?;
        std::fs::create_dir_all(&opts.dir)?;
        let request_log = opts.dir.join("mock-requests.jsonl");
        let nats = if opts.sidecar && !opts.zmq_only {
            Some(Nats::start(&tools, &opts.dir)?)
        } else {
            None
        };
        let mut worker_args = vec![
            "--request-log".to_string(),
            request_log.display().to_string(),
        ];
        if let Some(n) = &nats {
            worker_args.extend(["--nats-url".to_string(), n.url()]);
        }
        if opts.dp_size > 1 {
            worker_args.extend(["--dp-size".to_string(), opts.dp_size.to_string()]);
        }
        worker_args.extend(opts.worker_args.iter().cloned());
        let mut workers: Vec<Worker> = Vec::new();
        let mut table = Vec::new();
        for id in 1..=opts.workers {
            let mut args = worker_args.clone();
            args.extend(opts.args_of(id));
            let mut zmq = None;
            if opts.zmq_only {
                // No NATS announcements: decode workers learn the prefill workers (started
                // first) from the command line.
                if id > opts.prefill_workers {
                    for w in workers.iter().take(opts.prefill_workers) {
                        args.extend([
                            "--peer".to_string(),
                            format!("{}={}", w.instance_id, w.endpoint),
                        ]);
                    }
                }
                let base = format!("tcp://127.0.0.1:{}", free_ports(opts.dp_size.max(1)));
                args.extend(["--zmq-pub".to_string(), base.clone()]);
                zmq = Some(base);
            }
            let w = Worker::start(&tools, &opts.dir, id as u64, &args)?;
            table.push(json!({
                "instance_id": w.instance_id,
                "endpoint": w.endpoint,
                "model": MODEL,
                "role": opts.role_of(id),
                "block_size": 16,
                "dp_size": opts.dp_size.max(1),
                "zmq_events": zmq,
            }));
            workers.push(w);
        }
        let sidecar = if !opts.sidecar {
            None
        } else {
            let mut args = vec![
                "--model".to_string(),
                format!("{MODEL}={}", tools.model_dir.display()),
            ];
            match &nats {
                Some(n) => args.extend(["--nats-url".to_string(), n.url()]),
                None => {
                    let file = opts.dir.join("workers.json");
                    std::fs::write(&file, Value::Array(table).to_string())?;
                    args.extend([
                        "--no-nats".to_string(),
                        "--workers-file".to_string(),
                        file.display().to_string(),
                    ]);
                }
            }
            args.extend(opts.sidecar_args.iter().cloned());
            Some(Sidecar::start(&tools, &opts.dir, &args)?)
        };
        let mut plugin = serde_json::Map::new();
        plugin.insert("sync_wait_ms".into(), json!(500));
        if sidecar.is_none() {
            let list: Vec<Value> = workers
                .iter()
                .map(|w| json!({"instance_id": w.instance_id, "endpoint": w.endpoint, "model": MODEL, "block_size": 16}))
                .collect();
            plugin.insert("sidecar_cluster".into(), json!(""));
            plugin.insert("workers".into(), Value::Array(list));
        }
        if let Value::Object(o) = &opts.plugin {
            for (k, v) in o {
                plugin.insert(k.clone(), v.clone());
            }
        }
        let plugin = Value::Object(plugin);
        let spare_ports: Vec<u16> = (0..opts.spare_endpoints).map(|_| free_port()).collect();
        let vm_config = match (&opts.vm_config, &sidecar) {
            (Some(c), _) => c.clone(),
            (None, None) => static_vm_config(&tools)?,
            (None, Some(_)) => String::new(),
        };
        let envoy_opts = EnvoyOptions {
            kind: opts.kind,
            plugin_config: plugin,
            vm_config,
            workers: workers
                .iter()
                .map(|w| w.endpoint.clone())
                .chain(spare_ports.iter().map(|p| format!("127.0.0.1:{p}")))
                .collect(),
            sidecar_port: sidecar.as_ref().map(|s| s.port).unwrap_or(1),
            concurrency: opts.concurrency,
            port: opts.ports.map(|p| p.0),
            admin_port: opts.ports.map(|p| p.1),
            allow_on_headers_stop_iteration: opts.allow_on_headers_stop_iteration,
            sidecar_token: sidecar.as_ref().and_then(|s| s.token.clone()),
            ..EnvoyOptions::default()
        };
        let envoy = Envoy::start(&tools, &envoy_opts, &opts.dir)?;
        let mut more_envoys = Vec::new();
        for g in 1..opts.gateways.max(1) {
            let step = g as u16;
            let more = EnvoyOptions {
                name: Some(format!("envoy-{}", g + 1)),
                port: opts.ports.map(|p| p.0 + step),
                admin_port: opts.ports.map(|p| p.1 + step),
                ..envoy_opts.clone()
            };
            more_envoys.push(Envoy::start(&tools, &more, &opts.dir)?);
        }
        Ok(Stack {
            envoy,
            more_envoys,
            workers,
            sidecar,
            nats,
            tools,
            dir: opts.dir.clone(),
            request_log,
            spare_ports,
            worker_args,
        })
    }

    /// Starts one more mock worker (instance id: the highest so far + 1) on the next spare
    /// endpoint of Envoy's cluster, with the arguments every worker got plus `extra`.
    pub fn add_worker(&mut self, extra: &[String]) -> Result<&Worker, StackError> {
        if self.spare_ports.is_empty() {
            return Err(StackError::Process {
                name: "stack".into(),
                detail: "no spare endpoint left (StackOptions::spare_endpoints)".into(),
                log: String::new(),
            });
        }
        let port = self.spare_ports.remove(0);
        let id = self
            .workers
            .iter()
            .map(|w| w.instance_id)
            .max()
            .unwrap_or(0)
            + 1;
        let mut args = self.worker_args.clone();
        args.extend(extra.iter().cloned());
        let w = Worker::start_on_port(&self.tools, &self.dir, id, port, &args)?;
        self.workers.push(w);
        self.workers.last().ok_or_else(|| StackError::Process {
            name: "stack".into(),
            detail: "worker list empty".into(),
            log: String::new(),
        })
    }

    /// Waits until the filter routes with its tokenizer and knows all `workers` (needs
    /// `decision_header: true`): sends a probe request until its `x-kvgate-decision` shows
    /// no degradation and every worker as a candidate. Returns the probe's decision line.
    pub fn wait_routable(&self, timeout: Duration) -> Result<String, StackError> {
        let mut line = String::new();
        for envoy in std::iter::once(&self.envoy).chain(&self.more_envoys) {
            line = self.wait_routable_on(envoy, timeout)?;
        }
        Ok(line)
    }

    /// [`Stack::wait_routable`] on one gateway.
    pub fn wait_routable_on(&self, envoy: &Envoy, timeout: Duration) -> Result<String, StackError> {
        let body = json!({"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]}).to_string();
        let want = self.workers.len();
        let mut last = String::new();
        let ok = wait_for(timeout, || {
            let r =
                kvgate_http::post(&envoy.url("/v1/chat/completions"), &[], body.as_bytes()).ok()?;
            last = r
                .header("x-kvgate-decision")
                .unwrap_or_default()
                .to_string();
            let ids: std::collections::BTreeSet<&str> = last
                .split(" | ")
                .skip(1)
                .filter_map(|c| c.trim_start_matches("prefill:").trim().split('/').next())
                .collect();
            (r.status == 200 && !last.contains("degraded=") && ids.len() >= want)
                .then(|| last.clone())
        });
        ok.ok_or_else(|| {
            envoy
                .proc
                .error(&format!("filter not routable yet; last decision: `{last}`"))
        })
    }

    /// The worker with this endpoint.
    pub fn worker_at(&self, endpoint: &str) -> Option<&Worker> {
        self.workers.iter().find(|w| w.endpoint == endpoint)
    }
}

/// Removes what an earlier run left in `dir`: logs, rendered Envoy configs, sidecar tokens
/// and the mock workers' request log (other files are kept; nats-server empties its own
/// store when a stack starts).
pub fn clear_run_files(dir: &Path) -> Result<(), StackError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let ours = [".log", ".token", ".yaml"]
            .iter()
            .any(|x| name.ends_with(x))
            || name == "mock-requests.jsonl";
        if ours && e.path().is_file() {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// VM configuration carrying the model files inline (static mode, no sidecar).
pub fn static_vm_config(tools: &Tools) -> Result<String, StackError> {
    // The packed tokenizer: each VM that tokenizes loads it without a JSON tree.
    let tokenizer = std::fs::read(tools.model_dir.join("tokenizer.json"))?;
    let config = std::fs::read_to_string(tools.model_dir.join("tokenizer_config.json"))?;
    let model = kvgate_engine::vm::vm_config_model(MODEL, 16, &tokenizer, &config);
    Ok(json!({ "models": [model] }).to_string())
}
