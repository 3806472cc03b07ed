//! Fuzz target `vllm_events`: vLLM's native KV-event stream on arbitrary bytes.
//!
//! The whole input is a `KVEventBatch` payload for `decode_batch`; split at
//! [`crate::FRAME_SEP`] it is also a ZMQ multipart (`[topic, seq, payload]`) and the
//! frames of a replay request or reply. None of the decoders may panic. A decoded batch is
//! converted to KV events (`to_kv_events`, as the sidecar does) and applied to a `KvIndexer`.
//! Re-encoding is checked in every encoding: decode → encode → decode → encode gives the same
//! bytes, and the re-decoded batch converts to the same KV events (multimodal hashes, which
//! the encoders do not write, are dropped first).

use crate::{split_frames, MAX_PAYLOAD};
use kvgate_core::events::vllm::{self, Encoding, VllmBatch, VllmEvent, VllmSource};
use kvgate_core::events::KvEvent;
use kvgate_core::index::KvIndexer;

const SOURCES: [VllmSource; 2] = [
    VllmSource {
        worker_id: 7,
        block_size: None,
        default_dp_rank: 0,
    },
    VllmSource {
        worker_id: u64::MAX,
        block_size: Some(16),
        default_dp_rank: u32::MAX,
    },
];

fn convert(batch: &VllmBatch) -> Vec<Vec<KvEvent>> {
    SOURCES
        .iter()
        .map(|source| {
            let mut next = u64::MAX - 1;
            vllm::to_kv_events(batch, source, &mut next)
        })
        .collect()
}

/// The batch as the encoders can write it: without multimodal hashes.
fn without_mm(batch: &VllmBatch) -> VllmBatch {
    let mut b = batch.clone();
    for ev in &mut b.events {
        if let VllmEvent::BlockStored(s) = ev {
            s.mm_hashes.clear();
        }
    }
    b
}

fn batch(payload: &[u8]) {
    let Ok(batch) = vllm::decode_batch(payload, MAX_PAYLOAD) else {
        return;
    };
    let events = convert(&batch);
    let mut indexer = KvIndexer::new();
    for ev in events.iter().flatten() {
        indexer.apply(ev);
    }
    let expected = convert(&without_mm(&batch));
    for encoding in [Encoding::ArrayLike, Encoding::TaggedMap, Encoding::Map] {
        let first = vllm::encode_batch(&batch, encoding);
        let again = match vllm::decode_batch(&first, MAX_PAYLOAD) {
            Ok(b) => b,
            Err(e) => panic!("{encoding:?} encoding of a decoded batch does not decode: {e}"),
        };
        assert_eq!(
            vllm::encode_batch(&again, encoding),
            first,
            "{encoding:?} encoding is not a fixed point"
        );
        assert_eq!(
            convert(&again),
            expected,
            "{encoding:?} re-encoding changes the KV events"
        );
    }
}

fn multipart(frames: &[&[u8]]) {
    let Ok(msg) = vllm::decode_multipart(frames, MAX_PAYLOAD) else {
        return;
    };
    let payload = vllm::encode_batch(&msg.batch, Encoding::ArrayLike);
    let out = vllm::encode_multipart(&msg.topic, msg.seq, payload);
    let out: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
    match vllm::decode_multipart(&out, MAX_PAYLOAD) {
        Ok(again) => assert!(again.topic == msg.topic && again.seq == msg.seq),
        Err(e) => panic!("re-encoded multipart does not decode: {e}"),
    }
}

fn replay(frames: &[&[u8]]) {
    if let Ok(start) = vllm::decode_replay_request(frames) {
        let req = vllm::replay_request(start);
        assert_eq!(vllm::decode_replay_request(&[&req]), Ok(start));
    }
    match vllm::decode_replay_reply(frames) {
        Ok(vllm::ReplayReply::Batch { seq, payload }) => {
            batch(payload);
            let out = vllm::encode_replay_reply(seq, payload);
            let out: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
            assert_eq!(
                vllm::decode_replay_reply(&out),
                Ok(vllm::ReplayReply::Batch { seq, payload })
            );
        }
        Ok(vllm::ReplayReply::End) => {
            let out = vllm::encode_replay_end();
            let out: Vec<&[u8]> = out.iter().map(Vec::as_slice).collect();
            assert_eq!(vllm::decode_replay_reply(&out), Ok(vllm::ReplayReply::End));
        }
        Err(_) => {}
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    batch(data);
    let frames = split_frames(data);
    multipart(&frames);
    replay(&frames);
}
