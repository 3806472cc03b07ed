//! [`Stream`]: one HTTP request/response through the filter, driven event by event like Envoy's
//! HTTP connection manager, with accessors for what the filter did to it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::codec::{property_path, HeaderMap};
use super::driver::{len32, VmInner};
use super::error::HostError;
use super::state::{Direction, StreamState, ROOT_CONTEXT_ID};
use super::types::{Action, HttpCall, LocalResponse, LogLine};

/// Request or response.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

impl Side {
    fn of(self, s: &mut StreamState) -> &mut Direction {
        match self {
            Side::Request => &mut s.request,
            Side::Response => &mut s.response,
        }
    }

    fn of_ref(self, s: &StreamState) -> &Direction {
        match self {
            Side::Request => &s.request,
            Side::Response => &s.response,
        }
    }

    fn callbacks(self) -> [&'static str; 3] {
        match self {
            Side::Request => [
                "proxy_on_request_headers",
                "proxy_on_request_body",
                "proxy_on_request_trailers",
            ],
            Side::Response => [
                "proxy_on_response_headers",
                "proxy_on_response_body",
                "proxy_on_response_trailers",
            ],
        }
    }
}

/// One HTTP stream (an HTTP context in the VM), created by [`Vm::new_stream`](super::Vm::new_stream).
///
/// Body semantics follow Envoy: while a body callback returns `Pause` the chunks accumulate and
/// `proxy_on_request_body` receives the total buffered size; on `Continue` the buffer is passed
/// on. Headers are accessible to the filter only until its headers callback returns `Continue`
/// (or it calls `proxy_continue_stream`); later changes fail with `BadArgument`, as in Envoy.
/// After the filter sent a local response, request events are refused with
/// [`HostError::Stream`] (Envoy delivers none), while response events are still accepted (the
/// local reply passes through the filter's encoder path); the action returned by the callback
/// that sent it is whatever the filter returned (Envoy ignores it).
/// Dropping a `Stream` does not end it: call [`finish`](Self::finish).
pub struct Stream {
    vm: Arc<Mutex<VmInner>>,
    id: u32,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("context_id", &self.id)
            .finish()
    }
}

impl Stream {
    pub(crate) fn new(vm: Arc<Mutex<VmInner>>, id: u32) -> Self {
        Self { vm, id }
    }

    fn lock(&self) -> MutexGuard<'_, VmInner> {
        self.vm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn err(&self, reason: &'static str) -> HostError {
        HostError::Stream {
            context_id: self.id,
            reason,
        }
    }

    fn with<R>(&self, f: impl FnOnce(&StreamState) -> R) -> R {
        let vm = self.lock();
        let default = StreamState::default();
        f(vm.stream(self.id).unwrap_or(&default))
    }

    /// The stream's context id.
    pub fn context_id(&self) -> u32 {
        self.id
    }

    fn check_open(
        &self,
        vm: &VmInner,
        side: Side,
        body_or_trailers: bool,
    ) -> Result<(), HostError> {
        let Some(s) = vm.stream(self.id) else {
            return Err(self.err("unknown stream"));
        };
        let dir = side.of_ref(s);
        if s.deleted {
            Err(self.err("stream already finished (proxy_on_delete was called)"))
        } else if s.reset {
            Err(self.err("stream was reset by the filter (proxy_close_stream)"))
        } else if side == Side::Request && s.local_response.is_some() {
            Err(self.err("the filter sent a local response; Envoy delivers no more request events"))
        } else if dir.ended {
            Err(self.err("this direction already ended (end_of_stream was sent)"))
        } else if body_or_trailers && !dir.started {
            Err(self.err("headers must be sent first"))
        } else {
            Ok(())
        }
    }

    fn headers(
        &mut self,
        side: Side,
        headers: &[(&str, &str)],
        eos: bool,
    ) -> Result<Action, HostError> {
        let mut vm = self.lock();
        self.check_open(&vm, side, false)?;
        vm.ensure_created(self.id)?;
        let dir = side.of(vm.stream_mut(self.id));
        dir.headers = HeaderMap::from_pairs(headers);
        dir.headers_available = true;
        dir.started = true;
        dir.ended = eos;
        let n = len32(dir.headers.len());
        let params = (self.id, n, u32::from(eos));
        let name = side.callbacks()[0];
        let action = vm.call::<(u32, u32, u32), u32>(name, self.id, params)?;
        let action = action.map_or(Action::Continue, Action::from_u32);
        let dir = side.of(vm.stream_mut(self.id));
        if action == Action::Continue {
            dir.headers_available = false;
            dir.paused = false;
        } else {
            dir.paused = true;
        }
        Ok(action)
    }

