//! Tests of the vLLM stream against the independent golden vectors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::events::dynamo::golden::{self, Golden};

fn source(case: &Value) -> VllmSource {
    VllmSource {
        worker_id: golden::u64_of(&case["worker_id"]),
        block_size: golden::opt_u64(&case["block_size"]).map(|b| b as u32),
        default_dp_rank: golden::u64_of(&case["default_dp_rank"]) as u32,
    }
}

fn encoding(case: &Value) -> Encoding {
    match case["encoding"].as_str().unwrap() {
        "positional" => Encoding::ArrayLike,
        "tagged_map" => Encoding::TaggedMap,
        "map" => Encoding::Map,
        other => panic!("unknown encoding {other}"),
    }
}

#[test]
fn golden_batches_convert_to_their_meaning() {
    let g = Golden::load();
    let cases = g.list("vllm");
    assert!(cases.len() >= 18);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let topic = case["topic"].as_str().unwrap().as_bytes().to_vec();
        let seq = golden::hex(&case["seq_hex"]);
        let payload = golden::hex(&case["payload_hex"]);
        let msg = decode_multipart(&[&topic, &seq, &payload], 1 << 20)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(msg.seq, golden::u64_of(&case["seq"]), "{name}");
        assert_eq!(msg.topic, case["topic"].as_str().unwrap());
        assert_eq!(msg.batch.ts, case["ts"].as_f64().unwrap(), "{name}");
        assert_eq!(
            msg.batch.data_parallel_rank.map(u64::from),
            golden::opt_u64(&case["batch_dp_rank"]),
            "{name}"
        );
        let first = golden::u64_of(&case["first_event_id"]);
        let mut next = first;
        let events = to_kv_events(&msg.batch, &source(case), &mut next);
        let expected = golden::events(&case["events"]);
        assert_eq!(events, expected, "{name}");
        assert_eq!(next, first + expected.len() as u64, "{name}");
    }
}

#[test]
fn encoders_reproduce_canonical_golden_bytes() {
    let g = Golden::load();
    let mut checked = 0;
    for case in g.list("vllm").iter().filter(|c| c["canonical"] == true) {
        let name = case["name"].as_str().unwrap();
        let payload = golden::hex(&case["payload_hex"]);
        let batch = decode_batch(&payload, 1 << 20).unwrap();
        let encoded = encode_batch(&batch, encoding(case));
        assert_eq!(encoded, payload, "{name}");
        assert_eq!(decode_batch(&encoded, 1 << 20).unwrap(), batch, "{name}");
        checked += 1;
    }
    assert!(checked >= 14, "only {checked}");
}

#[test]
fn every_encoding_round_trips_every_batch() {
    let g = Golden::load();
    for case in g.list("vllm") {
        let mut batch = decode_batch(&golden::hex(&case["payload_hex"]), 1 << 20).unwrap();
        for ev in &mut batch.events {
            if let VllmEvent::BlockStored(s) = ev {
                s.mm_hashes.clear(); // not re-encoded
            }
        }
        for enc in [Encoding::ArrayLike, Encoding::TaggedMap, Encoding::Map] {
            let bytes = encode_batch(&batch, enc);
            assert_eq!(
                decode_batch(&bytes, 1 << 20).unwrap(),
                batch,
                "{} {enc:?}",
                case["name"]
            );
        }
    }
}

#[test]
fn replay_frames_match_golden() {
    let g = Golden::load();
    let replay = &g.0["vllm_replay"];
    let req = golden::hex(&replay["request"]["hex"]);
    let start = golden::u64_of(&replay["request"]["start_seq"]);
    assert_eq!(replay_request(start).as_slice(), req.as_slice());
    assert_eq!(decode_replay_request(&[&req]).unwrap(), start);
    assert_eq!(decode_replay_request(&[&[], &req]).unwrap(), start);
    for reply in replay["replies"].as_array().unwrap() {
        let frames: Vec<Vec<u8>> = reply["frames_hex"]
            .as_array()
            .unwrap()
            .iter()
            .map(golden::hex)
            .collect();
        let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
        let got = decode_replay_reply(&refs).unwrap();
        if reply["end"] == true {
            assert_eq!(got, ReplayReply::End);
        } else {
            let payload = golden::hex(&reply["payload_hex"]);
            assert_eq!(
                got,
                ReplayReply::Batch {
                    seq: golden::u64_of(&reply["seq"]),
                    payload: &payload
                }
            );
            let [s, p] = encode_replay_reply(golden::u64_of(&reply["seq"]), &payload);
            assert_eq!(decode_replay_reply(&[&s, &p]).unwrap(), got);
        }
    }
    let [s, p] = encode_replay_end();
    assert_eq!(decode_replay_reply(&[&s, &p]).unwrap(), ReplayReply::End);
}

