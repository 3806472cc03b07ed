//! The [`Vm`] driver: one instance of the filter module with its root context, like one Envoy
//! worker's VM. Runs the start-up sequence, ticks, answers HTTP calls, delivers queue
//! notifications and creates [`Stream`]s.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use wasmtime::{Instance, Store, WasmParams, WasmResults};

use super::codec::{property_path, HeaderMap};
use super::engine::{engine, FilterModule};
use super::error::HostError;
use super::shared::{MetricValue, SharedStore, SharedValue};
use super::state::{CallResponse, HostState, Settings, StreamState, ROOT_CONTEXT_ID};
use super::stream::Stream;
use super::types::{HttpCall, LogLevel, LogLine, Status};

/// Options of a [`Vm`]; `VmOptions::default()` plus the two configurations is the usual setup.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// VM configuration (`vm_config.configuration`), read in `on_vm_start`.
    pub vm_config: Vec<u8>,
    /// Plugin configuration (`config.configuration`), read in `on_configure`.
    pub plugin_config: Vec<u8>,
    /// `vm_config.vm_id`: shared data and queues are namespaced by it. Default `"kvgate"`.
    pub vm_id: String,
    /// `config.root_id` (property `plugin_root_id`). Default `""`.
    pub root_id: String,
    /// `config.name` (property `plugin_name`). Default `"kvgate"`.
    pub plugin_name: String,
    /// Level answered by `proxy_get_log_level` (lines below it are still captured). Default trace.
    pub log_level: LogLevel,
    /// Known cluster names for `proxy_http_call` (`None`: accept any name).
    pub clusters: Option<Vec<String>>,
    /// Extra VM-wide properties: `(path segments, value)`.
    pub properties: Vec<(Vec<String>, Vec<u8>)>,
    /// Seed of WASI `random_get`.
    pub random_seed: u64,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            vm_config: Vec::new(),
            plugin_config: Vec::new(),
            vm_id: "kvgate".into(),
            root_id: String::new(),
            plugin_name: "kvgate".into(),
            log_level: LogLevel::Trace,
            clusters: None,
            properties: Vec::new(),
            random_seed: 0x6b76_6761_7465,
        }
    }
}

/// The store, instance and bookkeeping behind a [`Vm`] and its [`Stream`]s.
pub(crate) struct VmInner {
    pub store: Store<HostState>,
    instance: Instance,
    dead: bool,
    next_context_id: u32,
}

impl VmInner {
    /// Calls an exported callback with `ctx` as the current context; `Ok(None)` if the module
    /// does not export it. A trap marks the VM dead.
    pub fn call<P: WasmParams, R: WasmResults>(
        &mut self,
        name: &'static str,
        ctx: u32,
        params: P,
    ) -> Result<Option<R>, HostError> {
        if self.dead {
            return Err(HostError::VmDead);
        }
        let Some(func) = self.instance.get_func(&mut self.store, name) else {
            return Ok(None);
        };
        let func = func
            .typed::<P, R>(&self.store)
            .map_err(|e| HostError::Abi(format!("{name}: {e}")))?;
        let logs_before = self.store.data().logs.len();
        self.store.data_mut().current = ctx;
        let result = func.call(&mut self.store, params);
        self.store.data_mut().current = 0;
        match result {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                self.dead = true;
                let logs = self
                    .store
                    .data()
                    .logs
                    .get(logs_before..)
                    .unwrap_or_default();
                Err(HostError::from_guest(name, &e, logs))
            }
        }
    }

    /// Calls a callback returning a wasm bool; a missing export counts as `true`.
    pub fn call_bool(&mut self, name: &'static str, ctx: u32, arg: u32) -> Result<bool, HostError> {
        let result = self.call::<(u32, u32), u32>(name, ctx, (ctx, arg))?;
        Ok(result.is_none_or(|r| r != 0))
    }

    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    pub fn stream(&self, id: u32) -> Option<&StreamState> {
        self.state().streams.get(&id)
    }

    /// The stream's state (created on first use).
    pub fn stream_mut(&mut self, id: u32) -> &mut StreamState {
        self.state_mut().streams.entry(id).or_default()
    }

    /// Envoy creates the in-VM context lazily, at the first event of the stream.
    pub fn ensure_created(&mut self, id: u32) -> Result<(), HostError> {
        if self.stream(id).is_some_and(|s| s.created) {
            return Ok(());
        }
        self.stream_mut(id).created = true;
        self.call::<(u32, u32), ()>("proxy_on_context_create", id, (id, ROOT_CONTEXT_ID))?;
        Ok(())
    }

    fn deliver_call(
        &mut self,
        token: u32,
        response: Option<CallResponse>,
    ) -> Result<(), HostError> {
        let state = self.state_mut();
        let pending = state.http_calls.iter().any(|c| c.token == token)
            && !state.answered_calls.contains(&token);
        if !pending {
            return Err(HostError::UnknownHttpCall(token));
        }
        state.answered_calls.push(token);
        let sizes = match &response {
            Some(r) => (r.headers.len(), r.body.len(), r.trailers.len()),
            None => {
                // Envoy onHttpCallFailure: status BrokenConnection/"reset", no response maps.
                state.status = (Status::BrokenConnection.code(), b"reset".to_vec());
                (0, 0, 0)
            }
        };
        state.call_response = response;
        let (h, b, t) = (len32(sizes.0), len32(sizes.1), len32(sizes.2));
        let params = (ROOT_CONTEXT_ID, token, h, b, t);
        let result = self.call::<(u32, u32, u32, u32, u32), ()>(
            "proxy_on_http_call_response",
            ROOT_CONTEXT_ID,
            params,
        );
        let state = self.state_mut();
        state.call_response = None;
        state.status.1.clear();
        result.map(|_| ())
    }
}