    fn body(&mut self, side: Side, chunk: &[u8], eos: bool) -> Result<Action, HostError> {
        let mut vm = self.lock();
        self.check_open(&vm, side, true)?;
        let dir = side.of(vm.stream_mut(self.id));
        if dir.body.buffering {
            dir.body.buffer.extend_from_slice(chunk);
        } else {
            dir.body.buffer = chunk.to_vec();
        }
        dir.body.present = true;
        if eos {
            dir.ended = true;
            // Envoy lets the last data callback add trailers.
            dir.trailers_available = true;
        }
        let params = (self.id, len32(dir.body.buffer.len()), u32::from(eos));
        let name = side.callbacks()[1];
        let action = vm.call::<(u32, u32, u32), u32>(name, self.id, params)?;
        let action = action.map_or(Action::Continue, Action::from_u32);
        let dir = side.of(vm.stream_mut(self.id));
        if eos {
            dir.trailers_available = false;
        }
        if action == Action::Continue {
            dir.body.flush();
            dir.paused = false;
        } else if dir.body.present {
            dir.body.buffering = true;
            dir.paused = true;
        }
        Ok(action)
    }

    fn trailers(&mut self, side: Side, trailers: &[(&str, &str)]) -> Result<Action, HostError> {
        let mut vm = self.lock();
        self.check_open(&vm, side, true)?;
        let dir = side.of(vm.stream_mut(self.id));
        dir.trailers = HeaderMap::from_pairs(trailers);
        dir.trailers_available = true;
        dir.ended = true;
        let params = (self.id, len32(dir.trailers.len()));
        let name = side.callbacks()[2];
        let action = vm.call::<(u32, u32), u32>(name, self.id, params)?;
        let action = action.map_or(Action::Continue, Action::from_u32);
        let dir = side.of(vm.stream_mut(self.id));
        if action == Action::Continue {
            dir.trailers_available = false;
            dir.body.flush();
            dir.paused = false;
        } else {
            dir.paused = true;
        }
        Ok(action)
    }

