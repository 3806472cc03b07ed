//! Routing quality: the trace replayed once per policy through the real stack, on the
//! same engines, with their caches cleared in between.
//!
//! One replay set ([`RealRun`]) per engine count: the first count (`--real-workers`, 4 by
//! default) runs every policy; each further count (8 by default) runs on a fleet of its own
//! the few policies the real-vs-virtual agreement needs (`--real-policies-extra`), at the
//! same load per engine (the load scaled by N / the sweep's reference count, as the sweep
//! scales its loads).
//!
//! Per policy:
//! 1. wait until every engine is idle, `POST /kvgate/clear` on each (the engines publish
//!    `Cleared`), wait until the sidecar's index is empty;
//! 2. read every engine's `/kvgate/stats` counters;
//! 3. replay (open loop): each session starts at its trace time divided by
//!    `speedup × load`; each request streams (SSE) and is timed by the client;
//! 4. wait until idle, read the counters again: the deltas give the prefix-cache hit ratio
//!    (`cached_hit_tokens / prompt_tokens`, as the engines counted them at admission).
//!
//! `epp` replays through Envoy's ext_proc to an endpoint picker of its own
//! (`kvgate-sync serve --epp`, [`crate::epp`]) that follows the engines' announcements and
//! KV events on NATS like the fleet's sidecar (on core NATS: it starts before the caches
//! are cleared, so it needs no JetStream replay), with the filter's settings of
//! `kvgate_events`; it runs only for that policy.
//!
//! TTFT is **engine-side**: each mock engine's request log (`--request-log`) gives, per
//! request, the simulated time from its entry into the admission queue to its first token
//! (queue wait + prefill, in trace milliseconds, from the engine's time model) — never
//! client wall time multiplied by the time scale. The client's wall times are reported
//! raw, next to it. Arrivals sharing a trace timestamp are spread as in the virtual-time
//! sweep ([`crate::sweep::spread_arrivals`], seed `--seed`), so both replay the same traffic.

use super::client::{self, Outcome};
use super::epp::EppGateway;
use super::model::LiveModel;
use super::policy::{PolicyKind, RequestInfo, Router, BLOCK_SIZE};
use super::stats::{coefficient_of_variation, percentile, round};
use super::trace::{synth_tokens, Trace, TurnPrompt};
use super::{poll, BenchConfig, BenchError, Cancel, Fleet, Result};
use indicatif::{ProgressBar, ProgressStyle};
use kvgate_core::hash::BlockHasher;
use kvgate_http::Client;
use kvgate_mock::tokenize::Tokenize;
use kvgate_stack::{Envoy, EnvoyKind, MODEL};
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One policy's figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PolicyResult {
    /// Policy name.
    pub name: String,
    /// `driver`, `filter` or `picker`.
    pub decided_by: String,
    /// Engines of this replay.
    pub workers: usize,
    /// Its arrival-rate multiplier (the trace's rate × this).
    pub load: f64,
    /// Requests sent.
    pub requests: usize,
    /// Requests that failed (non-200 or broken stream).
    pub errors: usize,
    /// Prefix-cache hit ratio in tokens: Σ cached_hit_tokens / Σ prompt_tokens.
    pub hit_ratio: f64,
    /// Prompt tokens the engines admitted.
    pub prompt_tokens: u64,
    /// Of which served from their prefix caches.
    pub cached_hit_tokens: u64,
    /// Prompt tokens computed (incl. recomputation after preemption).
    pub computed_prefill_tokens: u64,
    /// Preemptions (KV pool full while decoding).
    pub preemptions: u64,
    /// Engine-side time to first token (admission queue + prefill), median, trace ms.
    pub ttft_p50_ms: f64,
    /// Engine-side TTFT 90th percentile, trace ms.
    pub ttft_p90_ms: f64,
    /// Engine-side TTFT 99th percentile, trace ms.
    pub ttft_p99_ms: f64,
    /// Engine-side TTFT mean, trace ms.
    pub ttft_mean_ms: f64,
    /// Requests with an engine-side TTFT in the engines' logs.
    pub engine_samples: usize,
    /// Client end-to-end latency median, wall ms (as measured).
    pub e2e_p50_ms: f64,
    /// Client end-to-end latency 99th percentile, wall ms.
    pub e2e_p99_ms: f64,
    /// Client TTFT median, wall ms (as measured; includes HTTP and gateway time).
    pub ttft_wall_p50_ms: f64,
    /// Client TTFT 99th percentile, wall ms.
    pub ttft_wall_p99_ms: f64,
    /// Completed requests per trace second (wall rate / speedup).
    pub throughput_rps: f64,
    /// Completed requests per wall second.
    pub throughput_rps_wall: f64,
    /// Wall seconds from the first send to the last completion.
    pub makespan_s: f64,
    /// Requests each engine answered (by `x-kvgate-worker`), instance ids 1..=n.
    pub per_worker_requests: Vec<u64>,
    /// Prompt tokens each engine admitted.
    pub per_worker_prompt_tokens: Vec<u64>,
    /// Most / fewest requests on one engine.
    pub load_spread_max_min: f64,
    /// Coefficient of variation of the per-engine request counts.
    pub load_spread_cv: f64,
    /// A few error messages.
    pub error_samples: Vec<String>,
}