#[test]
fn golden_malformed_messages_give_typed_errors() {
    let g = Golden::load();
    let mut checked = 0;
    for case in g.list("malformed") {
        let max = case["max_payload"].as_u64().map_or(1 << 20, |m| m as usize);
        let err = match case["decoder"].as_str().unwrap() {
            "vllm" => decode_batch(&golden::hex(&case["hex"]), max)
                .map(|_| ())
                .unwrap_err(),
            "vllm_seq" => parse_seq(&golden::hex(&case["hex"]))
                .map(|_| ())
                .unwrap_err(),
            "vllm_replay" => {
                let frames: Vec<Vec<u8>> = case["frames_hex"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(golden::hex)
                    .collect();
                let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
                decode_replay_reply(&refs).map(|_| ()).unwrap_err()
            }
            _ => continue,
        };
        golden::assert_error_kind(&err, case);
        checked += 1;
    }
    assert!(checked >= 20, "only {checked}");
}

#[test]
fn multipart_frames_round_trip() {
    let batch = VllmBatch {
        ts: 1.0,
        events: vec![VllmEvent::AllBlocksCleared],
        data_parallel_rank: None,
    };
    let frames = encode_multipart("kv", 9, encode_batch(&batch, Encoding::ArrayLike));
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let msg = decode_multipart(&refs, 1 << 20).unwrap();
    assert_eq!((msg.topic.as_str(), msg.seq, msg.batch), ("kv", 9, batch));
    assert!(decode_multipart(&refs[..2], 1 << 20).is_err());
}

#[test]
fn external_hash_folding_matches_vllm_int_form() {
    let digest: Vec<u8> = (1..=32).collect();
    assert_eq!(
        ExternalHash::Bytes(digest).to_u64(),
        u64::from_be_bytes([25, 26, 27, 28, 29, 30, 31, 32])
    );
    assert_eq!(ExternalHash::Bytes(Vec::new()).to_u64(), 0);
    assert_eq!(ExternalHash::Signed(-1).to_u64(), u64::MAX);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(batch) = decode_batch(&bytes, 1 << 20) {
            let src = VllmSource { worker_id: 1, block_size: None, default_dp_rank: 0 };
            let _ = to_kv_events(&batch, &src, &mut 0);
            let _ = encode_batch(&batch, Encoding::Map);
        }
        let _ = parse_seq(&bytes);
        let _ = decode_replay_reply(&[&bytes, &bytes]);
    }

    #[test]
    fn mutated_golden_batches_never_panic(idx in 0usize..4096, byte in any::<u8>(), cut in 0usize..4096) {
        let g = Golden::load();
        let src = VllmSource { worker_id: 1, block_size: Some(4), default_dp_rank: 0 };
        for case in g.list("vllm") {
            let mut bytes = golden::hex(&case["payload_hex"]);
            let i = idx % bytes.len();
            bytes[i] = byte;
            bytes.truncate(cut % (bytes.len() + 1));
            if let Ok(batch) = decode_batch(&bytes, 1 << 20) {
                let mut next = u64::MAX;
                let _ = to_kv_events(&batch, &src, &mut next);
            }
        }
    }
}

#[test]
fn each_rank_publishes_on_the_base_port_plus_its_offset() {
    assert_eq!(
        rank_endpoint("tcp://127.0.0.1:5557", 2).as_deref(),
        Some("tcp://127.0.0.1:5559")
    );
    assert_eq!(
        rank_endpoint("tcp://[::1]:5557", 0).as_deref(),
        Some("tcp://[::1]:5557")
    );
    assert_eq!(
        rank_endpoint("tcp://127.0.0.1:0", 3).as_deref(),
        Some("tcp://127.0.0.1:0")
    );
    assert_eq!(rank_endpoint("ipc:///x", 0), None);
    assert_eq!(rank_endpoint("tcp://h:65535", 1), None);
    assert_eq!(rank_endpoint("tcp://h:x", 1), None);
    assert_eq!(rank_endpoint("tcp://:1", 0), None);
}
