//! Gateway overhead: plain Envoy (`envoy-config/envoy-baseline.yaml`) against Envoy +
//! kvgate (`envoy.yaml`, static mode: the same upstreams listed in the filter's
//! configuration) and against Envoy + ext_proc to kvgate's endpoint picker
//! (`envoy-epp.yaml`, a release `kvgate-sync serve --epp --no-nats --workers-file` with the
//! same upstreams), all in front of the same trivial upstream, measured side by side.
//!
//! The load generator (`kvgate-loadgen`, [`super::loadgen`]) and the upstream
//! (`kvgate-echo`, [`super::echo`]) are processes of their own, release-built by
//! `make bench`, pinned with `taskset` to the CPUs Envoy is not pinned to when the
//! machine has at least two (first half of the allowed CPUs: Envoy; the rest: load
//! generator and upstream). Both Envoys listen with `connection_balance_config:
//! exact_balance`, so the load generator's connections are spread evenly over Envoy's
//! worker threads.
//!
//! For each body kind, the three Envoys (and the picker) run at the same time (the others
//! idle while one is measured), are primed until no request waits for a model load, and
//! for each:
//! 1. closed loop, `concurrency` connections back to back: capacity (requests/s);
//! 2. open loop at 25 %, 50 % and 75 % (`loads`) of the **slowest** gateway's capacity on
//!    that body, the same rate for every gateway (each stays below its own capacity, so
//!    added latency is processing, not queueing): latency (exact µs quantiles, timed from
//!    when each request was due);
//!
//! and over every window Envoy's CPU time per request (`/proc/<pid>/stat`); for the
//! endpoint picker also the picker process's CPU time over the same window (it is on the
//! request path, pinned with Envoy's CPUs like the filter inside Envoy): users pay both,
//! so its CPU per request is Envoy's + the picker's, each reported too. Added latency and
//! CPU are kvgate − plain and epp − plain at the same rate. Afterwards the kvgate Envoy's own
//! histograms (`kvgate.parse_us` … `decision_us`) give the in-VM breakdown and its
//! `kvgate.vm_memory_bytes.<role>.vm_<id>` gauges each VM's linear memory.
//!
//! Bodies (real text, Qwen3 chat template):
//! - **first-seen** 2k and 16k tokens: ShareGPT prompts packed into ~2k-token messages,
//!   every message prefixed by the request number, so nothing was seen before;
//! - **multi-turn**: a shared ~1k-token system prompt and sessions whose history grows
//!   one user + assistant exchange per turn (ShareGPT texts), each request one new turn;
//! - **agentic**: the τ-bench airline trajectories of the Qwen3 golden fixture (system
//!   prompt, 14 tools, tool calls and results), each request the trajectory up to its
//!   next assistant turn, so the history grows by tool results and user messages.
//!
//! Sessions are made new on each pass through the list (their messages carry the pass
//! number), so a pass never hits what an earlier pass cached.

use super::epp::{prom_value, EppGateway};
use super::loadgen::{LoadResult, LoadSpec, PlanFile, CYCLE, SEQ};
use super::stats::round;
use super::sys;
use super::{BenchConfig, BenchError, Cancel, Result};
use kvgate_mock::tokenize::Tokenize;
use kvgate_stack::{
    free_port, static_vm_config, wait_for, Envoy, EnvoyKind, EnvoyOptions, Proc, Tools, MODEL,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Tokens per packed chat message of the first-seen bodies.
pub const MESSAGE_TOKENS: usize = 2048;
/// The filter's histogram of model loads (tokenizer + chat template) per VM, ms.
pub const MODEL_LOAD: &str = "model_load_ms";
/// The per-VM linear-memory gauges (`<prefix>.<role>.vm_<id>`).
pub const VM_MEMORY: &str = "kvgate.vm_memory_bytes";

/// The stage histograms of the filter, in pipeline order.
pub const STAGES: [&str; 6] = [
    "parse_us",
    "template_us",
    "tokenize_us",
    "hash_us",
    "score_us",
    "decision_us",
];

/// A priming run whose slowest request took less than this (µs) had no request wait for a
/// VM to load its model.
const PRIMED_MAX_US: f64 = 250_000.0;

/// Sessions interleaved in the multi-turn and agentic bodies.
const SESSIONS: usize = 4;
/// Turns per multi-turn session.
const TURNS: usize = 8;
/// Tokens of the multi-turn bodies' shared system prompt.
const SYSTEM_TOKENS: usize = 1024;

/// Parameters of the overhead phase.
#[derive(Debug, Clone)]
pub struct OverheadConfig {
    /// Measured seconds per run.
    pub seconds: f64,
    /// Unmeasured warm-up seconds per run.
    pub warmup_s: f64,
    /// Load-generator connections (closed loop: requests in flight).
    pub concurrency: usize,
    /// First-seen chat sizes in prompt tokens.
    pub body_tokens: Vec<usize>,
    /// Pretend workers (echo listeners) behind Envoy.
    pub upstreams: usize,
    /// Also the multi-turn body.
    pub multi_turn: bool,
    /// Also the agentic body.
    pub agentic: bool,
    /// Open-loop rates as fractions of the slowest gateway's closed-loop capacity.
    pub loads: Vec<f64>,
    /// Pin Envoy and the load generator + upstream to disjoint CPUs.
    pub pin: bool,
    /// Also the endpoint-picker gateway (Envoy + ext_proc + `kvgate-sync serve --epp`).
    pub epp: bool,
}

impl Default for OverheadConfig {
    fn default() -> Self {
        OverheadConfig {
            seconds: 4.0,
            warmup_s: 1.0,
            concurrency: 4,
            body_tokens: vec![2048, 16384],
            upstreams: 4,
            multi_turn: true,
            agentic: true,
            loads: vec![0.25, 0.5, 0.75],
            pin: true,
            epp: true,
        }
    }
}

/// p50 and p99 of one stage histogram.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Quantiles {
    /// Median, µs.
    pub p50: f64,
    /// 99th percentile, µs.
    pub p99: f64,
}

