//! The root context of one VM: reads the configuration, and on every tick follows the
//! sync ring in shared data; the VM holding the lease also long-polls the sidecar, puts
//! each frame into the ring and fetches model files.

use super::host::{now_ms, random_u64, HostShared};
use super::http::Http;
use super::metrics::Metrics;
use crate::engine::{Engine, ModelFiles};
use crate::shared::{self, Shared};
use kvgate_core::config::Config;
use kvgate_core::sync::BookEvent;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

/// State shared by the root context and the HTTP contexts of one VM.
pub struct Vm {
    /// The engine.
    pub engine: Engine,
    /// Metric ids.
    pub metrics: Metrics,
    /// Whether this VM's booked loads changed since they were last published.
    pub loads_dirty: bool,
    last_loads_ms: u64,
}

impl Vm {
    /// Publishes this VM's booked loads in shared data (other VMs read them per decision).
    /// Also moves the in-flight gauges by this VM's change.
    pub fn publish_loads(&mut self, now: u64) {
        let own = self.engine.own_loads();
        shared::write_loads(&HostShared, self.engine.vm, now, &own);
        self.metrics.in_flight(&own);
        self.loads_dirty = false;
        self.last_loads_ms = now;
    }

    /// Applies ring frames this VM has not seen; falls back to the snapshot when behind.
    /// Called on every tick and before every decision (one shared-data read when current),
    /// so a frame the leader VM published is used by every VM's next decision.
    pub fn follow_ring(&mut self, now: u64) {
        let head = shared::head(&HostShared);
        let mut seq = self.engine.ring_seq;
        if head <= seq {
            return;
        }
        if head - seq > shared::RING {
            seq = self.load_snapshot(now).unwrap_or(seq);
        }
        while seq < head {
            let next = seq + 1;
            let applied = shared::read_frame(&HostShared, next)
                .map(|f| self.engine.apply_frame_bytes(&f, now));
            match applied {
                Some(Ok(_)) => seq = next,
                _ => match self.load_snapshot(now) {
                    Some(s) if s > seq => seq = s,
                    _ => break,
                },
            }
        }
        self.engine.ring_seq = seq;
        self.metrics.index_blocks(self.engine.index_blocks());
    }

    fn load_snapshot(&mut self, now: u64) -> Option<u64> {
        let (seq, frame) = shared::read_snapshot(&HostShared)?;
        self.engine.apply_frame_bytes(&frame, now).ok()?;
        Some(seq)
    }
}

/// VM configuration: model files for static mode (no sidecar).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmConfig {
    #[serde(default)]
    models: Vec<VmModel>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VmModel {
    name: String,
    #[serde(default = "sixteen")]
    block_size: u32,
    tokenizer_json: String,
    tokenizer_config_json: String,
}

fn sixteen() -> u32 {
    16
}

enum Call {
    Sync,
    /// The bookkeeping steps in flight (put back in front of the queue if they fail).
    Book(Vec<BookEvent>),
    Model {
        name: String,
        digest: String,
    },
}

/// Most bookkeeping steps kept for the sidecar while it does not answer; older ones are
/// dropped (the sidecar also expires unfreed requests after `active_request_ttl_ms`).
const MAX_BOOK_QUEUE: usize = 65_536;

/// The root context.
pub struct Root {
    vm_tag: u64,
    vm: Option<Rc<RefCell<Vm>>>,
    vm_models: Vec<VmModel>,
    calls: Vec<(u32, Call)>,
    backoff_until: u64,
    failures: u32,
    /// Bookkeeping steps not yet accepted by the sidecar, oldest first. One POST is in
    /// flight at a time so the sidecar sees each request's steps in order (a `Free`
    /// overtaking its `Add` would leave the request booked there).
    book_queue: VecDeque<BookEvent>,
}

impl Root {
    /// A root context with a random VM tag.
    pub fn new() -> Self {
        Root {
            vm_tag: random_u64(),
            vm: None,
            vm_models: Vec::new(),
            calls: Vec::new(),
            backoff_until: 0,
            failures: 0,
            book_queue: VecDeque::new(),
        }
    }

    fn log(level: LogLevel, msg: &str) {
        let _ = proxy_wasm::hostcalls::log(level, msg);
    }

    fn sync_in_flight(&self) -> bool {
        self.calls.iter().any(|(_, c)| matches!(c, Call::Sync))
    }

    fn book_in_flight(&self) -> bool {
        self.calls.iter().any(|(_, c)| matches!(c, Call::Book(_)))
    }

