//! Router replica sync: Dynamo's `ActiveSequenceEvent` (topic
//! `active_sequences_events`), with which router replicas tell each other which
//! requests they booked on which worker, decoded into [`ReplicaEvent`] (and encoded).
//!
//! ```text
//! ActiveSequenceEvent {request_id: str, worker: {worker_id: u64, dp_rank: u32},
//!                      data: {"AddRequest": {token_sequence: [u64]|nil, track_prefill_tokens: bool,
//!                                            expected_output_tokens: u32|nil,
//!                                            prefill_load_hint: nil|{initial_effective_prefill_tokens: u64,
//!                                              expected_prefill_duration: nil|{secs: u64, nanos: u32}}}}
//!                          | "Free" | "MarkPrefillCompleted",
//!                      router_id: u64, lora_name: str|nil}
//! ActiveSequenceEventBatch {events: [ActiveSequenceEvent]}   (ZMQ event plane batches)
//! ```
//!
//! Variant names are not renamed (serde's external tagging, PascalCase). Older
//! routers sent `AddRequest {token_sequence, isl, overlap}` and a UUID string as
//! `router_id` (JSON); both are accepted, a string id folded to `xxh3_64(id)`.
//! Subject: `namespace.{ns}.component.{c}.active_sequences_events` (1.x), newer
//! routers add `.endpoint.{e}` before the topic.

use std::time::Duration;

use xxhash_rust::xxh3::xxh3_64;

use super::dynamo::wire::{check_size, msgpack_to_json, Head, Reader, WireError, Writer};
use super::dynamo::{
    component_subject, encode_envelope_bytes, endpoint_subject, open_message, subject_topic,
    EnvelopeInfo,
};
use super::EventError;
use crate::types::WorkerKey;

/// Format name used in errors.
pub const FORMAT: &str = "dynamo ActiveSequenceEvent";
/// Topic of replica-sync events (`ACTIVE_SEQUENCES_SUBJECT` in Dynamo).
pub const ACTIVE_SEQUENCES_TOPIC: &str = "active_sequences_events";

/// The booking of a newly routed request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AddRequest {
    /// The request's chained sequence hashes (its prefix blocks), if sent.
    pub token_sequence: Option<Vec<u64>>,
    /// Whether its prompt tokens count as pending prefill (default true).
    pub track_prefill_tokens: bool,
    /// The expected number of output tokens, if known.
    pub expected_output_tokens: Option<u32>,
    /// The prefill load the router expects.
    pub prefill_load_hint: Option<PrefillLoadHint>,
    /// Input length (older routers only).
    pub isl: Option<u64>,
    /// Overlap blocks (older routers only).
    pub overlap: Option<u32>,
}

/// A router's estimate of a request's prefill cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefillLoadHint {
    /// Prompt tokens that still need prefill after the cache hit.
    pub initial_effective_prefill_tokens: u64,
    /// Expected prefill duration, if estimated.
    pub expected_prefill_duration: Option<Duration>,
}

/// What happened to the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEventData {
    /// Routed and booked.
    AddRequest(AddRequest),
    /// Finished or cancelled: release its blocks.
    Free,
    /// Its prefill finished: release its prefill tokens.
    MarkPrefillCompleted,
}

/// One replica-sync event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaEvent {
    /// The request (as the router keyed it).
    pub request_id: String,
    /// The worker and dp rank the request was booked on.
    pub worker: WorkerKey,
    /// The lifecycle step.
    pub data: ReplicaEventData,
    /// The publishing router (or worker), to drop one's own echo.
    pub router_id: u64,
    /// LoRA adapter of the request.
    pub lora_name: Option<String>,
}

/// A decoded replica-sync message: one event, or a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaMessage {
    /// The envelope, when the message had one.
    pub envelope: Option<EnvelopeInfo>,
    /// The events, in publish order.
    pub events: Vec<ReplicaEvent>,
}

fn at<T>(r: Result<T, WireError>, field: &str) -> Result<T, EventError> {
    r.map_err(|e| EventError::Malformed {
        format: FORMAT,
        detail: format!("{field}: {}", e.0),
    })
}

fn missing(name: &str) -> EventError {
    EventError::Malformed {
        format: FORMAT,
        detail: format!("missing `{name}`"),
    }
}

