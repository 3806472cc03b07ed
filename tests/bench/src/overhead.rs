//! Gateway overhead: plain Envoy (`envoy-config/envoy-baseline.yaml`) against Envoy +
//! kvgate (`envoy.yaml`, static mode: the same upstreams listed in the filter's
//! configuration), both in front of the same trivial upstream ([`super::echo`]), driven
//! by the same closed-loop load generator on loopback.
//!
//! For each body size (2k and 16k prompt tokens by default) and each Envoy: a fresh
//! Envoy, `warmup_s` seconds of load (not measured), then `seconds` seconds measured with
//! `concurrency` requests in flight: requests/s, latency percentiles, Envoy's CPU time
//! per request (`/proc/<pid>/stat` utime + stime over the measured window) and its
//! resident memory afterwards. The kvgate Envoy's stage histograms
//! (`kvgate.parse_us` … `score_us`, Envoy's cumulative quantiles, read after the 5 s stats
//! flush) give the in-VM breakdown.
//!
//! Bodies are real text (ShareGPT prompts, `tests/fixtures/traces/sharegpt`) packed
//! into chat messages of about 2k tokens each. Every request makes each message unique
//! (a leading request/message number), so the filter templates and tokenizes the whole
//! prompt every time: the per-VM segment cache never hits. That is the filter's worst
//! case. A third run per size ("warm") keeps the packed history fixed and adds a short new
//! user message per request, as a multi-turn chat does: the segment cache then holds the
//! history and only the new message is tokenized.

use super::client;
use super::echo::Echo;
use super::stats::{percentile, round};
use super::sys;
use super::{BenchConfig, BenchError, Cancel, Result};
use kvgate_http::Client;
use kvgate_mock::tokenize::Tokenize;
use kvgate_stack::{static_vm_config, Envoy, EnvoyKind, EnvoyOptions, Tools, MODEL};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Tokens per packed chat message.
pub const MESSAGE_TOKENS: usize = 2048;
/// The filter's histogram of model loads (tokenizer + chat template) per VM, ms.
pub const MODEL_LOAD: &str = "model_load_ms";

/// The stage histograms of the filter, in pipeline order.
pub const STAGES: [&str; 6] = [
    "parse_us",
    "template_us",
    "tokenize_us",
    "hash_us",
    "score_us",
    "decision_us",
];

/// Parameters of the overhead phase.
#[derive(Debug, Clone)]
pub struct OverheadConfig {
    /// Measured seconds per run.
    pub seconds: f64,
    /// Unmeasured warm-up seconds per run.
    pub warmup_s: f64,
    /// Requests in flight (closed loop).
    pub concurrency: usize,
    /// Prompt sizes in tokens.
    pub body_tokens: Vec<usize>,
    /// Pretend workers (echo listeners) behind Envoy.
    pub upstreams: usize,
    /// Also measure kvgate on multi-turn bodies whose history repeats (segment cache warm).
    pub warm: bool,
}

impl Default for OverheadConfig {
    fn default() -> Self {
        OverheadConfig {
            seconds: 8.0,
            warmup_s: 2.0,
            concurrency: 4,
            body_tokens: vec![2048, 16384],
            upstreams: 4,
            warm: true,
        }
    }
}

/// One Envoy under one load.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RunResult {
    /// Measured requests completed.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    /// Requests per second.
    pub rps: f64,
    /// Latency median, µs.
    pub latency_p50_us: f64,
    /// Latency 90th percentile, µs.
    pub latency_p90_us: f64,
    /// Latency 99th percentile, µs.
    pub latency_p99_us: f64,
    /// Envoy CPU time per request, µs.
    pub cpu_us_per_request: f64,
    /// Envoy's average CPU use, cores.
    pub cpu_cores: f64,
    /// Envoy resident memory after the run, MiB.
    pub rss_mib: f64,
    /// Envoy peak resident memory, MiB.
    pub rss_peak_mib: f64,
}

/// p50 and p99 of one stage histogram.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Quantiles {
    /// Median, µs.
    pub p50: f64,
    /// 99th percentile, µs.
    pub p99: f64,
}

