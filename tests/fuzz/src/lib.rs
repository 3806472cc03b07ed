//! The kvgate fuzz targets ([`targets`]), their seed corpus ([`seeds`]) and the helpers they
//! share: where the repository's fixtures and the Qwen3 model files are, and how one fuzz
//! input carries several ZMQ frames. libFuzzer drives the targets through `fuzz_targets/`
//! (`make fuzz`, feature `libfuzzer`); `cargo test` replays the seeds and seeded mutations
//! of them natively (`tests/replay.rs`).
//!
//! Nothing here re-implements kvgate logic: the targets call the crates' public API and only
//! check properties of what comes back.

use std::path::PathBuf;

pub mod seeds;
pub mod targets;

/// Separates the frames of a multi-frame input (ZMQ multipart, replay frames). `0xc1` is
/// never used in MessagePack, so the separator does not occur in well-formed payloads.
pub const FRAME_SEP: &[u8] = &[0xc1, 0xc1];

/// Payload limit handed to the decoders (the sidecar's default is the same 16 MiB).
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Splits `data` at every [`FRAME_SEP`].
pub fn split_frames(data: &[u8]) -> Vec<&[u8]> {
    let mut frames = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(FRAME_SEP.len()).position(|w| w == FRAME_SEP) {
        let (frame, tail) = rest.split_at(at);
        frames.push(frame);
        rest = tail.get(FRAME_SEP.len()..).unwrap_or_default();
    }
    frames.push(rest);
    frames
}

/// Joins frames with [`FRAME_SEP`] (the inverse of [`split_frames`]).
pub fn join_frames<T: AsRef<[u8]>>(frames: &[T]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(FRAME_SEP);
        }
        out.extend_from_slice(f.as_ref());
    }
    out
}

/// The repository root (this crate lives in `tests/fuzz`); `KVGATE_REPO` overrides it.
pub fn repo_root() -> PathBuf {
    match std::env::var_os("KVGATE_REPO") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}

/// The Qwen3-0.6B model directory: `KVGATE_MODEL_DIR`, else `target/models/Qwen3-0.6B` of the
/// repository (fetched by `make setup`).
pub fn model_dir() -> PathBuf {
    match std::env::var_os("KVGATE_MODEL_DIR") {
        Some(p) => PathBuf::from(p),
        None => repo_root().join("target/models/Qwen3-0.6B"),
    }
}

/// Reads `tokenizer.json` and `tokenizer_config.json` of the model, or stops the process with
/// a message saying how to get them (a fuzz target without its model must not "pass").
pub fn model_files() -> (Vec<u8>, Vec<u8>) {
    let dir = model_dir();
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).unwrap_or_else(|e| {
            eprintln!(
                "kvgate-fuzz: cannot read {}: {e}\n\
                 The prompt and template targets need the Qwen3-0.6B tokenizer: run `make setup` \
                 (it fetches it into target/models/Qwen3-0.6B) or set KVGATE_MODEL_DIR.",
                path.display()
            );
            std::process::abort()
        })
    };
    (read("tokenizer.json"), read("tokenizer_config.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frames: [&[u8]; 3] = [b"topic", &[0, 0, 0, 0, 0, 0, 0, 1], b"\x93\xcb"];
        assert_eq!(split_frames(&join_frames(&frames)), frames);
        assert_eq!(split_frames(b""), vec![b"" as &[u8]]);
    }
}
