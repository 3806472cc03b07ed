//! The fuzz targets' bodies, one module each, as plain functions: libFuzzer runs them from
//! `fuzz_targets/` (`make fuzz`), and `cargo test` replays their seeds and seeded
//! mutations natively (`tests/replay.rs`).

pub mod config;
pub mod dynamo_events;
pub mod index_ops;
pub mod prompt;
pub mod sync_codec;
pub mod template;
pub mod vllm_events;
