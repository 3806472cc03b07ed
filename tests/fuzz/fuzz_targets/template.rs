//! libFuzzer entry of the `template` target (the body: `src/targets/template.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvgate_fuzz::targets::template::run(data));