/// One replay set of the real stack: `policies` on a fleet of `workers` engines at load
/// `load`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RealRun {
    /// Engines.
    pub workers: usize,
    /// Arrival-rate multiplier.
    pub load: f64,
    /// Policies, in run order.
    pub policies: Vec<PolicyKind>,
}

/// The quality phase's figures.
#[derive(Debug, Clone, Serialize, Default)]
pub struct QualityReport {
    /// Engines of the first real-stack replay set (every policy).
    pub workers: usize,
    /// Engine time scale.
    pub speedup: f64,
    /// Arrival-rate multiplier of the first replay set.
    pub load: f64,
    /// The real-stack replay sets, in run order (`policies` rows carry their `workers`
    /// and `load`).
    pub runs: Vec<RealRun>,
    /// KV pool per engine (16-token blocks).
    pub num_gpu_blocks: usize,
    /// Output-token cap.
    pub max_output_tokens: u32,
    /// One entry per policy and replay set, in run order.
    pub policies: Vec<PolicyResult>,
    /// The virtual-time load sweep (`make bench`'s main figures): one point per
    /// (workers, load); see [`crate::sweep`].
    pub sweep: Vec<crate::sweep::SweepPoint>,
    /// How the sweep was run.
    pub sweep_setup: Option<crate::sweep::SweepSetup>,
    /// Hit ratio against KV capacity (virtual time).
    pub capacity: Vec<crate::sweep::CapacityPoint>,
    /// Issue 13's done-when targets checked on the sweep.
    pub targets: Vec<crate::sweep::TargetCheck>,
    /// The real-stack replay next to the virtual-time replay of the same traffic.
    pub agreement: Vec<Agreement>,
}

/// One policy of the real-stack replay next to virtual-time replays of the same trace
/// slice, load, engines and pool (seeds `seed`, `seed + 1`, …; the first has the real
/// run's arrivals). `agree` when the real figure lies inside the virtual runs' 95 %
/// interval (mean ± half-width) for both TTFT p50 and hit ratio.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Agreement {
    /// Policy.
    pub policy: String,
    /// Engines.
    pub workers: usize,
    /// Load.
    pub load: f64,
    /// Real stack: engine-side TTFT p50, trace ms.
    pub real_ttft_p50_ms: f64,
    /// Virtual time: mean TTFT p50 over seeds.
    pub virtual_ttft_p50_ms: f64,
    /// Its 95 % half-width (the mean's interval).
    pub virtual_ttft_p50_ci95_ms: f64,
    /// Half-width of the 95 % prediction interval of one more virtual run's TTFT p50: a
    /// real run is one draw, so it is judged against this band.
    pub virtual_ttft_p50_pi95_ms: f64,
    /// Real stack: hit ratio.
    pub real_hit_ratio: f64,
    /// Virtual time: mean hit ratio.
    pub virtual_hit_ratio: f64,
    /// Its 95 % half-width (the mean's interval).
    pub virtual_hit_ratio_ci95: f64,
    /// Half-width of the 95 % prediction interval of one more virtual run's hit ratio.
    pub virtual_hit_ratio_pi95: f64,
    /// Seeds of the virtual runs.
    pub seeds: u64,
    /// TTFT p50 inside the prediction interval.
    pub agree_ttft: bool,
    /// Hit ratio inside the prediction interval.
    pub agree_hit: bool,
    /// Both.
    pub agree: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Counters {
    prompt_tokens: u64,
    cached_hit_tokens: u64,
    computed_prefill_tokens: u64,
    preemptions: u64,
    busy: u64,
}

