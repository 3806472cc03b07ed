//! Per-VM host state (the wasmtime `Store` data): contexts, streams, header maps and bodies
//! with Envoy's availability rules, HTTP calls, properties, metrics ids and captured logs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use wasmtime::{Memory, TypedFunc};

use super::codec::HeaderMap;
use super::shared::SharedStore;
use super::types::{
    BufferType, HttpCall, LocalResponse, LogLevel, LogLine, LogSource, MapType, MetricType, Status,
};

/// Context id of the (single) root context of every VM.
pub const ROOT_CONTEXT_ID: u32 = 1;

/// A body in one direction of a stream, following Envoy's buffering.
#[derive(Debug, Default, Clone)]
pub(crate) struct Body {
    /// Bytes already passed on (upstream for requests, downstream for responses).
    pub sent: Vec<u8>,
    /// The buffer the guest sees (`proxy_get_buffer_bytes`): the current chunk, or everything
    /// buffered since the callback last returned `Pause`.
    pub buffer: Vec<u8>,
    /// Whether a buffer is attached (Envoy: `request_body_buffer_` non-null or buffering).
    pub present: bool,
    /// The last body callback returned `Pause` (`StopIterationAndBuffer`).
    pub buffering: bool,
}

impl Body {
    /// Passes the buffered bytes on and detaches the buffer.
    pub fn flush(&mut self) {
        let buffered = std::mem::take(&mut self.buffer);
        self.sent.extend_from_slice(&buffered);
        self.present = false;
        self.buffering = false;
    }

    /// Everything seen so far: passed on plus still buffered.
    pub fn all(&self) -> Vec<u8> {
        let mut all = self.sent.clone();
        all.extend_from_slice(&self.buffer);
        all
    }
}

/// One direction (request or response) of an HTTP stream.
#[derive(Debug, Default, Clone)]
pub(crate) struct Direction {
    pub headers: HeaderMap,
    pub trailers: HeaderMap,
    /// Headers accessible to the guest (Envoy drops the pointer once the headers callback
    /// returned `Continue` or the guest called `proxy_continue_stream`).
    pub headers_available: bool,
    pub trailers_available: bool,
    pub body: Body,
    /// Headers were delivered.
    pub started: bool,
    /// Iteration is stopped (last callback returned `Pause`, no `continue_stream` since).
    pub paused: bool,
    /// The downstream/upstream side sent end_of_stream.
    pub ended: bool,
    /// `proxy_continue_stream` calls for this direction.
    pub resumes: u32,
}

impl Direction {
    /// Envoy `continueStream`: resume iteration and drop the guest's access to this direction.
    pub fn resume(&mut self) {
        self.resumes += 1;
        self.paused = false;
        self.headers_available = false;
        self.trailers_available = false;
        self.body.flush();
    }
}

/// State of one HTTP stream context.
#[derive(Debug, Default, Clone)]
pub(crate) struct StreamState {
    /// `proxy_on_context_create` has been called.
    pub created: bool,
    /// `proxy_on_delete` has been called.
    pub deleted: bool,
    /// `proxy_on_done` has been called.
    pub done: bool,
    pub request: Direction,
    pub response: Direction,
    pub local_response: Option<LocalResponse>,
    /// `proxy_close_stream` was called for the request or response.
    pub reset: bool,
    /// Inside `proxy_on_log` (Envoy's access-log phase: maps read-only).
    pub log_phase: bool,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub route_cache_clears: u32,
}

impl StreamState {
    fn direction(&self, map: MapType) -> Option<&Direction> {
        match map {
            MapType::RequestHeaders | MapType::RequestTrailers => Some(&self.request),
            MapType::ResponseHeaders | MapType::ResponseTrailers => Some(&self.response),
            _ => None,
        }
    }
}

/// The HTTP call response being delivered to `proxy_on_http_call_response`.
#[derive(Debug, Default, Clone)]
pub(crate) struct CallResponse {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

/// Settings fixed when the VM is created.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub vm_id: String,
    pub log_level: LogLevel,
    pub clusters: Option<Vec<String>>,
    pub echo_logs: bool,
}

