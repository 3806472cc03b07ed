//! Router replica sync on NATS: this gateway's bookkeeping goes out as Dynamo
//! `ActiveSequenceEvent`s (one per message, in the event-plane envelope, on
//! `namespace.{ns}.component.{c}.active_sequences_events`), and other routers' events —
//! on that subject and the newer endpoint-scoped ones — come in and are applied to the
//! hub's replica bookkeeping (its own echo is dropped by router id).

use crate::hub::Hub;
use crate::time::now_ms;
use futures::StreamExt;
use kvgate_core::events::dynamo::component_subject;
use kvgate_core::events::replica::{
    active_sequences_subject, decode_replica, encode_replica_envelope, encode_replica_event,
    is_active_sequences_subject, ReplicaEvent, ACTIVE_SEQUENCES_TOPIC,
};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Queue of events waiting to be published (newest dropped when full, as in Dynamo).
pub const QUEUE: usize = 100_000;

/// Publishes replica events from `rx` forever.
pub async fn publish(
    client: async_nats::Client,
    hub: Arc<Hub>,
    namespace: String,
    component: String,
    mut rx: mpsc::Receiver<ReplicaEvent>,
) {
    let subject = active_sequences_subject(&namespace, &component);
    let mut sequence = 0u64;
    while let Some(ev) = rx.recv().await {
        let payload = encode_replica_envelope(
            hub.router_id,
            sequence,
            now_ms(),
            &encode_replica_event(&ev),
        );
        sequence += 1;
        match client.publish(subject.clone(), payload.into()).await {
            Ok(()) => {
                hub.metrics
                    .replica_events
                    .get_or_create(&[("direction", "out")])
                    .inc();
            }
            Err(e) => tracing::warn!(%subject, "replica event not published: {e}"),
        }
    }
}

/// Applies other routers' replica events forever.
pub async fn follow(
    client: async_nats::Client,
    hub: Arc<Hub>,
    namespace: String,
    component: String,
    max_payload: usize,
) {
    let subjects = [
        active_sequences_subject(&namespace, &component),
        format!(
            "{}.endpoint.*.{ACTIVE_SEQUENCES_TOPIC}",
            component_subject(&namespace, &component)
        ),
    ];
    let mut all = super::subscribe_all(&client, subjects).await;
    hub.done("replica-sync");
    while let Some(m) = all.next().await {
        if !is_active_sequences_subject(m.subject.as_str()) {
            continue;
        }
        match decode_replica(&m.payload, max_payload) {
            Ok(msg) => hub.apply_replica(&msg.events),
            Err(e) => hub.decode_error("replica", &e),
        }
    }
}