/// Decodes a replica-sync message (envelope, bare MessagePack or JSON; one event or
/// an `{events: [...]}` batch).
pub fn decode_replica(bytes: &[u8], max_payload: usize) -> Result<ReplicaMessage, EventError> {
    check_size(bytes.len(), max_payload)?;
    let msg = open_message(bytes, max_payload)?;
    let mut r = Reader::new(&msg.body);
    let events = if r.map_has_key("events") && !r.map_has_key("request_id") {
        let mut events = Vec::new();
        for _ in 0..at(r.map_len(), "batch")? {
            if at(r.str(), "batch key")? != "events" {
                at(r.skip(), "batch")?;
                continue;
            }
            let n = at(r.array_len(), "events")?;
            events.reserve(r.cap(n));
            for _ in 0..n {
                events.push(read_event(&mut r)?);
            }
        }
        events
    } else {
        vec![read_event(&mut r)?]
    };
    at(r.finish(), "ActiveSequenceEvent")?;
    Ok(ReplicaMessage {
        envelope: msg.envelope,
        events,
    })
}

fn read_event(r: &mut Reader<'_>) -> Result<ReplicaEvent, EventError> {
    let (mut request_id, mut worker, mut data, mut router_id, mut lora_name) =
        (None, None, None, None, None);
    for _ in 0..at(r.map_len(), "ActiveSequenceEvent")? {
        match at(r.str(), "ActiveSequenceEvent key")? {
            "request_id" => request_id = Some(at(r.str(), "request_id")?.to_owned()),
            "worker" => {
                let (mut id, mut dp) = (None, 0);
                for _ in 0..at(r.map_len(), "worker")? {
                    match at(r.str(), "worker key")? {
                        "worker_id" => id = Some(at(r.u64(), "worker_id")?),
                        "dp_rank" => dp = at(r.u32(), "dp_rank")?,
                        _ => at(r.skip(), "worker")?,
                    }
                }
                worker = Some(WorkerKey::new(id.ok_or_else(|| missing("worker_id"))?, dp));
            }
            "data" => data = Some(read_data(r)?),
            "router_id" => {
                router_id = Some(match at(r.peek(), "router_id")? {
                    Head::Str(_) => xxh3_64(at(r.str(), "router_id")?.as_bytes()),
                    _ => at(r.u64(), "router_id")?,
                })
            }
            "lora_name" => lora_name = at(r.opt(|r| r.str()), "lora_name")?.map(str::to_owned),
            _ => at(r.skip(), "ActiveSequenceEvent")?,
        }
    }
    Ok(ReplicaEvent {
        request_id: request_id.ok_or_else(|| missing("request_id"))?,
        worker: worker.ok_or_else(|| missing("worker"))?,
        data: data.ok_or_else(|| missing("data"))?,
        router_id: router_id.ok_or_else(|| missing("router_id"))?,
        lora_name,
    })
}

fn unit_variant(name: &str) -> Result<ReplicaEventData, EventError> {
    match name {
        "Free" => Ok(ReplicaEventData::Free),
        "MarkPrefillCompleted" => Ok(ReplicaEventData::MarkPrefillCompleted),
        other => Err(EventError::UnknownKind {
            format: FORMAT,
            kind: other.to_owned(),
        }),
    }
}

fn read_data(r: &mut Reader<'_>) -> Result<ReplicaEventData, EventError> {
    if let Head::Str(_) = at(r.peek(), "data")? {
        return unit_variant(at(r.str(), "data")?);
    }
    let n = at(r.map_len(), "data")?;
    if n != 1 {
        return Err(EventError::Malformed {
            format: FORMAT,
            detail: format!("data: a map of {n} variants"),
        });
    }
    let variant = at(r.str(), "data variant")?;
    if variant != "AddRequest" {
        let data = unit_variant(variant)?;
        at(r.skip(), "data")?;
        return Ok(data);
    }
    let mut add = AddRequest {
        track_prefill_tokens: true,
        ..AddRequest::default()
    };
    for _ in 0..at(r.map_len(), "AddRequest")? {
        match at(r.str(), "AddRequest key")? {
            "token_sequence" => add.token_sequence = at(r.opt(|r| r.u64_list()), "token_sequence")?,
            "track_prefill_tokens" => {
                add.track_prefill_tokens = at(r.bool(), "track_prefill_tokens")?
            }
            "expected_output_tokens" => {
                add.expected_output_tokens = at(r.opt(|r| r.u32()), "expected_output_tokens")?
            }
            "prefill_load_hint" => {
                if !at(r.nil(), "prefill_load_hint")? {
                    add.prefill_load_hint = Some(read_hint(r)?);
                }
            }
            "isl" => add.isl = at(r.opt(|r| r.u64()), "isl")?,
            "overlap" => add.overlap = at(r.opt(|r| r.u32()), "overlap")?,
            _ => at(r.skip(), "AddRequest")?,
        }
    }
    Ok(ReplicaEventData::AddRequest(add))
}

