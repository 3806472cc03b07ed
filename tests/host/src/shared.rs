//! State shared by all VMs of one test, like Envoy's process-wide state: shared data with CAS,
//! shared queues, metrics (stats) and a controllable clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::types::{MetricType, Status};

/// Default start of the test clock: 2025-01-01T00:00:00Z.
pub const DEFAULT_CLOCK_START_SECS: u64 = 1_735_689_600;

/// A controllable clock: it only moves when a test calls [`advance`](Self::advance) or
/// [`set`](Self::set). Serves `proxy_get_current_time_nanoseconds` and WASI `clock_time_get`.
#[derive(Debug)]
pub struct TestClock {
    realtime_ns: AtomicU64,
    monotonic_ns: AtomicU64,
}

impl Default for TestClock {
    fn default() -> Self {
        Self {
            realtime_ns: AtomicU64::new(DEFAULT_CLOCK_START_SECS * 1_000_000_000),
            monotonic_ns: AtomicU64::new(1_000_000_000),
        }
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl TestClock {
    /// Wall-clock time in nanoseconds since the Unix epoch.
    pub fn now_nanos(&self) -> u64 {
        self.realtime_ns.load(Ordering::SeqCst)
    }

    /// Wall-clock time.
    pub fn now(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.now_nanos())
    }

    /// Monotonic time in nanoseconds (never goes back, moved only by `advance`).
    pub fn monotonic_nanos(&self) -> u64 {
        self.monotonic_ns.load(Ordering::SeqCst)
    }

    /// Moves both clocks forward.
    pub fn advance(&self, d: Duration) {
        let ns = duration_ns(d);
        self.realtime_ns.fetch_add(ns, Ordering::SeqCst);
        self.monotonic_ns.fetch_add(ns, Ordering::SeqCst);
    }

    /// Sets the wall clock (the monotonic clock is unaffected).
    pub fn set(&self, t: SystemTime) {
        let ns = t.duration_since(UNIX_EPOCH).map(duration_ns).unwrap_or(0);
        self.realtime_ns.store(ns, Ordering::SeqCst);
    }
}

/// A shared-data value with its CAS token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedValue {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The CAS token to pass back for a conditional update.
    pub cas: u32,
}

impl SharedValue {
    /// The value as (lossy) UTF-8.
    pub fn as_str_lossy(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// Current value of a metric, readable by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricValue {
    /// Counter value.
    Counter(u64),
    /// Gauge value (Envoy gauges are unsigned; going below zero wraps, which makes the bug visible).
    Gauge(u64),
    /// All recorded histogram values, in order.
    Histogram(Vec<u64>),
}

impl MetricValue {
    /// Counter or gauge value; the number of samples for a histogram.
    pub fn value(&self) -> u64 {
        match self {
            Self::Counter(v) | Self::Gauge(v) => *v,
            Self::Histogram(v) => v.len() as u64,
        }
    }

    pub(crate) fn kind(&self) -> MetricType {
        match self {
            Self::Counter(_) => MetricType::Counter,
            Self::Gauge(_) => MetricType::Gauge,
            Self::Histogram(_) => MetricType::Histogram,
        }
    }
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    owner_vm: u64,
    owner_context: u32,
}

#[derive(Debug)]
struct Inner {
    data: HashMap<String, HashMap<Vec<u8>, SharedValue>>,
    next_cas: u32,
    queue_tokens: HashMap<(String, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next_queue_token: u32,
    notifications: HashMap<u64, VecDeque<(u32, u32)>>,
    metrics: BTreeMap<String, MetricValue>,
    next_vm_key: u64,
}

impl Default for Inner {
    fn default() -> Self {
        Self {
            data: HashMap::new(),
            next_cas: 1,
            queue_tokens: HashMap::new(),
            queues: HashMap::new(),
            next_queue_token: 1,
            notifications: HashMap::new(),
            metrics: BTreeMap::new(),
            next_vm_key: 1,
        }
    }
}

impl Inner {
    fn next_cas(&mut self) -> u32 {
        let cas = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        if self.next_cas == 0 {
            self.next_cas = 1; // 0 means "unconditional" and is never handed out
        }
        cas
    }
}

/// Process-wide state shared by several [`Vm`](super::Vm)s of one test (e.g. simulated Envoy
/// workers). Cloning gives another handle to the same state. Shared data and queues are
/// namespaced by `vm_id`, exactly like Envoy.
#[derive(Debug, Clone, Default)]
pub struct SharedStore {
    inner: Arc<Mutex<Inner>>,
    clock: Arc<TestClock>,
}

impl SharedStore {
    /// A fresh store with the clock at [`DEFAULT_CLOCK_START_SECS`].
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared clock.
    pub fn clock(&self) -> &TestClock {
        &self.clock
    }

    pub(crate) fn new_vm_key(&self) -> u64 {
        let mut inner = self.lock();
        let key = inner.next_vm_key;
        inner.next_vm_key += 1;
        key
    }