fn counters(v: &Value) -> Counters {
    let t = &v["totals"];
    let n = |k: &str| t[k].as_u64().unwrap_or(0);
    Counters {
        prompt_tokens: n("prompt_tokens"),
        cached_hit_tokens: n("cached_hit_tokens"),
        computed_prefill_tokens: n("computed_prefill_tokens"),
        preemptions: n("preemptions"),
        busy: n("queue_depth") + n("running"),
    }
}

async fn all_counters(http: &Client, fleet: &Fleet) -> Result<Vec<Counters>> {
    let mut out = Vec::new();
    for w in &fleet.workers {
        let v = client::get_json(http, &w.url("/kvgate/stats"))
            .await
            .map_err(BenchError::Http)?;
        out.push(counters(&v));
    }
    Ok(out)
}

/// Waits until no engine has work (bounded), then clears every cache and waits until the
/// sidecar's index is empty.
async fn reset(http: &Client, fleet: &Fleet, model: Option<&LiveModel>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if all_counters(http, fleet).await?.iter().all(|c| c.busy == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in &fleet.workers {
        client::post_empty(http, &w.url("/kvgate/clear"))
            .await
            .map_err(BenchError::Http)?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let m = client::get_text(http, &fleet.sidecar.url("/metrics"))
            .await
            .unwrap_or_default();
        if client::prom_sum(&m, "kvgate_sync_index_entries") == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Let the filter's next sync carry the Cleared events.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(m) = model {
        m.lock().clear();
    }
    Ok(())
}

/// Waits until a kvgate Envoy decides with every worker known and nothing degraded.
pub(crate) fn wait_filter_ready(envoy: &Envoy, workers: usize, cancel: &Cancel) -> Result<()> {
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1});
    let body = serde_json::to_vec(&body)?;
    let url = envoy.url("/v1/chat/completions");
    let ok = poll(
        cancel,
        Duration::from_secs(180),
        Duration::from_millis(250),
        || {
            let r = kvgate_http::post(&url, &[], &body).ok()?;
            let d = r.header("x-kvgate-decision")?;
            let known = d.matches(" ov=").count();
            (r.status == 200 && known >= workers && !d.contains("degraded")).then_some(())
        },
    );
    cancel.check()?;
    ok.ok_or_else(|| {
        BenchError::Failed(format!(
            "the kvgate filter did not become ready (all {workers} workers known, tokenizer loaded) within 180 s; see {}",
            envoy.proc.log.display()
        ))
    })
}

struct Ctx {
    http: Client,
    base: String,
    kind: PolicyKind,
    router: Option<Router>,
    endpoints: Vec<String>,
    compress: f64,
    think_ms: f64,
    tokenizer: Option<Arc<dyn Tokenize>>,
    bar: ProgressBar,
    cancel: Cancel,
}

#[derive(Debug, Clone)]
struct Record {
    out: Outcome,
    sent: Instant,
    isl: usize,
}