fn read_hint(r: &mut Reader<'_>) -> Result<PrefillLoadHint, EventError> {
    let (mut tokens, mut duration) = (None, None);
    for _ in 0..at(r.map_len(), "prefill_load_hint")? {
        match at(r.str(), "prefill_load_hint key")? {
            "initial_effective_prefill_tokens" => {
                tokens = Some(at(r.u64(), "initial_effective_prefill_tokens")?)
            }
            "expected_prefill_duration" => {
                if !at(r.nil(), "expected_prefill_duration")? {
                    duration = Some(read_duration(r)?);
                }
            }
            _ => at(r.skip(), "prefill_load_hint")?,
        }
    }
    Ok(PrefillLoadHint {
        initial_effective_prefill_tokens: tokens
            .ok_or_else(|| missing("initial_effective_prefill_tokens"))?,
        expected_prefill_duration: duration,
    })
}

/// serde's `Duration`: `{secs, nanos}` (or the sequence form `[secs, nanos]`).
fn read_duration(r: &mut Reader<'_>) -> Result<Duration, EventError> {
    let (mut secs, mut nanos) = (None, None);
    if let Head::Array(_) = at(r.peek(), "duration")? {
        if at(r.array_len(), "duration")? != 2 {
            return Err(missing("secs, nanos"));
        }
        secs = Some(at(r.u64(), "secs")?);
        nanos = Some(at(r.u32(), "nanos")?);
    } else {
        for _ in 0..at(r.map_len(), "duration")? {
            match at(r.str(), "duration key")? {
                "secs" => secs = Some(at(r.u64(), "secs")?),
                "nanos" => nanos = Some(at(r.u32(), "nanos")?),
                _ => at(r.skip(), "duration")?,
            }
        }
    }
    let (secs, nanos) = (
        secs.ok_or_else(|| missing("secs"))?,
        nanos.ok_or_else(|| missing("nanos"))?,
    );
    if nanos >= 1_000_000_000 {
        return Err(EventError::Malformed {
            format: FORMAT,
            detail: format!("nanos {nanos}"),
        });
    }
    Ok(Duration::new(secs, nanos))
}

fn write_event(w: &mut Writer, ev: &ReplicaEvent) {
    w.map(5);
    w.str("request_id").str(&ev.request_id);
    w.str("worker").map(2);
    w.str("worker_id").uint(ev.worker.worker_id);
    w.str("dp_rank").uint(u64::from(ev.worker.dp_rank));
    w.str("data");
    match &ev.data {
        ReplicaEventData::Free => {
            w.str("Free");
        }
        ReplicaEventData::MarkPrefillCompleted => {
            w.str("MarkPrefillCompleted");
        }
        ReplicaEventData::AddRequest(add) => {
            w.map(1).str("AddRequest").map(4);
            w.str("token_sequence");
            match &add.token_sequence {
                Some(seq) => w.u64_list(seq),
                None => w.nil(),
            };
            w.str("track_prefill_tokens").bool(add.track_prefill_tokens);
            w.str("expected_output_tokens");
            match add.expected_output_tokens {
                Some(n) => w.uint(u64::from(n)),
                None => w.nil(),
            };
            w.str("prefill_load_hint");
            match &add.prefill_load_hint {
                None => {
                    w.nil();
                }
                Some(hint) => {
                    w.map(2)
                        .str("initial_effective_prefill_tokens")
                        .uint(hint.initial_effective_prefill_tokens);
                    w.str("expected_prefill_duration");
                    match hint.expected_prefill_duration {
                        Some(d) => w
                            .map(2)
                            .str("secs")
                            .uint(d.as_secs())
                            .str("nanos")
                            .uint(u64::from(d.subsec_nanos())),
                        None => w.nil(),
                    };
                }
            }
        }
    }
    w.str("router_id").uint(ev.router_id);
    w.str("lora_name");
    match &ev.lora_name {
        Some(name) => w.str(name),
        None => w.nil(),
    };
}

