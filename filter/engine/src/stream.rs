//! One HTTP stream through the filter: strip client routing headers, hold the request while
//! its body arrives (watched by the tick, see `held`), decide at the end of the request —
//! whether it ends in body data or in trailers — apply the decision (or strip the body's
//! routing keys when forwarding unrouted), then follow the response (prefill done, streamed
//! output) and free the booking when the stream ends. The glue translates each proxy-wasm
//! callback into one call here and applies the plain-data answer.

use crate::body;
use crate::headers::{self, RoutedPath};
use crate::host::Host;
use crate::outcome::{Outcome, Reply};
use crate::vm::Vm;
use kvgate_core::WorkerKey;
use kvgate_prompt::error::openai_error_body;

/// Headers of every local reply.
pub const REPLY_HEADERS: &[(&str, &str)] = &[
    ("content-type", "application/json"),
    ("x-kvgate-error", "1"),
];

/// What the glue does next with the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Let it through as it is.
    Continue,
    /// Hold it (buffer the body).
    Pause,
    /// Answer locally and stop it.
    Reply(Reply),
    /// The request is complete: read the whole body and call [`Stream::decide`].
    Decide,
}

/// The answer to the request headers.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadersStep {
    /// Client headers to remove (routing headers a client may not set).
    pub remove: Vec<String>,
    /// What next.
    pub next: Next,
}

/// A decision applied to the request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Continue upstream after these changes.
    Continue {
        /// Headers to set.
        headers: Vec<(&'static str, String)>,
        /// A new body (the glue also sets `content-length`).
        body: Option<Vec<u8>>,
        /// Whether the route must be re-matched (the headers changed).
        clear_route_cache: bool,
    },
    /// Answer locally.
    Reply(Reply),
}

/// One stream's state.
#[derive(Debug, Clone, Default)]
pub struct Stream {
    id: u32,
    path: Option<RoutedPath>,
    tenant: Option<String>,
    routed: bool,
    response_started: bool,
    explain: Option<String>,
    /// The worker the request's session-affinity token names.
    session_in: Option<WorkerKey>,
    /// The session-affinity token to return (the chosen worker's).
    session_out: Option<String>,
    /// Request body bytes buffered so far.
    body_size: usize,
    /// The client's routing headers (lower-case names, sorted), removed on arrival.
    incoming: Vec<(String, String)>,
}

impl Stream {
    /// The stream with context id `id`.
    pub fn new(id: u32) -> Self {
        Stream {
            id,
            ..Stream::default()
        }
    }

    fn too_large(vm: &mut Vm, host: &dyn Host, size: usize) -> Next {
        let limit = vm.engine.cfg.gateway.max_body_bytes;
        let msg =
            format!("request body of {size} bytes exceeds the gateway limit of {limit} bytes");
        let code = "request_too_large";
        vm.count_error(host, code);
        Next::Reply(Reply {
            status: 413,
            body: openai_error_body(&msg, "invalid_request_error", code, None),
            code,
        })
    }

