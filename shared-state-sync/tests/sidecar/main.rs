//! End-to-end tests of the `kvgate-sync` binary against a real `nats-server` (one per
//! test, JetStream on), vLLM-format ZMQ publishers, an in-test Kubernetes API server and
//! the hash vectors. One test binary
//! (fewer links on small machines). No wall-clock assertions: conditions are polled with
//! a 10 s limit.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

mod api_auth;
mod bench;
mod common;
mod config_errors;
mod dynamo_events;
mod explain;
mod hash_vectors;
#[cfg(feature = "kubernetes")]
mod kube_api;
#[cfg(feature = "kubernetes")]
mod kubernetes;
mod outage;
mod replica;
mod unix_socket;
mod vllm_zmq;
mod workers;
