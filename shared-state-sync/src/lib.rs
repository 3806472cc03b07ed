//! kvgate-sync: the native sidecar of the kvgate filter.
//!
//! It follows every source of KV-cache state — Dynamo's event plane on NATS (with a
//! JetStream stream for restarts), vLLM's native ZMQ publishers, worker load reports
//! and other gateway replicas' bookkeeping — keeps the KV index with the shared core
//! (`kvgate-core`), and serves it to the filter over loopback HTTP as versioned
//! snapshots and deltas (`kvgate_core::sync`).
//!
//! ```text
//!  NATS kv-events ──(JetStream durable)──┐
//!  vLLM ZMQ PUB (+ replay DEALER) ───────┤            ┌── GET /v1/sync (long poll)
//!  NATS kv_metrics ──────────────────────┼──► Hub ────┼── GET /v1/models/files
//!  NATS announcements / workers file ────┤  (index,   ├── POST /v1/bookkeeping ──► NATS replica sync
//!  Kubernetes InferencePool + pods ──────┤   log,     │
//!  NATS active_sequences (replicas) ─────┘            └── /healthz /readyz /metrics /v1/state
//!                                            workers, loads)
//! ```
//!
//! With `--epp` it also serves the filter's engine as a Gateway API Inference Extension
//! endpoint picker (Envoy ext_proc over gRPC, [`epp`]) for gateways without the filter.
//!
//! Each module is one source or sink; [`hub`] holds the state they share.

pub mod cli;
pub mod client;
pub mod discovery;
#[cfg(feature = "epp")]
pub mod epp;
#[cfg(feature = "explain")]
pub mod explain;
pub mod hash_cmd;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod models;
pub mod nats;
pub mod serve;
pub mod settings;
pub mod time;
pub mod workers;
pub mod zmq;