/// One body size.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BodyResult {
    /// `2k`, `16k`, ….
    pub label: String,
    /// Prompt tokens of a body (Qwen3 template + tokenizer).
    pub body_tokens: usize,
    /// Body bytes.
    pub body_bytes: usize,
    /// Chat messages.
    pub messages: usize,
    /// Plain Envoy.
    pub baseline: RunResult,
    /// Envoy + kvgate.
    pub kvgate: RunResult,
    /// kvgate rps / plain Envoy rps.
    pub rps_ratio: f64,
    /// kvgate p50 − plain p50, µs.
    pub added_latency_p50_us: f64,
    /// kvgate p99 − plain p99, µs.
    pub added_latency_p99_us: f64,
    /// kvgate − plain Envoy CPU per request, µs.
    pub added_cpu_us_per_request: f64,
    /// kvgate − plain Envoy resident memory, MiB.
    pub rss_diff_mib: f64,
    /// `rss_diff_mib` / Wasm VMs.
    pub memory_per_vm_mib: f64,
    /// The filter's stage times (µs, Envoy's histogram quantiles over every request of
    /// the kvgate run, warm-up included).
    pub breakdown: std::collections::BTreeMap<String, Quantiles>,
    /// Envoy + kvgate on the same history with only a short new last user message per
    /// request (a multi-turn chat: the per-VM segment cache holds the history).
    pub kvgate_warm: Option<RunResult>,
    /// kvgate (warm) rps / plain Envoy rps.
    pub rps_ratio_warm: Option<f64>,
    /// kvgate (warm) p50 − plain p50, µs.
    pub added_latency_p50_us_warm: Option<f64>,
    /// kvgate (warm) p99 − plain p99, µs.
    pub added_latency_p99_us_warm: Option<f64>,
    /// The filter's stage times in the warm run.
    pub breakdown_warm: std::collections::BTreeMap<String, Quantiles>,
}

/// The overhead phase's figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct OverheadReport {
    /// Requests in flight.
    pub concurrency: usize,
    /// Measured seconds per run.
    pub seconds: f64,
    /// Warm-up seconds per run.
    pub warmup_s: f64,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// Wasm VMs in the kvgate Envoy (one per worker thread plus the main thread's).
    pub vms: u32,
    /// One entry per body size.
    pub bodies: Vec<BodyResult>,
}

/// A chat body generator: fixed message texts, made unique per request — every message
/// (cold) or only a short new last user message (warm).
pub struct Bodies {
    texts: Vec<(String, String)>,
    counter: AtomicU64,
    warm: bool,
}

impl Bodies {
    /// Packs ShareGPT prompts into messages of about [`MESSAGE_TOKENS`] tokens until the
    /// chat has about `tokens` tokens.
    pub fn build(tools: &Tools, tok: &dyn Tokenize, tokens: usize) -> Result<Bodies> {
        let path = tools
            .repo
            .join("tests/fixtures/traces/sharegpt/ShareGPT_V3_filtered_500.json");
        let corpus: Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .map_err(|e| BenchError::Failed(format!("{}: {e}", path.display())))?,
        )?;
        let mut prompts = corpus
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.pointer("/conversations/0/value")?.as_str())
            .map(str::to_string)
            .cycle()
            .take(100_000);
        let count = |t: &str| tok.text(t).map(|v| v.len()).unwrap_or(t.len() / 4);
        let n_messages = tokens.div_ceil(MESSAGE_TOKENS).max(1);
        let per = tokens / n_messages;
        let mut texts = Vec::new();
        for i in 0..n_messages {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            let mut text = String::new();
            let mut n = 0;
            while n < per {
                let Some(p) = prompts.next() else { break };
                text.push_str(&p);
                text.push_str("\n\n");
                n = count(&text);
            }
            texts.push((role.to_string(), text));
        }
        if texts.last().is_some_and(|(r, _)| r == "assistant") {
            if let Some(last) = texts.last_mut() {
                last.0 = "user".into();
            }
        }
        Ok(Bodies {
            texts,
            counter: AtomicU64::new(0),
            warm: false,
        })
    }

    /// The same texts, made unique only by a new last user message.
    pub fn warm(&self) -> Bodies {
        Bodies {
            texts: self.texts.clone(),
            counter: AtomicU64::new(0),
            warm: true,
        }
    }

    /// The next body.
    pub fn next(&self) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut messages: Vec<Value> = self
            .texts
            .iter()
            .enumerate()
            .map(|(j, (role, text))| {
                let content = if self.warm {
                    text.clone()
                } else {
                    format!("[{n}.{j}] {text}")
                };
                json!({"role": role, "content": content})
            })
            .collect();
        if self.warm {
            if let Some(last) = messages.last_mut() {
                last["role"] = json!("assistant");
            }
            messages.push(json!({"role": "user", "content": format!("Question {n}: summarise the above in one sentence.")}));
        }
        serde_json::to_vec(&json!({"model": MODEL, "messages": messages, "max_tokens": 1}))
            .unwrap_or_default()
    }

    /// Messages per body.
    pub fn messages(&self) -> usize {
        self.texts.len()
    }
}

