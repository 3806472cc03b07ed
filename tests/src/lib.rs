//! kvgate test support, shared by the end-to-end tests (`tests/e2e`), `make run` and the
//! benchmarks: a proxy-wasm host on wasmtime, launchers for real processes (Envoy, NATS,
//! the sidecar, mock workers) and the mock engine behind the `mock-worker` binary.

pub mod host;
pub mod mock;
pub mod stack;
