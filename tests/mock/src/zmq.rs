//! vLLM-native KV events over ZMQ (`--zmq-pub tcp://HOST:PORT`), as vLLM's
//! `--kv-events-config` publisher sends them: one PUB socket per data-parallel rank (on
//! PORT + rank, like vLLM's per-rank engines), multipart `[topic, seq (u64 BE), payload]`,
//! payload a positional MessagePack `KVEventBatch` written by
//! `kvgate_core::events::vllm::encode_batch` with `BlockStored` (external block hashes,
//! parent, token ids, block size, medium `GPU`), `BlockRemoved` and `AllBlocksCleared`.
//!
//! Each KV event is one batch; its `seq` is `event_id - first_event_id`, so injected
//! faults show up as sequence gaps / repeats as they would after lost batches. Dynamo
//! recomputes `tokens_hash` from the token ids with the default seed: requests hashed
//! with a cache salt (`x-tenant-id`) do not match through this path, as with real vLLM.
//! The replay socket is not implemented.

use super::events::EventSink;
use bytes::Bytes;
use kvgate_core::events::vllm::{
    encode_batch, encode_multipart, rank_endpoint, BlockRemoved, BlockStored, CacheGroup, Encoding,
    ExternalHash, TokenIds, VllmBatch, VllmEvent,
};
use kvgate_core::events::{KvEvent, KvEventData};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeromq::{Socket, SocketSend, ZmqMessage};

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum ZmqError {
    /// The endpoint is not `tcp://HOST:PORT`.
    #[error("bad ZMQ endpoint `{0}` (want tcp://HOST:PORT)")]
    BadEndpoint(String),
    /// Binding failed.
    #[error("cannot bind ZMQ PUB socket on {endpoint}: {source}")]
    Bind {
        /// Endpoint.
        endpoint: String,
        /// The error.
        source: zeromq::ZmqError,
    },
}

fn any_port(base: &str) -> bool {
    base.ends_with(":0")
}

/// One bound PUB socket per rank: rank r on the base port + r. With base port 0, rank 0
/// takes any free port and the others the ports after it.
async fn bind_ranks(
    base: &str,
    dp_size: u32,
) -> Result<(Vec<zeromq::PubSocket>, Vec<String>), ZmqError> {
    let bad = || ZmqError::BadEndpoint(base.to_string());
    let mut socks = Vec::new();
    let mut bound: Vec<String> = Vec::new();
    for r in 0..dp_size {
        let endpoint = match bound.first() {
            Some(first) if any_port(base) => rank_endpoint(first, r),
            _ => rank_endpoint(base, r),
        }
        .ok_or_else(bad)?;
        let mut sock = zeromq::PubSocket::new();
        let ep = sock
            .bind(&endpoint)
            .await
            .map_err(|source| ZmqError::Bind { endpoint, source })?;
        bound.push(ep.to_string());
        socks.push(sock);
    }
    Ok((socks, bound))
}

/// The vLLM batch of one KV event (`tokens`: the stored blocks' token ids).
pub fn to_batch(event: &KvEvent, tokens: &[u32], block_size: u32, ts: f64) -> VllmBatch {
    let gpu = Some("GPU".to_string());
    let ev = match &event.data {
        KvEventData::Stored { parent, blocks } => VllmEvent::BlockStored(BlockStored {
            block_hashes: blocks
                .iter()
                .map(|b| ExternalHash::Unsigned(b.external))
                .collect(),
            parent_block_hash: parent.map(ExternalHash::Unsigned),
            token_ids: TokenIds::Single(tokens.to_vec()),
            block_size,
            lora_id: None,
            medium: gpu,
            lora_name: None,
            mm_hashes: Vec::new(),
            group: CacheGroup::default(),
        }),
        KvEventData::Removed { blocks } => VllmEvent::BlockRemoved(BlockRemoved {
            block_hashes: blocks.iter().map(|&h| ExternalHash::Unsigned(h)).collect(),
            medium: gpu,
            group: CacheGroup::default(),
        }),
        KvEventData::Cleared => VllmEvent::AllBlocksCleared,
    };
    VllmBatch {
        ts,
        events: vec![ev],
        data_parallel_rank: Some(event.worker.dp_rank),
    }
}

