//! The JSON debug view of the hub (`GET /v1/state`): workers, per-worker block counts,
//! loads, versions, readiness and running totals, for tests and operators.

use super::{book::remote_loads, Hub};
use crate::time::now_ms;
use serde_json::{json, Value};

/// The whole state as JSON.
pub fn state_json(hub: &Hub) -> Value {
    let ready = hub.readiness();
    let now = now_ms();
    let st = hub.lock();
    let index = st.indexer.index();
    let mut per_worker: Vec<Value> = index
        .workers()
        .map(|k| {
            json!({
                "worker_id": k.worker_id,
                "dp_rank": k.dp_rank,
                "blocks": index.worker_blocks(&k),
                "last_event_id": st.indexer.last_event_id(&k),
            })
        })
        .collect();
    per_worker.sort_by_key(|v| (v["worker_id"].as_u64(), v["dp_rank"].as_u64()));
    let workers: Vec<Value> = st
        .table
        .describe()
        .into_iter()
        .map(|(info, source, lease)| {
            let mut v = serde_json::to_value(&info).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("source".into(), json!(source));
                m.insert("lease_until_ms".into(), json!(lease));
            }
            v
        })
        .collect();
    let cold: Vec<Value> = st
        .cold
        .iter()
        .map(
            |(k, since)| json!({"worker_id": k.worker_id, "dp_rank": k.dp_rank, "since_ms": since}),
        )
        .collect();
    let own: Vec<Value> = {
        let mut v: Vec<_> = st.own_book.loads().collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter()
            .map(|(k, l)| json!({"worker": k, "load": l}))
            .collect()
    };
    json!({
        "epoch": hub.epoch,
        "router_id": hub.router_id,
        "version": st.log.version(),
        "oldest_version": st.log.oldest(),
        "ready": ready.is_ok(),
        "not_ready_reason": ready.err(),
        "nats_connected": st.status.nats_connected,
        "pending": st.status.pending.iter().collect::<Vec<_>>(),
        "source_age_ms": Hub::source_age(&st, now),
        "workers": workers,
        "announced_not_in_cluster": st.table.unmatched_announcements(),
        "index": {
            "entries": index.entries(),
            "blocks": index.len(),
            "by_worker": per_worker,
        },
        "cold": cold,
        "loads": remote_loads(&st),
        "own_loads": own,
        "own_requests": st.own_book.len(),
        "replica_requests": st.replicas.len(),
        "models": st.models,
        "totals": st.totals,
    })
}