/// Writes one JSON line per request (send time from the first send, worker, prompt
/// length, TTFT, latency, the filter's decision) for later analysis.
fn write_records(path: &std::path::Path, records: &[Record]) -> Result<()> {
    use std::io::Write as _;
    let Some(t0) = records.iter().map(|r| r.sent).min() else {
        return Ok(());
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by_key(|r| r.sent);
    for r in sorted {
        let line = json!({
            "sent_ms": round(r.sent.duration_since(t0).as_secs_f64() * 1000.0, 2),
            "worker": r.out.worker,
            "isl": r.isl,
            "status": r.out.status,
            "ttft_ms": r.out.ttft.map(|d| round(d.as_secs_f64() * 1000.0, 2)),
            "latency_ms": round(r.out.latency.as_secs_f64() * 1000.0, 2),
            "decision": r.out.decision,
            "error": r.out.error,
        });
        writeln!(f, "{line}")?;
    }
    f.flush()?;
    Ok(())
}

async fn send_turn(
    ctx: &Ctx,
    prompt: &TurnPrompt,
    max_tokens: u32,
    history: &mut Vec<Value>,
) -> Record {
    let (path, body, tokens, text) = match prompt {
        TurnPrompt::Blocks {
            hash_ids,
            input_length,
        } => {
            let tokens = synth_tokens(hash_ids, *input_length);
            let text = if ctx.kind.needs_text() {
                serde_json::to_string(&tokens).unwrap_or_default()
            } else {
                String::new()
            };
            let body =
                json!({"model": MODEL, "prompt": tokens, "max_tokens": max_tokens, "stream": true});
            ("/v1/completions", body, Some(tokens), text)
        }
        TurnPrompt::User(u) => {
            history.push(json!({"role": "user", "content": u}));
            let body = json!({"model": MODEL, "messages": history, "max_tokens": max_tokens, "stream": true});
            let tokens = match (&ctx.tokenizer, ctx.kind.needs_hashes()) {
                (Some(t), true) => t.chat(&body).ok(),
                _ => None,
            };
            let text = if ctx.kind.needs_text() {
                serde_json::to_string(history).unwrap_or_default()
            } else {
                String::new()
            };
            ("/v1/chat/completions", body, tokens, text)
        }
    };
    let isl = tokens.as_ref().map_or(text.len() / 4, Vec::len);
    let hashes = match (&tokens, ctx.kind.needs_hashes()) {
        (Some(t), true) => {
            BlockHasher::new(BLOCK_SIZE)
                .hash(t, None, None, usize::MAX)
                .sequence
        }
        _ => Vec::new(),
    };
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let info = RequestInfo {
        isl,
        sequence_hashes: &hashes,
        text: &text,
    };
    let mut ticket = ctx.router.as_ref().map(|r| r.pick(&info));
    let mut headers = Vec::new();
    if let Some(t) = &ticket {
        if let Some(e) = ctx.endpoints.get(t.worker) {
            headers.push(("x-gateway-destination-endpoint", e.as_str()));
        }
    }
    let sent = Instant::now();
    let collect = matches!(prompt, TurnPrompt::User(_));
    let url = format!("{}{path}", ctx.base);
    let out = client::post(&ctx.http, &url, &headers, body, collect, || {
        if let (Some(r), Some(t)) = (&ctx.router, ticket.as_mut()) {
            r.first_token(t);
        }
    })
    .await;
    if let (Some(r), Some(t)) = (&ctx.router, ticket) {
        r.finish(t);
    }
    if collect {
        history.push(json!({"role": "assistant", "content": out.text}));
    }
    Record { out, sent, isl }
}

async fn replay(ctx: Arc<Ctx>, trace: &Trace) -> Vec<Record> {
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::new();
    for s in &trace.sessions {
        let ctx = ctx.clone();
        let session = s.clone();
        let at = t0 + Duration::from_secs_f64(session.start_ms / 1000.0 / ctx.compress);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut history = Vec::new();
            let mut out = Vec::new();
            for (i, turn) in session.turns.iter().enumerate() {
                if ctx.cancel.is_cancelled() {
                    break;
                }
                if i > 0 && ctx.think_ms > 0.0 {
                    tokio::time::sleep(Duration::from_secs_f64(
                        ctx.think_ms / 1000.0 / ctx.compress,
                    ))
                    .await;
                }
                let r = send_turn(&ctx, &turn.prompt, turn.max_tokens, &mut history).await;
                ctx.bar.inc(1);
                out.push(r);
            }
            out
        }));
    }
    let mut records = Vec::new();
    for t in tasks {
        if let Ok(r) = t.await {
            records.extend(r);
        }
    }
    records
}

fn bar(cfg: &BenchConfig, len: u64, prefix: &str) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>14} [{bar:32}] {pos}/{len} {msg} ({elapsed})")
    {
        b.set_style(style.progress_chars("=> "));
    }
    b.set_prefix(prefix.to_string());
    b
}

