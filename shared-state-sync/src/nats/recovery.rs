//! Recovery of cold workers: a worker whose KV events were lost (a gap in its event ids,
//! e.g. across a NATS outage) is reset and marked cold by the hub; this task asks it for
//! a dump of its cache over NATS request/reply (`kvgate_core::events::query`, shaped like
//! Dynamo's worker KV query) and replaces its index entries with the answer, so routing
//! is cache-aware for it again at once instead of after its cache turned over.
//!
//! Every [`POLL`] it queries each cold (worker, dp rank) not asked within its backoff
//! ([`RETRY`]: workers that never answer — Dynamo's own, whose
//! query runs on its request plane, or ZMQ-only ones — cost one short request now and
//! then). A dump older than events already applied is asked for again.

use crate::hub::Hub;
use kvgate_core::backoff::Backoff;
use kvgate_core::events::query::{query_subject, WorkerKvQueryRequest, WorkerKvQueryResponse};
use kvgate_core::WorkerKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often cold workers are looked at.
pub const POLL: Duration = Duration::from_millis(250);
/// Time limit of one query.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Pacing of the queries to a worker that does not answer: 1 s after the first miss,
/// doubling to at most 30 s.
pub const RETRY: Backoff = Backoff::new(500, 30_000);

/// What became of one query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The dump was applied: the worker is warm again.
    Recovered,
    /// The dump was older than live events (or the worker is no longer cold).
    Stale,
    /// No answer (no responder, time-out, NATS down).
    NoAnswer,
    /// An answer that was an error or not understood.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Recovered => "dump",
            Outcome::Stale => "stale",
            Outcome::NoAnswer => "no_answer",
            Outcome::Error => "error",
        }
    }
}

/// Asks `key`'s worker for its cache and applies the answer.
pub async fn recover(
    client: &async_nats::Client,
    hub: &Hub,
    namespace: &str,
    component: &str,
    key: WorkerKey,
    max_payload: usize,
) -> Outcome {
    let req = WorkerKvQueryRequest {
        worker_id: key.worker_id,
        dp_rank: key.dp_rank,
        start_event_id: None,
        end_event_id: None,
    };
    let Ok(body) = serde_json::to_vec(&req) else {
        return Outcome::Error;
    };
    let subject = query_subject(namespace, component, key.worker_id, key.dp_rank);
    let answer = tokio::time::timeout(TIMEOUT, client.request(subject, body.into())).await;
    let msg = match answer {
        Ok(Ok(m)) => m,
        _ => return Outcome::NoAnswer,
    };
    match WorkerKvQueryResponse::decode(&msg.payload, max_payload) {
        Ok(WorkerKvQueryResponse::TreeDump {
            events,
            last_event_id,
        }) => {
            if hub.apply_recovery(key, &events, last_event_id) {
                tracing::info!(worker = %key, blocks = events.len(), last_event_id, "cold worker recovered from its cache dump");
                Outcome::Recovered
            } else {
                Outcome::Stale
            }
        }
        Ok(other) => {
            tracing::warn!(worker = %key, answer = ?other, "worker KV query: unusable answer");
            Outcome::Error
        }
        Err(e) => {
            tracing::warn!(worker = %key, "worker KV query: {e}");
            Outcome::Error
        }
    }
}

/// Runs until the process ends.
pub async fn run(
    client: async_nats::Client,
    hub: Arc<Hub>,
    namespace: String,
    component: String,
    max_payload: usize,
) {
    // Per cold key, when it may be asked again (time in ms since this task started).
    let mut pacing: HashMap<WorkerKey, Backoff> = HashMap::new();
    let start = Instant::now();
    let now_ms = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let cold = hub.cold_keys();
        pacing.retain(|k, _| cold.iter().any(|(c, _)| c == k));
        for (key, _) in cold {
            let backoff = pacing.entry(key).or_insert_with(|| RETRY.clone());
            if !backoff.ready(now_ms()) {
                continue;
            }
            let outcome = recover(&client, &hub, &namespace, &component, key, max_payload).await;
            hub.metrics
                .recoveries
                .get_or_create(&[("result", outcome.label())])
                .inc();
            match outcome {
                // Applied, or older than live events: ask again as soon as it is cold.
                Outcome::Recovered | Outcome::Stale => backoff.succeeded(),
                Outcome::NoAnswer | Outcome::Error => {
                    backoff.failed(now_ms());
                }
            }
        }
    }
}