    /// Queues this VM's new bookkeeping steps and sends the queue when no POST is in flight.
    fn send_bookkeeping(&mut self, outbox: Vec<BookEvent>) {
        self.book_queue.extend(outbox);
        if self.book_queue.len() > MAX_BOOK_QUEUE {
            let drop = self.book_queue.len() - MAX_BOOK_QUEUE;
            self.book_queue.drain(..drop);
            Self::log(
                LogLevel::Warn,
                &format!("kvgate: sidecar unreachable: dropped {drop} bookkeeping steps"),
            );
        }
        if self.book_queue.is_empty() || self.book_in_flight() {
            return;
        }
        let events: Vec<BookEvent> = self.book_queue.drain(..).collect();
        let batch = kvgate_core::sync::BookBatch { events };
        let Ok(bytes) = postcard::to_allocvec(&batch) else {
            self.requeue_bookkeeping(batch.events);
            return;
        };
        if let Err(Call::Book(events)) = self.dispatch_with(
            "/v1/bookkeeping".into(),
            "POST",
            Some(&bytes),
            Call::Book(batch.events),
            5_000,
        ) {
            self.requeue_bookkeeping(events);
        }
    }

    /// Puts steps that did not reach the sidecar back in front of the queue.
    fn requeue_bookkeeping(&mut self, events: Vec<BookEvent>) {
        for ev in events.into_iter().rev() {
            self.book_queue.push_front(ev);
        }
    }

    fn dispatch(&mut self, path: String, call: Call, timeout_ms: u64) {
        let _ = self.dispatch_with(path, "GET", None, call, timeout_ms);
    }

    /// Sends a call to the sidecar; gives `call` back when it could not be sent.
    fn dispatch_with(
        &mut self,
        path: String,
        method: &str,
        body: Option<&[u8]>,
        call: Call,
        timeout_ms: u64,
    ) -> Result<(), Call> {
        let Some(vm) = &self.vm else { return Err(call) };
        let (cluster, authority) = {
            let v = vm.borrow();
            match &v.engine.cfg.gateway.sidecar_cluster {
                Some(c) => (c.clone(), v.engine.cfg.gateway.sidecar_authority.clone()),
                None => return Err(call),
            }
        };
        let headers = vec![
            (":method", method),
            (":path", path.as_str()),
            (":authority", authority.as_str()),
        ];
        match self.dispatch_http_call(
            &cluster,
            headers,
            body,
            vec![],
            Duration::from_millis(timeout_ms),
        ) {
            Ok(token) => {
                self.calls.push((token, call));
                Ok(())
            }
            Err(e) => {
                Self::log(
                    LogLevel::Warn,
                    &format!("kvgate: sidecar call to cluster `{cluster}` failed: {e:?}"),
                );
                self.failed();
                Err(call)
            }
        }
    }

    /// Sends the long poll for the next sync frame, from this VM's sync position, unless
    /// one is in flight, when this VM holds (or takes) the sync lease and is not backing off.
    /// False without the lease. The caller must not hold the VM borrowed.
    fn poll_sidecar(&mut self, now: u64) -> bool {
        if now < self.backoff_until || !shared::acquire_lease(&HostShared, self.vm_tag, now) {
            return false;
        }
        if !self.sync_in_flight() {
            let Some(((epoch, since), wait_ms)) = self.vm.as_ref().map(|vm| {
                let v = vm.borrow();
                (v.engine.sync_position(), v.engine.cfg.gateway.sync_wait_ms)
            }) else {
                return false;
            };
            self.dispatch(
                format!("/v1/sync?epoch={epoch}&since={since}&wait_ms={wait_ms}"),
                Call::Sync,
                wait_ms + 5000,
            );
        }
        true
    }

    fn failed(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let backoff = 100u64.saturating_mul(1 << self.failures.min(5));
        self.backoff_until = now_ms() + backoff;
        if let Some(vm) = &self.vm {
            vm.borrow().metrics.sync_failure();
        }
    }

