//! Tests of what the mock puts on NATS: the Dynamo shapes of its messages (checked with
//! serde, independently of the core encoder), round trips through the core decoders, and
//! against a live `nats-server`, a worker's events, load reports and
//! announcements.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;
use crate::{MockArgs, MockWorker};
use kvgate_core::events::dynamo::decode_kv_message;
use kvgate_core::events::metrics::decode_load;
use kvgate_core::events::{KvEventData, StorageTier, StoredBlock};
use kvgate_stack::{free_port, nats_server_path, require, Nats};
use serde::de::{Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{json, Value};

fn to_json(bytes: &[u8]) -> Value {
    rmp_serde::from_slice::<Value>(bytes).unwrap()
}

/// Accepts only a MessagePack bin (not an array of numbers).
struct Payload(Vec<u8>);

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Dynamo's envelope, as its `MsgpackCodec` defines it.
#[derive(Deserialize)]
struct Env {
    publisher_id: u64,
    sequence: u64,
    published_at: u64,
    topic: String,
    payload: Payload,
}

fn stored(parent: Option<u64>, external: u64, tokens_hash: u64) -> KvEvent {
    KvEvent {
        worker: WorkerKey::new(9, 1),
        event_id: 3,
        tier: StorageTier::Device,
        data: KvEventData::Stored {
            parent,
            blocks: vec![StoredBlock {
                external,
                tokens_hash,
            }],
        },
    }
}

#[test]
fn kv_envelopes_have_dynamo_shapes_and_round_trip() {
    let big = u64::MAX - 5;
    let ev = stored(Some(big), 5, big);
    let bytes = encode_envelope(77, 4, 1234, &ev);
    let env: Env = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(
        (
            env.publisher_id,
            env.sequence,
            env.published_at,
            env.topic.as_str()
        ),
        (77, 4, 1234, "kv-events")
    );
    let v = to_json(&env.payload.0);
    assert_eq!(v["worker_id"], 9);
    assert_eq!(v["storage_tier"], "device");
    assert_eq!(v["event"]["event_id"], 3);
    assert_eq!(v["event"]["dp_rank"], 1);
    assert_eq!(v["event"]["data"]["stored"]["parent_hash"], json!(big));
    assert_eq!(v["event"]["data"]["stored"]["blocks"][0]["block_hash"], 5);
    assert_eq!(
        v["event"]["data"]["stored"]["blocks"][0]["tokens_hash"],
        json!(big)
    );
    let back = decode_kv_message(&bytes, 1 << 20).unwrap();
    assert_eq!(back.events, vec![ev.clone()]);
    for data in [
        KvEventData::Cleared,
        KvEventData::Removed { blocks: vec![1, 2] },
    ] {
        let ev = KvEvent { data, ..ev.clone() };
        assert_eq!(
            decode_kv_message(&encode_envelope(1, 0, 0, &ev), 1 << 20)
                .unwrap()
                .events,
            vec![ev]
        );
    }
    let cleared = KvEvent {
        data: KvEventData::Cleared,
        ..ev
    };
    let env: Env = rmp_serde::from_slice(&encode_envelope(1, 0, 0, &cleared)).unwrap();
    assert_eq!(to_json(&env.payload.0)["event"]["data"], json!("cleared"));
    assert_eq!(
        kv_events_subject("dynamo", "backend"),
        "namespace.dynamo.component.backend.kv-events"
    );
}

#[test]
fn load_reports_are_active_load() {
    let l = LoadSnapshot {
        active_decode_blocks: 4,
        active_prefill_tokens: 100,
        kv_used_blocks: 9,
    };
    let report = load_report(WorkerKey::new(5, 1), &l);
    let bytes = encode_load_envelope(1, 2, 3, &report);
    let env: Env = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(env.topic, "kv_metrics");
    let v = to_json(&env.payload.0);
    assert_eq!(
        (v["worker_id"].as_u64(), v["dp_rank"].as_u64()),
        (Some(5), Some(1))
    );
    assert_eq!(v["active_decode_blocks"], 4);
    assert_eq!(v["active_prefill_tokens"], Value::Null);
    assert_eq!(v["kv_used_blocks"], 9);
    assert_eq!(decode_load(&bytes, 1 << 20).unwrap().report, report);
    assert_eq!(kv_metrics_subject("dynamo"), "namespace.dynamo.kv_metrics");
}

/// Starts a nats-server (stopped on drop); a missing binary fails the test (`make setup`
/// installs it).
fn nats_server() -> Nats {
    let bin = require(
        "nats-server (make setup)",
        "KVGATE_NATS_SERVER",
        &nats_server_path(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("kvgate-mock-nats-{}", std::process::id()));
    Nats::start_on(&bin, &dir, free_port()).unwrap_or_else(|e| panic!("{e}"))
}

async fn next_payload(sub: &mut async_nats::Subscriber) -> Bytes {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap()
        .payload
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_publishes_events_load_and_announcements() {
    let server = nats_server();
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = async_nats::connect(server.url()).await {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = client.expect("nats-server did not start");
    let mut kv = client
        .subscribe("namespace.testns.component.backend.kv-events")
        .await
        .unwrap();
    let mut load = client
        .subscribe("namespace.testns.kv_metrics")
        .await
        .unwrap();
    let mut ann = client.subscribe(announce_subject("testns")).await.unwrap();
    client.flush().await.unwrap();
    let args = MockArgs::from_args([
        "--nats-url",
        &server.url(),
        "--namespace",
        "testns",
        "--instance-id",
        "31",
        "--speedup",
        "1000",
        "--tokenizer",
        "word",
        "--lease-ms",
        "300",
        "--num-gpu-blocks",
        "100",
    ])
    .unwrap();
    let w = MockWorker::start(args).await.unwrap();
    let a: WorkerAnnouncement = serde_json::from_slice(&next_payload(&mut ann).await).unwrap();
    assert_eq!(
        (a.worker.instance_id, a.leaving, a.lease_ms),
        (31, false, 300)
    );
    assert_eq!(a.worker.endpoint, w.addr().to_string());
    assert_eq!(a.worker.total_kv_blocks, Some(100));

    let body = json!({"prompt": (0..40).collect::<Vec<u32>>(), "max_tokens": 2}).to_string();
    let r = kvgate_http::Client::new(false, Duration::from_secs(10))
        .unwrap()
        .post(
            &format!("http://{}/v1/completions", w.addr()),
            &[],
            body.into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let msg = decode_kv_message(&next_payload(&mut kv).await, 1 << 20).unwrap();
    assert_eq!(msg.envelope.map(|e| e.sequence), Some(0));
    let ev = &msg.events[0];
    assert_eq!((ev.worker, ev.event_id), (WorkerKey::new(31, 0), 1));
    assert!(matches!(&ev.data, KvEventData::Stored { parent: None, blocks } if blocks.len() == 2));
    let report = decode_load(&next_payload(&mut load).await, 1 << 20)
        .unwrap()
        .report;
    assert_eq!(report.worker, WorkerKey::new(31, 0));

    w.shutdown().await;
    let mut leaving = false;
    for _ in 0..5 {
        let a: WorkerAnnouncement = serde_json::from_slice(&next_payload(&mut ann).await).unwrap();
        if a.leaving {
            leaving = true;
            break;
        }
    }
    assert!(leaving, "a clean shutdown announces leaving");
}