/// One event as bare MessagePack (current field set; `isl`/`overlap` are not written).
pub fn encode_replica_event(event: &ReplicaEvent) -> Vec<u8> {
    let mut w = Writer::new();
    write_event(&mut w, event);
    w.into_bytes()
}

/// A batch `{events: [...]}` as bare MessagePack.
pub fn encode_replica_batch(events: &[ReplicaEvent]) -> Vec<u8> {
    let mut w = Writer::new();
    w.map(1).str("events").array(events.len());
    for ev in events {
        write_event(&mut w, ev);
    }
    w.into_bytes()
}

/// A complete event-plane message on topic `active_sequences_events` carrying
/// `payload` (from [`encode_replica_event`] on NATS, [`encode_replica_batch`] on ZMQ).
pub fn encode_replica_envelope(
    publisher_id: u64,
    sequence: u64,
    published_at_ms: u64,
    payload: &[u8],
) -> Vec<u8> {
    encode_envelope_bytes(
        publisher_id,
        sequence,
        published_at_ms,
        ACTIVE_SEQUENCES_TOPIC,
        payload,
    )
}

/// One event as compact JSON (same fields and order).
pub fn encode_replica_json(event: &ReplicaEvent) -> Vec<u8> {
    let bytes = encode_replica_event(event);
    msgpack_to_json(&mut Reader::new(&bytes))
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_default()
}

/// The 1.x subject: `namespace.{ns}.component.{c}.active_sequences_events`.
pub fn active_sequences_subject(namespace: &str, component: &str) -> String {
    format!(
        "{}.{ACTIVE_SEQUENCES_TOPIC}",
        component_subject(namespace, component)
    )
}

/// The endpoint-scoped subject of newer routers.
pub fn active_sequences_endpoint_subject(
    namespace: &str,
    component: &str,
    endpoint: &str,
) -> String {
    format!(
        "{}.{ACTIVE_SEQUENCES_TOPIC}",
        endpoint_subject(namespace, component, endpoint)
    )
}

