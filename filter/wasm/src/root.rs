//! The root context of one VM: hands the VM and plugin configuration to the engine's
//! [`Vm`], forwards ticks and answers of sidecar calls to it, and carries out what the
//! tick's watchdog asks for held streams (resume, or a local reply).

use crate::host::{random_u64, ProxyHost, VmConfigReader};
use crate::http::{apply, Http, Parked};
use kvgate_engine::host::{CallResponse, Host, Level};
use kvgate_engine::stream::REPLY_HEADERS;
use kvgate_engine::{StreamAction, Vm, VmConfig};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

/// The root context.
pub struct Root {
    id: u32,
    tag: u64,
    vm_config: VmConfig,
    vm: Option<Rc<RefCell<Vm>>>,
    /// Streams waiting for their model (shared with the HTTP contexts).
    parked: Parked,
    /// The tick period set, ms.
    tick_ms: u64,
}

impl Root {
    /// Root context `id` with a random VM tag.
    pub fn new(id: u32) -> Self {
        Root {
            id,
            tag: random_u64(),
            vm_config: VmConfig::default(),
            vm: None,
            parked: Parked::default(),
            tick_ms: 0,
        }
    }

    /// Decides the parked streams `ctxs` and applies each verdict in the stream's context.
    fn decide_parked(&self, ctxs: Vec<u32>) {
        let Some(vm) = &self.vm else { return };
        for ctx in ctxs {
            let Some((stream, body)) = self.parked.borrow_mut().remove(&ctx) else {
                continue;
            };
            let verdict = stream
                .borrow_mut()
                .decide(&mut vm.borrow_mut(), &ProxyHost, &body);
            if hostcalls::set_effective_context(ctx).is_ok()
                && matches!(apply(&verdict, body.len()), Action::Continue)
            {
                let _ = hostcalls::resume_http_request();
            }
        }
        let _ = hostcalls::set_effective_context(self.id);
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        size: usize,
        _trailers: usize,
    ) {
        let Some(vm) = &self.vm else { return };
        let status = self
            .get_http_call_response_header(":status")
            .and_then(|s| s.parse::<u16>().ok());
        let body = self
            .get_http_call_response_body(0, size)
            .unwrap_or_default();
        let resp = CallResponse {
            status,
            body: &body,
        };
        let ready = {
            let mut vm = vm.borrow_mut();
            vm.on_response(&ProxyHost, token, resp);
            vm.take_decidable()
        };
        // Before deciding: a decision may load a model, and memory freed now is reused there.
        drop(body);
        if !ready.is_empty() {
            self.decide_parked(ready);
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        // Streamed: only model names are kept; files are read when a VM first tokenizes.
        match VmConfig::from_reader(Rc::new(VmConfigReader::open)) {
            Ok(c) => {
                self.vm_config = c;
                true
            }
            Err(e) => {
                ProxyHost.log(Level::Critical, &format!("kvgate: {e}"));
                false
            }
        }
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        match Vm::configure(&ProxyHost, self.tag, random_u64(), &raw, &self.vm_config) {
            Ok(vm) => {
                self.tick_ms = vm.tick_period_ms();
                self.set_tick_period(Duration::from_millis(self.tick_ms));
                self.vm = Some(Rc::new(RefCell::new(vm)));
                true
            }
            Err(e) => {
                ProxyHost.log(Level::Critical, &format!("kvgate: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        let Some(vm) = self.vm.clone() else { return };
        let (actions, period) = {
            let mut vm = vm.borrow_mut();
            (vm.on_tick(&ProxyHost), vm.tick_period_ms())
        };
        if period != self.tick_ms {
            self.tick_ms = period;
            self.set_tick_period(Duration::from_millis(period));
        }
        if actions.is_empty() {
            return;
        }
        let mut decide = Vec::new();
        for action in actions {
            let _ = match action {
                StreamAction::Decide(ctx) => {
                    decide.push(ctx);
                    Ok(())
                }
                StreamAction::Resume(ctx) => hostcalls::set_effective_context(ctx)
                    .and_then(|()| hostcalls::resume_http_request()),
                StreamAction::Reply(ctx, r) => {
                    hostcalls::set_effective_context(ctx).and_then(|()| {
                        hostcalls::send_http_response(
                            u32::from(r.status),
                            REPLY_HEADERS.to_vec(),
                            Some(&r.body),
                        )
                    })
                }
            };
        }
        let _ = hostcalls::set_effective_context(self.id);
        self.decide_parked(decide);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Http::new(context_id, vm, self.parked.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