    /// The request headers arrived (`end_of_stream`: there is no body).
    pub fn request_headers(
        &mut self,
        vm: &mut Vm,
        host: &dyn Host,
        request_headers: &[(String, String)],
        end_of_stream: bool,
    ) -> HeadersStep {
        vm.stream_seen(host);
        let routing: Vec<&(String, String)> = request_headers
            .iter()
            .filter(|(n, _)| headers::is_client_routing_header(n))
            .collect();
        let remove: Vec<String> = routing.iter().map(|(n, _)| n.clone()).collect();
        self.incoming = routing
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        self.incoming.sort();
        let get = |name: &str| {
            request_headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        self.path = headers::is_routed(
            get(":method").unwrap_or_default(),
            get(":path").unwrap_or_default(),
        );
        let next = if self.path.is_none() {
            Next::Continue
        } else {
            self.tenant = get(headers::TENANT_ID).map(str::to_string);
            self.session_in = vm
                .engine
                .cfg
                .gateway
                .session_affinity_header
                .as_deref()
                .and_then(get)
                .and_then(headers::parse_session_token);
            let declared = get("content-length").and_then(|v| v.trim().parse::<usize>().ok());
            match declared.filter(|n| *n > vm.engine.cfg.gateway.max_body_bytes) {
                Some(n) => Self::too_large(vm, host, n),
                None if end_of_stream => Next::Decide,
                None => {
                    vm.holds.hold(self.id, host.now_ms());
                    Next::Pause
                }
            }
        };
        HeadersStep { remove, next }
    }

    /// `size` bytes of request body are buffered (`end_of_stream`: that is all of it).
    pub fn request_body(
        &mut self,
        vm: &mut Vm,
        host: &dyn Host,
        size: usize,
        end_of_stream: bool,
    ) -> Next {
        if self.path.is_none() || self.routed || vm.holds.is_closed(self.id) {
            return Next::Continue;
        }
        vm.holds.body(self.id);
        self.body_size = size;
        if size > vm.engine.cfg.gateway.max_body_bytes {
            vm.holds.release(self.id);
            return Self::too_large(vm, host, size);
        }
        if end_of_stream {
            Next::Decide
        } else {
            Next::Pause
        }
    }

    /// The request ended with trailers (HTTP/2, gRPC-style): the body is complete.
    pub fn request_trailers(&mut self, vm: &mut Vm) -> Next {
        if self.path.is_none() || self.routed || vm.holds.is_closed(self.id) {
            return Next::Continue;
        }
        Next::Decide
    }

    /// Bytes of request body buffered so far (what [`Next::Decide`] must read).
    pub fn body_size(&self) -> usize {
        self.body_size
    }

    /// Decides on the whole request `body` and says how to apply the decision.
    pub fn decide(&mut self, vm: &mut Vm, host: &dyn Host, body: &[u8]) -> Verdict {
        match self.decide_step(vm, host, body, false) {
            Some(v) => v,
            // Unreachable (a stream parks only with may_wait): forward it untouched.
            None => Verdict::Continue {
                headers: Vec::new(),
                body: None,
                clear_route_cache: false,
            },
        }
    }

    /// [`Stream::decide`], or `None` when the request waits for its VM to load the model
    /// (sidecar mode, the VM's first requests): the glue keeps it paused with its body and
    /// calls [`Stream::decide`] when the VM lists it (`StreamAction::Decide`).
    pub fn decide_or_wait(&mut self, vm: &mut Vm, host: &dyn Host, body: &[u8]) -> Option<Verdict> {
        self.decide_step(vm, host, body, true)
    }

    fn decide_step(
        &mut self,
        vm: &mut Vm,
        host: &dyn Host,
        body: &[u8],
        may_wait: bool,
    ) -> Option<Verdict> {
        vm.holds.release(self.id);
        let Some(path) = self.path else {
            return Some(Verdict::Continue {
                headers: Vec::new(),
                body: None,
                clear_route_cache: false,
            });
        };
        let tenant = self.tenant.as_deref();
        let outcome = if may_wait {
            vm.decide_or_wait(host, self.id, path, body, tenant, self.session_in)?
        } else {
            vm.decide_in_session(host, self.id, path, body, tenant, self.session_in)
        };
        Some(match outcome {
            Outcome::Route(route) => {
                self.routed = true;
                if vm.engine.cfg.gateway.session_affinity_header.is_some() {
                    self.session_out = Some(headers::session_token(route.worker));
                }
                if vm.engine.cfg.gateway.decision_header {
                    self.explain = Some(route.explain);
                }
                let clear_route_cache = self.destination_changed(&route.headers);
                Verdict::Continue {
                    headers: route.headers,
                    body: route.body,
                    clear_route_cache,
                }
            }
            Outcome::Reply(r) => Verdict::Reply(r),
            // Unrouted, but never with a client's choice of worker in the body.
            Outcome::Forward(_) => Verdict::Continue {
                headers: Vec::new(),
                body: body::strip_routing_keys(body),
                clear_route_cache: self.destination_changed(&[]),
            },
        })
    }

    /// Whether the routing headers the request leaves with differ from those it came with:
    /// only then can a route chosen on the request's headers be stale, so only then is
    /// Envoy's route cache cleared (override_host itself reads the header when it picks
    /// the host and needs no clearing).
    fn destination_changed(&self, set: &[(&str, String)]) -> bool {
        let mut out: Vec<(String, String)> = set
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .collect();
        out.sort();
        out != self.incoming
    }

    /// Response headers to add: the decision explanation and the session-affinity token,
    /// each when enabled.
    pub fn response_headers<'a>(&'a self, vm: &'a Vm) -> Vec<(&'a str, &'a str)> {
        let mut v = Vec::new();
        if let Some(e) = &self.explain {
            v.push((headers::DECISION, e.as_str()));
        }
        if let (Some(name), Some(token)) = (
            vm.engine.cfg.gateway.session_affinity_header.as_deref(),
            &self.session_out,
        ) {
            v.push((name, token.as_str()));
        }
        v
    }

    /// The upstream's response headers arrived; `prefill_unreachable` is its
    /// `x-kvgate-prefill-unreachable` value (the glue removes that header before the
    /// client sees it): those prefill workers leave prefill picks for a while.
    pub fn upstream_response(
        &mut self,
        vm: &mut Vm,
        host: &dyn Host,
        prefill_unreachable: Option<&str>,
    ) {
        if let (true, Some(v)) = (self.routed, prefill_unreachable) {
            let n = vm.engine.prefill_unreachable(v, host.now_ms());
            if n > 0 {
                host.log(
                    crate::host::Level::Warn,
                    &format!("kvgate: prefill worker(s) {v} unreachable from the decode worker; left out of prefill picks"),
                );
            }
        }
    }

    /// Whether [`Stream::response_body`] needs the chunk's bytes (streamed-output counting).
    pub fn wants_response_bytes(&self, vm: &Vm, size: usize) -> bool {
        self.routed && size > 0 && vm.engine.cfg.router.track_output_blocks
    }

    /// `size` bytes of response body arrived; `chunk` holds them when
    /// [`Stream::wants_response_bytes`] said so.
    pub fn response_body(&mut self, vm: &mut Vm, host: &dyn Host, size: usize, chunk: &[u8]) {
        if !self.routed || size == 0 {
            return;
        }
        if vm.engine.cfg.router.track_output_blocks {
            vm.response_chunk(host, self.id, chunk);
        } else if !self.response_started {
            vm.response_started(host, self.id);
        }
        self.response_started = true;
    }

    /// The stream ended (completed, aborted or reset): free its booking.
    pub fn done(&mut self, vm: &mut Vm, host: &dyn Host) {
        vm.holds.end(self.id);
        vm.model_waits.end(self.id);
        vm.request_done(host, self.id);
    }
}

#[cfg(test)]
mod tests;
