//! Worker load reports (`ActiveLoad`, topic `kv_metrics`) on every subject form Dynamo
//! has used — namespace (`namespace.{ns}.kv_metrics`), component and endpoint scope —
//! applied to the hub, which keeps the latest per (worker, dp rank).

use crate::hub::Hub;
use futures::StreamExt;
use kvgate_core::events::dynamo::namespace_subject;
use kvgate_core::events::metrics::{decode_load, is_kv_metrics_subject, KV_METRICS_TOPIC};
use std::sync::Arc;

/// The subscriptions covering every `kv_metrics` subject of `namespace`.
pub fn load_subjects(namespace: &str) -> Vec<String> {
    let ns = namespace_subject(namespace);
    vec![
        format!("{ns}.{KV_METRICS_TOPIC}"),
        format!("{ns}.component.*.{KV_METRICS_TOPIC}"),
        format!("{ns}.component.*.endpoint.*.{KV_METRICS_TOPIC}"),
    ]
}

/// Follows load reports forever.
pub async fn run(client: async_nats::Client, hub: Arc<Hub>, namespace: String, max_payload: usize) {
    let subjects = load_subjects(&namespace);
    let mut all = super::subscribe_all(&client, subjects).await;
    hub.done("kv-metrics");
    while let Some(m) = all.next().await {
        if !is_kv_metrics_subject(m.subject.as_str()) {
            continue;
        }
        match decode_load(&m.payload, max_payload) {
            Ok(msg) => hub.apply_report(&msg.report),
            Err(e) => hub.decode_error("kv_metrics", &e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope() {
        let s = load_subjects("dyn");
        assert_eq!(
            s.first().map(String::as_str),
            Some("namespace.dyn.kv_metrics")
        );
        assert_eq!(s.len(), 3);
    }
}
