//! libFuzzer entry of the `index_ops` target (the body: `src/targets/index_ops.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|steps: Vec<kvgate_fuzz::targets::index_ops::Step>| {
    kvgate_fuzz::targets::index_ops::run(steps)
});