fn result(
    kind: PolicyKind,
    run: &RealRun,
    records: &[Record],
    before: &[Counters],
    after: &[Counters],
    speedup: f64,
    engine_ttft: &[f64],
) -> PolicyResult {
    let ok: Vec<&Record> = records.iter().filter(|r| r.out.ok()).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ttft: Vec<f64> = ok.iter().filter_map(|r| r.out.ttft).map(ms).collect();
    let e2e: Vec<f64> = ok.iter().map(|r| ms(r.out.latency)).collect();
    let first = records.iter().map(|r| r.sent).min();
    let last = records.iter().map(|r| r.sent + r.out.latency).max();
    let makespan = match (first, last) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let delta: Vec<Counters> = after
        .iter()
        .zip(before)
        .map(|(a, b)| Counters {
            prompt_tokens: a.prompt_tokens.saturating_sub(b.prompt_tokens),
            cached_hit_tokens: a.cached_hit_tokens.saturating_sub(b.cached_hit_tokens),
            computed_prefill_tokens: a
                .computed_prefill_tokens
                .saturating_sub(b.computed_prefill_tokens),
            preemptions: a.preemptions.saturating_sub(b.preemptions),
            busy: 0,
        })
        .collect();
    let prompt: u64 = delta.iter().map(|d| d.prompt_tokens).sum();
    let hit: u64 = delta.iter().map(|d| d.cached_hit_tokens).sum();
    let n = after.len();
    let mut per_worker = vec![0u64; n];
    for r in &ok {
        if let Some(slot) = r
            .out
            .worker
            .and_then(|w| usize::try_from(w).ok())
            .and_then(|w| w.checked_sub(1))
            .and_then(|i| per_worker.get_mut(i))
        {
            *slot += 1;
        }
    }
    let counts: Vec<f64> = per_worker.iter().map(|&c| c as f64).collect();
    let max = counts.iter().copied().fold(0.0, f64::max);
    let min = counts.iter().copied().fold(f64::INFINITY, f64::min);
    let errors: Vec<String> = records.iter().filter_map(|r| r.out.error.clone()).collect();
    let mut samples = errors.clone();
    samples.dedup();
    samples.truncate(5);
    PolicyResult {
        name: kind.name().to_string(),
        decided_by: kind.decided_by().to_string(),
        workers: run.workers,
        load: run.load,
        requests: records.len(),
        errors: errors.len(),
        hit_ratio: round(
            if prompt > 0 {
                hit as f64 / prompt as f64
            } else {
                0.0
            },
            4,
        ),
        prompt_tokens: prompt,
        cached_hit_tokens: hit,
        computed_prefill_tokens: delta.iter().map(|d| d.computed_prefill_tokens).sum(),
        preemptions: delta.iter().map(|d| d.preemptions).sum(),
        ttft_p50_ms: round(percentile(engine_ttft, 50.0), 1),
        ttft_p90_ms: round(percentile(engine_ttft, 90.0), 1),
        ttft_p99_ms: round(percentile(engine_ttft, 99.0), 1),
        ttft_mean_ms: round(super::stats::mean(engine_ttft), 1),
        engine_samples: engine_ttft.len(),
        e2e_p50_ms: round(percentile(&e2e, 50.0), 2),
        e2e_p99_ms: round(percentile(&e2e, 99.0), 2),
        ttft_wall_p50_ms: round(percentile(&ttft, 50.0), 2),
        ttft_wall_p99_ms: round(percentile(&ttft, 99.0), 2),
        throughput_rps: round(
            if makespan > 0.0 {
                ok.len() as f64 / makespan / speedup
            } else {
                0.0
            },
            3,
        ),
        throughput_rps_wall: round(
            if makespan > 0.0 {
                ok.len() as f64 / makespan
            } else {
                0.0
            },
            2,
        ),
        makespan_s: round(makespan, 2),
        per_worker_requests: per_worker,
        per_worker_prompt_tokens: delta.iter().map(|d| d.prompt_tokens).collect(),
        load_spread_max_min: round(if min > 0.0 { max / min } else { 0.0 }, 3),
        load_spread_cv: round(coefficient_of_variation(&counts), 3),
        error_samples: samples,
    }
}

