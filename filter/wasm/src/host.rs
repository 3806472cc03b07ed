//! The engine's [`Host`] on proxy-wasm host calls: shared data, HTTP calls, the clock,
//! metrics (defined on first use, ids kept per VM) and the log.

use kvgate_engine::host::{CallError, CallId, Cas, Host, HttpCall, Level, MetricOp, SharedError};
use kvgate_engine::metrics::{Metric, MetricKind};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

thread_local! {
    static METRIC_IDS: RefCell<HashMap<Metric, Option<u32>>> = RefCell::new(HashMap::new());
}

/// proxy-wasm as the engine's host (a handle: all state lives in the host or per VM).
pub struct ProxyHost;

fn metric_id(m: Metric) -> Option<u32> {
    METRIC_IDS.with(|ids| {
        *ids.borrow_mut().entry(m).or_insert_with(|| {
            let kind = match m.kind() {
                MetricKind::Counter => MetricType::Counter,
                MetricKind::Gauge => MetricType::Gauge,
                MetricKind::Histogram => MetricType::Histogram,
            };
            hostcalls::define_metric(kind, &m.name()).ok()
        })
    })
}

impl Host for ProxyHost {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(v), cas)) => Some((v, cas.unwrap_or(0))),
            _ => None,
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SharedError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedError::CasMismatch),
            Err(e) => Err(SharedError::Failed(format!("{e:?}"))),
        }
    }

    fn http_call(&self, call: &HttpCall<'_>) -> Result<CallId, CallError> {
        let mut headers = vec![
            (":method", call.method),
            (":path", call.path),
            (":authority", call.authority),
        ];
        headers.extend_from_slice(call.headers);
        hostcalls::dispatch_http_call(
            call.cluster,
            headers,
            call.body,
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .map_err(|e| CallError {
            cluster: call.cluster.to_string(),
            reason: format!("{e:?}"),
        })
    }

    fn env_var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn linear_memory_bytes(&self) -> Option<u64> {
        Some(core::arch::wasm32::memory_size(0) as u64 * 65_536)
    }

    fn metric(&self, metric: Metric, op: MetricOp) {
        let Some(id) = metric_id(metric) else { return };
        let _ = match op {
            MetricOp::Count(by) => {
                hostcalls::increment_metric(id, i64::try_from(by).unwrap_or(i64::MAX))
            }
            MetricOp::Shift(by) => hostcalls::increment_metric(id, by),
            MetricOp::Record(v) => hostcalls::record_metric(id, v),
        };
    }

    fn log(&self, level: Level, message: &str) {
        // proxy-wasm's logger (installed by `set_log_level`) writes to Envoy's log; it has
        // no level above error, so critical goes straight to the host call.
        match level {
            Level::Debug => log::debug!("{message}"),
            Level::Info => log::info!("{message}"),
            Level::Warn => log::warn!("{message}"),
            Level::Error => log::error!("{message}"),
            Level::Critical => {
                let _ = hostcalls::log(LogLevel::Critical, message);
            }
        }
    }
}

/// A random u64 from the host (WASI `random_get`).
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return ProxyHost.now_ms().rotate_left(17) ^ 0x9E37_79B9_7F4A_7C15;
    }
    u64::from_le_bytes(b)
}

/// Reads the VM configuration from Envoy in chunks (`proxy_get_buffer_bytes` with an
/// offset), so a VM never holds the whole configuration — a model's files are only
/// materialised when a VM that tokenizes loads it.
pub struct VmConfigReader {
    offset: usize,
}

/// Bytes asked for per host call.
const CHUNK: usize = 64 * 1024;

impl VmConfigReader {
    /// A reader from the start of the VM configuration.
    pub fn open() -> Box<dyn std::io::Read> {
        Box::new(std::io::BufReader::with_capacity(
            CHUNK,
            VmConfigReader { offset: 0 },
        ))
    }
}

impl std::io::Read for VmConfigReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = buf.len().min(CHUNK);
        let chunk = hostcalls::get_buffer(BufferType::VmConfiguration, self.offset, want)
            .map_err(|e| std::io::Error::other(format!("vm configuration: {e:?}")))?
            .unwrap_or_default();
        let n = chunk.len().min(want);
        if let (Some(dst), Some(src)) = (buf.get_mut(..n), chunk.get(..n)) {
            dst.copy_from_slice(src);
        }
        self.offset += n;
        Ok(n)
    }

    /// The rest in one host call: the host writes it into a buffer of the exact size, which
    /// becomes `buf` when `buf` is empty (no copy, no growing buffer). Asks again only if the
    /// host filled the whole request.
    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        let mut total = 0;
        loop {
            let rest = hostcalls::get_buffer(BufferType::VmConfiguration, self.offset, REST)
                .map_err(|e| std::io::Error::other(format!("vm configuration: {e:?}")))?
                .unwrap_or_default();
            let n = rest.len();
            self.offset += n;
            total += n;
            if buf.is_empty() {
                *buf = rest;
            } else {
                buf.extend_from_slice(&rest);
            }
            if n < REST {
                return Ok(total);
            }
        }
    }
}

/// The most bytes asked for by one host call of `read_to_end` (more than any VM
/// configuration; small enough that offset + length cannot overflow the host's 32-bit
/// arithmetic).
const REST: usize = 1 << 30;
