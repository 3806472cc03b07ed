//! A proxy-wasm test host on wasmtime: loads a real `wasm32-wasip1` proxy-wasm module (Rust
//! SDK, ABI `proxy_abi_version_0_2_1`) and lets tests drive it like Envoy does, then assert
//! what the filter did.
//!
//! The host reproduces Envoy's semantics where filters can observe them (status codes,
//! shared-data CAS, queue ownership, header/body availability per phase, body buffering,
//! `set_buffer_bytes` ranges, HTTP call validation), so a filter that misbehaves in Envoy
//! misbehaves here too — typically as an SDK panic, reported as [`HostError::Trap`].
//!
//! # Pieces
//!
//! - [`FilterModule::load`]: compiles a `.wasm` once per process (cached by content hash;
//!   a 4 MB module takes seconds to compile) and links the host functions.
//! - [`SharedStore`]: process-wide state shared by several [`Vm`]s (simulated Envoy workers):
//!   shared data with CAS, shared queues, metrics by name, and the controllable [`TestClock`].
//! - [`Vm`]: one VM with its root context. [`Vm::new`] runs `_initialize`,
//!   `proxy_on_context_create(root)`, `proxy_on_vm_start` and `proxy_on_configure`; then
//!   [`tick`](Vm::tick) / [`advance_time`](Vm::advance_time), answer HTTP calls
//!   ([`http_calls`](Vm::http_calls), [`http_call_response`](Vm::http_call_response),
//!   [`http_call_failure`](Vm::http_call_failure)), deliver queue notifications
//!   ([`deliver_queue_ready`](Vm::deliver_queue_ready)), read [`logs`](Vm::logs) and metrics.
//! - [`Stream`]: one HTTP stream: `request_headers`, `request_body`, `request_trailers`,
//!   `response_*`, then [`finish`](Stream::finish) (`proxy_on_log`, `proxy_on_done`,
//!   `proxy_on_delete`); accessors for the headers/body as modified by the filter, the local
//!   response, properties, logs and HTTP calls of the stream.
//!
//! A guest trap (e.g. a panic under `panic = "abort"`) is returned as [`HostError::Trap`] with
//! the panic message the SDK logged; the VM is dead afterwards ([`HostError::VmDead`]).
//! Set `KVGATE_HOST_LOG=1` to echo every captured log line to stderr.
//!
//! # Envoy behaviour worth knowing when writing tests
//!
//! - Request headers are writable only until `proxy_on_request_headers` returns `Continue`
//!   (or the filter calls `proxy_continue_stream`); "buffer the body, then set a header" needs
//!   `Pause` from the headers callback (and `allow_on_headers_stop_iteration` in Envoy).
//! - `proxy_on_request_body` gets the total buffered size while the filter keeps returning
//!   `Pause`; `set_buffer_bytes(0, len, data)` replaces the buffer, `start >= len` appends,
//!   anything else is `BadArgument`.
//! - The plugin configuration is readable only during `proxy_on_configure`.
//! - HTTP calls need `:method`, `:path` and `:authority`; with [`VmOptions::clusters`] set, an
//!   unknown upstream is `BadArgument`. A failed call has no response header map.
//! - `on_queue_ready` goes to the root context of the VM that registered the queue last.
//! - Clock and randomness are deterministic: the clock starts at 2025-01-01T00:00:00Z and only
//!   moves with [`TestClock::advance`] / [`Vm::advance_time`].
//!
//! # Example
//!
//! ```no_run
//! use kvgate_host::{Action, FilterModule, HostError, SharedStore, Vm};
//!
//! fn example() -> Result<(), HostError> {
//!     // Compiled once per process, whatever the number of tests.
//!     let module = FilterModule::load("target/wasm32-wasip1/release/kvgate_filter.wasm")?;
//!     let shared = SharedStore::new();
//!     let vm = Vm::new(&module, b"vm configuration", b"plugin configuration", shared.clone())?;
//!
//!     // The root context polls on its tick; answer its HTTP call.
//!     vm.tick()?;
//!     for call in vm.http_calls() {
//!         assert_eq!(call.upstream, "sidecar");
//!         vm.http_call_response(call.token, &[(":status", "200")], b"{}")?;
//!     }
//!
//!     // One request, body in two chunks.
//!     let mut s = vm.new_stream();
//!     let headers = [(":method", "POST"), (":path", "/v1/chat/completions"), (":authority", "gw")];
//!     assert_eq!(s.request_headers(&headers, false)?, Action::Pause);
//!     assert_eq!(s.request_body(br#"{"model":"m","#, false)?, Action::Pause);
//!     assert_eq!(s.request_body(br#""messages":[]}"#, true)?, Action::Continue);
//!     let endpoint = s.request_header("x-gateway-destination-endpoint");
//!     assert_eq!(endpoint.as_deref(), Some("10.0.0.7:8000"));
//!     assert!(s.local_response().is_none());
//!     s.response_headers(&[(":status", "200")], true)?;
//!     s.finish()?; // proxy_on_log, proxy_on_done, proxy_on_delete
//!
//!     // Events the filter queued for its root context, logs and metrics.
//!     vm.deliver_queue_ready()?;
//!     assert!(vm.has_log("routed"));
//!     assert_eq!(vm.metric("kvgate_requests").map(|m| m.value()), Some(1));
//!     Ok(())
//! }
//! ```

// Guest memory slices are bounds-checked by construction here.
#![allow(clippy::indexing_slicing)]

mod abi;
mod abi_data;
mod codec;
mod driver;
mod engine;
mod error;
mod memory;
mod shared;
mod state;
mod stream;
mod types;
mod wasi;

#[cfg(test)]
mod tests;

pub use codec::{decode_pairs, encode_pairs, property_path, CodecError, HeaderMap, RawPairs};
pub use driver::{Vm, VmOptions};
pub use engine::FilterModule;
pub use error::HostError;
pub use shared::{MetricValue, SharedStore, SharedValue, TestClock, DEFAULT_CLOCK_START_SECS};
pub use state::ROOT_CONTEXT_ID;
pub use stream::Stream;
pub use types::{
    Action, BufferType, HttpCall, LocalResponse, LogLevel, LogLine, LogSource, MapType, MetricType,
    Status, StreamType,
};
pub use wasi::ProcExit;
