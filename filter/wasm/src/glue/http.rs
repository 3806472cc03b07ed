//! The HTTP context: strips client routing headers, buffers routed request bodies,
//! asks the engine for a decision and applies it (headers, body, local reply), then
//! follows the response to end the prefill, count streamed output, and free the booking
//! in `on_log` (which runs for completed, aborted and reset streams alike).

use super::host::{now_ms, HostShared};
use super::root::Vm;
use crate::engine::{DecideInput, Outcome};
use crate::headers::{self, RoutedPath};
use crate::shared;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

/// One HTTP stream.
pub struct Http {
    id: u32,
    vm: Rc<RefCell<Vm>>,
    path: Option<RoutedPath>,
    tenant: Option<String>,
    routed: bool,
    response_started: bool,
    explain: Option<String>,
}

impl Http {
    /// A stream context `id` of `vm`.
    pub fn new(id: u32, vm: Rc<RefCell<Vm>>) -> Self {
        Http {
            id,
            vm,
            path: None,
            tenant: None,
            routed: false,
            response_started: false,
            explain: None,
        }
    }

    fn reply(&self, status: u16, body: &[u8]) -> Action {
        self.send_http_response(
            u32::from(status),
            vec![
                ("content-type", "application/json"),
                ("x-kvgate-error", "1"),
            ],
            Some(body),
        );
        Action::Pause
    }

    fn max_body(&self) -> usize {
        self.vm.borrow().engine.cfg.gateway.max_body_bytes
    }

    fn too_large(&self, size: usize) -> Action {
        let limit = self.max_body();
        let msg =
            format!("request body of {size} bytes exceeds the gateway limit of {limit} bytes");
        let body = kvgate_prompt::error::openai_error_body(
            &msg,
            "invalid_request_error",
            "request_too_large",
            None,
        );
        self.vm.borrow_mut().metrics.error("request_too_large");
        self.reply(413, &body)
    }

    fn decide(&mut self, body: &[u8]) -> Action {
        let Some(path) = self.path else {
            return Action::Continue;
        };
        let now = now_ms();
        let mut vm = self.vm.borrow_mut();
        if vm.engine.has_sidecar() {
            vm.follow_ring(now);
        }
        let other = shared::read_other_loads(&HostShared, vm.engine.vm, now);
        let input = DecideInput {
            ctx: self.id,
            path,
            body,
            tenant: self.tenant.as_deref(),
            now_ms: now,
            other_loads: &other,
        };
        let outcome = vm.engine.decide(&input);
        let counters = vm.engine.counters;
        vm.metrics.export(&counters);
        match outcome {
            Outcome::Route {
                headers,
                body: new_body,
                explain,
                worker,
                matched_blocks,
                prompt_tokens,
                segments,
                timings,
                ..
            } => {
                vm.metrics.decision(
                    &timings,
                    worker.worker_id,
                    matched_blocks,
                    prompt_tokens,
                    segments,
                );
                vm.publish_loads(now);
                let decision_header = vm.engine.cfg.gateway.decision_header;
                drop(vm);
                for (name, value) in &headers {
                    self.set_http_request_header(name, Some(value));
                }
                if let Some(b) = new_body {
                    self.set_http_request_body(0, body.len(), &b);
                    self.set_http_request_header("content-length", Some(&b.len().to_string()));
                }
                let _ = self.call_foreign_function("clear_route_cache", None);
                self.routed = true;
                if decision_header {
                    self.explain = Some(explain);
                }
                Action::Continue
            }
            Outcome::Reply { status, body, kind } => {
                vm.metrics.error(kind);
                drop(vm);
                self.reply(status, &body)
            }
            Outcome::Forward { .. } => Action::Continue,
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        for (name, _) in self.get_http_request_headers() {
            if headers::is_client_routing_header(&name) {
                self.set_http_request_header(&name, None);
            }
        }
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        self.path = headers::is_routed(&method, &path);
        if self.path.is_none() {
            return Action::Continue;
        }
        self.tenant = self.get_http_request_header(headers::TENANT_ID);
        let declared = self
            .get_http_request_header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        if let Some(n) = declared.filter(|n| *n > self.max_body()) {
            return self.too_large(n);
        }
        if end_of_stream {
            return self.decide(&[]);
        }
        Action::Pause
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.path.is_none() || self.routed {
            return Action::Continue;
        }
        if size > self.max_body() {
            return self.too_large(size);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        self.decide(&body)
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if let Some(e) = &self.explain {
            self.set_http_response_header(headers::DECISION, Some(e));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _end_of_stream: bool) -> Action {
        if !self.routed || size == 0 {
            return Action::Continue;
        }
        let mut vm = self.vm.borrow_mut();
        let changed = if vm.engine.cfg.router.track_output_blocks {
            let chunk = self.get_http_response_body(0, size).unwrap_or_default();
            vm.engine.response_chunk(self.id, &chunk)
        } else if !self.response_started {
            vm.engine.response_started(self.id)
        } else {
            false
        };
        self.response_started = true;
        if changed {
            vm.publish_loads(now_ms());
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            if vm.engine.request_done(self.id) {
                vm.publish_loads(now_ms());
            }
        }
    }
}
