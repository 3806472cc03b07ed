//! An in-memory [`Host`] for native tests, `explain` and virtual-time benchmarks: shared
//! data with Envoy's CAS semantics (shareable by several VMs, as in one Envoy), a settable
//! clock, recorded HTTP calls, metrics and log lines.

use crate::host::{CallError, CallId, Cas, Host, HttpCall, Level, MetricOp, SharedError};
use crate::metrics::{Metric, MetricKind};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Shared data of one simulated Envoy process: key → (value, CAS token).
pub type Store = Rc<RefCell<HashMap<String, (Vec<u8>, Cas)>>>;

/// Code run just before a write (see [`FakeHost::before_next_set`]).
type Hook = Box<dyn FnOnce()>;

/// An HTTP call the engine sent, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCall {
    /// The id the host answered with.
    pub id: CallId,
    /// Cluster.
    pub cluster: String,
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Option<Vec<u8>>,
    /// Time limit.
    pub timeout_ms: u64,
}

/// The fake host.
#[derive(Default)]
pub struct FakeHost {
    store: Store,
    now: Cell<u64>,
    next_call: Cell<CallId>,
    refuse_calls: Cell<bool>,
    calls: RefCell<Vec<SentCall>>,
    counters: RefCell<HashMap<String, i64>>,
    /// Runs once, just before the next write of this key (to interleave another VM).
    before_set: RefCell<Option<(String, Hook)>>,
    histograms: RefCell<HashMap<String, Vec<u64>>>,
    logs: RefCell<Vec<(Level, String)>>,
    env: RefCell<HashMap<String, String>>,
    memory: Cell<Option<u64>>,
    /// Shared-data writes made through this host (landed or not).
    writes: Cell<u64>,
}

impl FakeHost {
    /// A host with its own shared data, at time `now_ms`.
    pub fn at(now_ms: u64) -> Self {
        let h = FakeHost::default();
        h.now.set(now_ms);
        h
    }

    /// Sets a variable of the VM environment.
    pub fn set_env(&self, name: &str, value: &str) {
        self.env
            .borrow_mut()
            .insert(name.to_string(), value.to_string());
    }

    /// Another VM of the same process: same shared data, own calls and logs.
    pub fn sibling(&self) -> Self {
        let h = FakeHost {
            store: self.store.clone(),
            env: RefCell::new(self.env.borrow().clone()),
            ..FakeHost::default()
        };
        h.now.set(self.now.get());
        h
    }

    /// Runs `f` once, just before this host's next write of `key` — what another VM of
    /// the same Envoy does between this VM's read and its write.
    pub fn before_next_set(&self, key: &str, f: impl FnOnce() + 'static) {
        *self.before_set.borrow_mut() = Some((key.to_string(), Box::new(f)));
    }

    /// Sets what [`Host::linear_memory_bytes`] answers.
    pub fn set_linear_memory(&self, bytes: Option<u64>) {
        self.memory.set(bytes);
    }

    /// Sets the clock.
    pub fn set_now(&self, now_ms: u64) {
        self.now.set(now_ms);
    }

    /// Moves the clock forward.
    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get() + ms);
    }

    /// Makes `http_call` fail (the cluster is unknown or unreachable).
    pub fn refuse_calls(&self, refuse: bool) {
        self.refuse_calls.set(refuse);
    }

    /// Calls sent since the last `take_calls`.
    pub fn take_calls(&self) -> Vec<SentCall> {
        std::mem::take(&mut self.calls.borrow_mut())
    }

    /// A counter's or gauge's value by stat name (0 when never moved).
    pub fn metric_value(&self, name: &str) -> i64 {
        self.counters.borrow().get(name).copied().unwrap_or(0)
    }

    /// Values recorded in a histogram.
    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.histograms
            .borrow()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Log lines at `level` or above.
    pub fn logs(&self, level: Level) -> Vec<String> {
        self.logs
            .borrow()
            .iter()
            .filter(|(l, _)| *l >= level)
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The raw shared-data value of `key`.
    pub fn shared_value(&self, key: &str) -> Option<Vec<u8>> {
        self.store.borrow().get(key).map(|(v, _)| v.clone())
    }

    /// The shared-data keys starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .store
            .borrow()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        keys
    }

    /// Shared-data writes made through this host so far (landed or refused).
    pub fn shared_writes(&self) -> u64 {
        self.writes.get()
    }
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost")
            .field("now", &self.now.get())
            .field("keys", &self.store.borrow().len())
            .finish_non_exhaustive()
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.store.borrow().get(key).cloned()
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SharedError> {
        self.writes.set(self.writes.get() + 1);
        let hook = {
            let mut b = self.before_set.borrow_mut();
            match b.as_ref() {
                Some((k, _)) if k == key => b.take(),
                _ => None,
            }
        };
        if let Some((_, f)) = hook {
            f();
        }
        crate::host::shared_set_in(&mut self.store.borrow_mut(), key, value, cas)
    }

    fn http_call(&self, call: &HttpCall<'_>) -> Result<CallId, CallError> {
        if self.refuse_calls.get() {
            return Err(CallError {
                cluster: call.cluster.to_string(),
                reason: "refused by the test".into(),
            });
        }
        let id = self.next_call.get() + 1;
        self.next_call.set(id);
        self.calls.borrow_mut().push(SentCall {
            id,
            cluster: call.cluster.to_string(),
            method: call.method.to_string(),
            path: call.path.to_string(),
            headers: call
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: call.body.map(<[u8]>::to_vec),
            timeout_ms: call.timeout_ms,
        });
        Ok(id)
    }

    fn env_var(&self, name: &str) -> Option<String> {
        self.env.borrow().get(name).cloned()
    }

    fn linear_memory_bytes(&self) -> Option<u64> {
        self.memory.get()
    }

    fn metric(&self, metric: Metric, op: MetricOp) {
        let name = metric.name();
        match (metric.kind(), op) {
            (MetricKind::Histogram, MetricOp::Record(v)) => self
                .histograms
                .borrow_mut()
                .entry(name)
                .or_default()
                .push(v),
            (_, MetricOp::Count(by)) => {
                *self.counters.borrow_mut().entry(name).or_default() +=
                    i64::try_from(by).unwrap_or(i64::MAX)
            }
            (_, MetricOp::Shift(by)) => *self.counters.borrow_mut().entry(name).or_default() += by,
            (_, MetricOp::Record(v)) => {
                self.counters
                    .borrow_mut()
                    .insert(name, i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }

    fn log(&self, level: Level, message: &str) {
        self.logs.borrow_mut().push((level, message.to_string()));
    }
}
