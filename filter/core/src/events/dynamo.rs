//! Dynamo's event plane: the MessagePack envelope, the `RouterEvent` it carries (and
//! the older JSON form), the ZMQ framing, and the subjects KV events travel on.
//!
//! Wire shapes, as Dynamo's serde derives produce them (named-field MessagePack
//! maps via `rmp_serde::to_vec_named`; field order = struct order):
//!
//! ```text
//! envelope    {publisher_id: u64, sequence: u64, published_at: u64 (ms), topic: "kv-events", payload: bin}
//! payload     RouterEvent, or [RouterEvent, ...] (newer publishers batch)
//! RouterEvent {worker_id: u64, storage_tier: "device"|"host_pinned"|"disk"|"external",
//!              residency_domain?: "worker"|"cache_owner", event: KvCacheEvent, state_source?: ...}
//! KvCacheEvent {event_id: u64, data: Data, dp_rank: u32}
//! Data        {"stored": {parent_hash: u64|nil, start_position?: u32|nil,
//!                         blocks: [{block_hash: u64, tokens_hash: u64, mm_extra_info?: nil|map}]}}
//!           | {"removed": {block_hashes: [u64]}}
//!           | "cleared"
//! ```
//!
//! Hashes are plain unsigned integers (uint64 above 2^63). Unknown keys are ignored,
//! as serde does. Events outside the worker residency domain (`cache_owner`, or a
//! domain this crate does not know) are decoded with [`StorageTier::Offloaded`]:
//! they never touch device matching, yet keep the event-id sequence intact.

#[cfg(test)]
pub(crate) mod golden;
pub(crate) mod wire;

use std::borrow::Cow;

use super::{EventError, KvEvent, KvEventData, StorageTier, StoredBlock};
use crate::types::WorkerKey;
use wire::{
    check_size, json_to_msgpack, looks_like_json, msgpack_to_json, Reader, WireError, Writer,
};

/// Format name used in errors about `RouterEvent` payloads.
pub const FORMAT: &str = "dynamo RouterEvent";
const FORMAT_ENVELOPE: &str = "dynamo event-plane envelope";
const FORMAT_FRAME: &str = "dynamo ZMQ frame";

/// Topic of KV events (`KV_EVENT_SUBJECT` in Dynamo).
pub const KV_EVENTS_TOPIC: &str = "kv-events";
/// The underscore spelling some early Dynamo releases used.
pub const LEGACY_KV_EVENTS_TOPIC: &str = "kv_events";
/// A sensible default for the `max_payload` argument of the decoders (16 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 16 << 20;
/// Version byte of Dynamo's ZMQ event-plane frame.
pub const ZMQ_FRAME_VERSION: u8 = 1;

/// The envelope metadata of one event-plane message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeInfo {
    /// Random id of the publishing process' publisher (53-bit in Dynamo).
    pub publisher_id: u64,
    /// Per-publisher message counter (starts at 0); a gap means lost messages.
    pub sequence: u64,
    /// Publish time, milliseconds since the Unix epoch.
    pub published_at_ms: u64,
    /// The bare topic (`kv-events`, `kv_metrics`, ...); empty if the envelope had none.
    pub topic: String,
}

/// An event-plane message with its envelope (if any) removed.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPlaneMessage<'a> {
    /// The envelope, when the message had one.
    pub envelope: Option<EnvelopeInfo>,
    /// The payload as MessagePack (JSON inputs are transcoded).
    pub body: Cow<'a, [u8]>,
}

/// The KV events of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEventMessage {
    /// The envelope, when the message had one.
    pub envelope: Option<EnvelopeInfo>,
    /// The events, in publish order.
    pub events: Vec<KvEvent>,
}

fn at<T>(r: Result<T, WireError>, format: &'static str, field: &str) -> Result<T, EventError> {
    r.map_err(|e| EventError::Malformed {
        format,
        detail: format!("{field}: {}", e.0),
    })
}