/// Bound of [`Vm::deliver_queue_ready`] against filters that re-enqueue forever.
const MAX_QUEUE_DELIVERIES: usize = 100_000;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// One proxy-wasm VM (an instance of a [`FilterModule`]) with its root context.
///
/// All methods take `&self`; the VM and its [`Stream`]s share the instance behind a mutex, so
/// streams can be interleaved with ticks and HTTP call responses.
pub struct Vm {
    inner: Arc<Mutex<VmInner>>,
    shared: SharedStore,
    vm_id: String,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("vm_id", &self.vm_id)
            .finish_non_exhaustive()
    }
}

impl Vm {
    /// Instantiates `module` and runs `_initialize`, `proxy_on_context_create(root)`,
    /// `proxy_on_vm_start` and `proxy_on_configure`, with default [`VmOptions`].
    /// Rejections by the filter are [`HostError::VmStartRejected`] / [`HostError::ConfigureRejected`].
    pub fn new(
        module: &FilterModule,
        vm_config: &[u8],
        plugin_config: &[u8],
        shared: SharedStore,
    ) -> Result<Self, HostError> {
        let options = VmOptions {
            vm_config: vm_config.to_vec(),
            plugin_config: plugin_config.to_vec(),
            ..VmOptions::default()
        };
        Self::with_options(module, options, shared)
    }

