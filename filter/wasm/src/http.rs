//! The HTTP context: each callback becomes one call of the engine's [`Stream`], whose
//! answer is applied here (remove/set headers, replace the body, reply locally). A request
//! waiting for its VM's tokenizer is parked with its body in [`Parked`]; the root context
//! decides it later (`StreamAction::Decide`) and applies the verdict with [`apply`].

use crate::host::ProxyHost;
use kvgate_engine::headers;
use kvgate_engine::stream::REPLY_HEADERS;
use kvgate_engine::{Next, Stream, Verdict, Vm};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Streams waiting for their model, by context id: the stream and its request body.
pub type Parked = Rc<RefCell<BTreeMap<u32, (Rc<RefCell<Stream>>, Vec<u8>)>>>;

/// Applies a verdict to the stream of the effective context (`body_len`: the body's
/// size now); `Action::Pause` after a local reply.
pub fn apply(verdict: &Verdict, body_len: usize) -> Action {
    match verdict {
        Verdict::Continue {
            headers,
            body,
            clear_route_cache,
        } => {
            for (name, value) in headers {
                let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value));
            }
            if let Some(b) = body {
                let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, body_len, b);
                let len = b.len().to_string();
                let _ = hostcalls::set_map_value(
                    MapType::HttpRequestHeaders,
                    "content-length",
                    Some(&len),
                );
            }
            if *clear_route_cache {
                let _ = hostcalls::call_foreign_function("clear_route_cache", None);
            }
            Action::Continue
        }
        Verdict::Reply(r) => {
            let _ = hostcalls::send_http_response(
                u32::from(r.status),
                REPLY_HEADERS.to_vec(),
                Some(&r.body),
            );
            Action::Pause
        }
    }
}

/// One HTTP stream.
pub struct Http {
    id: u32,
    vm: Rc<RefCell<Vm>>,
    stream: Rc<RefCell<Stream>>,
    parked: Parked,
}

impl Http {
    /// Stream context `id` of `vm`.
    pub fn new(id: u32, vm: Rc<RefCell<Vm>>, parked: Parked) -> Self {
        Http {
            id,
            vm,
            stream: Rc::new(RefCell::new(Stream::new(id))),
            parked,
        }
    }

    fn next(&mut self, next: Next, size: usize) -> Action {
        match next {
            Next::Continue => Action::Continue,
            Next::Pause => Action::Pause,
            Next::Reply(r) => apply(&Verdict::Reply(r), 0),
            Next::Decide => {
                let body = self.get_http_request_body(0, size).unwrap_or_default();
                let verdict = self.stream.borrow_mut().decide_or_wait(
                    &mut self.vm.borrow_mut(),
                    &ProxyHost,
                    &body,
                );
                match verdict {
                    Some(v) => apply(&v, body.len()),
                    None => {
                        self.parked
                            .borrow_mut()
                            .insert(self.id, (self.stream.clone(), body));
                        Action::Pause
                    }
                }
            }
        }
    }
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers();
        let step = self.stream.borrow_mut().request_headers(
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
        let next = self.stream.borrow_mut().request_body(
            &mut self.vm.borrow_mut(),
            &ProxyHost,
            size,
            end_of_stream,
        );
        self.next(next, size)
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        let next = self
            .stream
            .borrow_mut()
            .request_trailers(&mut self.vm.borrow_mut());
        let size = self.stream.borrow().body_size();
        self.next(next, size)
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        let unreachable = self.get_http_response_header(headers::PREFILL_UNREACHABLE);
        if unreachable.is_some() {
            self.set_http_response_header(headers::PREFILL_UNREACHABLE, None);
        }
        let mut vm = self.vm.borrow_mut();
        let mut stream = self.stream.borrow_mut();
        stream.upstream_response(&mut vm, &ProxyHost, unreachable.as_deref());
        for (name, value) in stream.response_headers(&vm) {
            self.set_http_response_header(name, Some(value));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, _end_of_stream: bool) -> Action {
        let mut vm = self.vm.borrow_mut();
        let mut stream = self.stream.borrow_mut();
        let chunk = if stream.wants_response_bytes(&vm, size) {
            self.get_http_response_body(0, size).unwrap_or_default()
        } else {
            Vec::new()
        };
        stream.response_body(&mut vm, &ProxyHost, size, &chunk);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.parked.borrow_mut().remove(&self.id);
        if let (Ok(mut vm), Ok(mut stream)) =
            (self.vm.try_borrow_mut(), self.stream.try_borrow_mut())
        {
            stream.done(&mut vm, &ProxyHost);
        }
    }
}
