//! The HTTP context: each callback becomes one call of the engine's [`Stream`], whose
//! answer is applied here (remove/set headers, replace the body, reply locally).

use crate::host::ProxyHost;
use kvgate_engine::headers;
use kvgate_engine::stream::REPLY_HEADERS;
use kvgate_engine::{Next, Reply, Stream, Verdict, Vm};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::rc::Rc;

/// One HTTP stream.
pub struct Http {
    vm: Rc<RefCell<Vm>>,
    stream: Stream,
}

impl Http {
    /// Stream context `id` of `vm`.
    pub fn new(id: u32, vm: Rc<RefCell<Vm>>) -> Self {
        Http {
            vm,
            stream: Stream::new(id),
        }
    }

    fn reply(&self, r: &Reply) -> Action {
        self.send_http_response(u32::from(r.status), REPLY_HEADERS.to_vec(), Some(&r.body));
        Action::Pause
    }

    fn next(&mut self, next: Next, size: usize) -> Action {
        match next {
            Next::Continue => Action::Continue,
            Next::Pause => Action::Pause,
            Next::Reply(r) => self.reply(&r),
            Next::Decide => {
                let body = self.get_http_request_body(0, size).unwrap_or_default();
                let verdict = self
                    .stream
                    .decide(&mut self.vm.borrow_mut(), &ProxyHost, &body);
                match verdict {
                    Verdict::Continue {
                        headers,
                        body: new_body,
                        clear_route_cache,
                    } => {
                        for (name, value) in &headers {
                            self.set_http_request_header(name, Some(value));
                        }
                        if let Some(b) = new_body {
                            self.set_http_request_body(0, body.len(), &b);
                            self.set_http_request_header(
                                "content-length",
                                Some(&b.len().to_string()),
                            );
                        }
                        if clear_route_cache {
                            let _ = self.call_foreign_function("clear_route_cache", None);
                        }
                        Action::Continue
                    }
                    Verdict::Reply(r) => self.reply(&r),
                }
            }
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers();
        let step = self.stream.request_headers(
            &mut self.vm.borrow_mut(),
            &ProxyHost,
            &headers,
            end_of_stream,
        );
        for name in &step.remove {
            self.set_http_request_header(name, None);
        }
        self.next(step.next, 0)
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let next =
            self.stream
                .request_body(&mut self.vm.borrow_mut(), &ProxyHost, size, end_of_stream);
        self.next(next, size)
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        let next = self.stream.request_trailers(&mut self.vm.borrow_mut());
        let size = self.stream.body_size();
        self.next(next, size)
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let unreachable = self.get_http_response_header(headers::PREFILL_UNREACHABLE);
        if unreachable.is_some() {
            self.set_http_response_header(headers::PREFILL_UNREACHABLE, None);
        }
        let mut vm = self.vm.borrow_mut();
        self.stream
            .upstream_response(&mut vm, &ProxyHost, unreachable.as_deref());
        for (name, value) in self.stream.response_headers(&vm) {
            self.set_http_response_header(name, Some(value));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _end_of_stream: bool) -> Action {
        let mut vm = self.vm.borrow_mut();
        let chunk = if self.stream.wants_response_bytes(&vm, size) {
            self.get_http_response_body(0, size).unwrap_or_default()
        } else {
            Vec::new()
        };
        self.stream.response_body(&mut vm, &ProxyHost, size, &chunk);
        Action::Continue
    }

    fn on_log(&mut self) {
        if let Ok(mut vm) = self.vm.try_borrow_mut() {
            self.stream.done(&mut vm, &ProxyHost);
        }
    }
}