    /// `proxy_get_shared_data`: the value and its CAS, or `None` (Envoy: `NotFound`).
    pub fn get(&self, vm_id: &str, key: &[u8]) -> Option<SharedValue> {
        self.lock().data.get(vm_id)?.get(key).cloned()
    }

    /// `proxy_set_shared_data` with Envoy's semantics: `cas == 0` writes unconditionally; a
    /// non-zero `cas` must match the stored CAS of an existing key (else `CasMismatch`); a
    /// missing key is always inserted. Every write gets a fresh CAS.
    pub fn set(&self, vm_id: &str, key: &[u8], value: &[u8], cas: u32) -> Status {
        let mut inner = self.lock();
        if let Some(existing) = inner.data.get(vm_id).and_then(|m| m.get(key)) {
            if cas != 0 && cas != existing.cas {
                return Status::CasMismatch;
            }
        }
        let next = inner.next_cas();
        inner.data.entry(vm_id.to_owned()).or_default().insert(
            key.to_vec(),
            SharedValue {
                value: value.to_vec(),
                cas: next,
            },
        );
        Status::Ok
    }

    /// All keys of a vm_id, sorted.
    pub fn keys(&self, vm_id: &str) -> Vec<Vec<u8>> {
        let mut keys: Vec<Vec<u8>> = self
            .lock()
            .data
            .get(vm_id)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    /// `proxy_register_shared_queue`: returns the queue token (stable per `(vm_id, name)`); the
    /// registering VM/context becomes the one notified by `on_queue_ready` (last one wins).
    pub(crate) fn register_queue(&self, vm_id: &str, name: &[u8], vm: u64, context: u32) -> u32 {
        let mut inner = self.lock();
        let key = (vm_id.to_owned(), name.to_vec());
        let token = match inner.queue_tokens.get(&key) {
            Some(t) => *t,
            None => {
                let t = inner.next_queue_token;
                inner.next_queue_token = inner.next_queue_token.wrapping_add(1).max(1);
                inner.queue_tokens.insert(key, t);
                t
            }
        };
        let queue = inner.queues.entry(token).or_insert_with(|| Queue {
            items: VecDeque::new(),
            owner_vm: vm,
            owner_context: context,
        });
        queue.owner_vm = vm;
        queue.owner_context = context;
        token
    }

    /// `proxy_resolve_shared_queue`: the token of a registered queue.
    pub fn resolve_queue(&self, vm_id: &str, name: &[u8]) -> Option<u32> {
        self.lock()
            .queue_tokens
            .get(&(vm_id.to_owned(), name.to_vec()))
            .copied()
    }

    /// `proxy_enqueue_shared_queue`: appends an item and schedules `on_queue_ready` for the
    /// owner (delivered by [`Vm::deliver_queue_ready`](super::Vm::deliver_queue_ready)).
    pub fn enqueue(&self, token: u32, item: &[u8]) -> Status {
        let mut inner = self.lock();
        let Some(queue) = inner.queues.get_mut(&token) else {
            return Status::NotFound;
        };
        queue.items.push_back(item.to_vec());
        let (vm, ctx) = (queue.owner_vm, queue.owner_context);
        inner
            .notifications
            .entry(vm)
            .or_default()
            .push_back((ctx, token));
        Status::Ok
    }

    /// `proxy_dequeue_shared_queue`: `Ok(None)` is Envoy's `Empty`.
    pub fn dequeue(&self, token: u32) -> Result<Option<Vec<u8>>, Status> {
        let mut inner = self.lock();
        let queue = inner.queues.get_mut(&token).ok_or(Status::NotFound)?;
        Ok(queue.items.pop_front())
    }

    /// Items waiting in a queue.
    pub fn queue_len(&self, token: u32) -> Option<usize> {
        self.lock().queues.get(&token).map(|q| q.items.len())
    }

    /// Takes the pending `(context_id, queue token)` notifications of one VM.
    pub(crate) fn take_notifications(&self, vm: u64) -> Vec<(u32, u32)> {
        self.lock()
            .notifications
            .remove(&vm)
            .map(Vec::from)
            .unwrap_or_default()
    }

    /// Number of pending `on_queue_ready` notifications of one VM.
    pub(crate) fn pending_notifications(&self, vm: u64) -> usize {
        self.lock().notifications.get(&vm).map_or(0, VecDeque::len)
    }

    /// Creates a metric if it does not exist yet; `false` if it exists with another type.
    pub(crate) fn define_metric(&self, name: &str, kind: MetricType) -> bool {
        let mut inner = self.lock();
        let entry = inner.metrics.entry(name.to_owned()).or_insert(match kind {
            MetricType::Counter => MetricValue::Counter(0),
            MetricType::Gauge => MetricValue::Gauge(0),
            MetricType::Histogram => MetricValue::Histogram(Vec::new()),
        });
        entry.kind() == kind
    }

    /// Applies `f` to a metric's value.
    pub(crate) fn update_metric<R>(
        &self,
        name: &str,
        f: impl FnOnce(&mut MetricValue) -> R,
    ) -> Option<R> {
        self.lock().metrics.get_mut(name).map(f)
    }

    /// Current value of a metric by the name the guest defined it with (Envoy's admin
    /// `/stats` shows it with a `wasmcustom.` prefix).
    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        self.lock().metrics.get(name).cloned()
    }

