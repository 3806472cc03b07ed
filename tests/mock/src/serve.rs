//! The OpenAI endpoints: parse → tokenize → (remote prefill) → submit to the engine →
//! stream SSE chunks or answer whole; plus `POST /kvgate/prefill` for decode workers.
//! Each request leaves one line in the request log.

use super::config::Role;
use super::disagg::{remote_prefill, PrefillRequest, PrefillResponse};
use super::engine::{EngineError, RequestHandle, Submission};
use super::http::AppState;
use super::openai::{error_body, sse, ResponseMeta, Usage, SSE_DONE};
use super::reqlog::{LogLine, PendingLine};
use super::request::{parse_body, parse_routing, ApiKind, PromptInput, RequestError, Routing};
use super::tokenize::TokenizeError;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kvgate_core::hash::block_seed;
use kvgate_core::WorkerId;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// An error answer in OpenAI's shape.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    let kind = if status.is_client_error() {
        "invalid_request_error"
    } else {
        "server_error"
    };
    (
        status,
        axum::Json(error_body(message, kind, status.as_u16())),
    )
        .into_response()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn engine_error(e: &EngineError) -> StatusCode {
    match e {
        EngineError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        EngineError::NoSuchRank { .. } | EngineError::Submit(_) => StatusCode::BAD_REQUEST,
    }
}

async fn tokenize(st: &AppState, prompt: PromptInput) -> Result<Vec<u32>, TokenizeError> {
    match prompt {
        PromptInput::Tokens(t) => Ok(t),
        other => {
            let tok = st.tokenizer.clone();
            let joined = tokio::task::spawn_blocking(move || match other {
                PromptInput::Chat(body) => tok.chat(&body),
                PromptInput::Text(text) => tok.text(&text),
                PromptInput::Tokens(t) => Ok(t),
            })
            .await;
            joined.map_err(|e| TokenizeError::Failed(e.to_string()))?
        }
    }
}

fn new_line(
    st: &AppState,
    request_id: &str,
    routing: &Routing,
    model: Option<String>,
    dp_rank: u32,
) -> LogLine {
    LogLine {
        worker_id: st.engine.worker_id(),
        request_id: request_id.to_string(),
        model,
        token_ids: Vec::new(),
        routing_headers: routing.logged.clone(),
        prefix_hit_tokens: None,
        ttft_ms: None,
        sim_ttft_ms: None,
        dp_rank,
        role: match st.role {
            Role::Aggregated => "aggregated",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        },
        prefill_worker_id: None,
        prefill_hit_tokens: None,
        received_at_ms: unix_ms(),
        error: None,
    }
}