/// Removes the envelope of any event-plane message: the MessagePack envelope, the
/// phase-1 JSON envelope (`payload` as a JSON array of bytes), or none (a bare
/// MessagePack or JSON payload). The body always comes back as MessagePack.
pub fn open_message(bytes: &[u8], max_payload: usize) -> Result<EventPlaneMessage<'_>, EventError> {
    check_size(bytes.len(), max_payload)?;
    if looks_like_json(bytes) {
        let converted = json_to_msgpack(bytes).map_err(|e| e.at(FORMAT_ENVELOPE))?;
        if !is_envelope(&converted) {
            return Ok(EventPlaneMessage {
                envelope: None,
                body: Cow::Owned(converted),
            });
        }
        let (info, payload) = read_envelope(&converted)?;
        let body = if looks_like_json(&payload) {
            json_to_msgpack(&payload).map_err(|e| e.at(FORMAT_ENVELOPE))?
        } else {
            payload.into_owned()
        };
        return Ok(EventPlaneMessage {
            envelope: Some(info),
            body: Cow::Owned(body),
        });
    }
    if !is_envelope(bytes) {
        return Ok(EventPlaneMessage {
            envelope: None,
            body: Cow::Borrowed(bytes),
        });
    }
    let (info, payload) = read_envelope(bytes)?;
    let body = if looks_like_json(&payload) {
        Cow::Owned(json_to_msgpack(&payload).map_err(|e| e.at(FORMAT_ENVELOPE))?)
    } else {
        payload
    };
    Ok(EventPlaneMessage {
        envelope: Some(info),
        body,
    })
}

fn is_envelope(bytes: &[u8]) -> bool {
    let r = Reader::new(bytes);
    r.map_has_key("publisher_id") && r.map_has_key("payload")
}

fn read_envelope(bytes: &[u8]) -> Result<(EnvelopeInfo, Cow<'_, [u8]>), EventError> {
    let f = FORMAT_ENVELOPE;
    let mut r = Reader::new(bytes);
    let (mut publisher_id, mut sequence, mut published_at, mut topic, mut payload) =
        (None, None, 0, String::new(), None);
    for _ in 0..at(r.map_len(), f, "envelope")? {
        match at(r.str(), f, "envelope key")? {
            "publisher_id" => publisher_id = Some(at(r.u64(), f, "publisher_id")?),
            "sequence" => sequence = Some(at(r.u64(), f, "sequence")?),
            "published_at" => published_at = at(r.u64(), f, "published_at")?,
            "topic" => topic = at(r.str(), f, "topic")?.to_owned(),
            "payload" => payload = Some(at(r.bytes(), f, "payload")?),
            _ => at(r.skip(), f, "envelope")?,
        }
    }
    at(r.finish(), f, "envelope")?;
    let missing = |name: &str| EventError::Malformed {
        format: f,
        detail: format!("missing `{name}`"),
    };
    let info = EnvelopeInfo {
        publisher_id: publisher_id.ok_or_else(|| missing("publisher_id"))?,
        sequence: sequence.ok_or_else(|| missing("sequence"))?,
        published_at_ms: published_at,
        topic,
    };
    Ok((info, payload.ok_or_else(|| missing("payload"))?))
}

/// Decodes one KV-event message in any form Dynamo has published: the MessagePack
/// envelope (current), the phase-1 JSON envelope, a bare MessagePack `RouterEvent`
/// or batch, or a JSON `RouterEvent` (the older JetStream path).
pub fn decode_kv_message(bytes: &[u8], max_payload: usize) -> Result<KvEventMessage, EventError> {
    let msg = open_message(bytes, max_payload)?;
    let events = read_router_events(&msg.body)?;
    Ok(KvEventMessage {
        envelope: msg.envelope,
        events,
    })
}

/// Decodes a bare MessagePack payload: one `RouterEvent` or an array of them.
pub fn decode_router_events(bytes: &[u8], max_payload: usize) -> Result<Vec<KvEvent>, EventError> {
    check_size(bytes.len(), max_payload)?;
    read_router_events(bytes)
}

/// Decodes the JSON form of one `RouterEvent`.
pub fn decode_router_event_json(bytes: &[u8], max_payload: usize) -> Result<KvEvent, EventError> {
    check_size(bytes.len(), max_payload)?;
    let converted = json_to_msgpack(bytes).map_err(|e| e.at(FORMAT))?;
    let mut r = Reader::new(&converted);
    let event = read_router_event(&mut r)?;
    at(r.finish(), FORMAT, "RouterEvent")?;
    Ok(event)
}

fn read_router_events(bytes: &[u8]) -> Result<Vec<KvEvent>, EventError> {
    let mut r = Reader::new(bytes);
    let events = match at(r.peek(), FORMAT, "payload")? {
        wire::Head::Array(_) => {
            let n = at(r.array_len(), FORMAT, "batch")?;
            let mut events = Vec::with_capacity(r.cap(n));
            for _ in 0..n {
                events.push(read_router_event(&mut r)?);
            }
            events
        }
        _ => vec![read_router_event(&mut r)?],
    };
    at(r.finish(), FORMAT, "payload")?;
    Ok(events)
}

