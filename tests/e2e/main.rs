//! End-to-end tests of kvgate, as one test binary: the built `.wasm` in our own
//! proxy-wasm host (wasmtime) and in real Envoy with real nats-server, the kvgate-sync
//! sidecar and mock workers on loopback. `make test` builds the parts and exports their
//! paths; run alone with `make e2e` (or `cargo test --workspace --test e2e` after `make build`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod aborts;
mod common;
mod envoy_sidecar;
mod envoy_static;
mod epp;
mod faults;
mod fleet;
mod held;
mod host_filter;
mod hostile;
mod lora;
mod model_wait;
mod security;
mod soak;