    /// Like [`new`](Self::new) with explicit options.
    pub fn with_options(
        module: &FilterModule,
        options: VmOptions,
        shared: SharedStore,
    ) -> Result<Self, HostError> {
        let settings = Settings {
            vm_id: options.vm_id.clone(),
            log_level: options.log_level,
            clusters: options.clusters.clone(),
            echo_logs: std::env::var("KVGATE_HOST_LOG").is_ok_and(|v| v == "1"),
        };
        let mut state = HostState::new(shared.clone(), settings, options.random_seed);
        state.vm_config = options.vm_config.clone();
        state.plugin_config = options.plugin_config.clone();
        let builtin = [
            ("plugin_root_id", &options.root_id),
            ("plugin_vm_id", &options.vm_id),
            ("plugin_name", &options.plugin_name),
        ];
        for (name, value) in builtin {
            state
                .properties
                .insert(name.as_bytes().to_vec(), value.as_bytes().to_vec());
        }
        for (path, value) in &options.properties {
            let segments: Vec<&str> = path.iter().map(String::as_str).collect();
            state
                .properties
                .insert(property_path(&segments), value.clone());
        }
        let mut store = Store::new(engine()?, state);
        let instance = module
            .pre()
            .instantiate(&mut store)
            .map_err(|e| HostError::Instantiate(format!("{e:#}")))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| HostError::Abi("missing memory export".into()))?;
        let alloc = instance
            .get_typed_func::<u32, u32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<u32, u32>(&mut store, "malloc"))
            .map_err(|e| HostError::Abi(format!("proxy_on_memory_allocate: {e}")))?;
        store.data_mut().memory = Some(memory);
        store.data_mut().alloc = Some(alloc);
        let mut inner = VmInner {
            store,
            instance,
            dead: false,
            next_context_id: ROOT_CONTEXT_ID + 1,
        };
        inner.call::<(), ()>("_initialize", 0, ())?;
        inner.call::<(u32, u32), ()>(
            "proxy_on_context_create",
            ROOT_CONTEXT_ID,
            (ROOT_CONTEXT_ID, 0),
        )?;
        let vm_config_len = len32(options.vm_config.len());
        if !inner.call_bool("proxy_on_vm_start", ROOT_CONTEXT_ID, vm_config_len)? {
            return Err(HostError::VmStartRejected {
                logs: inner.state().logs.clone(),
            });
        }
        let vm = Self {
            inner: Arc::new(Mutex::new(inner)),
            shared,
            vm_id: options.vm_id,
        };
        if !vm.configure(&options.plugin_config)? {
            let logs = vm.logs();
            return Err(HostError::ConfigureRejected { logs });
        }
        Ok(vm)
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, VmInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls `proxy_on_configure` with a (new) plugin configuration; returns the filter's answer.
    pub fn configure(&self, plugin_config: &[u8]) -> Result<bool, HostError> {
        let mut vm = self.lock();
        vm.state_mut().plugin_config = plugin_config.to_vec();
        vm.state_mut().configuring = true;
        let result = vm.call_bool(
            "proxy_on_configure",
            ROOT_CONTEXT_ID,
            len32(plugin_config.len()),
        );
        vm.state_mut().configuring = false;
        result
    }

    /// The root context id (always 1).
    pub fn root_context_id(&self) -> u32 {
        ROOT_CONTEXT_ID
    }

    /// The vm_id shared data and queues are namespaced by.
    pub fn vm_id(&self) -> &str {
        &self.vm_id
    }

    /// The shared store this VM uses.
    pub fn shared(&self) -> &SharedStore {
        &self.shared
    }

    /// Whether a trap killed the VM (every later call fails with [`HostError::VmDead`]).
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Calls `proxy_on_tick` on the root context (whether or not a tick period is set).
    pub fn tick(&self) -> Result<(), HostError> {
        self.lock()
            .call::<(u32,), ()>("proxy_on_tick", ROOT_CONTEXT_ID, (ROOT_CONTEXT_ID,))?;
        Ok(())
    }

    /// The tick period the filter set (`None` if unset or 0).
    pub fn tick_period(&self) -> Option<Duration> {
        self.lock().state().tick_period
    }

    /// Advances the shared clock by `d`, calling `proxy_on_tick` each time a tick period elapses
    /// (like Envoy's timer). Returns the number of ticks fired.
    pub fn advance_time(&self, d: Duration) -> Result<u32, HostError> {
        let clock = self.shared.clock();
        let end = clock.monotonic_nanos().saturating_add(nanos(d));
        let mut fired = 0;
        loop {
            let (due, period) = {
                let vm = self.lock();
                let state = vm.state();
                match (state.next_tick_due, state.tick_period) {
                    (Some(due), Some(period)) => (due, nanos(period).max(1)),
                    _ => break,
                }
            };
            if due > end {
                break;
            }
            let now = clock.monotonic_nanos();
            clock.advance(Duration::from_nanos(due.saturating_sub(now)));
            self.tick()?;
            fired += 1;
            let mut vm = self.lock();
            let state = vm.state_mut();
            // Unless the filter changed the period during the tick, schedule the next one.
            if state.next_tick_due == Some(due) {
                state.next_tick_due = Some(due.max(clock.monotonic_nanos()).saturating_add(period));
            }
        }
        let now = clock.monotonic_nanos();
        clock.advance(Duration::from_nanos(end.saturating_sub(now)));
        Ok(fired)
    }

    /// HTTP calls dispatched by the filter and not answered yet, oldest first.
    pub fn http_calls(&self) -> Vec<HttpCall> {
        let vm = self.lock();
        let state = vm.state();
        state
            .http_calls
            .iter()
            .filter(|c| !state.answered_calls.contains(&c.token))
            .cloned()
            .collect()
    }

    /// Every HTTP call dispatched so far (answered or not).
    pub fn all_http_calls(&self) -> Vec<HttpCall> {
        self.lock().state().http_calls.clone()
    }

    /// Delivers a response to a pending HTTP call (`:status` belongs in `headers`).
    pub fn http_call_response(
        &self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), HostError> {
        self.http_call_response_with_trailers(token, headers, body, &[])
    }

    /// Like [`http_call_response`](Self::http_call_response) with trailers.
    pub fn http_call_response_with_trailers(
        &self,
        token: u32,
        headers: &[(&str, &str)],
        body: &[u8],
        trailers: &[(&str, &str)],
    ) -> Result<(), HostError> {
        let response = CallResponse {
            headers: HeaderMap::from_pairs(headers),
            body: body.to_vec(),
            trailers: HeaderMap::from_pairs(trailers),
        };
        self.lock().deliver_call(token, Some(response))
    }

    /// Fails a pending HTTP call like Envoy does on a reset/timeout: the callback gets 0 headers,
    /// no body, and `proxy_get_status` answers `BrokenConnection` / `"reset"`.
    pub fn http_call_failure(&self, token: u32) -> Result<(), HostError> {
        self.lock().deliver_call(token, None)
    }

    /// Calls `proxy_on_queue_ready(root, token)` directly.
    pub fn queue_ready(&self, token: u32) -> Result<(), HostError> {
        self.lock().call::<(u32, u32), ()>(
            "proxy_on_queue_ready",
            ROOT_CONTEXT_ID,
            (ROOT_CONTEXT_ID, token),
        )?;
        Ok(())
    }

    /// Number of `on_queue_ready` notifications waiting for this VM.
    pub fn pending_queue_notifications(&self) -> usize {
        let key = self.lock().state().vm_key;
        self.shared.pending_notifications(key)
    }

    /// Delivers the `on_queue_ready` notifications for queues this VM registered (including
    /// ones caused while delivering); returns how many were delivered.
    pub fn deliver_queue_ready(&self) -> Result<usize, HostError> {
        let key = self.lock().state().vm_key;
        let mut delivered = 0;
        loop {
            let batch = self.shared.take_notifications(key);
            if batch.is_empty() {
                return Ok(delivered);
            }
            if delivered > MAX_QUEUE_DELIVERIES {
                return Err(HostError::QueueLivelock(delivered));
            }
            for (ctx, token) in batch {
                self.lock()
                    .call::<(u32, u32), ()>("proxy_on_queue_ready", ctx, (ctx, token))?;
                delivered += 1;
            }
        }
    }

    /// Creates a new HTTP stream; its context is created in the VM at its first event.
    pub fn new_stream(&self) -> Stream {
        let mut vm = self.lock();
        let id = vm.next_context_id;
        vm.next_context_id += 1;
        vm.stream_mut(id);
        Stream::new(self.inner.clone(), id)
    }

    /// Every captured log line of this VM.
    pub fn logs(&self) -> Vec<LogLine> {
        self.lock().state().logs.clone()
    }

    /// Takes (and clears) the captured log lines.
    pub fn take_logs(&self) -> Vec<LogLine> {
        std::mem::take(&mut self.lock().state_mut().logs)
    }

    /// Whether any captured log line contains `needle`.
    pub fn has_log(&self, needle: &str) -> bool {
        self.lock()
            .state()
            .logs
            .iter()
            .any(|l| l.message.contains(needle))
    }

    /// A metric by the name the filter defined it with (shared by all VMs, like Envoy stats).
    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        self.shared.metric(name)
    }

    /// Reads a shared-data key in this VM's vm_id namespace.
    pub fn shared_data(&self, key: &str) -> Option<SharedValue> {
        self.shared.get(&self.vm_id, key.as_bytes())
    }

    /// Writes a shared-data key unconditionally in this VM's vm_id namespace.
    pub fn set_shared_data(&self, key: &str, value: &[u8]) {
        self.shared.set(&self.vm_id, key.as_bytes(), value, 0);
    }

    /// Sets a VM-wide property (streams may override it).
    pub fn set_property(&self, path: &[&str], value: &[u8]) {
        self.lock()
            .state_mut()
            .properties
            .insert(property_path(path), value.to_vec());
    }

    /// Plugin shutdown: `proxy_on_done(root)`; if it returns true, `proxy_on_delete(root)`.
    /// Returns the filter's answer; on `false` the filter is expected to call `proxy_done`
    /// later (see [`done_called`](Self::done_called)).
    pub fn shutdown(&self) -> Result<bool, HostError> {
        let mut vm = self.lock();
        let done = vm
            .call::<(u32,), u32>("proxy_on_done", ROOT_CONTEXT_ID, (ROOT_CONTEXT_ID,))?
            .is_none_or(|r| r != 0);
        if done {
            vm.call::<(u32,), ()>("proxy_on_delete", ROOT_CONTEXT_ID, (ROOT_CONTEXT_ID,))?;
        } else {
            vm.state_mut().done_pending = true;
        }
        Ok(done)
    }

    /// Whether the filter called `proxy_done` after a deferred shutdown.
    pub fn done_called(&self) -> bool {
        self.lock().state().done_called
    }
}