/// `POST /v1/chat/completions` and `POST /v1/completions`.
pub async fn completions(
    st: Arc<AppState>,
    kind: ApiKind,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let received = Instant::now();
    st.received.fetch_add(1, Ordering::Relaxed);
    let routing = match parse_routing(&headers) {
        Ok(r) => r,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let request_id = routing.request_id.clone().unwrap_or_else(|| {
        format!(
            "mock-{}-{}",
            st.engine.worker_id(),
            st.received.load(Ordering::Relaxed)
        )
    });
    let dp_rank = routing.dp_rank.unwrap_or(0);
    let parsed = parse_body(kind, &body);
    let model = parsed.as_ref().ok().and_then(|p| p.model.clone());
    let mut line = PendingLine::new(
        st.log.clone(),
        new_line(&st, &request_id, &routing, model, dp_rank),
    );
    let fail = |line: &mut PendingLine, status: StatusCode, msg: String| {
        line.update(|l| l.error = Some(msg.clone()));
        error_response(status, &msg)
    };
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return fail(&mut line, StatusCode::BAD_REQUEST, e.to_string()),
    };
    let tokens = match tokenize(&st, parsed.prompt.clone()).await {
        Ok(t) => t,
        Err(e @ TokenizeError::BadRequest(_)) => {
            return fail(&mut line, StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => return fail(&mut line, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    line.update(|l| l.token_ids = tokens.clone());
    // A request for one of the worker's LoRA adapters caches under the adapter's seed.
    let lora = parsed
        .model
        .as_deref()
        .filter(|m| st.lora_adapters.iter().any(|a| a == m));
    let hash_seed = block_seed(lora, routing.cache_salt.as_deref());
    let mut prefilled = false;
    let mut unreachable: Vec<WorkerId> = Vec::new();
    let remote = routing
        .prefill_instance
        .filter(|&p| st.role == Role::Decode && p != st.engine.worker_id());
    if let Some(pid) = remote {
        // The named prefill worker, then the gateway's fallbacks in order; one that cannot
        // be reached (or refuses) is skipped and reported back to the gateway.
        let first = (pid, routing.prefill_dp_rank.unwrap_or(0));
        let mut last_error = String::new();
        for (id, rank) in std::iter::once(first).chain(routing.prefill_fallbacks.iter().copied()) {
            let req = PrefillRequest {
                request_id: request_id.clone(),
                token_ids: tokens.clone(),
                dp_rank: rank,
                hash_seed,
            };
            match remote_prefill(&st.peers, id, &req, st.prefill_timeout).await {
                Ok(r) => {
                    prefilled = true;
                    line.update(|l| {
                        l.prefill_worker_id = Some(r.worker_id);
                        l.prefill_hit_tokens = Some(r.prefix_hit_tokens);
                    });
                    break;
                }
                Err(e) => {
                    tracing::warn!(prefill_worker = id, "remote prefill failed: {e}");
                    unreachable.push(id);
                    last_error = e.to_string();
                }
            }
        }
        if !prefilled && routing.prefill_required {
            let mut r = fail(&mut line, StatusCode::BAD_GATEWAY, last_error);
            set_unreachable(&mut r, &unreachable);
            return r;
        }
        // Otherwise this worker prefills itself (aggregated fallback).
    }
    let prompt_tokens = tokens.len();
    let max_tokens = parsed.max_tokens.unwrap_or(st.default_max_tokens).max(1);
    let sub = Submission {
        prompt: tokens,
        max_tokens,
        hash_seed,
        prefilled,
    };
    let handle = match st.engine.submit(dp_rank, sub) {
        Ok(h) => h,
        Err(e) => return fail(&mut line, engine_error(&e), e.to_string()),
    };
    let created = unix_ms() / 1000;
    let meta = ResponseMeta::new(
        kind,
        &request_id,
        parsed.model.clone().unwrap_or_else(|| st.model.clone()),
        created,
    );
    let stream = Streamer {
        st: st.clone(),
        handle,
        meta,
        line,
        received,
        usage: Usage {
            prompt_tokens,
            ..Usage::default()
        },
        include_usage: parsed.include_usage,
        done: false,
    };
    let mut response = if parsed.stream {
        let body = Body::from_stream(futures::stream::unfold(stream, |mut s| async move {
            let bytes = s.next_sse().await?;
            Some((Ok::<Bytes, std::convert::Infallible>(Bytes::from(bytes)), s))
        }));
        (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response()
    } else {
        stream.whole().await
    };
    set_unreachable(&mut response, &unreachable);
    response
}

/// Names the prefill workers this decode worker could not use
/// (`x-kvgate-prefill-unreachable`), so the gateway can stop choosing them.
fn set_unreachable(r: &mut Response, ids: &[WorkerId]) {
    if ids.is_empty() {
        return;
    }
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    if let Ok(v) = header::HeaderValue::from_str(&list.join(",")) {
        r.headers_mut().insert(
            header::HeaderName::from_static("x-kvgate-prefill-unreachable"),
            v,
        );
    }
}

/// Turns engine tokens into OpenAI output.
struct Streamer {
    st: Arc<AppState>,
    handle: RequestHandle,
    meta: ResponseMeta,
    line: PendingLine,
    received: Instant,
    usage: Usage,
    include_usage: bool,
    done: bool,
}

impl Streamer {
    /// The next token: its text and whether it is the last; None when the engine stopped.
    async fn next_token(&mut self) -> Option<(String, bool, bool)> {
        let t = self.handle.next().await?;
        if let Some(f) = t.first {
            let ttft = self.received.elapsed().as_secs_f64() * 1000.0;
            self.usage.cached_tokens = f.hit_tokens;
            self.line.update(|l| {
                l.prefix_hit_tokens = Some(f.hit_tokens);
                l.ttft_ms = Some(ttft);
                l.sim_ttft_ms = Some(f.sim_ttft_ms);
            });
            self.line.finish();
        }
        self.usage.completion_tokens += 1;
        let (_, text) = self.st.filler.piece(t.index);
        Some((text.to_string(), t.index == 0, t.finished))
    }

    async fn next_sse(&mut self) -> Option<Vec<u8>> {
        if self.done {
            return None;
        }
        let Some((text, first, last)) = self.next_token().await else {
            self.done = true;
            let mut out = sse(&error_body("engine stopped", "server_error", 503));
            out.extend_from_slice(SSE_DONE);
            return Some(out);
        };
        let mut out = sse(&self.meta.chunk(&text, first, last.then_some("length")));
        if last {
            if self.include_usage {
                out.extend(sse(&self.meta.usage_chunk(&self.usage)));
            }
            out.extend_from_slice(SSE_DONE);
            self.done = true;
        }
        Some(out)
    }

    async fn whole(mut self) -> Response {
        let mut text = String::new();
        loop {
            match self.next_token().await {
                Some((t, _, last)) => {
                    text.push_str(&t);
                    if last {
                        break;
                    }
                }
                None => return error_response(StatusCode::SERVICE_UNAVAILABLE, "engine stopped"),
            }
        }
        axum::Json(self.meta.full(&text, "length", &self.usage)).into_response()
    }
}

/// `POST /kvgate/prefill`: run a prefill for a decode worker and report it.
pub async fn prefill(st: Arc<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let received = Instant::now();
    st.received.fetch_add(1, Ordering::Relaxed);
    let routing = parse_routing(&headers).unwrap_or_default();
    let req: PrefillRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &RequestError::NotJson(e.to_string()).to_string(),
            )
        }
    };
    let mut line = PendingLine::new(
        st.log.clone(),
        new_line(&st, &req.request_id, &routing, None, req.dp_rank),
    );
    line.update(|l| l.token_ids = req.token_ids.clone());
    let prompt_tokens = req.token_ids.len();
    match st
        .engine
        .prefill(req.dp_rank, req.token_ids, req.hash_seed)
        .await
    {
        Ok(f) => {
            line.update(|l| {
                l.prefix_hit_tokens = Some(f.hit_tokens);
                l.ttft_ms = Some(received.elapsed().as_secs_f64() * 1000.0);
                l.sim_ttft_ms = Some(f.sim_ttft_ms);
            });
            axum::Json(PrefillResponse {
                worker_id: st.engine.worker_id(),
                dp_rank: req.dp_rank,
                prompt_tokens,
                prefix_hit_tokens: f.hit_tokens,
                sim_ttft_ms: f.sim_ttft_ms,
            })
            .into_response()
        }
        Err(e) => {
            line.update(|l| l.error = Some(e.to_string()));
            error_response(engine_error(&e), &e.to_string())
        }
    }
}