/// Both Envoys at one open-loop rate.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Level {
    /// `25%`, `50%`, … of plain Envoy's capacity.
    pub load: String,
    /// Target requests/s.
    pub rate_rps: f64,
    /// Plain Envoy.
    pub plain: LoadResult,
    /// Envoy + kvgate.
    pub kvgate: LoadResult,
    /// kvgate p50 − plain p50, µs.
    pub added_p50_us: f64,
    /// kvgate p99 − plain p99, µs.
    pub added_p99_us: f64,
    /// kvgate − plain Envoy CPU per request, µs.
    pub added_cpu_us_per_req: Option<f64>,
    /// Envoy + ext_proc + endpoint picker (its `extra_cpu_*` is the picker's CPU).
    pub epp: Option<LoadResult>,
    /// epp p50 − plain p50, µs.
    pub epp_added_p50_us: Option<f64>,
    /// epp p99 − plain p99, µs.
    pub epp_added_p99_us: Option<f64>,
    /// (epp Envoy + picker) − plain Envoy CPU per request, µs.
    pub epp_added_cpu_us_per_req: Option<f64>,
}

/// One body kind.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BodyResult {
    /// `2k`, `16k`, `multi-turn`, `agentic`.
    pub label: String,
    /// What the bodies are.
    pub description: String,
    /// Prompt tokens of the largest body (Qwen3 template + tokenizer).
    pub body_tokens: usize,
    /// Prompt tokens of the smallest body.
    pub body_tokens_min: usize,
    /// Mean body bytes.
    pub body_bytes: usize,
    /// Most messages in a body.
    pub messages: usize,
    /// Distinct bodies before the list repeats (with new session tags).
    pub templates: usize,
    /// Closed-loop capacity of plain Envoy.
    pub capacity_plain: LoadResult,
    /// Closed-loop capacity of Envoy + kvgate.
    pub capacity_kvgate: LoadResult,
    /// kvgate capacity / plain capacity.
    pub capacity_ratio: f64,
    /// Open-loop runs, one per load level.
    pub levels: Vec<Level>,
    /// Added p50 latency per load level (`25%` → µs).
    pub added_p50_us: BTreeMap<String, f64>,
    /// Added p99 latency per load level.
    pub added_p99_us: BTreeMap<String, f64>,
    /// Added Envoy CPU per request, µs: the median over every paired window (capacity and
    /// each load level).
    pub added_cpu_us_per_req: Option<f64>,
    /// Smallest and largest of those paired differences.
    pub added_cpu_us_per_req_range: Option<[f64; 2]>,
    /// Plain Envoy CPU per request (median over its windows), µs.
    pub plain_cpu_us_per_req: Option<f64>,
    /// kvgate Envoy CPU per request (median over its windows), µs.
    pub kvgate_cpu_us_per_req: Option<f64>,
    /// The filter's stage times (µs, Envoy's histogram quantiles over every request the
    /// kvgate Envoy handled for this body, warm-up included).
    pub breakdown: BTreeMap<String, Quantiles>,
    /// Linear memory of the largest tokenizing VM (the filter's own gauges), MiB; None
    /// when the filter does not report it.
    pub vm_linear_memory_mib: Option<f64>,
    /// Linear memory of the largest main-thread VM, MiB.
    pub main_vm_linear_memory_mib: Option<f64>,
    /// Every VM's linear memory, MiB (`tokenizing.vm_…`, `main_thread.vm_…`).
    pub vm_memory_mib: BTreeMap<String, f64>,
    /// Resident memory of plain Envoy afterwards, MiB.
    pub plain_rss_mib: f64,
    /// Resident memory of the kvgate Envoy afterwards, MiB.
    pub kvgate_rss_mib: f64,
    /// Closed-loop capacity of Envoy + ext_proc + endpoint picker.
    pub capacity_epp: Option<LoadResult>,
    /// epp capacity / plain capacity.
    pub epp_capacity_ratio: Option<f64>,
    /// epp capacity / kvgate (filter) capacity, same run.
    pub epp_vs_filter_capacity_ratio: Option<f64>,
    /// epp − plain p50 latency per load level, µs.
    pub epp_added_p50_us: BTreeMap<String, f64>,
    /// epp − plain p99 latency per load level, µs.
    pub epp_added_p99_us: BTreeMap<String, f64>,
    /// The epp Envoy's CPU per request (median over its windows), µs.
    pub epp_envoy_cpu_us_per_req: Option<f64>,
    /// The picker process's CPU per request (median over the same windows), µs.
    pub epp_picker_cpu_us_per_req: Option<f64>,
    /// Envoy + picker CPU per request (median over the windows of the per-window sum), µs:
    /// what a request through the endpoint picker costs.
    pub epp_cpu_us_per_req: Option<f64>,
    /// (Envoy + picker) − plain Envoy CPU per request, µs: the median over every paired
    /// window.
    pub epp_added_cpu_us_per_req: Option<f64>,
    /// Smallest and largest of those paired differences.
    pub epp_added_cpu_us_per_req_range: Option<[f64; 2]>,
    /// epp added CPU / kvgate added CPU per request (medians of the same run).
    pub epp_vs_filter_added_cpu_ratio: Option<f64>,
    /// ext_proc streams the picker served over this body's runs (priming included).
    pub picker_streams: Option<f64>,
    /// Of which the picker routed (its engine's `kvgate.decisions.routed`).
    pub picker_routed: Option<f64>,
    /// Resident memory of the epp Envoy afterwards, MiB.
    pub epp_rss_mib: Option<f64>,
    /// Resident memory of the picker process afterwards, MiB.
    pub picker_rss_mib: Option<f64>,
}

/// Where each process ran.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Pinning {
    /// Whether the processes were pinned.
    pub applied: bool,
    /// CPUs the bench could use.
    pub allowed_cpus: String,
    /// CPUs of the Envoys (and of the endpoint picker).
    pub envoy_cpus: String,
    /// CPUs of the load generator and the upstream.
    pub load_cpus: String,
    /// What that means for the figures.
    pub note: String,
}