/// Engine-side TTFTs (simulated queue + prefill until the first token, trace ms) of the
/// requests the engines logged after byte `from` of their shared request log.
fn engine_ttfts(log: &std::path::Path, from: u64) -> Result<Vec<f64>> {
    use std::io::{Read as _, Seek as _};
    let mut f = match std::fs::File::open(log) {
        Ok(f) => f,
        Err(_) => return Ok(Vec::new()),
    };
    f.seek(std::io::SeekFrom::Start(from))?;
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    // Only the one field: the lines also carry every prompt's token ids.
    #[derive(serde::Deserialize)]
    struct Line {
        sim_ttft_ms: Option<f64>,
    }
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter_map(|l| l.sim_ttft_ms)
        .collect())
}

/// The `epp` policy's gateway: its own picker following NATS (announcements and KV
/// events, core NATS), with the settings the `kvgate_events` filter gets (its own and the
/// sweep's router keys).
fn start_picker(cfg: &BenchConfig, fleet: &Fleet) -> Result<EppGateway> {
    let dir = fleet.dir.join("epp");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("epp-config.json");
    let mut keys = json!({
        "sync_wait_ms": 500,
        "decision_header": true,
        "use_kv_events": true,
        "router_ttl_secs": 120.0 / cfg.speedup.max(1e-6),
    });
    // The router keys the kvgate_events filter gets too.
    if let (Some(k), Some(more)) = (keys.as_object_mut(), cfg.sweep.plugin.as_object()) {
        k.extend(more.clone());
    }
    std::fs::write(&config, keys.to_string())?;
    EppGateway::start(
        &fleet.tools,
        &fleet.endpoints(),
        &[
            "--nats-url".into(),
            fleet.nats.url(),
            "--no-jetstream".into(),
            "--no-legacy-stream".into(),
            "--model".into(),
            format!("{MODEL}={}", fleet.tools.model_dir.display()),
            "--config".into(),
            config.display().to_string(),
        ],
        cfg.envoy_concurrency,
        false,
        &dir,
    )
}

/// The quality phase's report for `cfg`, with no replay in it yet.
pub fn report(cfg: &BenchConfig) -> QualityReport {
    let runs = cfg.real_runs();
    QualityReport {
        workers: runs.first().map_or(0, |r| r.workers),
        speedup: cfg.speedup,
        load: runs.first().map_or(cfg.load, |r| r.load),
        runs,
        num_gpu_blocks: cfg.num_gpu_blocks,
        max_output_tokens: cfg.max_output_tokens,
        ..QualityReport::default()
    }
}

