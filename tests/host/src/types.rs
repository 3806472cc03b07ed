//! proxy-wasm ABI 0.2.1 enums (status codes, log levels, map/buffer/stream/metric types) and
//! the small value types the host hands to tests (log lines, HTTP calls, local responses).

use std::fmt;
use std::time::Duration;

use super::codec::HeaderMap;

/// Result codes of host calls, numbered exactly like Envoy's `WasmResult`
/// (proxy-wasm-cpp-host `include/proxy-wasm/word.h`; the Rust SDK's `types::Status` is a subset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// The key, map, buffer, queue, metric or token does not exist.
    NotFound = 1,
    /// An argument is invalid (e.g. unknown enum value, map not available in this phase).
    BadArgument = 2,
    /// A value could not be serialized.
    SerializationFailure = 3,
    /// A value could not be parsed.
    ParseFailure = 4,
    /// A bad expression was given.
    BadExpression = 5,
    /// A guest pointer/size pair lies outside the guest's linear memory.
    InvalidMemoryAccess = 6,
    /// The shared queue is empty.
    Empty = 7,
    /// `proxy_set_shared_data` was given a CAS that does not match the stored one.
    CasMismatch = 8,
    /// Result mismatch.
    ResultMismatch = 9,
    /// Internal host failure.
    InternalFailure = 10,
    /// An HTTP call failed (connection reset); reported by `proxy_get_status`.
    BrokenConnection = 11,
    /// The operation is not implemented by the host.
    Unimplemented = 12,
}

impl Status {
    /// The numeric ABI code.
    pub fn code(self) -> u32 {
        self as u32
    }
}

/// Log levels of `proxy_log` / `proxy_get_log_level` (same numbering as the SDK and spdlog).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum LogLevel {
    /// trace
    Trace = 0,
    /// debug
    Debug = 1,
    /// info
    Info = 2,
    /// warn
    Warn = 3,
    /// error
    Error = 4,
    /// critical (the SDK's panic hook logs the panic message at this level)
    Critical = 5,
}

impl LogLevel {
    /// Converts an ABI value; `None` for values above `Critical`.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Trace => "trace",
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
            Self::Critical => "critical",
        };
        f.write_str(s)
    }
}

/// Header map selectors of the `proxy_*_header_map_*` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapType {
    /// Request headers of the current stream.
    RequestHeaders,
    /// Request trailers of the current stream.
    RequestTrailers,
    /// Response headers of the current stream.
    ResponseHeaders,
    /// Response trailers of the current stream.
    ResponseTrailers,
    /// gRPC initial metadata (not supported: always empty).
    GrpcReceiveInitialMetadata,
    /// gRPC trailing metadata (not supported: always empty).
    GrpcReceiveTrailingMetadata,
    /// Headers of the HTTP call response being delivered.
    HttpCallResponseHeaders,
    /// Trailers of the HTTP call response being delivered.
    HttpCallResponseTrailers,
}

impl MapType {
    /// Converts an ABI value; `None` for unknown values (the host answers `BadArgument`).
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::RequestHeaders,
            1 => Self::RequestTrailers,
            2 => Self::ResponseHeaders,
            3 => Self::ResponseTrailers,
            4 => Self::GrpcReceiveInitialMetadata,
            5 => Self::GrpcReceiveTrailingMetadata,
            6 => Self::HttpCallResponseHeaders,
            7 => Self::HttpCallResponseTrailers,
            _ => return None,
        })
    }
}

/// Buffer selectors of `proxy_get_buffer_bytes` / `proxy_set_buffer_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferType {
    /// The (buffered) request body of the current stream.
    HttpRequestBody,
    /// The (buffered) response body of the current stream.
    HttpResponseBody,
    /// TCP downstream data (not supported).
    DownstreamData,
    /// TCP upstream data (not supported).
    UpstreamData,
    /// Body of the HTTP call response being delivered.
    HttpCallResponseBody,
    /// gRPC receive buffer (not supported).
    GrpcReceiveBuffer,
    /// VM configuration (always readable, read-only).
    VmConfiguration,
    /// Plugin configuration (readable during `proxy_on_configure` only, read-only).
    PluginConfiguration,
    /// Foreign-function call data (not supported).
    CallData,
}