/// The overhead phase's figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct OverheadReport {
    /// Load-generator connections.
    pub concurrency: usize,
    /// Measured seconds per run.
    pub seconds: f64,
    /// Warm-up seconds per run.
    pub warmup_s: f64,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// Wasm VMs in the kvgate Envoy (one per worker thread plus two on the main thread).
    pub vms: u32,
    /// Open-loop levels (fractions of the slowest gateway's capacity).
    pub loads: Vec<f64>,
    /// Whether the load generator and upstream were debug builds.
    pub debug_build: bool,
    /// Where each process ran.
    pub pinning: Pinning,
    /// Whether the endpoint-picker gateway was measured too.
    pub epp: bool,
    /// The picker binary (`kvgate-sync`; `make bench` runs its release build).
    pub picker_bin: String,
    /// One entry per body kind.
    pub bodies: Vec<BodyResult>,
}

/// A body kind ready to send.
pub struct BodySet {
    /// Short name.
    pub label: String,
    /// What the bodies are.
    pub description: String,
    /// Bodies with [`SEQ`] / [`CYCLE`] markers.
    pub templates: Vec<Value>,
}

/// The body with its markers filled in (request 0 of pass 0).
fn filled(t: &Value) -> Result<Value> {
    let text = t.to_string().replace(SEQ, "0").replace(CYCLE, "0");
    Ok(serde_json::from_str(&text)?)
}

fn chat(messages: Vec<Value>, tools: Option<&Value>) -> Value {
    let mut body = json!({"model": MODEL, "messages": messages, "max_tokens": 1});
    if let Some(t) = tools {
        body["tools"] = t.clone();
    }
    body
}

/// Texts of the ShareGPT fixture, in order.
fn sharegpt(tools: &Tools) -> Result<Vec<String>> {
    let path = tools
        .repo
        .join("tests/fixtures/traces/sharegpt/ShareGPT_V3_filtered_500.json");
    let corpus: Value = serde_json::from_str(
        &std::fs::read_to_string(&path)
            .map_err(|e| BenchError::Failed(format!("{}: {e}", path.display())))?,
    )?;
    let texts: Vec<String> = corpus
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.pointer("/conversations/0/value")?.as_str())
        .filter(|t| !t.trim().is_empty())
        .map(str::to_string)
        .collect();
    if texts.is_empty() {
        return Err(BenchError::Failed(format!("{}: no texts", path.display())));
    }
    Ok(texts)
}

/// Texts from `texts` (cycling, from `*next`) joined until about `tokens` tokens.
fn pack(
    texts: &[String],
    next: &mut usize,
    tokens: usize,
    count: &dyn Fn(&str) -> usize,
) -> String {
    let mut out = String::new();
    while count(&out) < tokens {
        let Some(t) = texts.get(*next % texts.len().max(1)) else {
            break;
        };
        *next += 1;
        out.push_str(t);
        out.push_str("\n\n");
    }
    out
}

/// First-seen chats of about `tokens` tokens: ~2k-token messages, each prefixed by the
/// request number.
pub fn first_seen(tools: &Tools, tok: &dyn Tokenize, tokens: usize) -> Result<BodySet> {
    let texts = sharegpt(tools)?;
    let count = |t: &str| tok.text(t).map(|v| v.len()).unwrap_or(t.len() / 4);
    let n = tokens.div_ceil(MESSAGE_TOKENS).max(1);
    let mut next = 0;
    let messages: Vec<Value> = (0..n)
        .map(|j| {
            // Alternating roles, ending with the user's.
            let role = if (n - 1 - j) % 2 == 0 {
                "user"
            } else {
                "assistant"
            };
            let text = pack(&texts, &mut next, tokens / n, &count);
            json!({"role": role, "content": format!("[{SEQ}.{j}] {text}")})
        })
        .collect();
    let label = if tokens >= 1024 {
        format!("{}k", tokens / 1024)
    } else {
        tokens.to_string()
    };
    Ok(BodySet {
        description: format!(
            "first-seen chat, {n} message(s) of ShareGPT text, each new (request number first)"
        ),
        label,
        templates: vec![chat(messages, None)],
    })
}

/// Multi-turn sessions: one shared system prompt, a history growing by one exchange per
/// request.
pub fn multi_turn(tools: &Tools, tok: &dyn Tokenize) -> Result<BodySet> {
    let texts = sharegpt(tools)?;
    let count = |t: &str| tok.text(t).map(|v| v.len()).unwrap_or(t.len() / 4);
    let mut next = 0;
    let system = format!(
        "You are a helpful assistant. Use the reference notes below when they help.\n\n{}",
        pack(&texts, &mut next, SYSTEM_TOKENS, &count)
    );
    let mut templates = Vec::new();
    for turn in 0..TURNS {
        for s in 0..SESSIONS {
            let text = |t: usize, k: usize| {
                let i = next + (s * TURNS + t) * 2 + k;
                texts.get(i % texts.len()).cloned().unwrap_or_default()
            };
            let mut messages = vec![json!({"role": "system", "content": system})];
            for t in 0..=turn {
                messages.push(
                    json!({"role": "user", "content": format!("[{CYCLE}.{s}] {}", text(t, 0))}),
                );
                if t < turn {
                    messages.push(json!({"role": "assistant", "content": format!("[{CYCLE}.{s}] {}", text(t, 1))}));
                }
            }
            templates.push(chat(messages, None));
        }
    }
    Ok(BodySet {
        label: "multi-turn".into(),
        description: format!(
            "{SESSIONS} interleaved sessions × {TURNS} turns: a shared ~{SYSTEM_TOKENS}-token system prompt and a history growing by one ShareGPT exchange per request"
        ),
        templates,
    })
}

