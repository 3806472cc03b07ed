//! NATS transport: the [`NatsSink`] that publishes KV events and load reports on the
//! Dynamo event plane, the worker announcements (`WorkerAnnouncement` JSON every
//! lease/3, `leaving: true` on shutdown), peer discovery from other workers'
//! announcements, and the answer to a router's worker KV query (a dump of a rank's
//! cache, `kvgate_core::events::query`) after it lost events.

use super::disagg::Peers;
use super::events::EventSink;
use super::scheduler::LoadSnapshot;
use bytes::Bytes;
use futures::StreamExt;
use kvgate_core::events::dynamo::{encode_envelope, kv_events_subject};
use kvgate_core::events::metrics::{encode_load_envelope, kv_metrics_subject, WorkerLoadReport};
use kvgate_core::events::KvEvent;
use kvgate_core::workers::{announce_subject, WorkerAnnouncement, WorkerInfo};
use kvgate_core::WorkerKey;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Why NATS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// Connecting failed.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// Server URL.
        url: String,
        /// The error.
        source: async_nats::ConnectError,
    },
    /// Subscribing failed.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// Subject.
        subject: String,
        /// The error.
        source: async_nats::SubscribeError,
    },
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A random 53-bit id (Dynamo's JSON-safe publisher ids).
pub fn random_id53() -> u64 {
    fastrand::u64(1..(1u64 << 53))
}

struct Publisher {
    id: u64,
    next_seq: u64,
}

/// Publishes KV events (`namespace.{ns}.component.{c}.kv-events`) and load reports
/// (`namespace.{ns}.kv_metrics`) as Dynamo event-plane envelopes (MessagePack, encoded by
/// `kvgate_core::events::{dynamo, metrics}`, the same code the router decodes with). Sends are queued to one
/// task, so per-rank order is kept and callers never block.
pub struct NatsSink {
    tx: mpsc::UnboundedSender<(String, Bytes)>,
    kv_subject: String,
    metrics_subject: String,
    kv: Mutex<Publisher>,
    load: Mutex<Publisher>,
}

impl NatsSink {
    /// A sink publishing through `client`; the returned task does the sending.
    pub fn start(
        client: async_nats::Client,
        namespace: &str,
        component: &str,
    ) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Bytes)>();
        let task = tokio::spawn(async move {
            while let Some((subject, payload)) = rx.recv().await {
                if let Err(e) = client.publish(subject.clone(), payload).await {
                    tracing::warn!("NATS publish on {subject} failed: {e}");
                }
            }
        });
        let sink = Self {
            tx,
            kv_subject: kv_events_subject(namespace, component),
            metrics_subject: kv_metrics_subject(namespace),
            kv: Mutex::new(Publisher {
                id: random_id53(),
                next_seq: 0,
            }),
            load: Mutex::new(Publisher {
                id: random_id53(),
                next_seq: 0,
            }),
        };
        (sink, task)
    }
}

impl EventSink for NatsSink {
    fn publish_kv(&self, event: &KvEvent, _tokens: &[u32]) {
        let mut p = self.kv.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = encode_envelope(p.id, p.next_seq, unix_ms(), event);
        p.next_seq += 1;
        let _ = self.tx.send((self.kv_subject.clone(), Bytes::from(bytes)));
    }

    fn publish_load(&self, worker: WorkerKey, load: &LoadSnapshot) {
        let mut p = self.load.lock().unwrap_or_else(PoisonError::into_inner);
        let bytes = encode_load_envelope(p.id, p.next_seq, unix_ms(), &load_report(worker, load));
        p.next_seq += 1;
        let _ = self
            .tx
            .send((self.metrics_subject.clone(), Bytes::from(bytes)));
    }
}

/// A rank's load as Dynamo's workers publish it: `active_decode_blocks` and
/// `kv_used_blocks`, no prefill tokens, no scheduler scope.
pub fn load_report(worker: WorkerKey, load: &LoadSnapshot) -> WorkerLoadReport {
    WorkerLoadReport {
        worker,
        active_decode_blocks: Some(load.active_decode_blocks),
        // Real workers leave this to the routers' schedulers (scheduler-scoped reports).
        active_prefill_tokens: None,
        kv_used_blocks: Some(load.kv_used_blocks),
        scheduler_load_scope: None,
    }
}

/// Connects to `url`.
pub async fn connect(url: &str) -> Result<async_nats::Client, NatsError> {
    async_nats::connect(url)
        .await
        .map_err(|source| NatsError::Connect {
            url: url.to_string(),
            source,
        })
}

