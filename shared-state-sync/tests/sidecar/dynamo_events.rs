//! (1) Dynamo-format KV events on NATS reach the index and the filter's frames;
//! (3) a restarted sidecar rebuilds its index from JetStream, including events published
//! while it was down; (4) an event-id gap resets the worker (counted, marked cold).

use super::common::{eventually, Nats, Sidecar};
use kvgate_core::events::dynamo::{
    encode_envelope, encode_envelope_bytes, encode_router_events, kv_events_endpoint_subject,
    kv_events_subject, KV_EVENTS_TOPIC,
};
use kvgate_core::events::{KvEvent, KvEventData, StorageTier, StoredBlock};
use kvgate_core::hash::{BlockHasher, BlockHashes};
use kvgate_core::sync::Op;
use kvgate_core::WorkerKey;

pub fn hashes() -> BlockHashes {
    let tokens: Vec<u32> = (0..16).collect();
    BlockHasher::new(4).hash(&tokens, None, None, usize::MAX)
}

pub fn stored(worker: u64, id: u64, parent: Option<u64>, blocks: &[(u64, u64)]) -> KvEvent {
    KvEvent {
        worker: WorkerKey::new(worker, 0),
        event_id: id,
        tier: StorageTier::Device,
        data: KvEventData::Stored {
            parent,
            blocks: blocks
                .iter()
                .map(|&(external, tokens_hash)| StoredBlock {
                    external,
                    tokens_hash,
                })
                .collect(),
        },
    }
}

pub async fn publish(client: &async_nats::Client, subject: String, payload: Vec<u8>) {
    client.publish(subject, payload.into()).await.unwrap();
    client.flush().await.unwrap();
}

