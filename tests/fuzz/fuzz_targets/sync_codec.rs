//! libFuzzer entry of the `sync_codec` target (the body: `src/targets/sync_codec.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvgate_fuzz::targets::sync_codec::run(data));
