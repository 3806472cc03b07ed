//! kvgate-engine: everything the kvgate filter decides, as plain Rust generic over a small
//! [`Host`] trait (shared data with CAS, HTTP calls to the sidecar, clock, metrics, log).
//! No proxy-wasm: Envoy runs it through `kvgate-filter`'s glue, the sidecar's `explain`
//! and the benchmarks run it natively, and every branch is a native unit test against
//! [`testing::FakeHost`].
//!
//! ```text
//! glue callback ─► Stream (request_headers / request_body / decide / response_* / done)
//!                    │
//!                    ▼
//!                   Vm ── on_tick / on_response ──► Sidecar (calls, bookkeeping queue, backoff)
//!                    │                               shared (lease, ring, snapshot, loads, models)
//!                    ▼
//!                  Engine ── decide: prepare (parse → template → tokenize → hash → overlaps)
//!                             → choose (cost formula) → book → Outcome
//! ```

pub mod body;
mod decide;
mod engine;
pub mod fleet;
pub mod headers;
mod health;
pub mod held;
pub mod host;
pub mod ledger;
mod lifecycle;
pub mod metric;
pub mod metrics;
pub mod model_wait;
mod models;
pub mod outcome;
pub mod predict;
pub mod shared;
pub mod sidecar;
pub mod stream;
mod sync;
pub mod testing;
pub mod vm;

pub use decide::{routing_headers, DecideInput, Prepared};
pub use engine::Engine;
pub use fleet::{Fleet, Served};
pub use held::StreamAction;
pub use host::Host;
pub use lifecycle::sse_events;
pub use models::{ModelFiles, ModelLoadError, ModelState};
pub use outcome::{Degraded, Early, ForwardReason, Outcome, Reply, Route, Timings};
pub use stream::{HeadersStep, Next, Stream, Verdict};
pub use sync::{SyncOutcome, MAX_FRAME_BYTES};
pub use vm::{StartError, Vm, VmConfig};

#[cfg(test)]
mod tests;
