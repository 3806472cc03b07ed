//! The small routes: bookkeeping from the filter, health, readiness, metrics and the JSON
//! state view.

use super::auth::json_error;
use super::Api;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kvgate_core::sync::BookBatch;

/// `POST /v1/bookkeeping`: books this gateway's steps and queues their replica events.
/// A body over `--max-bookkeeping-bytes` or a batch over `--max-bookkeeping-events` gets
/// 413 and books nothing.
pub async fn bookkeeping(State(api): State<Api>, body: Body) -> Response {
    let max_bytes = api.access.max_bookkeeping_bytes;
    let Ok(body) = axum::body::to_bytes(body, max_bytes).await else {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bookkeeping_too_large",
            &format!("bookkeeping body over {max_bytes} bytes (--max-bookkeeping-bytes)"),
        );
    };
    let batch: BookBatch = match postcard::from_bytes(&body) {
        Ok(b) => b,
        Err(e) => {
            api.hub.decode_error("bookkeeping", &e);
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_bookkeeping",
                &format!("not a postcard BookBatch: {e}"),
            );
        }
    };
    let max_events = api.access.max_bookkeeping_events;
    if batch.events.len() > max_events {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bookkeeping_too_large",
            &format!(
                "{} bookkeeping steps in one batch, at most {max_events} (--max-bookkeeping-events)",
                batch.events.len()
            ),
        );
    }
    let events = api.hub.book(&batch);
    if let Some(tx) = &api.replica {
        for ev in events {
            if tx.try_send(ev).is_err() {
                tracing::warn!("replica sync queue full: event dropped");
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /healthz`.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200, or 503 with the reason (the index is still served meanwhile).
pub async fn readyz(State(api): State<Api>) -> Response {
    match api.hub.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".to_string()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready (serving the last index): {why}\n"),
        )
            .into_response(),
    }
}

/// `GET /metrics`.
pub async fn metrics(State(api): State<Api>) -> Response {
    api.hub.tick_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        api.hub.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/state`.
pub async fn state(State(api): State<Api>) -> Json<serde_json::Value> {
    Json(crate::hub::state_json(&api.hub))
}
