//! vLLM events → [`KvEvent`]s, the way Dynamo's ZMQ listener converts them: the
//! worker comes from configuration, event ids from a per-stream counter, and
//! `tokens_hash` is recomputed from the token ids (Dynamo's local block hash).

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::{BlockStored, VllmBatch, VllmEvent, VllmSource};
use crate::events::{KvEvent, KvEventData, StorageTier, StoredBlock};
use crate::hash::{block_seed, local_block_hash};
use crate::types::WorkerKey;

/// Converts a batch into KV events for `source`.
///
/// * The dp rank is the batch's, else `source.default_dp_rank`.
/// * Each accepted event takes the next id from `next_event_id` (one counter per
///   worker and dp rank, as Dynamo's publisher keeps; ids do not follow the ZMQ
///   `seq`, which counts batches: detect lost batches on `seq`).
/// * Events of non-main KV-cache groups (hybrid models) and `Ignored` events are
///   dropped without taking an id.
/// * `medium` `GPU`/`DEVICE`/absent is [`StorageTier::Device`], anything else
///   [`StorageTier::Offloaded`]; `AllBlocksCleared` is a device event.
/// * A stored event whose hashes (parent included) repeat becomes an empty removal
///   (Dynamo: a self-referencing store is dropped without clearing the worker).
pub fn to_kv_events(
    batch: &VllmBatch,
    source: &VllmSource,
    next_event_id: &mut u64,
) -> Vec<KvEvent> {
    let worker = WorkerKey::new(
        source.worker_id,
        batch.data_parallel_rank.unwrap_or(source.default_dp_rank),
    );
    let mut out = Vec::with_capacity(batch.events.len());
    for event in &batch.events {
        let (tier, data) = match event {
            VllmEvent::Ignored => continue,
            VllmEvent::BlockStored(s) if !s.group.is_main() => continue,
            VllmEvent::BlockRemoved(rm) if !rm.group.is_main() => continue,
            VllmEvent::BlockStored(s) => (medium_tier(s.medium.as_deref()), stored(s, source)),
            VllmEvent::BlockRemoved(rm) => (
                medium_tier(rm.medium.as_deref()),
                KvEventData::Removed {
                    blocks: rm.block_hashes.iter().map(|h| h.to_u64()).collect(),
                },
            ),
            VllmEvent::AllBlocksCleared => (StorageTier::Device, KvEventData::Cleared),
        };
        let event_id = *next_event_id;
        *next_event_id = event_id.wrapping_add(1);
        out.push(KvEvent {
            worker,
            event_id,
            tier,
            data,
        });
    }
    out
}

fn medium_tier(medium: Option<&str>) -> StorageTier {
    match medium {
        None | Some("GPU") | Some("DEVICE") => StorageTier::Device,
        Some(_) => StorageTier::Offloaded,
    }
}

fn stored(s: &BlockStored, source: &VllmSource) -> KvEventData {
    let parent = s.parent_block_hash.as_ref().map(|h| h.to_u64());
    let externals: Vec<u64> = s.block_hashes.iter().map(|h| h.to_u64()).collect();
    let mut seen: Vec<u64> = parent
        .into_iter()
        .chain(externals.iter().copied())
        .collect();
    seen.sort_unstable();
    if seen.windows(2).any(|w| w.first() == w.get(1)) {
        return KvEventData::Removed { blocks: Vec::new() };
    }
    let bs = source.block_size.unwrap_or(s.block_size);
    let (tokens, eagle) = s.token_ids.flatten();
    let seed = block_seed(s.lora_name.as_deref(), None);
    let mut blocks = Vec::with_capacity(externals.len());
    // Dynamo publishes blocks only while the event's block size is the router's and
    // the tokens last; the first failure ends the list.
    if s.block_size == bs && bs > 0 {
        let bs = bs as usize;
        for (i, &external) in externals.iter().enumerate() {
            let Some(start) = i.checked_mul(bs) else {
                break;
            };
            let Some(end) = start.checked_add(bs + usize::from(eagle)) else {
                break;
            };
            let Some(window) = tokens.get(start..end) else {
                break;
            };
            let mm = s.mm_hashes.get(i).map(Vec::as_slice).unwrap_or_default();
            blocks.push(StoredBlock {
                external,
                tokens_hash: tokens_hash(window, mm, seed),
            });
        }
    }
    KvEventData::Stored { parent, blocks }
}

/// Dynamo's local block hash, extended with the block's multimodal hashes (sorted,
/// little-endian u64 after the tokens) when it has any.
fn tokens_hash(tokens: &[u32], mm_hashes: &[u64], seed: u64) -> u64 {
    if mm_hashes.is_empty() {
        return local_block_hash(tokens, seed);
    }
    let mut sorted = mm_hashes.to_vec();
    sorted.sort_unstable();
    let mut bytes = Vec::with_capacity(tokens.len() * 4 + sorted.len() * 8);
    for t in tokens {
        bytes.extend_from_slice(&t.to_le_bytes());
    }
    for h in sorted {
        bytes.extend_from_slice(&h.to_le_bytes());
    }
    xxh3_64_with_seed(&bytes, seed)
}