    fn load_missing_models(vm: &mut Vm) -> Vec<(String, String)> {
        let mut still_missing = Vec::new();
        for (name, digest) in vm.engine.missing_models() {
            match HostShared.get(&shared::model_key(&name, &digest)).0 {
                Some(bytes) => match postcard::from_bytes::<ModelFiles>(&bytes) {
                    Ok(files) => match timed(|| vm.engine.load_model(&digest, &files)) {
                        (Ok(()), ms) => Self::log(
                            LogLevel::Info,
                            &format!("kvgate: loaded tokenizer of {name} in {ms} ms"),
                        ),
                        (Err(e), _) => Self::log(LogLevel::Error, &format!("kvgate: {e}")),
                    },
                    Err(e) => Self::log(
                        LogLevel::Error,
                        &format!("kvgate: bad model files for {name}: {e}"),
                    ),
                },
                None => still_missing.push((name, digest)),
            }
        }
        still_missing
    }
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some(pos) = self.calls.iter().position(|(t, _)| *t == token) else {
            return;
        };
        let (_, call) = self.calls.swap_remove(pos);
        let status = self.get_http_call_response_header(":status");
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        // 200 for sync and model files; 204 for accepted bookkeeping.
        if !status
            .as_deref()
            .is_some_and(|s| s.len() == 3 && s.starts_with('2'))
        {
            Self::log(
                LogLevel::Warn,
                &format!("kvgate: sidecar answered {status:?}"),
            );
            if let Call::Book(events) = call {
                self.requeue_bookkeeping(events);
            }
            self.failed();
            return;
        }
        let Some(vm) = self.vm.clone() else { return };
        let now = now_ms();
        let mut vm = vm.borrow_mut();
        let mut repoll = false;
        match call {
            Call::Sync => {
                // Bring this VM up to the ring head first, so the frame continues our state.
                vm.follow_ring(now);
                match vm.engine.apply_frame_bytes(&body, now) {
                    Ok(_) => {
                        self.failures = 0;
                        repoll = true;
                        if let Some(seq) = shared::publish_frame(&HostShared, &body) {
                            vm.engine.ring_seq = seq;
                            if seq % 64 == 1 || body.len() > 1 << 16 {
                                shared::publish_snapshot(
                                    &HostShared,
                                    seq,
                                    &vm.engine.snapshot_frame(),
                                );
                            }
                        }
                    }
                    Err(e) => {
                        // Out of step with the sidecar: ask for a snapshot next time.
                        Self::log(LogLevel::Warn, &format!("kvgate: sync frame refused: {e}"));
                        vm.engine.reset_sync();
                    }
                }
                vm.metrics.index_blocks(vm.engine.index_blocks());
            }
            Call::Book(_) => {}
            Call::Model { name, digest } => {
                HostShared.set(&shared::model_key(&name, &digest), &body, None);
                Self::load_missing_models(&mut vm);
            }
        }
        let counters = vm.engine.counters;
        vm.metrics.export(&counters);
        // After an applied frame the next long poll goes out now, not at the next tick: a
        // KV event arriving in between would otherwise wait for the tick to be delivered.
        // (A refused frame waits for the tick, so a bad sidecar cannot make a busy loop.)
        if repoll {
            drop(vm);
            self.poll_sidecar(now);
        }
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        let raw = self.get_vm_configuration().unwrap_or_default();
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            return true;
        }
        match serde_json::from_slice::<VmConfig>(&raw) {
            Ok(c) => {
                self.vm_models = c.models;
                true
            }
            Err(e) => {
                Self::log(
                    LogLevel::Critical,
                    &format!("kvgate: invalid VM configuration: {e}"),
                );
                false
            }
        }
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let cfg = match Config::from_json(&raw) {
            Ok(c) => c,
            Err(e) => {
                Self::log(
                    LogLevel::Critical,
                    &format!("kvgate: invalid plugin configuration: {e}"),
                );
                return false;
            }
        };
        let tick = cfg.gateway.sync_interval_ms;
        let mut engine = Engine::new(cfg, self.vm_tag, random_u64());
        for m in &self.vm_models {
            let files = ModelFiles {
                name: m.name.clone(),
                block_size: m.block_size,
                tokenizer_json: m.tokenizer_json.as_bytes().to_vec(),
                tokenizer_config_json: m.tokenizer_config_json.as_bytes().to_vec(),
            };
            match timed(|| engine.load_model("vm-config", &files)) {
                (Ok(()), ms) => Self::log(
                    LogLevel::Info,
                    &format!("kvgate: loaded tokenizer of {} in {ms} ms", m.name),
                ),
                (Err(e), _) => {
                    Self::log(LogLevel::Critical, &format!("kvgate: {e}"));
                    return false;
                }
            }
        }
        shared::register_vm(&HostShared, self.vm_tag);
        self.vm = Some(Rc::new(RefCell::new(Vm {
            engine,
            metrics: Metrics::define(),
            loads_dirty: false,
            last_loads_ms: 0,
        })));
        self.set_tick_period(Duration::from_millis(tick));
        true
    }

    fn on_tick(&mut self) {
        let Some(vm) = self.vm.clone() else { return };
        let now = now_ms();
        let (missing, outbox) = {
            let mut v = vm.borrow_mut();
            if v.engine.expire(now) {
                v.loads_dirty = true;
            }
            if v.loads_dirty || now.saturating_sub(v.last_loads_ms) >= 1000 {
                v.publish_loads(now);
            }
            if !v.engine.has_sidecar() {
                return;
            }
            v.follow_ring(now);
            let missing = Self::load_missing_models(&mut v);
            let counters = v.engine.counters;
            v.metrics.export(&counters);
            (missing, v.engine.take_outbox())
        };
        // Every VM sends its own bookkeeping steps (replica sync); no leader needed.
        self.send_bookkeeping(outbox);
        if !self.poll_sidecar(now) {
            return;
        }
        for (name, digest) in missing {
            let busy = self
                .calls
                .iter()
                .any(|(_, c)| matches!(c, Call::Model { name: n, .. } if *n == name));
            if !busy {
                let path = format!(
                    "/v1/models/files?name={}&digest={}",
                    query_escape(&name),
                    query_escape(&digest)
                );
                self.dispatch(path, Call::Model { name, digest }, 30_000);
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let vm = self.vm.clone()?;
        Some(Box::new(Http::new(context_id, vm)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Runs `f`, records its wall time as a model load, and returns both.
fn timed<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let start = now_ms();
    let out = f();
    let ms = now_ms().saturating_sub(start);
    Metrics::model_load_ms(ms);
    (out, ms)
}
