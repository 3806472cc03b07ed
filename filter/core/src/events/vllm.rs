//! vLLM's native KV-event stream (`--kv-events-config`, ZMQ PUB): decoding the
//! MessagePack `KVEventBatch` into [`VllmBatch`], in every encoding seen in the field.
//!
//! ```text
//! ZMQ multipart   [topic, seq: u64 big-endian (per publisher, from 0), payload]
//! payload         [ts: f64, [event, ...], data_parallel_rank: int|nil]   (array_like; rank may be absent)
//!              or {ts, events, data_parallel_rank}                     (map batch)
//! event           ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
//!                  lora_id, medium, lora_name, extra_keys?, tail...]     (msgspec array_like + tag)
//!              or {"type": "BlockStored", "block_hashes": ..., ...}      (msgspec tag, map)
//!                 ["BlockRemoved", block_hashes, medium, tail...] | ["AllBlocksCleared"]
//! block hash      int (u64, or i64 from older vLLM, reinterpreted) | bytes (last 8 bytes, big-endian)
//! token_ids       [u32] | [[u32, u32]] (bigram pairs: Eagle speculative decoding)
//! tail            group_idx: int, kv_cache_spec_kind: str, sliding window: int, block_mm_infos: list
//! ```
//!
//! Conversion to [`KvEvent`]s (Dynamo computes `tokens_hash` itself, and so do we)
//! lives in `convert`, the encoders (for mock engines and tests) in `encode`, the
//! replay-socket frames in `replay`.

mod convert;
mod encode;
mod replay;

pub use convert::to_kv_events;
pub use encode::{encode_batch, encode_multipart};
pub use replay::{
    decode_replay_reply, decode_replay_request, encode_replay_end, encode_replay_reply,
    replay_request, ReplayReply, REPLAY_END_SEQ,
};

use super::dynamo::wire::{check_size, Head, Reader, WireError};
use super::EventError;
use crate::types::{DpRank, WorkerId};

/// The endpoint vLLM's engine of local data-parallel rank `offset` publishes on (or serves
/// replay on) when configured with `base`: the base port plus the offset, as vLLM's
/// per-rank engines do; port 0 (any port) stays 0. `None` unless `base` is
/// `tcp://HOST:PORT` and the port stays a port.
pub fn rank_endpoint(base: &str, offset: u32) -> Option<String> {
    let (host, port) = base.strip_prefix("tcp://")?.rsplit_once(':')?;
    let port: u32 = port.parse().ok()?;
    let port = if port == 0 {
        0
    } else {
        port.checked_add(offset)?
    };
    (!host.is_empty() && port <= u32::from(u16::MAX)).then(|| format!("tcp://{host}:{port}"))
}

/// Format name used in errors.
pub const FORMAT: &str = "vLLM KVEventBatch";

/// A block hash as the engine sent it (kept as sent so it can be re-encoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExternalHash {
    /// An unsigned integer (vLLM's default: the low 64 bits of the digest).
    Unsigned(u64),
    /// A signed integer (older vLLM), reinterpreted bit for bit.
    Signed(i64),
    /// The raw digest (`VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=0`).
    Bytes(Vec<u8>),
}

impl ExternalHash {
    /// The 64-bit id Dynamo uses: integers bit-cast, bytes = their last 8 bytes read
    /// big-endian (shorter digests left-padded with zeros), which is what vLLM's own
    /// integer form is.
    pub fn to_u64(&self) -> u64 {
        match self {
            Self::Unsigned(v) => *v,
            Self::Signed(v) => *v as u64,
            Self::Bytes(b) => {
                let tail = b.get(b.len().saturating_sub(8)..).unwrap_or_default();
                tail.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
            }
        }
    }
}

/// The tokens of a stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenIds {
    /// One id per token.
    Single(Vec<u32>),
    /// Eagle bigrams `(t[i], t[i+1])`; block `i` then hashes `block_size + 1` tokens.
    Bigram(Vec<[u32; 2]>),
}

impl TokenIds {
    /// The token sequence (bigrams flattened: every first element plus the last
    /// second element) and whether Eagle windows apply.
    pub fn flatten(&self) -> (Vec<u32>, bool) {
        match self {
            Self::Single(t) => (t.clone(), false),
            Self::Bigram(pairs) => {
                let mut out: Vec<u32> = pairs.iter().map(|p| p[0]).collect();
                if let Some(last) = pairs.last() {
                    out.push(last[1]);
                }
                (out, true)
            }
        }
    }
}