struct Sample {
    latency_us: f64,
    ok: bool,
}

async fn closed_loop(
    http: &Client,
    url: &str,
    bodies: &Bodies,
    concurrency: usize,
    seconds: f64,
) -> Vec<Sample> {
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks = (0..concurrency.max(1)).map(|_| {
        let http = http.clone();
        async move {
            let mut out = Vec::new();
            while Instant::now() < end {
                let body = bodies.next();
                let o = client::post(&http, url, &[], body, false, || {}).await;
                out.push(Sample {
                    latency_us: o.latency.as_secs_f64() * 1e6,
                    ok: o.ok(),
                });
            }
            out
        }
    });
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

fn measure(
    envoy: &Envoy,
    bodies: &Bodies,
    oc: &OverheadConfig,
    rt: &tokio::runtime::Runtime,
    ticks: f64,
) -> Result<RunResult> {
    let url = envoy.url("/v1/chat/completions");
    let pid = envoy
        .proc
        .pid()
        .map(|p| sys::find_process(p, "envoy"))
        .unwrap_or(0);
    // A fresh client for each run, as before: no connection outlives the warm-up.
    let warm = client::client(true)?;
    rt.block_on(closed_loop(
        &warm,
        &url,
        bodies,
        oc.concurrency,
        oc.warmup_s,
    ));
    let cpu0 = sys::cpu_seconds(pid, ticks).unwrap_or(0.0);
    let t0 = Instant::now();
    let http = client::client(true)?;
    let samples = rt.block_on(closed_loop(&http, &url, bodies, oc.concurrency, oc.seconds));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = sys::cpu_seconds(pid, ticks).unwrap_or(0.0) - cpu0;
    let lat: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency_us)
        .collect();
    let n = samples.len() as u64;
    let (rss, hwm) = sys::rss_kib(pid).unwrap_or((0, 0));
    Ok(RunResult {
        requests: n,
        errors: samples.iter().filter(|s| !s.ok).count() as u64,
        rps: round(
            if wall > 0.0 {
                lat.len() as f64 / wall
            } else {
                0.0
            },
            1,
        ),
        latency_p50_us: round(percentile(&lat, 50.0), 0),
        latency_p90_us: round(percentile(&lat, 90.0), 0),
        latency_p99_us: round(percentile(&lat, 99.0), 0),
        cpu_us_per_request: round(if n > 0 { cpu * 1e6 / n as f64 } else { 0.0 }, 0),
        cpu_cores: round(if wall > 0.0 { cpu / wall } else { 0.0 }, 2),
        rss_mib: round(rss as f64 / 1024.0, 1),
        rss_peak_mib: round(hwm as f64 / 1024.0, 1),
    })
}

