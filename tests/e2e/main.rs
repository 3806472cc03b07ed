//! End-to-end tests of kvgate, as one test binary: the built `.wasm` in our own
//! proxy-wasm host and in real Envoy, the sidecar with a real nats-server, mock workers.