/// Replays `run` (its policies, at its load) on `fleet` (`run.workers` engines); one
/// result per policy.
pub fn run(
    cfg: &BenchConfig,
    run: &RealRun,
    fleet: &Fleet,
    trace: &Trace,
    rt: &tokio::runtime::Runtime,
    cancel: &Cancel,
) -> Result<Vec<PolicyResult>> {
    let http = client::client(true)?;
    let ids: Vec<u64> = fleet.workers.iter().map(|w| w.instance_id).collect();
    let model = if run.policies.contains(&PolicyKind::Oracle) {
        Some(rt.block_on(LiveModel::start(&fleet.nats.url()))?)
    } else {
        None
    };
    let tokenizer: Option<Arc<dyn Tokenize>> = if run.policies.contains(&PolicyKind::Oracle)
        && trace.sessions.iter().any(|s| {
            s.turns
                .iter()
                .any(|t| matches!(t.prompt, TurnPrompt::User(_)))
        }) {
        let t = kvgate_mock::hf::HfTokenizer::load(&fleet.tools.model_dir, MODEL)
            .map_err(|e| BenchError::Failed(format!("tokenizer for the oracle: {e}")))?;
        Some(Arc::new(t))
    } else {
        None
    };
    let mut results = Vec::new();
    // The same arrivals as the virtual-time replay with seed `cfg.seed`.
    let mut trace = trace.clone();
    let starts: Vec<f64> = trace.sessions.iter().map(|s| s.start_ms).collect();
    let (spread, _) = crate::sweep::spread_arrivals(&starts, cfg.seed);
    for (s, t) in trace.sessions.iter_mut().zip(spread) {
        s.start_ms = t;
    }
    let trace = &trace;
    let mut baseline: Option<Envoy> = None;
    let total = trace.requests() as u64;
    for (i, &kind) in run.policies.iter().enumerate() {
        cancel.check()?;
        let filter_envoy = if kind.via_filter() {
            // Time-based settings follow the engines' time scale: Dynamo's 120 s
            // prediction TTL is 120 trace seconds.
            let mut plugin = json!({
                "decision_header": true,
                "use_kv_events": kind == PolicyKind::KvgateEvents,
                "router_ttl_secs": 120.0 / cfg.speedup.max(1e-6),
            });
            // The router keys of the sweep's kvgate policies, so both phases agree.
            if let (Some(p), Some(keys)) = (plugin.as_object_mut(), cfg.sweep.plugin.as_object()) {
                p.extend(keys.clone());
            }
            let e = fleet.envoy(
                EnvoyKind::Kvgate,
                plugin,
                fleet.endpoints(),
                cfg.envoy_concurrency,
                &format!("envoy-{}", kind.name()),
            )?;
            wait_filter_ready(&e, fleet.workers.len(), cancel)?;
            Some(e)
        } else if kind.via_picker() {
            None
        } else {
            if baseline.is_none() {
                baseline = Some(fleet.envoy(
                    EnvoyKind::Baseline,
                    json!({}),
                    fleet.endpoints(),
                    cfg.envoy_concurrency,
                    "envoy-baseline",
                )?);
            }
            None
        };
        let picker = if kind.via_picker() {
            let g = start_picker(cfg, fleet)?;
            wait_filter_ready(&g.envoy, fleet.workers.len(), cancel)?;
            Some(g)
        } else {
            None
        };
        let base = match (&filter_envoy, &picker, &baseline) {
            (Some(e), _, _) | (None, Some(EppGateway { envoy: e, .. }), _) => e.url(""),
            (None, None, Some(e)) => e.url(""),
            (None, None, None) => return Err(BenchError::Failed("no Envoy".into())),
        };
        rt.block_on(reset(&http, fleet, model.as_ref()))?;
        let before = rt.block_on(all_counters(&http, fleet))?;
        let log_from = std::fs::metadata(&fleet.request_log).map_or(0, |m| m.len());
        let pb = bar(
            cfg,
            total,
            &format!(
                "{}×{} {}/{}",
                run.workers,
                kind.name(),
                i + 1,
                run.policies.len()
            ),
        );
        let router = kind.via_driver().then(|| {
            Router::new(
                kind,
                ids.clone(),
                cfg.seed,
                model.as_ref().map(|m| m.model.clone()),
            )
        });
        let ctx = Arc::new(Ctx {
            http: http.clone(),
            base,
            kind,
            router,
            endpoints: fleet.endpoints(),
            compress: (cfg.speedup * run.load).max(1e-6),
            think_ms: trace.think_ms,
            tokenizer: tokenizer.clone(),
            bar: pb.clone(),
            cancel: cancel.clone(),
        });
        let records = rt.block_on(replay(ctx, trace));
        cancel.check()?;
        // Idle engines, then the final counters.
        rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                match all_counters(&http, fleet).await {
                    Ok(c) if c.iter().all(|c| c.busy == 0) => break,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let after = rt.block_on(all_counters(&http, fleet))?;
        write_records(
            &fleet.dir.join(format!("requests-{}.jsonl", kind.name())),
            &records,
        )?;
        let engine_ttft = engine_ttfts(&fleet.request_log, log_from)?;
        let r = result(
            kind,
            run,
            &records,
            &before,
            &after,
            cfg.speedup,
            &engine_ttft,
        );
        pb.finish_with_message(format!(
            "hit {:.1}%  TTFT p50 {:.0} ms p99 {:.0} ms  errors {}",
            r.hit_ratio * 100.0,
            r.ttft_p50_ms,
            r.ttft_p99_ms,
            r.errors
        ));
        if !cfg.progress || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!(
                "  {:>2} engines {:<14} hit {:>5.1}%  TTFT p50 {:>6.0} ms p99 {:>6.0} ms  errors {}",
                r.workers,
                r.name,
                r.hit_ratio * 100.0,
                r.ttft_p50_ms,
                r.ttft_p99_ms,
                r.errors
            );
        }
        results.push(r);
        drop(filter_envoy);
        drop(picker);
    }
    drop(baseline);
    Ok(results)
}