/// The cumulative p50 and p99 of every `*kvgate.<stage>` histogram in Envoy's
/// `/stats?format=json`.
pub fn stage_quantiles(stats: &Value) -> std::collections::BTreeMap<String, Quantiles> {
    let mut out = std::collections::BTreeMap::new();
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

fn start_envoy(
    tools: &Tools,
    kind: EnvoyKind,
    echo: &Echo,
    cfg: &BenchConfig,
    vm_config: &str,
    name: &str,
) -> Result<Envoy> {
    let workers: Vec<Value> = echo
        .endpoints
        .iter()
        .enumerate()
        .map(
            |(i, e)| json!({"instance_id": i + 1, "endpoint": e, "model": MODEL, "block_size": 16}),
        )
        .collect();
    let dir = cfg.work_dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let opts = EnvoyOptions {
        kind,
        plugin_config: json!({"sidecar_cluster": "", "workers": workers}),
        vm_config: vm_config.to_string(),
        workers: echo.endpoints.clone(),
        concurrency: cfg.envoy_concurrency,
        ..EnvoyOptions::default()
    };
    Ok(Envoy::start(tools, &opts, &dir)?)
}

/// Runs the overhead phase.
pub fn run(
    cfg: &BenchConfig,
    tools: &Tools,
    rt: &tokio::runtime::Runtime,
    cancel: &Cancel,
) -> Result<OverheadReport> {
    let oc = &cfg.overhead;
    let echo = Echo::start(oc.upstreams)?;
    let tok = kvgate_mock::hf::HfTokenizer::load(&tools.model_dir, MODEL)
        .map_err(|e| BenchError::Failed(format!("tokenizer: {e}")))?;
    let vm_config = static_vm_config(tools)?;
    let ticks = sys::clock_ticks();
    let mut report = OverheadReport {
        concurrency: oc.concurrency,
        seconds: oc.seconds,
        warmup_s: oc.warmup_s,
        envoy_concurrency: cfg.envoy_concurrency,
        vms: cfg.envoy_concurrency + 1,
        bodies: Vec::new(),
    };
    let runs = (oc.body_tokens.len() * if oc.warm { 3 } else { 2 }) as u64;
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
    for &tokens in &oc.body_tokens {
        cancel.check()?;
        let bodies = Bodies::build(tools, &tok, tokens)?;
        let sample = bodies.next();
        let sample_json: Value = serde_json::from_slice(&sample)?;
        let body_tokens = tok.chat(&sample_json).map(|t| t.len()).unwrap_or(0);
        let label = if tokens >= 1024 {
            format!("{}k", tokens / 1024)
        } else {
            tokens.to_string()
        };
        let warm = oc.warm.then(|| bodies.warm());
        let mut runs: Vec<(EnvoyKind, &str, &Bodies)> = vec![
            (EnvoyKind::Baseline, "baseline", &bodies),
            (EnvoyKind::Kvgate, "kvgate", &bodies),
        ];
        if let Some(w) = &warm {
            runs.push((EnvoyKind::Kvgate, "kvgate-warm", w));
        }
        let mut results = Vec::new();
        for (kind, name, b) in runs {
            cancel.check()?;
            pb.set_message(format!("{label} {name}"));
            let envoy = start_envoy(
                tools,
                kind,
                &echo,
                cfg,
                &vm_config,
                &format!("overhead-{label}-{name}"),
            )?;
            let r = measure(&envoy, b, oc, rt, ticks)?;
            let stages = if kind == EnvoyKind::Kvgate {
                // Envoy computes histogram quantiles at its stats flush (every 5 s).
                std::thread::sleep(Duration::from_millis(5500));
                let stats = kvgate_http::get(&format!(
                    "http://127.0.0.1:{}/stats?format=json",
                    envoy.admin_port
                ))
                .ok()
                .and_then(|r| serde_json::from_slice::<Value>(&r.body).ok())
                .unwrap_or(Value::Null);
                stage_quantiles(&stats)
            } else {
                Default::default()
            };
            results.push((r, stages));
            pb.inc(1);
            drop(envoy);
        }
        let mut it = results.into_iter();
        let (Some((base, _)), Some((kv, stages))) = (it.next(), it.next()) else {
            continue;
        };
        let warm_run = it.next();
        let rss_diff = kv.rss_mib - base.rss_mib;
        let ratio = |r: &RunResult| {
            round(
                if base.rps > 0.0 {
                    r.rps / base.rps
                } else {
                    0.0
                },
                3,
            )
        };
        report.bodies.push(BodyResult {
            label,
            body_tokens,
            body_bytes: sample.len(),
            messages: bodies.messages(),
            rps_ratio: ratio(&kv),
            added_latency_p50_us: round(kv.latency_p50_us - base.latency_p50_us, 0),
            added_latency_p99_us: round(kv.latency_p99_us - base.latency_p99_us, 0),
            added_cpu_us_per_request: round(kv.cpu_us_per_request - base.cpu_us_per_request, 0),
            rss_diff_mib: round(rss_diff, 1),
            memory_per_vm_mib: round(rss_diff / f64::from(report.vms.max(1)), 1),
            breakdown: stages,
            rps_ratio_warm: warm_run.as_ref().map(|(w, _)| ratio(w)),
            added_latency_p50_us_warm: warm_run
                .as_ref()
                .map(|(w, _)| round(w.latency_p50_us - base.latency_p50_us, 0)),
            added_latency_p99_us_warm: warm_run
                .as_ref()
                .map(|(w, _)| round(w.latency_p99_us - base.latency_p99_us, 0)),
            breakdown_warm: warm_run
                .as_ref()
                .map(|(_, s)| s.clone())
                .unwrap_or_default(),
            kvgate_warm: warm_run.map(|(w, _)| w),
            baseline: base,
            kvgate: kv,
        });
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
}
