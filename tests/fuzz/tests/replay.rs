//! The fuzz targets, natively and without libFuzzer: every target runs on every seed the
//! seed writer makes from the real fixtures, then on seeded mutations of them (bytes
//! flipped, cut, repeated, spliced with another seed). This is the regression half of the
//! fuzzers in `cargo test`; the coverage-guided search is `make fuzz-smoke` / `make fuzz`.
//! A target that panics fails the test with the target, the input's origin and its bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kvgate_fuzz::targets;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Mutations per target (the tokenizing targets are the slow ones).
fn mutations(target: &str) -> usize {
    match target {
        "prompt" | "template" => 500,
        _ => 20_000,
    }
}

/// Bytes that matter to JSON, MessagePack and the frame separator.
const TOKENS: &[u8] = b"\"{}[],:0\\\xc1\xff";

/// Largest mutated input (libFuzzer's `-max_len` of the targets is 4096–8192).
const MAX_LEN: usize = 8192;

fn run(target: &str, data: &[u8]) {
    match target {
        "prompt" => targets::prompt::run(data),
        "template" => targets::template::run(data),
        "dynamo_events" => targets::dynamo_events::run(data),
        "vllm_events" => targets::vllm_events::run(data),
        "sync_codec" => targets::sync_codec::run(data),
        "config" => targets::config::run(data),
        "index_ops" => targets::index_ops::run_bytes(data),
        other => panic!("unknown target {other}"),
    }
}

fn seeds(dir: &Path, target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join(target))
        .unwrap_or_else(|e| panic!("no seeds for {target}: {e}"))
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn mutate(rng: &mut fastrand::Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = data.to_vec();
    for _ in 0..rng.usize(1..=4) {
        match rng.u8(..6) {
            0 if !d.is_empty() => {
                let i = rng.usize(..d.len());
                d[i] ^= 1 << rng.u8(..8);
            }
            1 if !d.is_empty() => {
                let i = rng.usize(..d.len());
                d[i] = rng.u8(..);
            }
            2 => d.truncate(rng.usize(..=d.len())),
            3 if !d.is_empty() => {
                let a = rng.usize(..d.len());
                let b = rng.usize(a..=d.len().min(a + 64));
                let chunk = d[a..b].to_vec();
                let at = rng.usize(..=d.len());
                d.splice(at..at, chunk);
            }
            4 if !other.is_empty() => {
                let a = rng.usize(..other.len());
                let b = rng.usize(a..=other.len());
                let at = rng.usize(..=d.len());
                d.splice(at..at, other[a..b].iter().copied());
            }
            _ => {
                let at = rng.usize(..=d.len());
                d.insert(at, TOKENS[rng.usize(..TOKENS.len())]);
            }
        }
    }
    d.truncate(MAX_LEN);
    d
}

#[test]
fn every_target_survives_its_seeds_and_seeded_mutations() {
    let dir = tempfile::tempdir().unwrap();
    let (files, _) = kvgate_fuzz::seeds::write_all(dir.path()).unwrap();
    assert!(files > 50, "only {files} seeds written");
    for target in [
        "prompt",
        "template",
        "dynamo_events",
        "vllm_events",
        "sync_codec",
        "config",
        "index_ops",
    ] {
        let seeds = seeds(dir.path(), target);
        assert!(!seeds.is_empty(), "{target}: no seeds");
        let mut rng = fastrand::Rng::with_seed(0x6b76_6761_7465);
        let mut inputs: Vec<(String, Vec<u8>)> = seeds.clone();
        for i in 0..mutations(target) {
            let (name, a) = &seeds[rng.usize(..seeds.len())];
            let (_, b) = &seeds[rng.usize(..seeds.len())];
            inputs.push((format!("mutation {i} of {name}"), mutate(&mut rng, a, b)));
        }
        for (origin, data) in &inputs {
            if catch_unwind(AssertUnwindSafe(|| run(target, data))).is_err() {
                panic!("{target} panicked on {origin}: {data:02x?}");
            }
        }
        eprintln!("{target}: {} inputs", inputs.len());
    }
}