/// Whether a subject carries replica-sync events.
pub fn is_active_sequences_subject(subject: &str) -> bool {
    subject_topic(subject) == ACTIVE_SEQUENCES_TOPIC
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::super::dynamo::golden::{self, Golden};
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn expected(v: &Value) -> ReplicaEvent {
        let d = &v["data"];
        let data = match d["kind"].as_str().unwrap() {
            "free" => ReplicaEventData::Free,
            "mark_prefill_completed" => ReplicaEventData::MarkPrefillCompleted,
            "add_request" => ReplicaEventData::AddRequest(AddRequest {
                token_sequence: d["token_sequence"]
                    .as_array()
                    .map(|a| a.iter().map(golden::u64_of).collect()),
                track_prefill_tokens: d["track_prefill_tokens"].as_bool().unwrap(),
                expected_output_tokens: golden::opt_u64(&d["expected_output_tokens"])
                    .map(|n| n as u32),
                prefill_load_hint: (!d["prefill_load_hint"].is_null()).then(|| {
                    let h = &d["prefill_load_hint"];
                    let dur = &h["expected_prefill_duration"];
                    PrefillLoadHint {
                        initial_effective_prefill_tokens: golden::u64_of(
                            &h["initial_effective_prefill_tokens"],
                        ),
                        expected_prefill_duration: (!dur.is_null()).then(|| {
                            Duration::new(
                                golden::u64_of(&dur["secs"]),
                                golden::u64_of(&dur["nanos"]) as u32,
                            )
                        }),
                    }
                }),
                isl: golden::opt_u64(&d["isl"]),
                overlap: golden::opt_u64(&d["overlap"]).map(|n| n as u32),
            }),
            other => panic!("{other}"),
        };
        ReplicaEvent {
            request_id: v["request_id"].as_str().unwrap().to_owned(),
            worker: WorkerKey::new(
                golden::u64_of(&v["worker_id"]),
                golden::u64_of(&v["dp_rank"]) as u32,
            ),
            data,
            router_id: golden::u64_of(&v["router_id"]),
            lora_name: v["lora_name"].as_str().map(str::to_owned),
        }
    }

    #[test]
    fn golden_events_decode_and_canonical_ones_re_encode() {
        let g = Golden::load();
        let mut canonical = 0;
        for case in g.list("replica") {
            let name = case["name"].as_str().unwrap();
            let bytes = golden::hex(&case["hex"]);
            let msg = decode_replica(&bytes, 1 << 20).unwrap_or_else(|e| panic!("{name}: {e}"));
            let want: Vec<ReplicaEvent> = case["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(expected)
                .collect();
            assert_eq!(msg.events, want, "{name}");
            assert_eq!(msg.envelope, golden::envelope(&case["envelope"]), "{name}");
            if case["canonical"] != true {
                continue;
            }
            let payload = match case["form"].as_str().unwrap() {
                "json" => encode_replica_json(&msg.events[0]),
                "envelope_batch" => encode_replica_batch(&msg.events),
                _ => encode_replica_event(&msg.events[0]),
            };
            let rebuilt = match &msg.envelope {
                Some(e) => {
                    encode_replica_envelope(e.publisher_id, e.sequence, e.published_at_ms, &payload)
                }
                None => payload,
            };
            assert_eq!(rebuilt, bytes, "{name}");
            canonical += 1;
        }
        assert!(canonical >= 6);
    }

    #[test]
    fn golden_malformed_events_give_typed_errors() {
        let g = Golden::load();
        let cases: Vec<&Value> = g
            .list("malformed")
            .iter()
            .filter(|c| c["decoder"] == "replica")
            .collect();
        assert!(cases.len() >= 6);
        for case in cases {
            let max = case["max_payload"].as_u64().map_or(1 << 20, |m| m as usize);
            let err = decode_replica(&golden::hex(&case["hex"]), max).unwrap_err();
            golden::assert_error_kind(&err, case);
        }
    }

    #[test]
    fn subjects() {
        assert_eq!(
            active_sequences_subject("dynamo", "router"),
            "namespace.dynamo.component.router.active_sequences_events"
        );
        assert_eq!(
            active_sequences_endpoint_subject("dynamo", "backend", "generate"),
            "namespace.dynamo.component.backend.endpoint.generate.active_sequences_events"
        );
        assert!(is_active_sequences_subject(&active_sequences_subject(
            "a", "b"
        )));
        assert!(!is_active_sequences_subject("namespace.a.kv_metrics"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_replica(&bytes, 1 << 20);
        }

        #[test]
        fn events_round_trip(id in "[a-z0-9-]{0,40}", worker in any::<u64>(), dp in any::<u32>(),
                             router in any::<u64>(), seq in proptest::option::of(proptest::collection::vec(any::<u64>(), 0..8)),
                             secs in any::<u64>(), nanos in 0u32..1_000_000_000, kind in 0u8..3) {
            let data = match kind {
                0 => ReplicaEventData::Free,
                1 => ReplicaEventData::MarkPrefillCompleted,
                _ => ReplicaEventData::AddRequest(AddRequest {
                    token_sequence: seq,
                    track_prefill_tokens: secs % 2 == 0,
                    expected_output_tokens: Some(nanos),
                    prefill_load_hint: Some(PrefillLoadHint {
                        initial_effective_prefill_tokens: secs,
                        expected_prefill_duration: Some(Duration::new(secs, nanos)),
                    }),
                    isl: None,
                    overlap: None,
                }),
            };
            let ev = ReplicaEvent { request_id: id, worker: WorkerKey::new(worker, dp), data, router_id: router, lora_name: None };
            prop_assert_eq!(&decode_replica(&encode_replica_event(&ev), 1 << 20).unwrap().events, &vec![ev.clone()]);
            prop_assert_eq!(&decode_replica(&encode_replica_json(&ev), 1 << 20).unwrap().events, &vec![ev.clone()]);
            let batch = encode_replica_envelope(1, 2, 3, &encode_replica_batch(&[ev.clone(), ev.clone()]));
            prop_assert_eq!(decode_replica(&batch, 1 << 20).unwrap().events.len(), 2);
        }
    }
}
