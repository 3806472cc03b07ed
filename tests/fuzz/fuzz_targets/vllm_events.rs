//! libFuzzer entry of the `vllm_events` target (the body: `src/targets/vllm_events.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvgate_fuzz::targets::vllm_events::run(data));
