//! Tests of the Dynamo event plane against the independent golden vectors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
use super::golden::{self, Golden};
use super::*;
use proptest::prelude::*;

fn decode_case(form: &str, bytes: &[u8]) -> KvEventMessage {
    match form {
        "zmq_frame" => {
            decode_kv_message(decode_zmq_frame(bytes, 1 << 20).unwrap(), 1 << 20).unwrap()
        }
        _ => decode_kv_message(bytes, 1 << 20).unwrap(),
    }
}

#[test]
fn golden_messages_decode_to_their_meaning() {
    let g = Golden::load();
    let cases = g.list("dynamo");
    assert!(cases.len() >= 15);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let bytes = golden::hex(&case["hex"]);
        let msg = decode_case(case["form"].as_str().unwrap(), &bytes);
        assert_eq!(msg.envelope, golden::envelope(&case["envelope"]), "{name}");
        assert_eq!(msg.events, golden::events(&case["events"]), "{name}");
    }
}

#[test]
fn encoders_reproduce_canonical_golden_bytes() {
    let g = Golden::load();
    let mut checked = 0;
    for case in g.list("dynamo").iter().filter(|c| c["canonical"] == true) {
        let name = case["name"].as_str().unwrap();
        let bytes = golden::hex(&case["hex"]);
        let msg = decode_case(case["form"].as_str().unwrap(), &bytes);
        let env = msg.envelope.clone();
        let payload = match case["form"].as_str().unwrap() {
            "json" => {
                assert_eq!(msg.events.len(), 1);
                encode_router_event_json(&msg.events[0])
            }
            "envelope_batch" => encode_router_events(&msg.events),
            _ => encode_router_event(&msg.events[0]),
        };
        let rebuilt = match (&env, case["form"].as_str().unwrap()) {
            (Some(e), "zmq_frame") => encode_zmq_frame(&encode_envelope_bytes(
                e.publisher_id,
                e.sequence,
                e.published_at_ms,
                &e.topic,
                &payload,
            )),
            (Some(e), _) => encode_envelope_bytes(
                e.publisher_id,
                e.sequence,
                e.published_at_ms,
                &e.topic,
                &payload,
            ),
            (None, _) => payload,
        };
        assert_eq!(hex_of(&rebuilt), hex_of(&bytes), "{name}");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} canonical cases");
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn encode_envelope_round_trips() {
    let ev = KvEvent {
        worker: WorkerKey::new(u64::MAX, 7),
        event_id: 42,
        tier: StorageTier::Device,
        data: KvEventData::Stored {
            parent: Some(1 << 63),
            blocks: vec![StoredBlock {
                external: u64::MAX,
                tokens_hash: 3,
            }],
        },
    };
    let bytes = encode_envelope(9, 10, 11, &ev);
    let msg = decode_kv_message(&bytes, 1 << 20).unwrap();
    assert_eq!(msg.events, vec![ev.clone()]);
    let env = msg.envelope.unwrap();
    assert_eq!(
        (
            env.publisher_id,
            env.sequence,
            env.published_at_ms,
            env.topic.as_str()
        ),
        (9, 10, 11, "kv-events")
    );
    let json = encode_router_event_json(&ev);
    assert_eq!(decode_router_event_json(&json, 1 << 20).unwrap(), ev);
    assert_eq!(
        decode_router_events(&encode_router_events(&[ev.clone(), ev.clone()]), 1 << 20)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn golden_malformed_messages_give_typed_errors() {
    let g = Golden::load();
    let mut checked = 0;
    for case in g.list("malformed") {
        let decoder = case["decoder"].as_str().unwrap();
        if decoder != "dynamo" && decoder != "zmq_frame" {
            continue;
        }
        let bytes = golden::hex(&case["hex"]);
        let max = case["max_payload"].as_u64().map_or(1 << 20, |m| m as usize);
        let err = match decoder {
            "zmq_frame" => decode_zmq_frame(&bytes, max).map(|_| ()).unwrap_err(),
            _ => decode_kv_message(&bytes, max).map(|_| ()).unwrap_err(),
        };
        golden::assert_error_kind(&err, case);
        checked += 1;
    }
    assert!(checked >= 15);
}

#[test]
fn subjects_match_dynamo() {
    assert_eq!(
        kv_events_subject("dynamo", "backend"),
        "namespace.dynamo.component.backend.kv-events"
    );
    assert_eq!(
        kv_events_endpoint_subject("dynamo", "backend", "generate"),
        "namespace.dynamo.component.backend.endpoint.generate.kv-events"
    );
    assert_eq!(
        kv_events_wildcard("dynamo", "backend"),
        "namespace.dynamo.component.backend.>"
    );
    assert_eq!(
        component_subject("a.b", "c d"),
        "namespace.a%2Eb.component.c%20d"
    );
    assert!(is_kv_events_subject("namespace.x.component.y.kv-events"));
    assert!(is_kv_events_subject(
        "namespace.x.component.y.endpoint.z.kv-events"
    ));
    assert!(is_kv_events_subject("namespace.x.component.y.kv_events"));
    assert!(!is_kv_events_subject("namespace.x.component.y.kv_metrics"));
    assert!(!is_kv_events_subject(
        "namespace.x.component.y.kv-events.extra"
    ));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_kv_message(&bytes, 1 << 20);
        let _ = decode_router_event_json(&bytes, 1 << 20);
        let _ = decode_zmq_frame(&bytes, 1 << 20);
    }

    #[test]
    fn mutated_golden_bytes_never_panic(idx in 0usize..4096, byte in any::<u8>(), cut in 0usize..4096) {
        let g = Golden::load();
        for case in g.list("dynamo") {
            let mut bytes = golden::hex(&case["hex"]);
            if !bytes.is_empty() {
                let i = idx % bytes.len();
                bytes[i] = byte;
                bytes.truncate(cut % (bytes.len() + 1));
            }
            let _ = decode_kv_message(&bytes, 1 << 20);
        }
    }
}
