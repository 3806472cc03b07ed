//! (2) Worker discovery: an announced worker whose lease runs out is removed with its
//! index entries; `leaving: true` removes at once; the workers file is reloaded.

use super::common::{eventually, Nats, Sidecar};
use super::dynamo_events::{hashes, publish, publish_event, stored};
use kvgate_core::workers::{announce_subject, WorkerAnnouncement, WorkerInfo};
use kvgate_core::WorkerKey;
use serde_json::json;

fn worker(id: u64) -> WorkerInfo {
    serde_json::from_value(
        json!({"instance_id": id, "endpoint": format!("127.0.0.1:{}", 9000 + id), "model": "m"}),
    )
    .unwrap()
}

async fn announce(client: &async_nats::Client, id: u64, lease_ms: u64, leaving: bool) {
    let a = WorkerAnnouncement {
        worker: worker(id),
        lease_ms,
        leaving,
    };
    publish(
        client,
        announce_subject("ns2"),
        serde_json::to_vec(&a).unwrap(),
    )
    .await;
}

fn has_worker(state: &serde_json::Value, id: u64) -> bool {
    state["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|w| w["instance_id"] == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_and_leaving_remove_the_worker_and_its_blocks() {
    let nats = Nats::start().await;
    let sc = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "ns2",
        "--durable",
        "d2",
    ])
    .await;
    sc.ready().await;
    let client = nats.client().await;
    let h = hashes();
    announce(&client, 9, 1500, false).await;
    announce(&client, 10, 60_000, false).await;
    publish_event(
        &client,
        "ns2",
        0,
        &stored(9, 0, None, &[(1, h.local[0]), (2, h.local[1])]),
    )
    .await;
    eventually("worker 9 known with its blocks", || async {
        let s = sc.state().await;
        has_worker(&s, 9) && has_worker(&s, 10) && super::common::blocks_in(&s, 9) == 2
    })
    .await;
    let f = sc.frame(0, 0, 0).await;
    assert!(f.workers.unwrap().iter().any(|w| w.instance_id == 9));

    // No renewal: the lease runs out.
    eventually("worker 9 expired with its blocks", || async {
        let s = sc.state().await;
        !has_worker(&s, 9) && super::common::blocks_in(&s, 9) == 0
    })
    .await;
    let f = sc.frame(0, 0, 0).await;
    assert!(!f
        .workers
        .as_ref()
        .unwrap()
        .iter()
        .any(|w| w.instance_id == 9));
    let mut index = kvgate_core::index::PrefixIndex::new();
    kvgate_core::sync::SyncState::default()
        .apply(&f, &mut index)
        .unwrap();
    assert_eq!(index.overlap(&h.sequence).of(&WorkerKey::new(9, 0)), 0);

    announce(&client, 10, 60_000, true).await;
    eventually("leaving worker removed", || async {
        !has_worker(&sc.state().await, 10)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_file_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("workers.json");
    std::fs::write(&path, serde_json::to_vec(&vec![worker(1)]).unwrap()).unwrap();
    let sc = Sidecar::start(&["--no-nats", "--workers-file", path.to_str().unwrap()]).await;
    sc.ready().await;
    assert!(has_worker(&sc.state().await, 1));
    std::fs::write(
        &path,
        serde_json::to_vec(&vec![worker(2), worker(3)]).unwrap(),
    )
    .unwrap();
    eventually("file reloaded", || async {
        let s = sc.state().await;
        !has_worker(&s, 1) && has_worker(&s, 2) && has_worker(&s, 3)
    })
    .await;
    // A broken file keeps the last good list.
    std::fs::write(&path, b"[{").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(has_worker(&sc.state().await, 2));
}