/// The wasmtime store data of one VM.
pub(crate) struct HostState {
    pub shared: SharedStore,
    pub vm_key: u64,
    pub settings: Settings,
    pub memory: Option<Memory>,
    pub alloc: Option<TypedFunc<u32, u32>>,
    /// Context whose callback is running (0 outside callbacks); `proxy_set_effective_context`
    /// changes it for the rest of the callback.
    pub current: u32,
    pub vm_config: Vec<u8>,
    pub plugin_config: Vec<u8>,
    /// Inside `proxy_on_configure` (the plugin configuration is readable only then).
    pub configuring: bool,
    pub streams: BTreeMap<u32, StreamState>,
    pub call_response: Option<CallResponse>,
    /// `proxy_get_status` of the root context: code and message.
    pub status: (u32, Vec<u8>),
    pub http_calls: Vec<HttpCall>,
    pub answered_calls: Vec<u32>,
    pub next_call_token: u32,
    pub tick_period: Option<Duration>,
    /// Monotonic time (ns) of the next tick for [`Vm::advance_time`](super::Vm::advance_time).
    pub next_tick_due: Option<u64>,
    pub logs: Vec<LogLine>,
    pub properties: HashMap<Vec<u8>, Vec<u8>>,
    pub metric_ids: HashMap<u32, String>,
    pub next_metric_seq: [u32; 3],
    pub rng: fastrand::Rng,
    /// The root's `proxy_on_done` returned false and `proxy_done` has not been called yet.
    pub done_pending: bool,
    pub done_called: bool,
}

impl HostState {
    pub fn new(shared: SharedStore, settings: Settings, seed: u64) -> Self {
        let vm_key = shared.new_vm_key();
        Self {
            shared,
            vm_key,
            settings,
            memory: None,
            alloc: None,
            current: 0,
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            configuring: false,
            streams: BTreeMap::new(),
            call_response: None,
            status: (0, Vec::new()),
            http_calls: Vec::new(),
            answered_calls: Vec::new(),
            next_call_token: 1,
            tick_period: None,
            next_tick_due: None,
            logs: Vec::new(),
            properties: HashMap::new(),
            metric_ids: HashMap::new(),
            next_metric_seq: [0; 3],
            rng: fastrand::Rng::with_seed(seed),
            done_pending: false,
            done_called: false,
        }
    }

    /// Records a log line (and echoes it to stderr when `KVGATE_HOST_LOG=1`).
    pub fn log(&mut self, level: LogLevel, message: String, source: LogSource) {
        let line = LogLine {
            level,
            message,
            context_id: self.current,
            source,
        };
        if self.settings.echo_logs {
            eprintln!("[kvgate-host {}] {line}", self.settings.vm_id);
        }
        self.logs.push(line);
    }

    /// The stream the running callback belongs to, if it is a live stream context.
    pub fn current_stream(&self) -> Option<&StreamState> {
        self.streams.get(&self.current).filter(|s| !s.deleted)
    }

    pub fn current_stream_mut(&mut self) -> Option<&mut StreamState> {
        self.streams.get_mut(&self.current).filter(|s| !s.deleted)
    }

    /// Whether `id` names a live context of this VM (root or a created, undeleted stream).
    pub fn context_exists(&self, id: u32) -> bool {
        id == ROOT_CONTEXT_ID
            || self
                .streams
                .get(&id)
                .is_some_and(|s| s.created && !s.deleted)
    }

    /// Map for reading, as Envoy's `getConstMap`: `None` when the map is not available in this
    /// phase/context.
    pub fn map_for_read(&self, map: MapType) -> Option<&HeaderMap> {
        match map {
            MapType::HttpCallResponseHeaders => self.call_response.as_ref().map(|r| &r.headers),
            MapType::HttpCallResponseTrailers => self.call_response.as_ref().map(|r| &r.trailers),
            MapType::GrpcReceiveInitialMetadata | MapType::GrpcReceiveTrailingMetadata => None,
            _ => {
                let stream = self.current_stream()?;
                let dir = stream.direction(map)?;
                let trailers = matches!(map, MapType::RequestTrailers | MapType::ResponseTrailers);
                if stream.log_phase {
                    // Access-log phase: final request/response headers and response trailers.
                    return match map {
                        MapType::RequestTrailers => None,
                        _ if trailers => Some(&dir.trailers),
                        _ => Some(&dir.headers),
                    };
                }
                match (trailers, dir.headers_available, dir.trailers_available) {
                    (false, true, _) => Some(&dir.headers),
                    (true, _, true) => Some(&dir.trailers),
                    _ => None,
                }
            }
        }
    }

    /// Whether the guest is in the access-log phase of the current stream.
    pub fn in_log_phase(&self) -> bool {
        self.current_stream().is_some_and(|s| s.log_phase)
    }