    /// Delivers the request headers (`proxy_on_request_headers`).
    pub fn request_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.headers(Side::Request, headers, end_of_stream)
    }

    /// Delivers a request body chunk (`proxy_on_request_body` with the total buffered size).
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        self.body(Side::Request, chunk, end_of_stream)
    }

    /// Delivers request trailers (ends the request).
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action, HostError> {
        self.trailers(Side::Request, trailers)
    }

    /// Delivers the response headers (also allowed after a local response, which Envoy passes
    /// through the filter's encoder path).
    pub fn response_headers(
        &mut self,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.headers(Side::Response, headers, end_of_stream)
    }

    /// Delivers a response body chunk.
    pub fn response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        self.body(Side::Response, chunk, end_of_stream)
    }

    /// Delivers response trailers (ends the response).
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Result<Action, HostError> {
        self.trailers(Side::Response, trailers)
    }

    /// Sends a whole request: headers, then (if non-empty) the body in one chunk. Stops after
    /// the headers if the filter sent a local response. Returns the last callback's action.
    pub fn send_request(
        &mut self,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Action, HostError> {
        let action = self.request_headers(headers, body.is_empty())?;
        if body.is_empty() || self.local_response().is_some() || self.was_reset() {
            return Ok(action);
        }
        self.request_body(body, true)
    }

    /// Sends a whole response: headers, then (if non-empty) the body in one chunk.
    pub fn send_response(
        &mut self,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Action, HostError> {
        let action = self.response_headers(headers, body.is_empty())?;
        if body.is_empty() || self.was_reset() {
            return Ok(action);
        }
        self.response_body(body, true)
    }

    /// Access-log phase: `proxy_on_log` (maps readable, not writable).
    pub fn log(&mut self) -> Result<(), HostError> {
        let mut vm = self.lock();
        if vm.stream(self.id).is_some_and(|s| s.deleted) {
            return Err(self.err("stream already finished (proxy_on_delete was called)"));
        }
        vm.ensure_created(self.id)?;
        vm.stream_mut(self.id).log_phase = true;
        let result = vm.call::<(u32,), ()>("proxy_on_log", self.id, (self.id,));
        vm.stream_mut(self.id).log_phase = false;
        result.map(|_| ())
    }

    /// Stream destruction (Envoy `onDestroy`): `proxy_on_done` then `proxy_on_delete`.
    /// A stream whose context was never created is left alone, as in Envoy.
    pub fn done(&mut self) -> Result<(), HostError> {
        let mut vm = self.lock();
        match vm.stream(self.id) {
            Some(s) if s.created && !s.done => {}
            _ => return Ok(()),
        }
        vm.stream_mut(self.id).done = true;
        vm.call::<(u32,), u32>("proxy_on_done", self.id, (self.id,))?;
        vm.call::<(u32,), ()>("proxy_on_delete", self.id, (self.id,))?;
        vm.stream_mut(self.id).deleted = true;
        Ok(())
    }

    /// End of stream as in Envoy: [`log`](Self::log), then [`done`](Self::done).
    pub fn finish(&mut self) -> Result<(), HostError> {
        self.log()?;
        self.done()
    }

    /// Request headers as they are now (as modified by the filter).
    pub fn request_header_map(&self) -> HeaderMap {
        self.with(|s| s.request.headers.clone())
    }

    /// First value of a request header as it is now.
    pub fn request_header(&self, name: &str) -> Option<String> {
        self.with(|s| s.request.headers.get(name))
    }

    /// The whole request body seen so far (passed upstream plus still buffered), as modified.
    pub fn request_body_bytes(&self) -> Vec<u8> {
        self.with(|s| s.request.body.all())
    }

    /// The part of the request body already passed upstream.
    pub fn request_body_sent(&self) -> Vec<u8> {
        self.with(|s| s.request.body.sent.clone())
    }

    /// Request trailers as they are now.
    pub fn request_trailer_map(&self) -> HeaderMap {
        self.with(|s| s.request.trailers.clone())
    }

    /// Response headers as they are now.
    pub fn response_header_map(&self) -> HeaderMap {
        self.with(|s| s.response.headers.clone())
    }

    /// First value of a response header as it is now.
    pub fn response_header(&self, name: &str) -> Option<String> {
        self.with(|s| s.response.headers.get(name))
    }

    /// The whole response body seen so far, as modified.
    pub fn response_body_bytes(&self) -> Vec<u8> {
        self.with(|s| s.response.body.all())
    }

    /// Response trailers as they are now.
    pub fn response_trailer_map(&self) -> HeaderMap {
        self.with(|s| s.response.trailers.clone())
    }

    /// The local response the filter sent, if any.
    pub fn local_response(&self) -> Option<LocalResponse> {
        self.with(|s| s.local_response.clone())
    }

    /// Whether request iteration is stopped (last callback `Pause`, not resumed since).
    pub fn is_request_paused(&self) -> bool {
        self.with(|s| s.request.paused)
    }

    /// Whether response iteration is stopped.
    pub fn is_response_paused(&self) -> bool {
        self.with(|s| s.response.paused)
    }

    /// How often the filter called `proxy_continue_stream` for the request.
    pub fn request_resumes(&self) -> u32 {
        self.with(|s| s.request.resumes)
    }

    /// How often the filter called `proxy_continue_stream` for the response.
    pub fn response_resumes(&self) -> u32 {
        self.with(|s| s.response.resumes)
    }

    /// Whether the filter reset the stream (`proxy_close_stream`).
    pub fn was_reset(&self) -> bool {
        self.with(|s| s.reset)
    }

    /// How often the filter called the `clear_route_cache` foreign function on this stream.
    pub fn route_cache_clears(&self) -> u32 {
        self.with(|s| s.route_cache_clears)
    }

    /// Sets a per-stream property (e.g. `&["request", "id"]`).
    pub fn set_property(&self, path: &[&str], value: &[u8]) {
        let mut vm = self.lock();
        vm.stream_mut(self.id)
            .properties
            .insert(property_path(path), value.to_vec());
    }

    /// A property of this stream (set by the test or by the filter).
    pub fn property(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.with(|s| s.properties.get(&property_path(path)).cloned())
    }

    /// Log lines logged while this stream's context was the effective context.
    pub fn logs(&self) -> Vec<LogLine> {
        let vm = self.lock();
        let logs = &vm.state().logs;
        logs.iter()
            .filter(|l| l.context_id == self.id)
            .cloned()
            .collect()
    }

    /// Pending HTTP calls dispatched while this stream was the effective context.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        let vm = self.lock();
        let state = vm.state();
        let pending =
            |c: &&HttpCall| c.context_id == self.id && !state.answered_calls.contains(&c.token);
        state.http_calls.iter().filter(pending).cloned().collect()
    }

    /// The root context id of the VM this stream belongs to.
    pub fn root_context_id(&self) -> u32 {
        ROOT_CONTEXT_ID
    }
}
