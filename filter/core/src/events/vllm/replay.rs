//! Frames of vLLM's replay socket (ZMQ ROUTER, `replay_endpoint`): a subscriber that
//! saw a `seq` gap asks for every buffered batch from a start sequence on.
//!
//! ```text
//! request  [start_seq: u64 BE]                 (REQ; a DEALER sends ["", start_seq])
//! reply    [seq: u64 BE, payload] ...          (vLLM; a DEALER sees ["", seq, payload])
//!          ["", topic, seq, payload] ...       (TensorRT-LLM and newer publishers add the topic)
//! end      [-1 as i64 BE = ff ff ff ff ff ff ff ff, ""]
//! ```
//! A first reply above the requested sequence means the buffer no longer holds the
//! missing batches: the stream must be rebuilt some other way.

use super::{bad, parse_seq};
use crate::events::EventError;

/// The sequence bytes that end a replay (`-1` as a big-endian `i64`).
pub const REPLAY_END_SEQ: [u8; 8] = [0xff; 8];

/// The request frame asking for every buffered batch from `start_seq` on.
pub fn replay_request(start_seq: u64) -> [u8; 8] {
    start_seq.to_be_bytes()
}

/// The start sequence of a request as a ROUTER receives it after the identity frame:
/// `[start]` or `["", start]`.
pub fn decode_replay_request(frames: &[&[u8]]) -> Result<u64, EventError> {
    match frames {
        [start] | [[], start] => parse_seq(start),
        _ => Err(bad(format!("replay request of {} frames", frames.len()))),
    }
}

/// One reply of the replay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayReply<'a> {
    /// A buffered batch.
    Batch {
        /// Its sequence number.
        seq: u64,
        /// The batch payload (decode with [`super::decode_batch`]).
        payload: &'a [u8],
    },
    /// The end of the replay.
    End,
}

/// Decodes one reply in any of the shapes above.
pub fn decode_replay_reply<'a>(frames: &[&'a [u8]]) -> Result<ReplayReply<'a>, EventError> {
    let body = match frames {
        [[], rest @ ..] if frames.len() >= 3 => rest,
        _ => frames,
    };
    let (seq, payload) = match body {
        [seq, payload] | [_, seq, payload] => (*seq, *payload),
        _ => return Err(bad(format!("replay reply of {} frames", frames.len()))),
    };
    let is_end = seq == REPLAY_END_SEQ.as_slice();
    match (is_end, payload.is_empty()) {
        (true, true) => Ok(ReplayReply::End),
        (true, false) => Err(bad("replay end marker with a payload")),
        (false, true) => Err(bad("replay reply without a payload")),
        (false, false) => Ok(ReplayReply::Batch {
            seq: parse_seq(seq)?,
            payload,
        }),
    }
}

/// The frames of one replayed batch, as the ROUTER sends them after the client's
/// identity and the empty delimiter: `[seq, payload]`.
pub fn encode_replay_reply(seq: u64, payload: &[u8]) -> [Vec<u8>; 2] {
    [seq.to_be_bytes().to_vec(), payload.to_vec()]
}

/// The frames ending a replay: `[ff x 8, ""]`.
pub fn encode_replay_end() -> [Vec<u8>; 2] {
    [REPLAY_END_SEQ.to_vec(), Vec::new()]
}
