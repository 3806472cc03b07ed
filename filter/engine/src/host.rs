//! What the engine needs from whoever runs it — Envoy's proxy-wasm host calls, the
//! sidecar's `explain`, a virtual-time benchmark or a unit test — said once, as a trait.

use crate::metric::Metric;

/// A shared-data compare-and-swap token (proxy-wasm's `cas`).
pub type Cas = u32;

/// The id the host gives an outgoing HTTP call; its answer comes back with it.
pub type CallId = u32;

/// Why a shared-data write did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// Another writer changed the value since it was read: read again and retry.
    #[error("shared data changed since it was read")]
    CasMismatch,
    /// The host refused the write.
    #[error("shared data write failed: {0}")]
    Failed(String),
}

/// Why an HTTP call could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot call cluster `{cluster}`: {reason}")]
pub struct CallError {
    /// The cluster asked for.
    pub cluster: String,
    /// What the host said.
    pub reason: String,
}

/// An outgoing HTTP call (to the sidecar).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpCall<'a> {
    /// Upstream cluster name.
    pub cluster: &'a str,
    /// `:authority`.
    pub authority: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `:path` with query.
    pub path: &'a str,
    /// Extra request headers.
    pub headers: &'a [(&'a str, &'a str)],
    /// Request body.
    pub body: Option<&'a [u8]>,
    /// Time limit.
    pub timeout_ms: u64,
}

/// The answer to an [`HttpCall`], as the host delivers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallResponse<'a> {
    /// The HTTP status, or None when the call failed without one (reset, timeout).
    pub status: Option<u16>,
    /// The response body.
    pub body: &'a [u8],
}

/// How a metric moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricOp {
    /// Add to a counter.
    Count(u64),
    /// Record one value in a histogram, or set a gauge to it.
    Record(u64),
    /// Move a gauge (shared by every VM of the process) by this much.
    Shift(i64),
}

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Detail for debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something degraded.
    Warn,
    /// Something failed.
    Error,
    /// The filter cannot work.
    Critical,
}

/// What the engine needs from the world. Envoy: proxy-wasm host calls; tests and the
/// bench: [`crate::testing::FakeHost`]. Every method takes `&self`: a host is a handle.
pub trait Host {
    /// Wall clock, milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    /// A shared-data value and its CAS token.
    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, Cas)>;
    /// Writes a shared-data value; with `cas`, only if nobody wrote it since that read.
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SharedError>;
    /// Sends an HTTP call; its answer arrives through `Vm::on_response` with the id.
    fn http_call(&self, call: &HttpCall<'_>) -> Result<CallId, CallError>;
    /// Moves a metric.
    fn metric(&self, metric: Metric, op: MetricOp);
    /// Writes a log line.
    fn log(&self, level: Level, message: &str);
    /// A variable of the VM's environment (Envoy: `vm_config.environment_variables`).
    fn env_var(&self, name: &str) -> Option<String>;
    /// The size of this VM's own Wasm linear memory in bytes (pages × 64 KiB), where the
    /// host has one; `None` natively.
    fn linear_memory_bytes(&self) -> Option<u64> {
        None
    }
}

/// Envoy's shared-data write on an in-memory map (for native hosts): a CAS of 0 (or none)
/// writes unconditionally, any other must equal the key's current CAS; every write gives
/// the key a new, non-zero CAS.
pub fn shared_set_in(
    map: &mut std::collections::HashMap<String, (Vec<u8>, Cas)>,
    key: &str,
    value: &[u8],
    cas: Option<Cas>,
) -> Result<(), SharedError> {
    let cur = map.get(key).map(|(_, c)| *c);
    if let Some(c) = cas.filter(|c| *c != 0) {
        if cur != Some(c) {
            return Err(SharedError::CasMismatch);
        }
    }
    let next = cur.unwrap_or(0).wrapping_add(1).max(1);
    map.insert(key.to_string(), (value.to_vec(), next));
    Ok(())
}
