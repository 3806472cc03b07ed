//! kvgate test support, shared by the end-to-end tests (`tests/e2e`), `make run` and the
//! benchmarks: a proxy-wasm host on wasmtime, launchers for real processes (Envoy, NATS,
//! the sidecar, mock workers), the mock engine behind the `mock-worker` binary, the
//! benchmarks behind `kvgate-bench` ([`bench`]), and the
//! reliability tooling (raw client, steady load, observers, soak) of [`faults`].

// Test support reads JSON documents with `value["key"]`, which yields Null instead of
// panicking on reads; slices are bounds-checked by construction here.
#![allow(clippy::indexing_slicing)]

pub mod bench;
pub mod faults;
pub mod host;
pub mod mock;
pub mod stack;