fn read_router_event(r: &mut Reader<'_>) -> Result<KvEvent, EventError> {
    let f = FORMAT;
    let (mut worker_id, mut tier, mut worker_domain, mut event) =
        (None, StorageTier::Device, true, None);
    for _ in 0..at(r.map_len(), f, "RouterEvent")? {
        match at(r.str(), f, "RouterEvent key")? {
            "worker_id" => worker_id = Some(at(r.u64(), f, "worker_id")?),
            "storage_tier" => tier = tier_from_wire(at(r.str(), f, "storage_tier")?),
            // Dynamo rejects an explicit nil or an unknown domain; either way the event
            // does not belong to the worker's own (device) index.
            "residency_domain" => {
                worker_domain = at(r.opt(|r| r.str()), f, "residency_domain")? == Some("worker")
            }
            "event" => event = Some(read_cache_event(r)?),
            _ => at(r.skip(), f, "RouterEvent")?,
        }
    }
    let worker_id = worker_id.ok_or_else(|| missing("worker_id"))?;
    let (event_id, data, dp_rank) = event.ok_or_else(|| missing("event"))?;
    let tier = if worker_domain {
        tier
    } else {
        StorageTier::Offloaded
    };
    Ok(KvEvent {
        worker: WorkerKey::new(worker_id, dp_rank),
        event_id,
        tier,
        data,
    })
}

fn missing(name: &str) -> EventError {
    EventError::Malformed {
        format: FORMAT,
        detail: format!("missing `{name}`"),
    }
}

/// `device` is the GPU; every other tier (host_pinned, disk, external, or one added
/// later) is an offload tier that never counts for device matching.
fn tier_from_wire(tier: &str) -> StorageTier {
    if tier == "device" {
        StorageTier::Device
    } else {
        StorageTier::Offloaded
    }
}

fn tier_to_wire(tier: StorageTier) -> &'static str {
    match tier {
        StorageTier::Device => "device",
        // The nearest Dynamo tier; the offload tiers are not told apart here.
        StorageTier::Offloaded => "host_pinned",
    }
}

fn read_cache_event(r: &mut Reader<'_>) -> Result<(u64, KvEventData, u32), EventError> {
    let f = FORMAT;
    let (mut event_id, mut data, mut dp_rank) = (None, None, 0);
    for _ in 0..at(r.map_len(), f, "event")? {
        match at(r.str(), f, "event key")? {
            "event_id" => event_id = Some(at(r.u64(), f, "event_id")?),
            "data" => data = Some(read_data(r)?),
            "dp_rank" => dp_rank = at(r.u32(), f, "dp_rank")?,
            _ => at(r.skip(), f, "event")?,
        }
    }
    Ok((
        event_id.ok_or_else(|| missing("event_id"))?,
        data.ok_or_else(|| missing("data"))?,
        dp_rank,
    ))
}

fn read_data(r: &mut Reader<'_>) -> Result<KvEventData, EventError> {
    let f = FORMAT;
    if let wire::Head::Str(_) = at(r.peek(), f, "data")? {
        return match at(r.str(), f, "data")? {
            "cleared" => Ok(KvEventData::Cleared),
            other => Err(EventError::UnknownKind {
                format: f,
                kind: other.to_owned(),
            }),
        };
    }
    let n = at(r.map_len(), f, "data")?;
    if n != 1 {
        return Err(EventError::Malformed {
            format: f,
            detail: format!("data: a map of {n} variants"),
        });
    }
    match at(r.str(), f, "data variant")? {
        "stored" => read_stored(r),
        "removed" => {
            let mut blocks = None;
            for _ in 0..at(r.map_len(), f, "removed")? {
                match at(r.str(), f, "removed key")? {
                    "block_hashes" => blocks = Some(at(r.u64_list(), f, "block_hashes")?),
                    _ => at(r.skip(), f, "removed")?,
                }
            }
            Ok(KvEventData::Removed {
                blocks: blocks.ok_or_else(|| missing("block_hashes"))?,
            })
        }
        "cleared" => {
            at(r.skip(), f, "cleared")?;
            Ok(KvEventData::Cleared)
        }
        other => Err(EventError::UnknownKind {
            format: f,
            kind: other.to_owned(),
        }),
    }
}

