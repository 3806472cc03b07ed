//! The engine's [`Host`] natively, for the picker's engine thread: shared data in memory
//! (one VM, so compare-and-swap never conflicts), the wall clock, HTTP calls to the
//! sidecar's own API on the tokio runtime (their answers come back to the engine thread
//! as messages), metrics into the sidecar's Prometheus registry and logs into `tracing`.

use super::metrics::EppMetrics;
use super::Msg;
use crate::client::{self, Target};
use kvgate_engine::host::{CallError, CallId, Cas, Host, HttpCall, Level, MetricOp, SharedError};
use kvgate_engine::metric::Metric;
use kvgate_engine::metrics::MetricKind;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

/// The native host.
pub struct NativeHost {
    store: RefCell<HashMap<String, (Vec<u8>, Cas)>>,
    next_call: Cell<CallId>,
    rt: tokio::runtime::Handle,
    sidecar: Target,
    token: Option<String>,
    tx: Sender<Msg>,
    metrics: Arc<EppMetrics>,
}

impl NativeHost {
    /// A host whose HTTP calls go to `sidecar` (with `token`, the sidecar's API token,
    /// also the VM environment's `KVGATE_SIDECAR_TOKEN`) on runtime `rt`; answers are
    /// sent on `tx`.
    pub fn new(
        rt: tokio::runtime::Handle,
        sidecar: Target,
        token: Option<String>,
        tx: Sender<Msg>,
        metrics: Arc<EppMetrics>,
    ) -> Self {
        NativeHost {
            store: RefCell::default(),
            next_call: Cell::new(0),
            rt,
            sidecar,
            token,
            tx,
            metrics,
        }
    }
}

impl Host for NativeHost {
    fn now_ms(&self) -> u64 {
        crate::time::now_ms()
    }

    fn shared_get(&self, key: &str) -> Option<(Vec<u8>, Cas)> {
        self.store.borrow().get(key).cloned()
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), SharedError> {
        kvgate_engine::host::shared_set_in(&mut self.store.borrow_mut(), key, value, cas)
    }

    fn http_call(&self, call: &HttpCall<'_>) -> Result<CallId, CallError> {
        let method = hyper::Method::from_bytes(call.method.as_bytes()).map_err(|e| CallError {
            cluster: call.cluster.to_string(),
            reason: e.to_string(),
        })?;
        let id = self.next_call.get().wrapping_add(1).max(1);
        self.next_call.set(id);
        // The VM sends `authorization: Bearer <token>`; the client adds it from the token.
        let token = call
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
            .and_then(|(_, v)| v.strip_prefix("Bearer "))
            .map(str::to_string)
            .or_else(|| self.token.clone());
        let target = self.sidecar.clone();
        let path = call.path.to_string();
        let body = call.body.map(<[u8]>::to_vec).unwrap_or_default();
        let timeout = Duration::from_millis(call.timeout_ms.max(1));
        let tx = self.tx.clone();
        self.rt.spawn(async move {
            let sent = client::request_with_token(&target, method, &path, body, token.as_deref());
            let (status, body) = match tokio::time::timeout(timeout, sent).await {
                Ok(Ok((status, body))) => (Some(status), body.to_vec()),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %path, "epp: sidecar call failed");
                    (None, Vec::new())
                }
                Err(_) => (None, Vec::new()),
            };
            let _ = tx.send(Msg::CallDone { id, status, body });
        });
        Ok(id)
    }

    fn metric(&self, metric: Metric, op: MetricOp) {
        let label = [("name", metric.name())];
        match (metric.kind(), op) {
            (MetricKind::Histogram, MetricOp::Record(v)) => self
                .metrics
                .engine_histograms
                .get_or_create(&label)
                .observe(v as f64),
            (_, MetricOp::Count(by)) => {
                self.metrics
                    .engine_counters
                    .get_or_create(&label)
                    .inc_by(by);
            }
            (_, MetricOp::Shift(by)) => {
                self.metrics.engine_gauges.get_or_create(&label).inc_by(by);
            }
            (_, MetricOp::Record(v)) => {
                self.metrics
                    .engine_gauges
                    .get_or_create(&label)
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
            }
        }
    }

    fn log(&self, level: Level, message: &str) {
        match level {
            Level::Debug => tracing::debug!(target: "kvgate_sync::epp", "{message}"),
            Level::Info => tracing::info!(target: "kvgate_sync::epp", "{message}"),
            Level::Warn => tracing::warn!(target: "kvgate_sync::epp", "{message}"),
            Level::Error | Level::Critical => {
                tracing::error!(target: "kvgate_sync::epp", "{message}")
            }
        }
    }

    fn env_var(&self, name: &str) -> Option<String> {
        (name == kvgate_engine::sidecar::SIDECAR_TOKEN_ENV)
            .then(|| self.token.clone())
            .flatten()
    }
}