    /// All metrics by name.
    pub fn metrics(&self) -> BTreeMap<String, MetricValue> {
        self.lock().metrics.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    #[test]
    fn cas_semantics_match_envoy() {
        let s = SharedStore::new();
        assert_eq!(s.get("vm", b"k"), None);
        // Missing key: inserted whatever the CAS.
        assert_eq!(s.set("vm", b"k", b"1", 12345), Status::Ok);
        let v1 = s.get("vm", b"k").unwrap();
        assert_eq!(v1.value, b"1");
        assert_ne!(v1.cas, 0);
        // Matching CAS: updated, new CAS.
        assert_eq!(s.set("vm", b"k", b"2", v1.cas), Status::Ok);
        let v2 = s.get("vm", b"k").unwrap();
        assert_ne!(v2.cas, v1.cas);
        // Stale CAS: rejected, value unchanged.
        assert_eq!(s.set("vm", b"k", b"3", v1.cas), Status::CasMismatch);
        assert_eq!(s.get("vm", b"k").unwrap(), v2);
        // CAS 0: unconditional.
        assert_eq!(s.set("vm", b"k", b"4", 0), Status::Ok);
        assert_eq!(s.get("vm", b"k").unwrap().value, b"4");
        // Namespaced by vm_id.
        assert_eq!(s.get("other", b"k"), None);
        assert_eq!(s.keys("vm"), vec![b"k".to_vec()]);
    }

    #[test]
    fn cas_never_hands_out_zero() {
        let s = SharedStore::new();
        s.lock().next_cas = u32::MAX;
        s.set("vm", b"a", b"", 0);
        s.set("vm", b"b", b"", 0);
        assert_eq!(s.get("vm", b"a").unwrap().cas, u32::MAX);
        assert_eq!(s.get("vm", b"b").unwrap().cas, 1);
    }

    #[test]
    fn concurrent_cas_increments_lose_nothing() {
        let s = SharedStore::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        loop {
                            let (n, cas) = s.get("vm", b"n").map_or((0, 0), |v| {
                                (
                                    String::from_utf8(v.value).unwrap().parse::<u64>().unwrap(),
                                    v.cas,
                                )
                            });
                            if s.set("vm", b"n", (n + 1).to_string().as_bytes(), cas) == Status::Ok
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.get("vm", b"n").unwrap().value, b"2000");
    }

    #[test]
    fn queues_deliver_to_last_registrant() {
        let s = SharedStore::new();
        let t1 = s.register_queue("vm", b"q", 1, 1);
        let t2 = s.register_queue("vm", b"q", 2, 1);
        assert_eq!(t1, t2);
        assert_eq!(s.resolve_queue("vm", b"q"), Some(t1));
        assert_eq!(s.resolve_queue("other", b"q"), None);
        assert_eq!(s.enqueue(t1, b"a"), Status::Ok);
        assert_eq!(s.enqueue(t1, b"b"), Status::Ok);
        assert_eq!(s.enqueue(999, b"x"), Status::NotFound);
        assert_eq!(s.pending_notifications(1), 0);
        assert_eq!(s.take_notifications(2), vec![(1, t1), (1, t1)]);
        assert_eq!(s.queue_len(t1), Some(2));
        assert_eq!(s.dequeue(t1), Ok(Some(b"a".to_vec())));
        assert_eq!(s.dequeue(t1), Ok(Some(b"b".to_vec())));
        assert_eq!(s.dequeue(t1), Ok(None));
        assert_eq!(s.dequeue(999), Err(Status::NotFound));
    }

    #[test]
    fn metrics_by_name() {
        let s = SharedStore::new();
        assert!(s.define_metric("c", MetricType::Counter));
        assert!(s.define_metric("c", MetricType::Counter));
        assert!(!s.define_metric("c", MetricType::Gauge));
        s.update_metric("c", |m| {
            if let MetricValue::Counter(v) = m {
                *v += 3;
            }
        });
        assert_eq!(s.metric("c"), Some(MetricValue::Counter(3)));
        assert_eq!(s.metric("nope"), None);
    }

    #[test]
    fn clock_is_controllable() {
        let s = SharedStore::new();
        let t0 = s.clock().now_nanos();
        let m0 = s.clock().monotonic_nanos();
        s.clock().advance(Duration::from_millis(1500));
        assert_eq!(s.clock().now_nanos() - t0, 1_500_000_000);
        assert_eq!(s.clock().monotonic_nanos() - m0, 1_500_000_000);
        s.clock().set(UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(s.clock().now_nanos(), 10_000_000_000);
        assert_eq!(s.clock().monotonic_nanos() - m0, 1_500_000_000);
    }
}
