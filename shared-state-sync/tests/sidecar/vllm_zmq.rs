//! (5) vLLM-format MessagePack over real ZMQ sockets: a PUB the sidecar subscribes to and
//! a ROUTER replay socket it asks for missed batches (from 0 at connect, from the first
//! missing sequence after a gap; a replay that no longer has them resets the worker).

use super::common::{eventually, Sidecar};
use bytes::Bytes;
use kvgate_core::events::vllm::{
    encode_batch, encode_multipart, BlockStored, CacheGroup, Encoding, ExternalHash, TokenIds,
    VllmBatch, VllmEvent,
};
use kvgate_core::hash::BlockHasher;
use kvgate_core::WorkerKey;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

fn batch(hashes: &[u64], parent: Option<u64>, first_token: u32) -> Vec<u8> {
    let n = hashes.len() as u32 * 4;
    let b = VllmBatch {
        ts: 1.0,
        events: vec![VllmEvent::BlockStored(BlockStored {
            block_hashes: hashes.iter().map(|&h| ExternalHash::Unsigned(h)).collect(),
            parent_block_hash: parent.map(ExternalHash::Unsigned),
            token_ids: TokenIds::Single((first_token..first_token + n).collect()),
            block_size: 4,
            lora_id: None,
            medium: Some("GPU".into()),
            lora_name: None,
            mm_hashes: Vec::new(),
            group: CacheGroup::default(),
        })],
        data_parallel_rank: Some(0),
    };
    encode_batch(&b, Encoding::ArrayLike)
}

fn message(frames: Vec<Vec<u8>>) -> ZmqMessage {
    ZmqMessage::try_from(frames.into_iter().map(Bytes::from).collect::<Vec<_>>()).unwrap()
}

type Buffer = Arc<Mutex<BTreeMap<u64, Vec<u8>>>>;

/// Answers replay requests from `buffer`, like vLLM's replay ROUTER.
async fn serve_replay(mut router: RouterSocket, buffer: Buffer) {
    while let Ok(msg) = router.recv().await {
        let frames = msg.into_vec();
        let (Some(id), Some(start)) = (frames.first(), frames.last()) else {
            continue;
        };
        let start = u64::from_be_bytes(start.as_ref().try_into().unwrap());
        let batches: Vec<(u64, Vec<u8>)> = buffer
            .lock()
            .unwrap()
            .range(start..)
            .map(|(s, p)| (*s, p.clone()))
            .collect();
        for (seq, payload) in batches {
            router
                .send(message(vec![
                    id.to_vec(),
                    vec![],
                    seq.to_be_bytes().to_vec(),
                    payload,
                ]))
                .await
                .unwrap();
        }
        router
            .send(message(vec![id.to_vec(), vec![], vec![0xff; 8], vec![]]))
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_events_over_zmq_with_replay() {
    let mut publisher = PubSocket::new();
    let events = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    let mut router = RouterSocket::new();
    let replay = router.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let buffer: Buffer = Arc::default();
    buffer
        .lock()
        .unwrap()
        .insert(0, batch(&[1000, 1001], None, 0));
    tokio::spawn(serve_replay(router, buffer.clone()));

    let dir = tempfile::tempdir().unwrap();
    let workers = dir.path().join("workers.json");
    let w = serde_json::json!([{"instance_id": 21, "endpoint": "127.0.0.1:8000", "model": "m", "block_size": 4,
        "zmq_events": events, "zmq_replay": replay}]);
    std::fs::write(&workers, w.to_string()).unwrap();
    let sc = Sidecar::start(&["--no-nats", "--workers-file", workers.to_str().unwrap()]).await;
    sc.ready().await;

    // Batch 0 comes from the replay asked for at connect.
    eventually("batch 0 replayed at connect", || async {
        sc.blocks(21).await == 2
    })
    .await;

    // Batch 1 live (re-sent until the subscription has propagated; duplicates are dropped).
    let b1 = batch(&[1002], Some(1001), 8);
    buffer.lock().unwrap().insert(1, b1.clone());
    let live = |seq: u64, payload: Vec<u8>| message(encode_multipart("kv", seq, payload).to_vec());
    for _ in 0..100 {
        publisher.send(live(1, b1.clone())).await.unwrap();
        if sc.blocks(21).await == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sc.blocks(21).await, 3);

    // Batches 2 and 3 are missed live; 4 arrives: the gap is filled by a replay.
    let (b2, b3, b4) = (
        batch(&[1003], Some(1002), 12),
        batch(&[1004], Some(1003), 16),
        batch(&[1005], Some(1004), 20),
    );
    {
        let mut b = buffer.lock().unwrap();
        b.insert(2, b2);
        b.insert(3, b3);
        b.insert(4, b4.clone());
    }
    publisher.send(live(4, b4.clone())).await.unwrap();
    eventually("gap filled from the replay socket", || async {
        sc.blocks(21).await == 6
    })
    .await;
    let tokens: Vec<u32> = (0..24).collect();
    let h = BlockHasher::new(4).hash(&tokens, None, None, usize::MAX);
    assert_eq!(
        sc.filter_index()
            .await
            .overlap(&h.sequence)
            .of(&WorkerKey::new(21, 0)),
        6
    );
    let s = sc.state().await;
    assert_eq!(s["totals"]["gaps"], 0, "{s}");

    // History lost: the replay starts after the gap, the worker is reset.
    {
        let mut b = buffer.lock().unwrap();
        b.clear();
        b.insert(10, batch(&[2000], None, 100));
    }
    publisher
        .send(live(10, batch(&[2000], None, 100)))
        .await
        .unwrap();
    eventually("unrecoverable gap resets the worker", || async {
        let s = sc.state().await;
        s["totals"]["gaps"] == 1 && super::common::blocks_in(&s, 21) == 1
    })
    .await;
    let (_, m) = sc.get("/metrics").await;
    let m = String::from_utf8(m).unwrap();
    assert!(m.contains("kvgate_sync_zmq_replays_total 3"), "{m}");
    assert!(
        m.contains("kvgate_sync_gaps_total{source=\"zmq\"} 1"),
        "{m}"
    );
}
