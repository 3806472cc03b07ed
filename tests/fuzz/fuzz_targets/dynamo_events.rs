//! libFuzzer entry of the `dynamo_events` target (the body: `src/targets/dynamo_events.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvgate_fuzz::targets::dynamo_events::run(data));
