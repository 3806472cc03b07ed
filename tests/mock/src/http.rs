//! The HTTP surface: the axum router, shared state, the small endpoints (`/health`,
//! `/v1/models`) and the introspection endpoints tests and benchmarks read
//! (`/kvgate/cache`, `/kvgate/stats`, `/kvgate/clear`). Every response carries
//! `x-kvgate-worker: <instance id>`.

use super::config::Role;
use super::disagg::Peers;
use super::engine::{Engine, RankCache, RankReport};
use super::reqlog::RequestLog;
use super::request::ApiKind;
use super::scheduler::RankStats;
use super::sequence::Filler;
use super::serve::{completions, prefill};
use super::tokenize::Tokenize;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The response header naming the worker that answered.
pub const WORKER_HEADER: &str = "x-kvgate-worker";

/// What the handlers share.
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Prompt tokenizer (when a request has no `nvext.token_data`).
    pub tokenizer: Arc<dyn Tokenize>,
    /// Generated tokens and their text.
    pub filler: Arc<Filler>,
    /// Served model name.
    pub model: String,
    /// LoRA adapters served on top of it.
    pub lora_adapters: Vec<String>,
    /// Disaggregation role.
    pub role: Role,
    /// Output length when a request sets none.
    pub default_max_tokens: usize,
    /// The request log, if any.
    pub log: Option<Arc<RequestLog>>,
    /// Known peers (for remote prefill).
    pub peers: Peers,
    /// Timeout of remote prefill calls.
    pub prefill_timeout: Duration,
    /// Tokens per block.
    pub block_size: u32,
    /// Requests received (all endpoints that serve requests).
    pub received: AtomicU64,
}

/// Largest request body the mock engine reads (above the gateway's own limit).
pub const MAX_BODY_BYTES: usize = 64 << 20;

/// The router with every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    let worker = HeaderValue::from(state.engine.worker_id());
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completion))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/kvgate/cache", get(cache))
        .route("/kvgate/stats", get(stats))
        .route("/kvgate/clear", post(clear))
        .route("/kvgate/prefill", post(prefill_handler))
        .with_state(state)
        // Engines take long prompts (vLLM has no body limit of its own); axum's 2 MB
        // default would answer 413 before the engine saw a 128k-token request.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::map_response(move |mut res: Response| {
            let worker = worker.clone();
            async move {
                res.headers_mut().insert(WORKER_HEADER, worker);
                res
            }
        }))
}

async fn chat(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    completions(st, ApiKind::Chat, headers, body).await
}

async fn completion(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    completions(st, ApiKind::Completion, headers, body).await
}

async fn prefill_handler(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    prefill(st, headers, body).await
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    let mut data =
        vec![json!({"id": st.model, "object": "model", "created": 0, "owned_by": "kvgate-mock"})];
    for a in &st.lora_adapters {
        data.push(json!({"id": a, "object": "model", "created": 0, "owned_by": "kvgate-mock", "parent": st.model}));
    }
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    Json(json!({"status": "ok", "worker_id": st.engine.worker_id()})).into_response()
}

/// Query of `/kvgate/cache`.
#[derive(Debug, Deserialize, Default)]
pub struct CacheQuery {
    /// `detail=1`/`true`: also list each block's parent, tokens hash and refs.
    #[serde(default)]
    pub detail: Option<String>,
}

/// `GET /kvgate/cache`.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    /// Instance id.
    pub worker_id: u64,
    /// Tokens per block.
    pub block_size: u32,
    /// Per-rank contents.
    pub ranks: Vec<RankCache>,
}

async fn cache(State(st): State<Arc<AppState>>, Query(q): Query<CacheQuery>) -> Response {
    let detail = q
        .detail
        .as_deref()
        .is_some_and(|d| matches!(d, "1" | "true" | "yes"));
    Json(CacheReport {
        worker_id: st.engine.worker_id(),
        block_size: st.block_size,
        ranks: st.engine.cache(detail),
    })
    .into_response()
}

/// `GET /kvgate/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct StatsReport {
    /// Instance id.
    pub worker_id: u64,
    /// Role.
    pub role: &'static str,
    /// Model name.
    pub model: String,
    /// Tokens per block.
    pub block_size: u32,
    /// Time scale.
    pub speedup: f64,
    /// HTTP requests received on the serving endpoints.
    pub http_requests: u64,
    /// Number of data-parallel ranks.
    pub dp_size: u32,
    /// Sums over ranks: the per-rank counters without `dp_rank`.
    pub totals: serde_json::Value,
    /// Per-rank counters, load and event counters.
    pub ranks: Vec<RankReport>,
}

/// Per-rank counters as JSON without the rank.
fn totals_json(t: &RankStats) -> serde_json::Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("dp_rank");
    }
    v
}

/// Sums per-rank counters (`dp_rank` is left 0).
pub fn totals(ranks: &[RankReport]) -> RankStats {
    let mut t = RankStats::default();
    for r in ranks {
        let s = &r.stats;
        t.requests += s.requests;
        t.completed += s.completed;
        t.cancelled += s.cancelled;
        t.rejected += s.rejected;
        t.prompt_tokens += s.prompt_tokens;
        t.cached_hit_tokens += s.cached_hit_tokens;
        t.computed_prefill_tokens += s.computed_prefill_tokens;
        t.transferred_prefill_tokens += s.transferred_prefill_tokens;
        t.generated_tokens += s.generated_tokens;
        t.preemptions += s.preemptions;
        t.steps += s.steps;
        t.busy_ms += s.busy_ms;
        t.queue_depth += s.queue_depth;
        t.running += s.running;
    }
    t
}

async fn stats(State(st): State<Arc<AppState>>) -> Response {
    let ranks = st.engine.stats();
    Json(StatsReport {
        worker_id: st.engine.worker_id(),
        role: match st.role {
            Role::Aggregated => "aggregated",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        },
        model: st.model.clone(),
        block_size: st.block_size,
        speedup: st.engine.clock().speedup(),
        http_requests: st.received.load(Ordering::Relaxed),
        dp_size: st.engine.dp_size(),
        totals: totals_json(&totals(&ranks)),
        ranks,
    })
    .into_response()
}

async fn clear(State(st): State<Arc<AppState>>) -> Response {
    st.engine.clear().await;
    Json(json!({"cleared": true, "worker_id": st.engine.worker_id()})).into_response()
}