    /// Map for writing, as Envoy's `getMap`: `BadArgument` when not available.
    pub fn map_for_write(&mut self, map: MapType) -> Result<&mut HeaderMap, Status> {
        let stream = self.current_stream_mut().ok_or(Status::BadArgument)?;
        if stream.log_phase {
            return Err(Status::BadArgument);
        }
        let dir = match map {
            MapType::RequestHeaders | MapType::RequestTrailers => &mut stream.request,
            MapType::ResponseHeaders | MapType::ResponseTrailers => &mut stream.response,
            _ => return Err(Status::BadArgument),
        };
        match map {
            MapType::RequestHeaders | MapType::ResponseHeaders if dir.headers_available => {
                Ok(&mut dir.headers)
            }
            MapType::RequestTrailers | MapType::ResponseTrailers if dir.trailers_available => {
                Ok(&mut dir.trailers)
            }
            _ => Err(Status::BadArgument),
        }
    }

    /// Buffer contents for `proxy_get_buffer_bytes`: `Err(NotFound)` when Envoy has no buffer,
    /// `Ok(empty)` when it has a null one.
    pub fn buffer_for_read(&self, buffer: BufferType) -> Result<&[u8], Status> {
        match buffer {
            BufferType::VmConfiguration => Ok(&self.vm_config),
            BufferType::PluginConfiguration if self.configuring => Ok(&self.plugin_config),
            BufferType::HttpCallResponseBody => self
                .call_response
                .as_ref()
                .map(|r| r.body.as_slice())
                .ok_or(Status::NotFound),
            BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
                let Some(stream) = self.current_stream() else {
                    return Ok(&[]);
                };
                let body = if buffer == BufferType::HttpRequestBody {
                    &stream.request.body
                } else {
                    &stream.response.body
                };
                Ok(if body.present { &body.buffer } else { &[] })
            }
            BufferType::DownstreamData
            | BufferType::UpstreamData
            | BufferType::GrpcReceiveBuffer => Ok(&[]),
            BufferType::PluginConfiguration | BufferType::CallData => Err(Status::NotFound),
        }
    }

    /// `proxy_set_buffer_bytes` with Envoy's `Buffer::copyFrom`: `start == 0` drains `length`
    /// bytes and prepends `data` (so `(0, len)` replaces the whole buffer); `start >= len`
    /// appends; anything else is `BadArgument`. Configuration and call bodies are read-only.
    pub fn buffer_write(
        &mut self,
        buffer: BufferType,
        start: usize,
        length: usize,
        data: &[u8],
    ) -> Status {
        let body = match buffer {
            BufferType::VmConfiguration | BufferType::HttpCallResponseBody => {
                return Status::BadArgument
            }
            BufferType::PluginConfiguration if self.configuring => return Status::BadArgument,
            BufferType::HttpRequestBody | BufferType::HttpResponseBody => {
                let Some(stream) = self.current_stream_mut() else {
                    return Status::NotFound;
                };
                if buffer == BufferType::HttpRequestBody {
                    &mut stream.request.body
                } else {
                    &mut stream.response.body
                }
            }
            _ => return Status::NotFound,
        };
        if !body.present {
            return Status::NotFound;
        }
        if start == 0 {
            let drain = length.min(body.buffer.len());
            body.buffer.drain(..drain);
            body.buffer.splice(0..0, data.iter().copied());
            Status::Ok
        } else if start >= body.buffer.len() {
            body.buffer.extend_from_slice(data);
            Status::Ok
        } else {
            Status::BadArgument
        }
    }

    /// Property lookup: the current stream's properties first, then the VM's.
    pub fn property(&self, path: &[u8]) -> Option<&[u8]> {
        self.current_stream()
            .and_then(|s| s.properties.get(path))
            .or_else(|| self.properties.get(path))
            .map(Vec::as_slice)
    }

    /// Allocates a metric id the way Envoy does: `(sequence << 2) | type`.
    pub fn next_metric_id(&mut self, kind: MetricType) -> u32 {
        let idx = kind as usize;
        let seq = self.next_metric_seq.get(idx).copied().unwrap_or(0);
        if let Some(slot) = self.next_metric_seq.get_mut(idx) {
            *slot = seq.wrapping_add(1);
        }
        (seq << 2) | kind as u32
    }

    /// Whether `upstream` is an accepted cluster name.
    pub fn cluster_known(&self, upstream: &str) -> bool {
        self.settings
            .clusters
            .as_ref()
            .is_none_or(|c| c.iter().any(|n| n == upstream))
    }
}