fn read_stored(r: &mut Reader<'_>) -> Result<KvEventData, EventError> {
    let f = FORMAT;
    let (mut parent, mut blocks) = (None, None);
    for _ in 0..at(r.map_len(), f, "stored")? {
        match at(r.str(), f, "stored key")? {
            "parent_hash" => parent = at(r.opt(|r| r.u64()), f, "parent_hash")?,
            "blocks" => {
                let n = at(r.array_len(), f, "blocks")?;
                let mut list = Vec::with_capacity(r.cap(n));
                for _ in 0..n {
                    list.push(read_block(r)?);
                }
                blocks = Some(list);
            }
            _ => at(r.skip(), f, "stored")?,
        }
    }
    Ok(KvEventData::Stored {
        parent,
        blocks: blocks.ok_or_else(|| missing("blocks"))?,
    })
}

fn read_block(r: &mut Reader<'_>) -> Result<StoredBlock, EventError> {
    let f = FORMAT;
    let (mut external, mut tokens_hash) = (None, None);
    for _ in 0..at(r.map_len(), f, "block")? {
        match at(r.str(), f, "block key")? {
            "block_hash" => external = Some(at(r.u64(), f, "block_hash")?),
            "tokens_hash" => tokens_hash = Some(at(r.u64(), f, "tokens_hash")?),
            // Multimodal metadata only shaped tokens_hash on the publisher side.
            _ => at(r.skip(), f, "block")?,
        }
    }
    Ok(StoredBlock {
        external: external.ok_or_else(|| missing("block_hash"))?,
        tokens_hash: tokens_hash.ok_or_else(|| missing("tokens_hash"))?,
    })
}

/// Which generation of the `RouterEvent` shape to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Current Dynamo: explicit `residency_domain`, `start_position`, `mm_extra_info`.
    Current,
    /// 1.x / JetStream era: `{worker_id, storage_tier, event}`, no optional extras.
    Legacy,
}

fn write_router_event(w: &mut Writer, ev: &KvEvent, shape: Shape) {
    let current = shape == Shape::Current;
    w.map(if current { 4 } else { 3 });
    w.str("worker_id").uint(ev.worker.worker_id);
    w.str("storage_tier").str(tier_to_wire(ev.tier));
    if current {
        w.str("residency_domain").str("worker");
    }
    w.str("event").map(3);
    w.str("event_id").uint(ev.event_id);
    w.str("data");
    match &ev.data {
        KvEventData::Stored { parent, blocks } => {
            w.map(1).str("stored").map(if current { 3 } else { 2 });
            w.str("parent_hash");
            match parent {
                Some(p) => w.uint(*p),
                None => w.nil(),
            };
            if current {
                w.str("start_position").nil();
            }
            w.str("blocks").array(blocks.len());
            for b in blocks {
                w.map(if current { 3 } else { 2 });
                w.str("block_hash").uint(b.external);
                w.str("tokens_hash").uint(b.tokens_hash);
                if current {
                    w.str("mm_extra_info").nil();
                }
            }
        }
        KvEventData::Removed { blocks } => {
            w.map(1)
                .str("removed")
                .map(1)
                .str("block_hashes")
                .u64_list(blocks);
        }
        KvEventData::Cleared => {
            w.str("cleared");
        }
    }
    w.str("dp_rank").uint(u64::from(ev.worker.dp_rank));
}

/// One `RouterEvent` as current Dynamo serializes it (bare MessagePack payload).
///
/// Offload tiers are written as `host_pinned`.
pub fn encode_router_event(event: &KvEvent) -> Vec<u8> {
    let mut w = Writer::new();
    write_router_event(&mut w, event, Shape::Current);
    w.into_bytes()
}

/// A batch payload: an array of `RouterEvent`s (what newer Dynamo publishers send).
pub fn encode_router_events(events: &[KvEvent]) -> Vec<u8> {
    let mut w = Writer::new();
    w.array(events.len());
    for ev in events {
        write_router_event(&mut w, ev, Shape::Current);
    }
    w.into_bytes()
}

/// The event-plane envelope around an already-encoded payload, field for field as
/// Dynamo's `MsgpackCodec` writes it.
pub fn encode_envelope_bytes(
    publisher_id: u64,
    sequence: u64,
    published_at_ms: u64,
    topic: &str,
    payload: &[u8],
) -> Vec<u8> {
    let mut w = Writer::new();
    w.map(5);
    w.str("publisher_id").uint(publisher_id);
    w.str("sequence").uint(sequence);
    w.str("published_at").uint(published_at_ms);
    w.str("topic").str(topic);
    w.str("payload").bin(payload);
    w.into_bytes()
}