/// Agent sessions from the τ-bench trajectories of the Qwen3 golden fixture: system prompt,
/// tools, and the trajectory up to each assistant turn.
pub fn agentic(tools: &Tools) -> Result<BodySet> {
    let path = tools
        .repo
        .join("tests/fixtures/qwen3/qwen3_chat_template_golden.jsonl");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Failed(format!("{}: {e}", path.display())))?;
    // The longest request of each trajectory (`…:upto<N>` ids).
    let mut longest: BTreeMap<String, Value> = BTreeMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(id) = v["id"].as_str() else { continue };
        let req = &v["request"];
        if req["tools"].as_array().is_none_or(|t| t.len() < 10) {
            continue;
        }
        let trajectory = id.rsplit_once(":upto").map_or(id, |(t, _)| t).to_string();
        let len = |r: &Value| r["messages"].as_array().map_or(0, Vec::len);
        if longest.get(&trajectory).is_none_or(|r| len(r) < len(req)) {
            longest.insert(trajectory, req.clone());
        }
    }
    let trajectories: Vec<&Value> = longest.values().collect();
    if trajectories.is_empty() {
        return Err(BenchError::Failed(format!(
            "{}: no request with ≥ 10 tools",
            path.display()
        )));
    }
    // Per session: its requests, each the trajectory up to a message an assistant answers.
    let sessions: Vec<Vec<Value>> = (0..SESSIONS)
        .map(|s| {
            let req = trajectories[s % trajectories.len()];
            let msgs = req["messages"].as_array().cloned().unwrap_or_default();
            let tagged: Vec<Value> = msgs
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    if m["role"] == "user" || m["role"] == "tool" {
                        let c = m["content"].as_str().unwrap_or("").to_string();
                        m["content"] = json!(format!("[{CYCLE}.{s}] {c}"));
                    }
                    m
                })
                .collect();
            (0..tagged.len())
                .filter(|&i| {
                    let role = tagged[i]["role"].as_str().unwrap_or("");
                    (role == "user" || role == "tool")
                        && tagged
                            .get(i + 1)
                            .is_none_or(|n| n["role"].as_str() == Some("assistant"))
                })
                .map(|i| chat(tagged[..=i].to_vec(), Some(&req["tools"])))
                .collect()
        })
        .collect();
    let turns = sessions.iter().map(Vec::len).max().unwrap_or(0);
    let mut templates = Vec::new();
    for t in 0..turns {
        for s in &sessions {
            if let Some(b) = s.get(t) {
                templates.push(b.clone());
            }
        }
    }
    let tools_n = trajectories[0]["tools"].as_array().map_or(0, Vec::len);
    Ok(BodySet {
        label: "agentic".into(),
        description: format!(
            "{SESSIONS} interleaved τ-bench airline agent sessions ({} trajectories of the Qwen3 golden fixture): system prompt, {tools_n} tools, tool calls and results, the history growing to each next assistant turn",
            trajectories.len()
        ),
        templates,
    })
}

/// `name`'s path: `$KVGATE_<VAR>`, else next to this executable (`target/<profile>`).
pub fn sibling_bin(name: &str, var: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(BenchError::Failed(format!(
            "{} not found: build it (`cargo build -p kvgate-bench --bins`, `make bench` builds it in release) or set {var}",
            p.display()
        )))
    }
}

/// The upstream process: listeners on free loopback ports.
struct EchoProc {
    proc: Proc,
    endpoints: Vec<String>,
}

fn start_echo(bin: &Path, n: usize, dir: &Path) -> Result<EchoProc> {
    let endpoints: Vec<String> = (0..n.max(1))
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut cmd = Command::new(bin);
    cmd.arg("--listen").arg(endpoints.join(","));
    let mut proc = Proc::spawn("kvgate-echo", cmd, &dir.join("kvgate-echo.log"))?;
    let up = wait_for(Duration::from_secs(30), || {
        if !proc.alive() {
            return Some(false);
        }
        endpoints
            .iter()
            .all(|e| std::net::TcpStream::connect(e).is_ok())
            .then_some(true)
    });
    if up != Some(true) {
        return Err(proc.error("did not listen").into());
    }
    Ok(EchoProc { proc, endpoints })
}

fn start_envoy(
    tools: &Tools,
    kind: EnvoyKind,
    endpoints: &[String],
    cfg: &BenchConfig,
    vm_config: &str,
    dir: &Path,
) -> Result<Envoy> {
    let workers: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(
            |(i, e)| json!({"instance_id": i + 1, "endpoint": e, "model": MODEL, "block_size": 16}),
        )
        .collect();
    std::fs::create_dir_all(dir)?;
    let opts = EnvoyOptions {
        kind,
        plugin_config: json!({"sidecar_cluster": "", "workers": workers}),
        vm_config: vm_config.to_string(),
        workers: endpoints.to_vec(),
        concurrency: cfg.envoy_concurrency,
        exact_balance: true,
        stats_flush_ms: Some(1000),
        ..EnvoyOptions::default()
    };
    Ok(Envoy::start(tools, &opts, dir)?)
}

/// Starts the endpoint-picker gateway in front of the upstreams: the picker without NATS
/// (the upstreams from a workers file, the model's tokenizer files served by itself).
fn start_epp(
    tools: &Tools,
    endpoints: &[String],
    cfg: &BenchConfig,
    dir: &Path,
) -> Result<EppGateway> {
    std::fs::create_dir_all(dir)?;
    let workers: Vec<Value> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            json!({"instance_id": i + 1, "endpoint": e, "model": MODEL, "role": "aggregated", "block_size": 16})
        })
        .collect();
    let workers_file = dir.join("workers.json");
    std::fs::write(&workers_file, Value::Array(workers).to_string())?;
    EppGateway::start(
        tools,
        endpoints,
        &[
            "--no-nats".into(),
            "--workers-file".into(),
            workers_file.display().to_string(),
            "--model".into(),
            format!("{MODEL}={}", tools.model_dir.display()),
        ],
        cfg.envoy_concurrency,
        true,
        dir,
    )
}

/// Envoy's + the picker's CPU per request of one endpoint-picker window, µs.
fn epp_cpu(r: &LoadResult) -> Option<f64> {
    Some(r.cpu_us_per_request? + r.extra_cpu_us_per_request?)
}