impl BufferType {
    /// Converts an ABI value; `None` for unknown values.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequestBody,
            1 => Self::HttpResponseBody,
            2 => Self::DownstreamData,
            3 => Self::UpstreamData,
            4 => Self::HttpCallResponseBody,
            5 => Self::GrpcReceiveBuffer,
            6 => Self::VmConfiguration,
            7 => Self::PluginConfiguration,
            8 => Self::CallData,
            _ => return None,
        })
    }
}

/// Stream selectors of `proxy_continue_stream` / `proxy_close_stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// The HTTP request direction.
    HttpRequest,
    /// The HTTP response direction.
    HttpResponse,
    /// TCP downstream.
    Downstream,
    /// TCP upstream.
    Upstream,
}

impl StreamType {
    /// Converts an ABI value; `None` for unknown values.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::HttpRequest,
            1 => Self::HttpResponse,
            2 => Self::Downstream,
            3 => Self::Upstream,
            _ => return None,
        })
    }
}

/// Metric kinds of `proxy_define_metric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// Monotonic counter.
    Counter = 0,
    /// Gauge (settable, incrementable up and down).
    Gauge = 1,
    /// Histogram (recorded values are kept).
    Histogram = 2,
}

impl MetricType {
    /// Converts an ABI value; `None` for unknown values.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// What a stream callback (`proxy_on_request_headers` etc.) returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `0`: continue iteration (headers/body are passed on).
    Continue,
    /// `1`: stop iteration; for body callbacks Envoy buffers the data (`StopIterationAndBuffer`).
    Pause,
    /// Any other value (the Rust SDK never returns one); treated like `Pause`.
    Other(u32),
}

impl Action {
    /// Converts the raw return value of a callback.
    pub fn from_u32(v: u32) -> Self {
        match v {
            0 => Self::Continue,
            1 => Self::Pause,
            other => Self::Other(other),
        }
    }
}

/// Where a captured log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogSource {
    /// `proxy_log`.
    Proxy,
    /// WASI `fd_write` to stdout (logged at `Info`, like Envoy).
    Stdout,
    /// WASI `fd_write` to stderr (logged at `Error`, like Envoy).
    Stderr,
    /// A note from the host itself (e.g. a malformed header map from the guest).
    Host,
}

/// One captured log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Level.
    pub level: LogLevel,
    /// The message (a trailing newline of stdout/stderr writes is removed).
    pub message: String,
    /// The (effective) context that was running when the line was logged; 0 outside any callback.
    pub context_id: u32,
    /// Where it came from.
    pub source: LogSource,
}

impl fmt::Display for LogLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}][ctx {}] {}",
            self.level, self.context_id, self.message
        )
    }
}

/// An outgoing HTTP call recorded by `proxy_http_call`; a test answers it with
/// [`Vm::http_call_response`](super::Vm::http_call_response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCall {
    /// The token returned to the guest.
    pub token: u32,
    /// The effective context that dispatched the call (root or a stream).
    pub context_id: u32,
    /// The upstream (cluster) name.
    pub upstream: String,
    /// Request headers, in order.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Vec<u8>,
    /// Request trailers.
    pub trailers: HeaderMap,
    /// Timeout given by the guest.
    pub timeout: Duration,
}

impl HttpCall {
    /// First value of a request header (names are case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name)
    }
}

/// A local response sent by `proxy_send_local_response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    /// HTTP status code.
    pub status: u32,
    /// Response code details.
    pub details: String,
    /// Additional response headers.
    pub headers: HeaderMap,
    /// Response body.
    pub body: Vec<u8>,
    /// gRPC status (`-1` when not set).
    pub grpc_status: i32,
}

impl LocalResponse {
    /// First value of a response header.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name)
    }

    /// The body as (lossy) UTF-8.
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}
