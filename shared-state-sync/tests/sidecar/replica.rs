//! (6) Two sidecars with replica sync converge on the same bookkeeping of each other's
//! requests: what B holds for A's requests equals A's own book, and the other way round.

use super::common::{eventually, Nats, Sidecar};
use kvgate_core::load::RequestPlan;
use kvgate_core::sync::{BookBatch, BookEvent, BookKind};
use kvgate_core::WorkerKey;
use kvgate_sync::client;
use serde_json::{json, Value};
use std::collections::BTreeMap;

fn plan(worker: u64, prefill: Option<u64>, blocks: &[u64], prefill_tokens: u64) -> RequestPlan {
    RequestPlan {
        decode: WorkerKey::new(worker, 0),
        prefill: prefill.map(|p| WorkerKey::new(p, 0)),
        prefill_tokens,
        blocks: blocks.to_vec(),
        isl_tokens: 64,
        block_size: 16,
        track_output: false,
    }
}

async fn book(sc: &Sidecar, events: Vec<(u64, BookKind)>) {
    let batch = BookBatch {
        events: events
            .into_iter()
            .map(|(request_id, kind)| BookEvent { request_id, kind })
            .collect(),
    };
    let (status, _) = client::post(
        &sc.target,
        "/v1/bookkeeping",
        postcard::to_allocvec(&batch).unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, 204);
}

/// worker → load, without empty loads.
fn own(state: &Value) -> BTreeMap<String, Value> {
    state["own_loads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["load"] != json!({"prefill_tokens": 0, "decode_blocks": 0, "requests": 0}))
        .map(|l| (l["worker"].to_string(), l["load"].clone()))
        .collect()
}

fn replicas(state: &Value) -> BTreeMap<String, Value> {
    state["loads"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| {
            l["replicas"] != json!({"prefill_tokens": 0, "decode_blocks": 0, "requests": 0})
        })
        .map(|l| (l["worker"].to_string(), l["replicas"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_converge_on_each_others_bookkeeping() {
    let nats = Nats::start().await;
    let a = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "ns6",
        "--durable",
        "a",
        "--replica-sync",
    ])
    .await;
    let b = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "ns6",
        "--durable",
        "b",
        "--replica-sync",
    ])
    .await;
    a.ready().await;
    b.ready().await;
    // Subscriptions are set up before readiness is reached on both sides; give the
    // server a round trip by booking only once both answer ready.
    book(
        &a,
        vec![
            (1, BookKind::Add(plan(31, None, &[1, 2, 3], 100))),
            (2, BookKind::Add(plan(31, None, &[2, 3, 4], 40))),
            (3, BookKind::Add(plan(32, Some(33), &[7, 8], 64))),
            (1, BookKind::PrefillDone),
            (2, BookKind::OutputTokens(5)),
        ],
    )
    .await;
    book(
        &b,
        vec![
            (10, BookKind::Add(plan(31, None, &[1, 2], 30))),
            (11, BookKind::Add(plan(34, None, &[9], 16))),
        ],
    )
    .await;

    eventually(
        "B's view of A equals A's book and the other way round",
        || async {
            let (sa, sb) = (a.state().await, b.state().await);
            !own(&sa).is_empty() && own(&sa) == replicas(&sb) && own(&sb) == replicas(&sa)
        },
    )
    .await;
    // Prefill of the disaggregated request finishes: its prefill booking is released.
    book(&a, vec![(3, BookKind::PrefillDone), (2, BookKind::Free)]).await;
    eventually("converged after prefill done and a free", || async {
        let (sa, sb) = (a.state().await, b.state().await);
        own(&sa) == replicas(&sb)
            && !replicas(&sb).contains_key(&json!({"worker_id": 33, "dp_rank": 0}).to_string())
    })
    .await;
    book(&a, vec![(1, BookKind::Free), (3, BookKind::Free)]).await;
    book(
        &b,
        vec![
            (10, BookKind::Free),
            (11, BookKind::Free),
            (11, BookKind::Free),
        ],
    )
    .await;
    eventually("everything freed on both sides", || async {
        let (sa, sb) = (a.state().await, b.state().await);
        replicas(&sa).is_empty() && replicas(&sb).is_empty() && sb["replica_requests"] == 0
    })
    .await;
    let s = a.state().await;
    assert!(s["totals"]["replica_in"].as_u64().unwrap() >= 3, "{s}");
}
