//! libFuzzer entry of the `prompt` target (the body: `src/targets/prompt.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvgate_fuzz::targets::prompt::run(data));