/// Publishes one event on the 1.x subject of namespace `ns`.
pub async fn publish_event(client: &async_nats::Client, ns: &str, seq: u64, ev: &KvEvent) {
    publish(
        client,
        kv_events_subject(ns, "backend"),
        encode_envelope(42, seq, 0, ev),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamo_events_reach_the_index_and_the_frames() {
    let nats = Nats::start().await;
    let sc = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "ns1",
        "--durable",
        "d1",
    ])
    .await;
    sc.ready().await;
    let client = nats.client().await;
    let h = hashes();
    let l = &h.local;
    // Worker 7: the 1.x component subject, one RouterEvent per message, a chain over two messages.
    publish_event(
        &client,
        "ns1",
        0,
        &stored(7, 0, None, &[(100, l[0]), (101, l[1])]),
    )
    .await;
    publish_event(&client, "ns1", 1, &stored(7, 1, Some(101), &[(102, l[2])])).await;
    // Worker 8: the newer endpoint subject, a batch (array of RouterEvents) in one message.
    let batch = encode_router_events(&[
        stored(8, 0, None, &[(200, l[0])]),
        stored(8, 1, Some(200), &[(201, l[1])]),
    ]);
    publish(
        &client,
        kv_events_endpoint_subject("ns1", "backend", "generate"),
        encode_envelope_bytes(43, 0, 0, KV_EVENTS_TOPIC, &batch),
    )
    .await;
    // Not a KV-event subject of the component: ignored.
    publish(
        &client,
        "namespace.ns1.component.backend.other".into(),
        vec![1, 2, 3],
    )
    .await;

    eventually("both workers' prefixes in the filter's index", || async {
        let o = sc.filter_index().await.overlap(&h.sequence);
        o.of(&WorkerKey::new(7, 0)) == 3 && o.of(&WorkerKey::new(8, 0)) == 2
    })
    .await;

    // A removal arrives as a delta of a long poll.
    let f0 = sc.frame(0, 0, 0).await;
    assert!(f0.snapshot);
    let rm = KvEvent {
        data: KvEventData::Removed { blocks: vec![102] },
        ..stored(7, 2, None, &[])
    };
    publish_event(&client, "ns1", 2, &rm).await;
    let mut since = f0.to_version;
    let removed = WorkerKey::new(7, 0);
    let started = std::time::Instant::now();
    loop {
        assert!(started.elapsed() < super::common::WAIT, "no removal delta");
        let f = sc.frame(f0.epoch, since, 1000).await;
        assert!(!f.snapshot, "a continuing client gets deltas");
        since = f.to_version;
        let hit = f.ops.iter().any(|op| {
            matches!(op, Op::Remove(w, s) if f.keys[*w as usize] == removed && s.0 == h.sequence[2])
        });
        if hit {
            break;
        }
    }
    let state = sc.state().await;
    assert_eq!(state["totals"]["events"], 5, "{state}");
    let (_, metrics) = sc.get("/metrics").await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics
            .contains("kvgate_sync_events_applied_total{source=\"jetstream\",kind=\"stored\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kvgate_sync_frames_served_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rebuilds_the_index_from_jetstream() {
    let nats = Nats::start().await;
    let args = [
        "--nats-url",
        &nats.url(),
        "--namespace",
        "ns3",
        "--durable",
        "d3",
        "--stream-max-age-secs",
        "600",
    ];
    let mut sc = Sidecar::start(&args).await;
    sc.ready().await;
    let client = nats.client().await;
    let h = hashes();
    let l = &h.local;
    publish_event(&client, "ns3", 0, &stored(7, 0, None, &[(100, l[0])])).await;
    eventually("first event applied", || async { sc.blocks(7).await == 1 }).await;
    let epoch_before = sc.state().await["epoch"].clone();
    sc.kill();
    // Published while the sidecar is down: only the stream has them.
    publish_event(&client, "ns3", 1, &stored(7, 1, Some(100), &[(101, l[1])])).await;
    publish_event(
        &client,
        "ns3",
        2,
        &stored(7, 2, Some(101), &[(102, l[2]), (103, l[3])]),
    )
    .await;

    let sc = Sidecar::start(&args).await;
    sc.ready().await;
    assert_ne!(
        sc.state().await["epoch"],
        epoch_before,
        "a restart is a new epoch"
    );
    eventually("the whole chain replayed", || async {
        sc.filter_index()
            .await
            .overlap(&h.sequence)
            .of(&WorkerKey::new(7, 0))
            == 4
    })
    .await;
    let state = sc.state().await;
    assert_eq!(state["totals"]["events"], 3, "{state}");
    assert_eq!(state["totals"]["gaps"], 0, "{state}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_resets_the_worker_and_live_events_rebuild_it() {
    let nats = Nats::start().await;
    let sc = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "ns4",
        "--durable",
        "d4",
    ])
    .await;
    sc.ready().await;
    let client = nats.client().await;
    let h = hashes();
    let l = &h.local;
    publish_event(&client, "ns4", 0, &stored(11, 0, None, &[(100, l[0])])).await;
    publish_event(&client, "ns4", 1, &stored(11, 1, Some(100), &[(101, l[1])])).await;
    publish_event(&client, "ns4", 2, &stored(12, 0, None, &[(100, l[0])])).await;
    eventually("two blocks", || async { sc.blocks(11).await == 2 }).await;
    // Ids 2..4 are lost.
    publish_event(&client, "ns4", 3, &stored(11, 5, None, &[(300, l[0])])).await;
    eventually("the gap counted and the worker reset", || async {
        let s = sc.state().await;
        s["totals"]["gaps"] == 1 && super::common::blocks_in(&s, 11) == 0
    })
    .await;
    let s = sc.state().await;
    assert_eq!(s["cold"][0]["worker_id"], 11, "{s}");
    assert_eq!(s["totals"]["resyncs"], 1);
    assert_eq!(
        super::common::blocks_in(&s, 12),
        1,
        "other workers are untouched"
    );
    let (_, m) = sc.get("/metrics").await;
    let m = String::from_utf8(m).unwrap();
    assert!(
        m.contains("kvgate_sync_gaps_total{source=\"jetstream\"} 1"),
        "{m}"
    );
    assert!(m.contains("kvgate_sync_cold_workers 1"), "{m}");
    // The filter is told to drop the worker.
    assert_eq!(
        sc.filter_index()
            .await
            .overlap(&h.sequence)
            .of(&WorkerKey::new(11, 0)),
        0
    );
    // Live events rebuild it; a Cleared ends the cold mark.
    publish_event(&client, "ns4", 4, &stored(11, 6, None, &[(400, l[0])])).await;
    eventually("rebuilt", || async { sc.blocks(11).await == 1 }).await;
    let cleared = KvEvent {
        data: KvEventData::Cleared,
        ..stored(11, 7, None, &[])
    };
    publish_event(&client, "ns4", 5, &cleared).await;
    eventually("cold mark cleared", || async {
        let s = sc.state().await;
        s["cold"].as_array().is_some_and(|c| c.is_empty()) && super::common::blocks_in(&s, 11) == 0
    })
    .await;
}
