//! KV events: the one internal event type that every wire format decodes into.
//!
//! Workers tell the router which KV blocks they hold. Two wire formats exist in the
//! field and both map to [`KvEvent`]:
//! * [`dynamo`]: Dynamo's event plane on NATS (MessagePack envelope around a
//!   `RouterEvent`, plus the older JSON form);
//! * [`vllm`]: vLLM's native ZMQ publisher (`--kv-events-config`, MessagePack
//!   `KVEventBatch`, positional-array and tagged-map encodings).
//!
//! Decoding never panics: malformed input is an [`EventError`].

pub mod dynamo;
pub mod metrics;
pub mod query;
pub mod replica;
pub mod vllm;

use crate::types::WorkerKey;
use serde::{Deserialize, Serialize};

/// One block the worker stored: its engine-side id and the hash of its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StoredBlock {
    /// The engine's own ("external") block hash: used for parent links and removal.
    pub external: u64,
    /// The local block hash of the block's tokens ([`crate::hash::local_block_hash`]):
    /// used for matching against requests.
    pub tokens_hash: u64,
}

/// Where a block lives. Only [`StorageTier::Device`] blocks count for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum StorageTier {
    /// GPU memory (vLLM medium `GPU` or unspecified; Dynamo tier `device`).
    #[default]
    Device,
    /// Any offload tier (host memory, disk, remote).
    Offloaded,
}

/// What happened to the worker's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvEventData {
    /// Blocks were stored, continuing the chain that ends at `parent` (`None` = root).
    Stored {
        /// External hash of the block these continue, if any.
        parent: Option<u64>,
        /// The stored blocks, in prefix order.
        blocks: Vec<StoredBlock>,
    },
    /// Blocks (by external hash) were evicted.
    Removed {
        /// External hashes of the removed blocks.
        blocks: Vec<u64>,
    },
    /// The worker dropped its whole cache (every dp rank).
    Cleared,
}

/// One KV event from one worker (and dp rank).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEvent {
    /// Who published it.
    pub worker: WorkerKey,
    /// Per-publisher event id; starts at 1 and increases by one (gaps mean loss).
    pub event_id: u64,
    /// Storage tier of the blocks.
    pub tier: StorageTier,
    /// The change.
    pub data: KvEventData,
}

/// Why an event could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The bytes are not valid MessagePack / JSON of the expected shape.
    #[error("malformed {format} event: {detail}")]
    Malformed {
        /// Which wire format was being decoded.
        format: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A known structure with an unknown variant tag.
    #[error("unknown {format} event kind `{kind}`")]
    UnknownKind {
        /// Which wire format was being decoded.
        format: &'static str,
        /// The tag found.
        kind: String,
    },
    /// The payload exceeds the configured size limit.
    #[error("event payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Payload size in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
}