/// The Envoy process under launcher `envoy` (itself, or under a `func-e` wrapper).
fn envoy_pid(envoy: &Envoy) -> u32 {
    envoy
        .proc
        .pid()
        .map(|p| sys::find_process(p, "envoy"))
        .unwrap_or(0)
}

/// Runs the load generator once against `envoy`.
fn load(
    bin: &Path,
    taskset: Option<&str>,
    plan: &Path,
    envoy: &Envoy,
    spec: LoadSpec,
) -> Result<LoadResult> {
    let spec = LoadSpec {
        addr: format!("127.0.0.1:{}", envoy.port),
        path: "/v1/chat/completions".into(),
        cpu_pid: Some(envoy_pid(envoy)),
        ..spec
    };
    let mut cmd = match taskset {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let out = cmd
        .arg("--plan")
        .arg(plan)
        .arg("--spec")
        .arg(serde_json::to_string(&spec)?)
        .output()?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!(
            "kvgate-loadgen: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The cumulative p50 and p99 of every `*kvgate.<stage>` histogram in Envoy's
/// `/stats?format=json`.
pub fn stage_quantiles(stats: &Value) -> BTreeMap<String, Quantiles> {
    let mut out = BTreeMap::new();
    let Some(groups) = stats["stats"].as_array() else {
        return out;
    };
    for g in groups {
        let h = &g["histograms"];
        let Some(supported) = h["supported_quantiles"].as_array() else {
            continue;
        };
        let idx = |q: f64| {
            supported
                .iter()
                .position(|v| v.as_f64().is_some_and(|x| (x - q).abs() < 1e-9))
        };
        let (Some(i50), Some(i99)) = (idx(50.0), idx(99.0)) else {
            continue;
        };
        for c in h["computed_quantiles"].as_array().into_iter().flatten() {
            let Some(name) = c["name"].as_str() else {
                continue;
            };
            let Some(stage) = STAGES
                .iter()
                .chain(std::iter::once(&MODEL_LOAD))
                .find(|s| name.ends_with(&format!("kvgate.{s}")))
            else {
                continue;
            };
            let v = |i: usize| {
                c["values"]
                    .get(i)
                    .and_then(|x| x["cumulative"].as_f64())
                    .unwrap_or(0.0)
            };
            out.insert(
                (*stage).to_string(),
                Quantiles {
                    p50: round(v(i50), 1),
                    p99: round(v(i99), 1),
                },
            );
        }
    }
    out
}

/// Every VM's linear memory (MiB) from the `…kvgate.vm_memory_bytes.<role>.vm_<id>` gauges
/// of Envoy's `/stats` text, keyed `<role>.vm_<id>`; zero gauges (a VM's other role) left
/// out.
pub fn vm_memory(stats_text: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{VM_MEMORY}.");
    stats_text
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter_map(|(name, v)| {
            let key = &name[name.find(&prefix)? + prefix.len()..];
            let bytes: f64 = v.trim().parse().ok()?;
            (bytes > 0.0).then(|| (key.to_string(), round(bytes / f64::from(1 << 20), 2)))
        })
        .collect()
}

/// The largest value among `mem`'s keys starting with `role`.
fn largest(mem: &BTreeMap<String, f64>, role: &str) -> Option<f64> {
    mem.iter()
        .filter(|(k, _)| k.starts_with(role))
        .map(|(_, v)| *v)
        .reduce(f64::max)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => v.get(n / 2).copied(),
        _ => Some((v.get(n / 2 - 1)? + v.get(n / 2)?) / 2.0),
    }
}

fn load_label(l: f64) -> String {
    format!("{:.0}%", l * 100.0)
}

/// Where the processes go: Envoy on the first half of the allowed CPUs, the load
/// generator and upstream on the rest.
fn pinning(pin: bool, epp: bool) -> (Pinning, Vec<u32>, Vec<u32>) {
    let cpus = sys::allowed_cpus();
    let mut p = Pinning {
        allowed_cpus: sys::cpu_list(&cpus),
        ..Pinning::default()
    };
    let taskset = Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !pin || cpus.len() < 2 || !taskset {
        p.note = if !pin {
            "not pinned (--no-pin)".into()
        } else if !taskset {
            "not pinned: taskset not found".into()
        } else {
            "not pinned: one CPU, Envoy, load generator and upstream share it".into()
        };
        return (p, Vec::new(), Vec::new());
    }
    let half = cpus.len().div_ceil(2).min(cpus.len() - 1);
    let (envoy, rest) = cpus.split_at(half);
    p.envoy_cpus = sys::cpu_list(envoy);
    p.load_cpus = sys::cpu_list(rest);
    p.note = format!(
        "{} on CPU {}, load generator and upstream on CPU {}; isolation is partial: the bench driver, the kernel and anything else on the machine share them{}",
        if epp {
            "the Envoys (every thread) and the endpoint picker (every thread)"
        } else {
            "both Envoys (every thread)"
        },
        p.envoy_cpus,
        p.load_cpus,
        if cpus.len() <= 2 {
            ", and with 2 CPUs Envoy's worker threads share one core (its capacity is one core's)"
        } else {
            ""
        }
    );
    (p, envoy.to_vec(), rest.to_vec())
}

/// Runs the overhead phase.
pub fn run(
    cfg: &BenchConfig,
    tools: &Tools,
    _rt: &tokio::runtime::Runtime,
    cancel: &Cancel,
) -> Result<OverheadReport> {
    let oc = &cfg.overhead;
    let loadgen = sibling_bin("kvgate-loadgen", "KVGATE_LOADGEN")?;
    let echo_bin = sibling_bin("kvgate-echo", "KVGATE_ECHO")?;
    let dir = cfg.work_dir.join("overhead");
    std::fs::create_dir_all(&dir)?;
    let (mut pins, envoy_cpus, load_cpus) = pinning(oc.pin, oc.epp);
    let echo = start_echo(&echo_bin, oc.upstreams, &dir)?;
    if !load_cpus.is_empty() {
        let ok = echo
            .proc
            .pid()
            .is_some_and(|p| sys::pin(sys::find_process(p, "kvgate-echo"), &load_cpus));
        pins.applied = ok;
    }
    let taskset = (!load_cpus.is_empty()).then(|| sys::cpu_list(&load_cpus));
    let tok = kvgate_mock::hf::HfTokenizer::load(&tools.model_dir, MODEL)
        .map_err(|e| BenchError::Failed(format!("tokenizer: {e}")))?;
    let vm_config = static_vm_config(tools)?;
    let picker_bin = if oc.epp {
        tools.sidecar_bin()?.display().to_string()
    } else {
        String::new()
    };
    let mut sets = Vec::new();
    for &t in &oc.body_tokens {
        sets.push(first_seen(tools, &tok, t)?);
    }
    if oc.multi_turn {
        sets.push(multi_turn(tools, &tok)?);
    }
    if oc.agentic {
        sets.push(agentic(tools)?);
    }
    let mut report = OverheadReport {
        concurrency: oc.concurrency,
        seconds: oc.seconds,
        warmup_s: oc.warmup_s,
        envoy_concurrency: cfg.envoy_concurrency,
        vms: cfg.envoy_concurrency + 2,
        loads: oc.loads.clone(),
        debug_build: false,
        pinning: pins,
        epp: oc.epp,
        picker_bin,
        bodies: Vec::new(),
    };
    let gateways = if oc.epp { 3 } else { 2 };
    let runs = (sets.len() * gateways * (1 + oc.loads.len())) as u64;
    let pb = if cfg.progress {
        let b = indicatif::ProgressBar::new(runs);
        if let Ok(s) = indicatif::ProgressStyle::with_template(
            "{prefix:>14} [{bar:32}] {pos}/{len} {msg} ({elapsed})",
        ) {
            b.set_style(s.progress_chars("=> "));
        }
        b.set_prefix("overhead");
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    for set in sets {
        cancel.check()?;
        let label = set.label.clone();
        let bdir = dir.join(&label);
        std::fs::create_dir_all(&bdir)?;
        let plan_path = bdir.join("plan.json");
        let plan = PlanFile {
            templates: set.templates.iter().map(Value::to_string).collect(),
        };
        std::fs::write(&plan_path, serde_json::to_vec(&plan)?)?;
        // Sizes: bytes of every body, tokens of the smallest and the largest.
        let filled_all: Vec<Value> = set.templates.iter().map(filled).collect::<Result<_>>()?;
        let bytes: Vec<usize> = filled_all.iter().map(|b| b.to_string().len()).collect();
        let tokens = |b: &Value| tok.chat(b).map(|t| t.len()).unwrap_or(0);
        let by_len = |b: &&Value| b.to_string().len();
        let body_tokens = filled_all.iter().max_by_key(by_len).map_or(0, tokens);
        let body_tokens_min = filled_all.iter().min_by_key(by_len).map_or(0, tokens);
        let messages = filled_all
            .iter()
            .map(|b| b["messages"].as_array().map_or(0, Vec::len))
            .max()
            .unwrap_or(0);

        let plain = start_envoy(
            tools,
            EnvoyKind::Baseline,
            &echo.endpoints,
            cfg,
            &vm_config,
            &bdir.join("plain"),
        )?;
        let kv = start_envoy(
            tools,
            EnvoyKind::Kvgate,
            &echo.endpoints,
            cfg,
            &vm_config,
            &bdir.join("kvgate"),
        )?;
        let epp = if oc.epp {
            Some(start_epp(tools, &echo.endpoints, cfg, &bdir.join("epp"))?)
        } else {
            None
        };
        if !envoy_cpus.is_empty() {
            let a = sys::pin(envoy_pid(&plain), &envoy_cpus);
            let b = sys::pin(envoy_pid(&kv), &envoy_cpus);
            // The picker is on the request path like the filter: Envoy's CPUs.
            let c = epp.as_ref().is_none_or(|g| {
                sys::pin(envoy_pid(&g.envoy), &envoy_cpus) && sys::pin(g.picker_pid, &envoy_cpus)
            });
            report.pinning.applied &= a && b && c;
        }
        // The gateways measured: plain, kvgate, then (optionally) epp.
        let gateways: Vec<(&Envoy, Option<u32>)> = [(&plain, None), (&kv, None)]
            .into_iter()
            .chain(epp.as_ref().map(|g| (&g.envoy, Some(g.picker_pid))))
            .collect();
        let mut seq = vec![0u64; gateways.len()];
        // Each VM (and the picker) loads the model on its first request: prime every
        // Envoy until no request waits for that, so the warm-up of a run is only a warm-up.
        for (which, &(envoy, extra)) in gateways.iter().enumerate() {
            pb.set_message(format!("{label} priming"));
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            loop {
                cancel.check()?;
                let r = load(
                    &loadgen,
                    taskset.as_deref(),
                    &plan_path,
                    envoy,
                    LoadSpec {
                        addr: String::new(),
                        path: String::new(),
                        connections: oc.concurrency.max(1),
                        rate_rps: None,
                        warmup_s: 0.0,
                        seconds: 0.5,
                        cpu_pid: None,
                        extra_cpu_pid: extra,
                        first_seq: seq[which],
                    },
                )?;
                seq[which] = r.next_seq;
                let primed = r.requests >= oc.concurrency.max(1) as u64
                    && r.errors == 0
                    && r.latency_us.max < PRIMED_MAX_US;
                if primed || std::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
        let mut measure = |which: usize, rate: Option<f64>, name: &str| -> Result<LoadResult> {
            cancel.check()?;
            pb.set_message(format!("{label} {name}"));
            let Some(&(envoy, extra)) = gateways.get(which) else {
                return Err(BenchError::Failed(format!("no gateway {which}")));
            };
            let r = load(
                &loadgen,
                taskset.as_deref(),
                &plan_path,
                envoy,
                LoadSpec {
                    addr: String::new(),
                    path: String::new(),
                    connections: oc.concurrency.max(1),
                    rate_rps: rate,
                    warmup_s: oc.warmup_s,
                    seconds: oc.seconds,
                    cpu_pid: None,
                    extra_cpu_pid: extra,
                    first_seq: seq[which],
                },
            )?;
            seq[which] = r.next_seq;
            pb.inc(1);
            Ok(r)
        };
        let with_epp = epp.is_some();
        let cap_plain = measure(0, None, "plain capacity")?;
        let cap_kv = measure(1, None, "kvgate capacity")?;
        let cap_epp = if with_epp {
            Some(measure(2, None, "epp capacity")?)
        } else {
            None
        };
        // Rates are fractions of the slowest gateway's capacity: every gateway runs below
        // its own, so added latency is processing, not queueing behind an overload.
        let slowest = [
            Some(cap_plain.rps),
            Some(cap_kv.rps),
            cap_epp.as_ref().map(|c| c.rps),
        ]
        .into_iter()
        .flatten()
        .fold(f64::INFINITY, f64::min);
        let mut levels = Vec::new();
        for &l in &oc.loads {
            let rate = (l * slowest).max(1.0);
            let name = load_label(l);
            let p = measure(0, Some(rate), &format!("plain {name}"))?;
            let k = measure(1, Some(rate), &format!("kvgate {name}"))?;
            let e = if with_epp {
                Some(measure(2, Some(rate), &format!("epp {name}"))?)
            } else {
                None
            };
            levels.push(Level {
                load: name,
                rate_rps: round(rate, 1),
                added_p50_us: round(k.latency_us.p50 - p.latency_us.p50, 1),
                added_p99_us: round(k.latency_us.p99 - p.latency_us.p99, 1),
                added_cpu_us_per_req: k
                    .cpu_us_per_request
                    .zip(p.cpu_us_per_request)
                    .map(|(a, b)| round(a - b, 1)),
                epp_added_p50_us: e
                    .as_ref()
                    .map(|e| round(e.latency_us.p50 - p.latency_us.p50, 1)),
                epp_added_p99_us: e
                    .as_ref()
                    .map(|e| round(e.latency_us.p99 - p.latency_us.p99, 1)),
                epp_added_cpu_us_per_req: e
                    .as_ref()
                    .and_then(epp_cpu)
                    .zip(p.cpu_us_per_request)
                    .map(|(a, b)| round(a - b, 1)),
                epp: e,
                plain: p,
                kvgate: k,
            });
        }
        // Envoy computes histogram quantiles at its stats flush (every second here).
        std::thread::sleep(Duration::from_millis(1500));
        let admin = |path: &str| {
            kvgate_http::get(&format!("http://127.0.0.1:{}{path}", kv.admin_port))
                .map(|r| r.body.to_vec())
                .unwrap_or_default()
        };
        let stats: Value = serde_json::from_slice(&admin("/stats?format=json")).unwrap_or_default();
        let breakdown = stage_quantiles(&stats);
        let mem = vm_memory(&String::from_utf8_lossy(&admin(
            "/stats?filter=vm_memory_bytes",
        )));
        let rss_of = |pid: u32| sys::rss_kib(pid).map(|(r, _)| round(r as f64 / 1024.0, 1));
        let rss = |e: &Envoy| rss_of(envoy_pid(e)).unwrap_or(0.0);
        let pairs: Vec<(&LoadResult, &LoadResult)> = std::iter::once((&cap_plain, &cap_kv))
            .chain(levels.iter().map(|l| (&l.plain, &l.kvgate)))
            .collect();
        let added: Vec<f64> = pairs
            .iter()
            .filter_map(|(p, k)| Some(k.cpu_us_per_request? - p.cpu_us_per_request?))
            .collect();
        let med = |v: Vec<f64>| median(v).map(|m| round(m, 1));
        let range = |v: &[f64]| {
            v.iter()
                .copied()
                .reduce(f64::min)
                .zip(v.iter().copied().reduce(f64::max))
                .map(|(a, b)| [round(a, 1), round(b, 1)])
        };
        let added_cpu = med(added.clone());
        // The endpoint picker's windows, paired with plain Envoy's at the same rate.
        let epp_pairs: Vec<(&LoadResult, &LoadResult)> = cap_epp
            .iter()
            .map(|e| (&cap_plain, e))
            .chain(
                levels
                    .iter()
                    .filter_map(|l| Some((&l.plain, l.epp.as_ref()?))),
            )
            .collect();
        let epp_added: Vec<f64> = epp_pairs
            .iter()
            .filter_map(|(p, e)| Some(epp_cpu(e)? - p.cpu_us_per_request?))
            .collect();
        let epp_added_cpu = med(epp_added.clone());
        let picker_metrics = epp.as_ref().map(EppGateway::metrics).unwrap_or_default();
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| round(a / b, 3));
        report.debug_build |= cap_plain.debug_build;
        report.bodies.push(BodyResult {
            description: set.description,
            body_tokens,
            body_tokens_min,
            body_bytes: bytes.iter().sum::<usize>() / bytes.len().max(1),
            messages,
            templates: set.templates.len(),
            capacity_ratio: ratio(cap_kv.rps, cap_plain.rps).unwrap_or(0.0),
            added_p50_us: levels
                .iter()
                .map(|l| (l.load.clone(), l.added_p50_us))
                .collect(),
            added_p99_us: levels
                .iter()
                .map(|l| (l.load.clone(), l.added_p99_us))
                .collect(),
            added_cpu_us_per_req_range: range(&added),
            added_cpu_us_per_req: added_cpu,
            plain_cpu_us_per_req: med(pairs
                .iter()
                .filter_map(|(p, _)| p.cpu_us_per_request)
                .collect()),
            kvgate_cpu_us_per_req: med(pairs
                .iter()
                .filter_map(|(_, k)| k.cpu_us_per_request)
                .collect()),
            breakdown,
            vm_linear_memory_mib: largest(&mem, "tokenizing"),
            main_vm_linear_memory_mib: largest(&mem, "main_thread"),
            vm_memory_mib: mem,
            plain_rss_mib: rss(&plain),
            kvgate_rss_mib: rss(&kv),
            epp_capacity_ratio: cap_epp.as_ref().and_then(|e| ratio(e.rps, cap_plain.rps)),
            epp_vs_filter_capacity_ratio: cap_epp.as_ref().and_then(|e| ratio(e.rps, cap_kv.rps)),
            epp_added_p50_us: levels
                .iter()
                .filter_map(|l| Some((l.load.clone(), l.epp_added_p50_us?)))
                .collect(),
            epp_added_p99_us: levels
                .iter()
                .filter_map(|l| Some((l.load.clone(), l.epp_added_p99_us?)))
                .collect(),
            epp_envoy_cpu_us_per_req: med(epp_pairs
                .iter()
                .filter_map(|(_, e)| e.cpu_us_per_request)
                .collect()),
            epp_picker_cpu_us_per_req: med(epp_pairs
                .iter()
                .filter_map(|(_, e)| e.extra_cpu_us_per_request)
                .collect()),
            epp_cpu_us_per_req: med(epp_pairs.iter().filter_map(|(_, e)| epp_cpu(e)).collect()),
            epp_added_cpu_us_per_req_range: range(&epp_added),
            epp_added_cpu_us_per_req: epp_added_cpu,
            epp_vs_filter_added_cpu_ratio: epp_added_cpu
                .zip(added_cpu)
                .and_then(|(e, k)| ratio(e, k)),
            picker_streams: epp
                .as_ref()
                .map(|_| prom_value(&picker_metrics, "kvgate_sync_epp_streams_total", "")),
            picker_routed: epp.as_ref().map(|_| {
                prom_value(
                    &picker_metrics,
                    "kvgate_sync_epp_engine_total",
                    "\"kvgate.decisions.routed\"",
                )
            }),
            epp_rss_mib: epp.as_ref().map(|g| rss(&g.envoy)),
            picker_rss_mib: epp.as_ref().and_then(|g| rss_of(g.picker_pid)),
            label,
            capacity_plain: cap_plain,
            capacity_kvgate: cap_kv,
            capacity_epp: cap_epp,
            levels,
        });
        drop(epp);
        drop(kv);
        drop(plain);
    }
    pb.finish_with_message("done");
    drop(echo);
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn reads_envoy_histogram_quantiles() {
        let stats = json!({"stats": [{"counter": 1}, {"histograms": {
        "supported_quantiles": [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100],
        "computed_quantiles": [
            {"name": "wasmcustom.kvgate.parse_us", "values": [
                {"interval": null, "cumulative": 1}, {"interval": null, "cumulative": 2},
                {"interval": null, "cumulative": 27.5}, {"interval": null, "cumulative": 3},
                {"interval": null, "cumulative": 4}, {"interval": null, "cumulative": 5},
                {"interval": null, "cumulative": 90.25}, {"interval": null, "cumulative": 6},
                {"interval": null, "cumulative": 7}, {"interval": null, "cumulative": 8}]},
            {"name": "cluster.x.upstream_rq_time", "values": []}
        ]}}]});
        let q = stage_quantiles(&stats);
        assert_eq!(q.len(), 1);
        assert_eq!(q["parse_us"].p50, 27.5);
        assert_eq!(q["parse_us"].p99, 90.3);
    }

    #[test]
    fn reads_vm_memory_gauges() {
        let text = "wasmcustom.kvgate.vm_memory_bytes.tokenizing.vm_00000000000000ab: 20971520\n\
                    wasmcustom.kvgate.vm_memory_bytes.main_thread.vm_00000000000000ab: 0\n\
                    wasmcustom.kvgate.vm_memory_bytes.main_thread.vm_00000000000000cd: 3145728\n\
                    wasmcustom.kvgate.vm_memory_bytes.tokenizing.vm_00000000000000ef: 31457280\n\
                    wasmcustom.kvgate.requests: 5\n";
        let m = vm_memory(text);
        assert_eq!(m.len(), 3);
        assert_eq!(largest(&m, "tokenizing"), Some(30.0));
        assert_eq!(largest(&m, "main_thread"), Some(3.0));
        assert_eq!(largest(&vm_memory(""), "tokenizing"), None);
    }

    #[test]
    fn medians_and_labels() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
        assert_eq!(load_label(0.25), "25%");
    }

    fn tools() -> Tools {
        Tools {
            repo: kvgate_stack::repo_root(),
            envoy: Vec::new(),
            nats_server: PathBuf::new(),
            wasm: PathBuf::new(),
            sidecar: PathBuf::new(),
            mock_worker: PathBuf::new(),
            model_dir: PathBuf::new(),
        }
    }

    /// The agentic bodies: every body has the fixture's system prompt and ≥ 10 tools,
    /// sessions grow (each next request of a session extends the previous one), and the
    /// markers make passes distinct.
    #[test]
    fn agentic_sessions_grow_with_tools() {
        let set = agentic(&tools()).unwrap();
        assert!(
            set.templates.len() >= 2 * SESSIONS,
            "{}",
            set.templates.len()
        );
        for t in &set.templates {
            assert!(t["tools"].as_array().unwrap().len() >= 10);
            assert_eq!(t["messages"][0]["role"], "system");
        }
        let tag = format!("[{CYCLE}.0] ");
        let s0: Vec<&Value> = set
            .templates
            .iter()
            .filter(|t| {
                t["messages"][1]["content"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(&tag))
            })
            .collect();
        assert!(s0.len() >= 2);
        for w in s0.windows(2) {
            let (a, b) = (
                w[0]["messages"].as_array().unwrap(),
                w[1]["messages"].as_array().unwrap(),
            );
            assert!(b.len() > a.len() && b[..a.len()] == a[..]);
        }
        let text: String = set.templates.iter().map(Value::to_string).collect();
        assert!(text.contains("tool_calls") && text.contains("\"tool\""));
        assert!(text.contains(CYCLE));
        for t in &set.templates {
            filled(t).unwrap();
        }
    }
}