/// Answers worker KV queries for every rank of `engine` (request/reply on
/// `query_subject`): a dump of the rank's cache and its last event id. The mock keeps no
/// event buffer, so every query gets a `TreeDump` (Dynamo's answer to a range it no
/// longer buffers).
pub async fn start_query_responder(
    client: async_nats::Client,
    namespace: &str,
    component: &str,
    engine: std::sync::Arc<super::engine::Engine>,
) -> Result<JoinHandle<()>, NatsError> {
    use kvgate_core::events::query::{query_subject, WorkerKvQueryRequest, WorkerKvQueryResponse};
    let mut subs = Vec::new();
    for rank in 0..engine.dp_size() {
        let subject = query_subject(namespace, component, engine.worker_id(), rank);
        let sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|source| NatsError::Subscribe { subject, source })?;
        subs.push(sub.map(move |m| (rank, m)));
    }
    let mut all = futures::stream::select_all(subs);
    Ok(tokio::spawn(async move {
        while let Some((rank, msg)) = all.next().await {
            let Some(reply) = msg.reply else { continue };
            let answer = match serde_json::from_slice::<WorkerKvQueryRequest>(&msg.payload) {
                Ok(req) if req.worker_id != engine.worker_id() || req.dp_rank != rank => {
                    WorkerKvQueryResponse::Error(format!(
                        "asked worker {} rank {}, this is worker {} rank {rank}",
                        req.worker_id,
                        req.dp_rank,
                        engine.worker_id()
                    ))
                }
                Ok(_) => match engine.kv_dump(rank) {
                    Ok((events, last_event_id)) => WorkerKvQueryResponse::TreeDump {
                        events,
                        last_event_id,
                    },
                    Err(e) => WorkerKvQueryResponse::Error(e.to_string()),
                },
                Err(e) => WorkerKvQueryResponse::Error(format!("bad query: {e}")),
            };
            if let Err(e) = client.publish(reply, answer.encode().into()).await {
                tracing::warn!("worker KV query answer not sent: {e}");
            }
        }
    }))
}

/// Announces `info` every `lease_ms / 3` until aborted.
pub fn start_announcer(
    client: async_nats::Client,
    namespace: &str,
    info: WorkerInfo,
    lease_ms: u64,
) -> JoinHandle<()> {
    let subject = announce_subject(namespace);
    let period = Duration::from_millis((lease_ms / 3).max(1));
    tokio::spawn(async move {
        let ann = WorkerAnnouncement {
            worker: info,
            lease_ms,
            leaving: false,
        };
        let payload = match serde_json::to_vec(&ann) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                tracing::error!("announcement not encoded: {e}");
                return;
            }
        };
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if let Err(e) = client.publish(subject.clone(), payload.clone()).await {
                tracing::warn!("announcement failed: {e}");
            }
        }
    })
}

/// Publishes `leaving: true` for `info` and flushes (bounded by `timeout`).
pub async fn announce_leaving(
    client: &async_nats::Client,
    namespace: &str,
    info: WorkerInfo,
    lease_ms: u64,
    timeout: Duration,
) {
    let ann = WorkerAnnouncement {
        worker: info,
        lease_ms,
        leaving: true,
    };
    let Ok(payload) = serde_json::to_vec(&ann) else {
        return;
    };
    let send = async {
        if let Err(e) = client
            .publish(announce_subject(namespace), Bytes::from(payload))
            .await
        {
            tracing::warn!("leaving announcement failed: {e}");
        }
        if let Err(e) = client.flush().await {
            tracing::warn!("NATS flush failed: {e}");
        }
    };
    let _ = tokio::time::timeout(timeout, send).await;
}

/// Keeps `peers` up to date from the fleet's announcements (ignoring `self_id`).
pub async fn start_discovery(
    client: async_nats::Client,
    namespace: &str,
    self_id: u64,
    peers: Peers,
) -> Result<JoinHandle<()>, NatsError> {
    let subject = announce_subject(namespace);
    let mut sub =
        client
            .subscribe(subject.clone())
            .await
            .map_err(|source| NatsError::Subscribe {
                subject: subject.clone(),
                source,
            })?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            match serde_json::from_slice::<WorkerAnnouncement>(&msg.payload) {
                Ok(a) if a.worker.instance_id == self_id => {}
                Ok(a) if a.leaving => peers.remove(a.worker.instance_id),
                Ok(a) => peers.insert(a.worker.instance_id, a.worker.endpoint),
                Err(e) => tracing::debug!("ignoring announcement: {e}"),
            }
        }
    }))
}

#[cfg(test)]
#[path = "nats_tests.rs"]
mod tests;
