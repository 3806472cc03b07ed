//! libFuzzer entry of the `config` target (the body: `src/targets/config.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvgate_fuzz::targets::config::run(data));
