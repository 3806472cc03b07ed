//! kvgate-core: the routing brain shared by the proxy-wasm filter and the sidecar.
//!
//! Everything here is host-free: no proxy-wasm, no tokio, no I/O, no clocks and no
//! global randomness. Time arrives as milliseconds, randomness as a seeded RNG, so the
//! same code behaves identically in Envoy's V8, in the native sidecar and in unit tests.
//!
//! The request path is: token ids → [`hash`] (Dynamo-compatible block and sequence
//! hashes) → [`index`] (which worker holds how many leading blocks) → [`score`]
//! (Dynamo's cost formula and selection) → [`route`] (aggregated / disaggregated /
//! data-parallel decision) → [`load`] (request bookkeeping, with [`prefill`] decaying queued prefill by time). [`events`] decodes the KV
//! event wire formats that feed the index, [`sync`] ships the index from the sidecar to
//! the filter, [`workers`] describes the fleet and [`config`] validates every setting.

pub mod backoff;
pub mod config;
pub mod events;
pub mod hash;
pub mod index;
pub mod load;
pub mod prefill;
pub mod route;
pub mod score;
pub mod sync;
pub mod types;
pub mod workers;

pub use types::{DpRank, WorkerId, WorkerKey};