/// KV-cache group metadata of hybrid models.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CacheGroup {
    /// The KV-cache group (0 is the main one).
    pub group_idx: Option<u32>,
    /// The group's attention kind (`full_attention`, `sliding_window`, `mamba`, ...).
    pub kv_cache_spec_kind: Option<String>,
    /// The sliding window of a windowed group.
    pub sliding_window: Option<u32>,
}

impl CacheGroup {
    /// Whether the event belongs to the main attention group, the only one Dynamo
    /// indexes: a known kind must be full, MLA or sink-full attention; without a kind,
    /// the group index (if any) must be 0.
    pub fn is_main(&self) -> bool {
        match self.kv_cache_spec_kind.as_deref() {
            Some(kind) => matches!(
                kind,
                "full_attention" | "mla_attention" | "sink_full_attention"
            ),
            None => self.group_idx.is_none_or(|g| g == 0),
        }
    }
}

/// `BlockStored`: the engine cached full blocks.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockStored {
    /// The engine's ids of the new blocks, in prefix order.
    pub block_hashes: Vec<ExternalHash>,
    /// The block these continue (`None` = first block of a sequence).
    pub parent_block_hash: Option<ExternalHash>,
    /// The tokens of the blocks, concatenated.
    pub token_ids: TokenIds,
    /// Tokens per block.
    pub block_size: u32,
    /// Deprecated LoRA id (read, re-encoded, not used for hashing).
    pub lora_id: Option<i64>,
    /// Storage medium (`GPU`, `CPU`, ...; `None` = GPU).
    pub medium: Option<String>,
    /// LoRA adapter name: seeds the block hash.
    pub lora_name: Option<String>,
    /// Multimodal hashes per block (from `extra_keys` or `block_mm_infos`); they enter
    /// `tokens_hash`. Decoded only: the encoders do not write them.
    pub mm_hashes: Vec<Vec<u64>>,
    /// Hybrid-model group metadata.
    pub group: CacheGroup,
}

/// `BlockRemoved`: the engine evicted blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockRemoved {
    /// The evicted blocks.
    pub block_hashes: Vec<ExternalHash>,
    /// Storage medium (`None` = GPU).
    pub medium: Option<String>,
    /// Hybrid-model group metadata.
    pub group: CacheGroup,
}

/// One event of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum VllmEvent {
    /// Blocks stored.
    BlockStored(BlockStored),
    /// Blocks removed.
    BlockRemoved(BlockRemoved),
    /// The whole cache was cleared.
    AllBlocksCleared,
    /// An event the producer marked as ignorable.
    Ignored,
}

/// One `KVEventBatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct VllmBatch {
    /// Engine timestamp (seconds).
    pub ts: f64,
    /// The events in order.
    pub events: Vec<VllmEvent>,
    /// The publisher's data-parallel rank (always set by current vLLM publishers).
    pub data_parallel_rank: Option<DpRank>,
}

/// How to encode a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// vLLM's default: positional batch, positional events tagged by their first element.
    ArrayLike,
    /// Positional batch, events as maps tagged by `"type"` (SGLang, TensorRT-LLM, the
    /// custom-engine example of Dynamo's docs).
    TaggedMap,
    /// Batch and events both as maps.
    Map,
}

/// Where a stream comes from: worker identity is configuration, not wire data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VllmSource {
    /// The worker instance id the events are attributed to.
    pub worker_id: WorkerId,
    /// The router's block size; `None` = trust each event's `block_size`. When set, a
    /// stored event of another block size publishes no blocks (as in Dynamo).
    pub block_size: Option<u32>,
    /// Data-parallel rank for batches that carry none.
    pub default_dp_rank: DpRank,
}

/// One decoded ZMQ message.
#[derive(Debug, Clone, PartialEq)]
pub struct VllmMessage {
    /// The topic frame (lossily decoded as UTF-8).
    pub topic: String,
    /// The publisher's batch sequence number (a gap means lost batches: replay).
    pub seq: u64,
    /// The batch.
    pub batch: VllmBatch,
}

fn at<T>(r: Result<T, WireError>, field: &str) -> Result<T, EventError> {
    r.map_err(|e| EventError::Malformed {
        format: FORMAT,
        detail: format!("{field}: {}", e.0),
    })
}

fn bad(detail: impl Into<String>) -> EventError {
    EventError::Malformed {
        format: FORMAT,
        detail: detail.into(),
    }
}

