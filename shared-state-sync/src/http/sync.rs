//! `GET /v1/sync` (the long poll that feeds the filter) and `GET /v1/models/files`.
//!
//! The long poll answers as soon as anything is newer than the client's position (index
//! deltas, worker table, models; load changes at most every `loads_interval_ms`), else
//! after `wait_ms` with an empty delta frame, which the filter counts as a heartbeat.

use super::Api;
use crate::hub::News;
use crate::time::now_ms;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::time::Duration;
use tokio::time::Instant;

/// Longest long poll honoured.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Query of `/v1/sync`.
#[derive(Debug, Deserialize)]
pub struct SyncQuery {
    #[serde(default)]
    epoch: u64,
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    client: String,
}

fn octets(bytes: Vec<u8>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response()
}

/// The long poll.
pub async fn sync(State(api): State<Api>, Query(q): Query<SyncQuery>) -> Response {
    let deadline = Instant::now() + Duration::from_millis(q.wait_ms.min(MAX_WAIT_MS));
    let mut rx = api.hub.subscribe();
    loop {
        rx.mark_unchanged();
        let wait = match api.hub.news(&q.client, q.epoch, q.since, now_ms()) {
            News::Now => break,
            News::After(d) => Some(d),
            News::Nothing => None,
        };
        if Instant::now() >= deadline {
            break;
        }
        // Load changes are held back until `loads_interval_ms`, but anything else that
        // changes meanwhile (a KV event) still answers at once.
        let until = wait.map_or(deadline, |d| (Instant::now() + d).min(deadline));
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(until) => {}
        }
    }
    let (_, bytes) = api.hub.frame(&q.client, q.epoch, q.since, now_ms());
    octets(bytes)
}

/// Query of `/v1/models/files`.
#[derive(Debug, Deserialize)]
pub struct ModelQuery {
    name: String,
    #[serde(default)]
    digest: Option<String>,
}

/// The tokenizer files of one model.
pub async fn model_files(State(api): State<Api>, Query(q): Query<ModelQuery>) -> Response {
    match api.models.get(&q.name, q.digest.as_deref()) {
        Some(files) => match postcard::to_allocvec(files) {
            Ok(bytes) => octets(bytes),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        None => (
            StatusCode::NOT_FOUND,
            format!("no model `{}` with that digest", q.name),
        )
            .into_response(),
    }
}