/// One KV event as a complete event-plane message on topic `kv-events`.
pub fn encode_envelope(
    publisher_id: u64,
    sequence: u64,
    published_at_ms: u64,
    event: &KvEvent,
) -> Vec<u8> {
    encode_envelope_bytes(
        publisher_id,
        sequence,
        published_at_ms,
        KV_EVENTS_TOPIC,
        &encode_router_event(event),
    )
}

/// The JSON form of one `RouterEvent` (the 1.x JetStream shape:
/// `{worker_id, storage_tier, event: {event_id, data, dp_rank}}`), compact.
pub fn encode_router_event_json(event: &KvEvent) -> Vec<u8> {
    let mut w = Writer::new();
    write_router_event(&mut w, event, Shape::Legacy);
    let bytes = w.into_bytes();
    // Our own well-formed MessagePack: transcoding cannot fail.
    msgpack_to_json(&mut Reader::new(&bytes))
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_default()
}

/// Strips Dynamo's ZMQ frame header (`version: u8 = 1`, `length: u32 BE`) and returns
/// the envelope bytes it carries. The ZMQ multipart is
/// `[topic, publisher_id: u64 BE, sequence: u64 BE, frame]`.
pub fn decode_zmq_frame(frame: &[u8], max_payload: usize) -> Result<&[u8], EventError> {
    check_size(frame.len(), max_payload.saturating_add(5))?;
    let bad = |detail: String| EventError::Malformed {
        format: FORMAT_FRAME,
        detail,
    };
    let (header, payload) = frame
        .split_at_checked(5)
        .ok_or_else(|| bad("short header".into()))?;
    let (&version, len) = header
        .split_first()
        .ok_or_else(|| bad("short header".into()))?;
    if version != ZMQ_FRAME_VERSION {
        return Err(bad(format!("unsupported version {version}")));
    }
    let len: [u8; 4] = len.try_into().map_err(|_| bad("short header".into()))?;
    let len = u32::from_be_bytes(len) as usize;
    if len != payload.len() {
        return Err(bad(format!(
            "length {len} but {} payload bytes",
            payload.len()
        )));
    }
    Ok(payload)
}

/// Wraps envelope bytes in Dynamo's ZMQ frame header.
pub fn encode_zmq_frame(envelope: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(envelope.len() + 5);
    out.push(ZMQ_FRAME_VERSION);
    out.extend_from_slice(
        &u32::try_from(envelope.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(envelope);
    out
}

/// Percent-encodes one subject segment as Dynamo does: `[A-Za-z0-9_-]` kept, every
/// other byte written `%XX` (so a `.` in a name cannot split the subject).
pub fn encode_subject_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `namespace.{ns}`: the subject prefix of a namespace.
pub fn namespace_subject(namespace: &str) -> String {
    format!("namespace.{}", encode_subject_segment(namespace))
}

/// `namespace.{ns}.component.{component}`: the subject prefix of a component.
pub fn component_subject(namespace: &str, component: &str) -> String {
    format!(
        "{}.component.{}",
        namespace_subject(namespace),
        encode_subject_segment(component)
    )
}

/// `namespace.{ns}.component.{component}.endpoint.{endpoint}`.
pub fn endpoint_subject(namespace: &str, component: &str, endpoint: &str) -> String {
    format!(
        "{}.endpoint.{}",
        component_subject(namespace, component),
        encode_subject_segment(endpoint)
    )
}

/// The 1.x KV-event subject: `namespace.{ns}.component.{component}.kv-events`.
pub fn kv_events_subject(namespace: &str, component: &str) -> String {
    format!(
        "{}.{KV_EVENTS_TOPIC}",
        component_subject(namespace, component)
    )
}

/// The newer endpoint-scoped subject: `...component.{component}.endpoint.{endpoint}.kv-events`.
pub fn kv_events_endpoint_subject(namespace: &str, component: &str, endpoint: &str) -> String {
    format!(
        "{}.{KV_EVENTS_TOPIC}",
        endpoint_subject(namespace, component, endpoint)
    )
}

/// What to subscribe to for every KV-event subject of a component (both forms):
/// `namespace.{ns}.component.{component}.>`; filter with [`is_kv_events_subject`].
pub fn kv_events_wildcard(namespace: &str, component: &str) -> String {
    format!("{}.>", component_subject(namespace, component))
}

/// Whether a subject carries KV events: its last token is `kv-events` (or `kv_events`).
pub fn is_kv_events_subject(subject: &str) -> bool {
    matches!(
        subject_topic(subject),
        KV_EVENTS_TOPIC | LEGACY_KV_EVENTS_TOPIC
    )
}

/// The last token of a subject (the topic).
pub fn subject_topic(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

#[cfg(test)]
mod tests;