/// Publishes KV events on per-rank ZMQ PUB sockets.
pub struct ZmqSink {
    ranks: Vec<mpsc::UnboundedSender<[Vec<u8>; 3]>>,
    first_event_id: u64,
    block_size: u32,
    topic: String,
}

impl ZmqSink {
    /// Binds one PUB socket per rank on `base` (port + rank, as vLLM's per-rank engines
    /// do; with port 0, on consecutive free ports so the announced first endpoint still
    /// names every rank). Returns the sink, the sending tasks and the bound endpoints
    /// (rank order).
    pub async fn start(
        base: &str,
        dp_size: u32,
        first_event_id: u64,
        block_size: u32,
        topic: &str,
    ) -> Result<(Self, Vec<JoinHandle<()>>, Vec<String>), ZmqError> {
        let dp_size = dp_size.max(1);
        let mut attempt = 0;
        let (socks, bound) = loop {
            attempt += 1;
            match bind_ranks(base, dp_size).await {
                Err(ZmqError::Bind { .. }) if attempt < 20 && any_port(base) => continue,
                other => break other?,
            }
        };
        let mut ranks = Vec::new();
        let mut tasks = Vec::new();
        for mut sock in socks {
            let (tx, mut rx) = mpsc::unbounded_channel::<[Vec<u8>; 3]>();
            tasks.push(tokio::spawn(async move {
                while let Some(frames) = rx.recv().await {
                    let Ok(msg) = ZmqMessage::try_from(
                        frames.into_iter().map(Bytes::from).collect::<Vec<_>>(),
                    ) else {
                        continue;
                    };
                    if let Err(e) = sock.send(msg).await {
                        tracing::warn!("ZMQ publish failed: {e}");
                    }
                }
            }));
            ranks.push(tx);
        }
        let sink = Self {
            ranks,
            first_event_id,
            block_size,
            topic: topic.to_string(),
        };
        Ok((sink, tasks, bound))
    }
}

impl EventSink for ZmqSink {
    fn publish_kv(&self, event: &KvEvent, tokens: &[u32]) {
        let Some(tx) = self.ranks.get(event.worker.dp_rank as usize) else {
            return;
        };
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let payload = encode_batch(
            &to_batch(event, tokens, self.block_size, ts),
            Encoding::ArrayLike,
        );
        let seq = event.event_id.saturating_sub(self.first_event_id);
        let _ = tx.send(encode_multipart(&self.topic, seq, payload));
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use kvgate_core::events::vllm::{decode_multipart, to_kv_events, VllmSource};
    use kvgate_core::events::{StorageTier, StoredBlock};
    use kvgate_core::hash::BlockHasher;
    use kvgate_core::WorkerKey;
    use std::time::Duration;
    use zeromq::SocketRecv;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stored_events_reach_a_subscriber_and_convert_back() {
        let tokens: Vec<u32> = (0..32).collect();
        let h = BlockHasher::new(16).hash(&tokens, None, None, usize::MAX);
        let event = KvEvent {
            worker: WorkerKey::new(5, 0),
            event_id: 1,
            tier: StorageTier::Device,
            data: KvEventData::Stored {
                parent: None,
                blocks: h
                    .sequence
                    .iter()
                    .zip(&h.local)
                    .map(|(&external, &tokens_hash)| StoredBlock {
                        external,
                        tokens_hash,
                    })
                    .collect(),
            },
        };
        let (sink, _tasks, bound) = ZmqSink::start("tcp://127.0.0.1:0", 1, 1, 16, "")
            .await
            .unwrap();
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&bound[0]).await.unwrap();
        sub.subscribe("").await.unwrap();
        // PUB drops messages until the subscription has arrived: publish until one lands.
        let msg = loop {
            sink.publish_kv(&event, &tokens);
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), sub.recv()).await {
                break m;
            }
        };
        let frames: Vec<&[u8]> = msg.iter().map(|b| b.as_ref()).collect();
        let decoded = decode_multipart(&frames, 1 << 20).unwrap();
        assert_eq!(decoded.seq, 0);
        assert_eq!(decoded.batch.data_parallel_rank, Some(0));
        let source = VllmSource {
            worker_id: 5,
            block_size: Some(16),
            default_dp_rank: 0,
        };
        let mut next = 1;
        assert_eq!(
            to_kv_events(&decoded.batch, &source, &mut next),
            vec![event]
        );
    }
}