/// Parses the 8-byte big-endian sequence frame.
pub fn parse_seq(frame: &[u8]) -> Result<u64, EventError> {
    let bytes: [u8; 8] = frame.try_into().map_err(|_| {
        bad(format!(
            "sequence frame of {} bytes, expected 8",
            frame.len()
        ))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Decodes a three-frame ZMQ message `[topic, seq, payload]`.
pub fn decode_multipart(frames: &[&[u8]], max_payload: usize) -> Result<VllmMessage, EventError> {
    let [topic, seq, payload] = frames else {
        return Err(bad(format!("{} frames, expected 3", frames.len())));
    };
    Ok(VllmMessage {
        topic: String::from_utf8_lossy(topic).into_owned(),
        seq: parse_seq(seq)?,
        batch: decode_batch(payload, max_payload)?,
    })
}

/// Decodes one `KVEventBatch` payload (any encoding; see the module docs).
pub fn decode_batch(payload: &[u8], max_payload: usize) -> Result<VllmBatch, EventError> {
    check_size(payload.len(), max_payload)?;
    let mut r = Reader::new(payload);
    let batch = match at(r.peek(), "batch")? {
        Head::Array(_) => {
            let n = at(r.array_len(), "batch")?;
            if n < 2 {
                return Err(bad(format!("batch of {n} elements")));
            }
            let ts = at(r.f64(), "ts")?;
            let events = read_events(&mut r)?;
            let data_parallel_rank = if n >= 3 { read_rank(&mut r)? } else { None };
            for _ in 3..n {
                at(r.skip(), "batch")?;
            }
            VllmBatch {
                ts,
                events,
                data_parallel_rank,
            }
        }
        Head::Map(_) => {
            let (mut ts, mut events, mut rank) = (0.0, None, None);
            for _ in 0..at(r.map_len(), "batch")? {
                match at(r.str(), "batch key")? {
                    "ts" => ts = at(r.f64(), "ts")?,
                    "events" => events = Some(read_events(&mut r)?),
                    "data_parallel_rank" | "dp_rank" | "attn_dp_rank" => rank = read_rank(&mut r)?,
                    _ => at(r.skip(), "batch")?,
                }
            }
            VllmBatch {
                ts,
                events: events.ok_or_else(|| bad("missing `events`"))?,
                data_parallel_rank: rank,
            }
        }
        other => {
            return Err(bad(format!(
                "batch is {other:?}, expected an array or a map"
            )))
        }
    };
    at(r.finish(), "batch")?;
    Ok(batch)
}

fn read_rank(r: &mut Reader<'_>) -> Result<Option<DpRank>, EventError> {
    match at(r.opt(|r| r.i64()), "data_parallel_rank")? {
        None => Ok(None),
        Some(v) => DpRank::try_from(v)
            .map(Some)
            .map_err(|_| bad(format!("data_parallel_rank {v}"))),
    }
}

fn read_events(r: &mut Reader<'_>) -> Result<Vec<VllmEvent>, EventError> {
    let n = at(r.array_len(), "events")?;
    let mut out = Vec::with_capacity(r.cap(n));
    for _ in 0..n {
        out.push(read_event(r)?);
    }
    Ok(out)
}

/// The fields of one event, however it was encoded.
#[derive(Default)]
struct Fields {
    hashes: Option<Vec<ExternalHash>>,
    parent: Option<ExternalHash>,
    tokens: Option<TokenIds>,
    block_size: Option<u32>,
    lora_id: Option<i64>,
    medium: Option<String>,
    lora_name: Option<String>,
    extra_key_mm: Vec<Vec<u64>>,
    block_mm: Option<Vec<Vec<u64>>>,
    group: CacheGroup,
}

fn read_event(r: &mut Reader<'_>) -> Result<VllmEvent, EventError> {
    let mut f = Fields::default();
    let tag = match at(r.peek(), "event")? {
        Head::Array(_) => {
            let n = at(r.array_len(), "event")?;
            let Some(rest) = n.checked_sub(1) else {
                return Err(bad("empty event array"));
            };
            let tag = at(r.str(), "event tag")?.to_owned();
            read_positional(r, &tag, rest, &mut f)?;
            tag
        }
        Head::Map(_) => read_map(r, &mut f)?,
        other => {
            return Err(bad(format!(
                "event is {other:?}, expected an array or a map"
            )))
        }
    };
    Ok(match tag.as_str() {
        "BlockStored" => VllmEvent::BlockStored(BlockStored {
            block_hashes: need(f.hashes, &tag, "block_hashes")?,
            parent_block_hash: f.parent,
            token_ids: need(f.tokens, &tag, "token_ids")?,
            block_size: need(f.block_size, &tag, "block_size")?,
            lora_id: f.lora_id,
            medium: f.medium,
            lora_name: f.lora_name,
            mm_hashes: f.block_mm.unwrap_or(f.extra_key_mm),
            group: f.group,
        }),
        "BlockRemoved" => VllmEvent::BlockRemoved(BlockRemoved {
            block_hashes: need(f.hashes, &tag, "block_hashes")?,
            medium: f.medium,
            group: f.group,
        }),
        "AllBlocksCleared" => VllmEvent::AllBlocksCleared,
        "Ignored" => VllmEvent::Ignored,
        _ => {
            return Err(EventError::UnknownKind {
                format: FORMAT,
                kind: tag,
            })
        }
    })
}

fn need<T>(value: Option<T>, tag: &str, name: &str) -> Result<T, EventError> {
    value.ok_or_else(|| bad(format!("{tag}: missing `{name}`")))
}

fn read_positional(
    r: &mut Reader<'_>,
    tag: &str,
    n: usize,
    f: &mut Fields,
) -> Result<(), EventError> {
    let mut left = n;
    let mut next = || {
        let has = left > 0;
        left = left.saturating_sub(1);
        has
    };
    match tag {
        "BlockStored" => {
            if next() {
                f.hashes = Some(read_hashes(r)?);
            }
            if next() {
                f.parent = at(r.opt(read_hash), "parent_block_hash")?;
            }
            if next() {
                f.tokens = Some(read_tokens(r)?);
            }
            if next() {
                f.block_size = Some(at(r.u32(), "block_size")?);
            }
            if next() {
                f.lora_id = at(r.opt(|r| r.i64()), "lora_id")?;
            }
            if next() {
                f.medium = at(r.opt(|r| r.str()), "medium")?.map(str::to_owned);
            }
            if next() {
                f.lora_name = at(r.opt(|r| r.str()), "lora_name")?.map(str::to_owned);
            }
            if next() {
                f.extra_key_mm = read_extra_keys(r)?;
            }
        }
        "BlockRemoved" => {
            if next() {
                f.hashes = Some(read_hashes(r)?);
            }
            if next() {
                f.medium = at(r.opt(|r| r.str()), "medium")?.map(str::to_owned);
            }
        }
        _ => {}
    }
    // The metadata tail, told apart by type: the first integer is group_idx, the
    // second the sliding window; a string is the cache-spec kind; a list is
    // block_mm_infos (Dynamo's own producers). Unknown tags: everything is skipped.
    let known = matches!(tag, "BlockStored" | "BlockRemoved");
    let mut ints = 0;
    while next() {
        match at(r.peek(), "event tail")? {
            Head::UInt(_) | Head::NegInt(_) if known => {
                let v = at(r.u32(), "group_idx")?;
                if ints == 0 {
                    f.group.group_idx = Some(v);
                } else if ints == 1 {
                    f.group.sliding_window = Some(v);
                }
                ints += 1;
            }
            Head::Str(_) if known => {
                f.group.kv_cache_spec_kind = Some(at(r.str(), "kv_cache_spec_kind")?.to_owned());
            }
            Head::Array(_) if tag == "BlockStored" => f.block_mm = Some(read_block_mm(r)?),
            _ => at(r.skip(), "event tail")?,
        }
    }
    Ok(())
}

fn read_map(r: &mut Reader<'_>, f: &mut Fields) -> Result<String, EventError> {
    let mut tag = None;
    for _ in 0..at(r.map_len(), "event")? {
        match at(r.str(), "event key")? {
            "type" => tag = Some(at(r.str(), "type")?.to_owned()),
            "block_hashes" => f.hashes = Some(read_hashes(r)?),
            "parent_block_hash" => f.parent = at(r.opt(read_hash), "parent_block_hash")?,
            "token_ids" => f.tokens = Some(read_tokens(r)?),
            "block_size" => f.block_size = Some(at(r.u32(), "block_size")?),
            "lora_id" => f.lora_id = at(r.opt(|r| r.i64()), "lora_id")?,
            "medium" => f.medium = at(r.opt(|r| r.str()), "medium")?.map(str::to_owned),
            "lora_name" => f.lora_name = at(r.opt(|r| r.str()), "lora_name")?.map(str::to_owned),
            "extra_keys" => f.extra_key_mm = read_extra_keys(r)?,
            "block_mm_infos" => {
                if !at(r.nil(), "block_mm_infos")? {
                    f.block_mm = Some(read_block_mm(r)?);
                }
            }
            "group_idx" => f.group.group_idx = at(r.opt(|r| r.u32()), "group_idx")?,
            "kv_cache_spec_kind" => {
                f.group.kv_cache_spec_kind =
                    at(r.opt(|r| r.str()), "kv_cache_spec_kind")?.map(str::to_owned)
            }
            "kv_cache_spec_sliding_window" => {
                f.group.sliding_window = at(r.opt(|r| r.u32()), "kv_cache_spec_sliding_window")?
            }
            _ => at(r.skip(), "event")?,
        }
    }
    tag.ok_or_else(|| bad("map event without `type`"))
}

fn read_hash(r: &mut Reader<'_>) -> Result<ExternalHash, WireError> {
    match r.peek()? {
        Head::UInt(_) => r.u64().map(ExternalHash::Unsigned),
        Head::NegInt(_) => r.i64().map(ExternalHash::Signed),
        Head::Bin(_) => r.bin().map(|b| ExternalHash::Bytes(b.to_vec())),
        other => Err(WireError(format!("block hash is {other:?}"))),
    }
}

fn read_hashes(r: &mut Reader<'_>) -> Result<Vec<ExternalHash>, EventError> {
    let n = at(r.array_len(), "block_hashes")?;
    let mut out = Vec::with_capacity(r.cap(n));
    for _ in 0..n {
        out.push(at(read_hash(r), "block_hashes")?);
    }
    Ok(out)
}

fn read_tokens(r: &mut Reader<'_>) -> Result<TokenIds, EventError> {
    let n = at(r.array_len(), "token_ids")?;
    if n == 0 {
        return Ok(TokenIds::Single(Vec::new()));
    }
    if let Head::Array(_) = at(r.peek(), "token_ids")? {
        let mut pairs = Vec::with_capacity(r.cap(n));
        for _ in 0..n {
            if at(r.array_len(), "token_ids pair")? != 2 {
                return Err(bad("token_ids: a bigram that is not a pair"));
            }
            pairs.push([at(r.u32(), "token_ids")?, at(r.u32(), "token_ids")?]);
        }
        return Ok(TokenIds::Bigram(pairs));
    }
    let mut tokens = Vec::with_capacity(r.cap(n));
    for _ in 0..n {
        tokens.push(at(r.u32(), "token_ids")?);
    }
    Ok(TokenIds::Single(tokens))
}

/// vLLM's canonical multimodal identifier (a 64-hex-digit digest) → Dynamo's mm hash
/// (its first 16 hex digits); other extra keys (LoRA, salt, ...) are not multimodal.
fn mm_hash_of(key: &str) -> Option<u64> {
    if key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return key.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok());
    }
    None
}

fn read_extra_keys(r: &mut Reader<'_>) -> Result<Vec<Vec<u64>>, EventError> {
    if at(r.nil(), "extra_keys")? {
        return Ok(Vec::new());
    }
    let n = at(r.array_len(), "extra_keys")?;
    let mut out = Vec::with_capacity(r.cap(n));
    for _ in 0..n {
        let mut block = Vec::new();
        if let Head::Array(_) = at(r.peek(), "extra_keys")? {
            for _ in 0..at(r.array_len(), "extra_keys")? {
                match at(r.peek(), "extra_keys")? {
                    Head::Str(_) => block.extend(mm_hash_of(at(r.str(), "extra_keys")?)),
                    // `[identifier, start_offset]` (vLLM 0.19+).
                    Head::Array(m) if m >= 1 => {
                        let m = at(r.array_len(), "extra_keys")?;
                        if let Head::Str(_) = at(r.peek(), "extra_keys")? {
                            block.extend(mm_hash_of(at(r.str(), "extra_keys")?));
                        } else {
                            at(r.skip(), "extra_keys")?;
                        }
                        for _ in 1..m {
                            at(r.skip(), "extra_keys")?;
                        }
                    }
                    _ => at(r.skip(), "extra_keys")?,
                }
            }
        } else {
            at(r.skip(), "extra_keys")?;
        }
        out.push(block);
    }
    Ok(out)
}

fn read_block_mm(r: &mut Reader<'_>) -> Result<Vec<Vec<u64>>, EventError> {
    let n = at(r.array_len(), "block_mm_infos")?;
    let mut out = Vec::with_capacity(r.cap(n));
    for _ in 0..n {
        let mut block = Vec::new();
        if !at(r.nil(), "block_mm_infos")? {
            for _ in 0..at(r.map_len(), "block_mm_infos")? {
                if at(r.str(), "block_mm_infos key")? != "mm_objects" {
                    at(r.skip(), "block_mm_infos")?;
                    continue;
                }
                for _ in 0..at(r.array_len(), "mm_objects")? {
                    for _ in 0..at(r.map_len(), "mm_object")? {
                        if at(r.str(), "mm_object key")? == "mm_hash" {
                            block.push(at(r.u64(), "mm_hash")?);
                        } else {
                            at(r.skip(), "mm_object")?;
                        }
                    }
                }
            }
        }
        out.push(block);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
