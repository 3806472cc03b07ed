//! Fuzz target `dynamo_events`: Dynamo's event-plane decoders on arbitrary bytes.
//!
//! Every input goes through every decoder: KV-event messages (MessagePack envelope, JSON
//! envelope, bare `RouterEvent` or batch, JSON `RouterEvent`), the ZMQ frame header, load
//! reports (`ActiveLoad`) and replica-sync events (`ActiveSequenceEvent`). None may panic.
//! Whatever decodes is re-encoded with the crate's own encoders and decoded again: the
//! result must be the same value (the encoders write the canonical current shape; the only
//! fields they do not write, the older routers' `isl`/`overlap`, are cleared first).

use crate::MAX_PAYLOAD;
use kvgate_core::events::{dynamo, metrics, replica};

/// Re-wraps an encoded payload in the envelope it came in (if any).
fn wrap(envelope: &Option<dynamo::EnvelopeInfo>, payload: Vec<u8>) -> Vec<u8> {
    match envelope {
        Some(e) => dynamo::encode_envelope_bytes(
            e.publisher_id,
            e.sequence,
            e.published_at_ms,
            &e.topic,
            &payload,
        ),
        None => payload,
    }
}

fn kv_message(data: &[u8]) {
    let Ok(msg) = dynamo::decode_kv_message(data, MAX_PAYLOAD) else {
        return;
    };
    let bytes = wrap(&msg.envelope, dynamo::encode_router_events(&msg.events));
    let again = dynamo::decode_kv_message(&bytes, MAX_PAYLOAD);
    assert_eq!(again.as_ref(), Ok(&msg), "KV message does not round-trip");
    // One event at a time, as NATS publishers send them.
    for ev in &msg.events {
        let one = dynamo::encode_envelope(1, 2, 3, ev);
        let back = dynamo::decode_kv_message(&one, MAX_PAYLOAD).map(|m| m.events);
        assert_eq!(
            back,
            Ok(vec![ev.clone()]),
            "single event does not round-trip"
        );
        let json = dynamo::encode_router_event_json(ev);
        assert_eq!(
            dynamo::decode_router_event_json(&json, MAX_PAYLOAD).as_ref(),
            Ok(ev),
            "JSON form does not round-trip"
        );
    }
}

fn router_events(data: &[u8]) {
    if let Ok(events) = dynamo::decode_router_events(data, MAX_PAYLOAD) {
        let bytes = dynamo::encode_router_events(&events);
        assert_eq!(
            dynamo::decode_router_events(&bytes, MAX_PAYLOAD),
            Ok(events),
            "RouterEvent batch does not round-trip"
        );
    }
    if let Ok(event) = dynamo::decode_router_event_json(data, MAX_PAYLOAD) {
        let bytes = dynamo::encode_router_event_json(&event);
        assert_eq!(
            dynamo::decode_router_event_json(&bytes, MAX_PAYLOAD),
            Ok(event),
            "JSON RouterEvent does not round-trip"
        );
    }
}

fn zmq_frame(data: &[u8]) {
    if let Ok(envelope) = dynamo::decode_zmq_frame(data, MAX_PAYLOAD) {
        assert_eq!(dynamo::encode_zmq_frame(envelope), data, "ZMQ frame header");
        kv_message(envelope);
    }
}

fn load(data: &[u8]) {
    let Ok(msg) = metrics::decode_load(data, MAX_PAYLOAD) else {
        return;
    };
    let bytes = wrap(&msg.envelope, metrics::encode_load(&msg.report));
    assert_eq!(
        metrics::decode_load(&bytes, MAX_PAYLOAD).as_ref(),
        Ok(&msg),
        "ActiveLoad does not round-trip"
    );
    let json = metrics::encode_load_json(&msg.report);
    assert_eq!(
        metrics::decode_load(&json, MAX_PAYLOAD).map(|m| m.report),
        Ok(msg.report),
        "ActiveLoad JSON does not round-trip"
    );
}

fn replica_events(data: &[u8]) {
    let Ok(mut msg) = replica::decode_replica(data, MAX_PAYLOAD) else {
        return;
    };
    // Fields of older routers that the current shape does not carry.
    for ev in &mut msg.events {
        if let replica::ReplicaEventData::AddRequest(add) = &mut ev.data {
            add.isl = None;
            add.overlap = None;
        }
    }
    let bytes = wrap(&msg.envelope, replica::encode_replica_batch(&msg.events));
    assert_eq!(
        replica::decode_replica(&bytes, MAX_PAYLOAD).as_ref(),
        Ok(&msg),
        "replica batch does not round-trip"
    );
    for ev in &msg.events {
        for bytes in [
            replica::encode_replica_event(ev),
            replica::encode_replica_json(ev),
        ] {
            assert_eq!(
                replica::decode_replica(&bytes, MAX_PAYLOAD).map(|m| m.events),
                Ok(vec![ev.clone()]),
                "replica event does not round-trip"
            );
        }
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    kv_message(data);
    router_events(data);
    zmq_frame(data);
    load(data);
    replica_events(data);
}
