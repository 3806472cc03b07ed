//! The filter's calls to the sidecar: which calls are in flight, the bookkeeping queue
//! (one POST at a time, so the sidecar sees each request's steps in order; failed batches
//! go back in front), and the backoff after a failure. `Vm` decides what to send and
//! what an answer means; this module only keeps the books of the calls.

use crate::host::{CallId, Host, HttpCall, Level};
use kvgate_core::backoff::Backoff;
use kvgate_core::sync::{BookBatch, BookEvent, BookKind};
use std::collections::VecDeque;

/// Most bookkeeping steps kept for the sidecar while it does not answer; older ones are
/// dropped (the sidecar also expires unfreed requests after `active_request_ttl_ms`).
pub const MAX_BOOK_QUEUE: usize = 65_536;

/// Most steps in one bookkeeping POST (kvgate-sync accepts 4096 by default).
pub const BOOK_BATCH_EVENTS: usize = 1_024;

/// Largest bookkeeping POST body, estimated before encoding (kvgate-sync accepts 8 MiB by
/// default); a single step larger than this (a plan of ~200k blocks) is dropped, counted.
pub const BOOK_BATCH_BYTES: usize = 2 << 20;

/// Environment variable of the VM the sidecar token is read from when the plugin
/// configuration has no `sidecar_token`.
pub const SIDECAR_TOKEN_ENV: &str = "KVGATE_SIDECAR_TOKEN";

/// Time limit of a bookkeeping POST.
pub const BOOK_TIMEOUT_MS: u64 = 5_000;

/// Time limit of a model-files download.
pub const MODEL_TIMEOUT_MS: u64 = 30_000;

/// What a call in flight was for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pending {
    /// The long poll for the next sync frame.
    Sync,
    /// These bookkeeping steps (put back in front of the queue if the call fails).
    Book(Vec<BookEvent>),
    /// A model's files.
    Model {
        /// Model name.
        name: String,
        /// Files digest.
        digest: String,
    },
}

/// The calls of one VM to the sidecar.
#[derive(Debug)]
pub struct Sidecar {
    cluster: String,
    authority: String,
    /// `authorization` header value (`Bearer <token>`), if the deployment has a token.
    auth: Option<String>,
    calls: Vec<(CallId, Pending)>,
    backoff: Backoff,
    queue: VecDeque<BookEvent>,
}

impl Sidecar {
    /// Calls to Envoy cluster `cluster` with `:authority` `authority` and, with a token,
    /// `authorization: Bearer <token>`; after a failure the next poll waits 200 ms
    /// doubling to 3.2 s.
    pub fn new(cluster: String, authority: String, token: Option<&str>) -> Self {
        Sidecar {
            cluster,
            authority,
            auth: token.map(|t| format!("Bearer {t}")),
            calls: Vec::new(),
            backoff: Backoff::new(100, 3_200),
            queue: VecDeque::new(),
        }
    }

    /// Whether the sync long poll is in flight.
    pub fn sync_in_flight(&self) -> bool {
        self.calls.iter().any(|(_, c)| matches!(c, Pending::Sync))
    }

    /// Whether a bookkeeping POST is in flight.
    pub fn book_in_flight(&self) -> bool {
        self.calls
            .iter()
            .any(|(_, c)| matches!(c, Pending::Book(_)))
    }

    /// Whether model `name`'s files are being fetched.
    pub fn model_in_flight(&self, name: &str) -> bool {
        self.calls
            .iter()
            .any(|(_, c)| matches!(c, Pending::Model { name: n, .. } if n == name))
    }

    /// Whether calls may be sent now (not backing off after a failure).
    pub fn ready(&self, now_ms: u64) -> bool {
        self.backoff.ready(now_ms)
    }

    /// Bookkeeping steps waiting to be sent.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Sends a call; gives `pending` back when it could not be sent (and backs off).
    pub fn send(
        &mut self,
        host: &dyn Host,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        pending: Pending,
        timeout_ms: u64,
    ) -> Result<(), Pending> {
        let auth;
        let headers: &[(&str, &str)] = match &self.auth {
            Some(a) => {
                auth = [("authorization", a.as_str())];
                &auth
            }
            None => &[],
        };
        let call = HttpCall {
            cluster: &self.cluster,
            authority: &self.authority,
            method,
            path,
            headers,
            body,
            timeout_ms,
        };
        match host.http_call(&call) {
            Ok(id) => {
                self.calls.push((id, pending));
                Ok(())
            }
            Err(e) => {
                host.log(Level::Warn, &format!("kvgate: sidecar call failed: {e}"));
                self.failed(host);
                Err(pending)
            }
        }
    }

    /// The call `id` answered: what it was for (None for a call this VM did not send).
    pub fn take(&mut self, id: CallId) -> Option<Pending> {
        let pos = self.calls.iter().position(|(t, _)| *t == id)?;
        Some(self.calls.swap_remove(pos).1)
    }

    /// Records a failed call: the next poll waits.
    pub fn failed(&mut self, host: &dyn Host) {
        self.backoff.failed(host.now_ms());
        host.metric(
            crate::metrics::Metric::SyncFailures,
            crate::host::MetricOp::Count(1),
        );
    }

    /// Records a successful sync: failures start over.
    pub fn succeeded(&mut self) {
        self.backoff.succeeded();
    }

    /// Queues new bookkeeping steps (dropping the oldest beyond [`MAX_BOOK_QUEUE`]) and,
    /// unless a POST is in flight, sends the oldest that fit one POST.
    pub fn send_bookkeeping(&mut self, host: &dyn Host, steps: Vec<BookEvent>) {
        self.queue.extend(steps);
        if self.queue.len() > MAX_BOOK_QUEUE {
            let drop = self.queue.len() - MAX_BOOK_QUEUE;
            self.queue.drain(..drop);
            host.metric(
                crate::metrics::Metric::BookDropped,
                crate::host::MetricOp::Count(drop as u64),
            );
            host.log(
                Level::Warn,
                &format!("kvgate: sidecar unreachable: dropped {drop} bookkeeping steps"),
            );
        }
        if self.queue.is_empty() || self.book_in_flight() {
            return;
        }
        let batch = BookBatch {
            events: self.next_batch(host),
        };
        if batch.events.is_empty() {
            return;
        }
        let Ok(bytes) = postcard::to_allocvec(&batch) else {
            self.requeue(batch.events);
            return;
        };
        if let Err(Pending::Book(events)) = self.send(
            host,
            "POST",
            "/v1/bookkeeping",
            Some(&bytes),
            Pending::Book(batch.events),
            BOOK_TIMEOUT_MS,
        ) {
            self.requeue(events);
        }
    }

    /// Takes the oldest steps that fit one POST ([`BOOK_BATCH_EVENTS`],
    /// [`BOOK_BATCH_BYTES`]); a step too large for any POST is dropped and counted.
    fn next_batch(&mut self, host: &dyn Host) -> Vec<BookEvent> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < BOOK_BATCH_EVENTS {
            let Some(size) = self.queue.front().map(estimated_size) else {
                break;
            };
            if size > BOOK_BATCH_BYTES {
                self.queue.pop_front();
                host.metric(
                    crate::metrics::Metric::BookDropped,
                    crate::host::MetricOp::Count(1),
                );
                continue;
            }
            if bytes + size > BOOK_BATCH_BYTES {
                break;
            }
            bytes += size;
            out.extend(self.queue.pop_front());
        }
        out
    }

    /// Puts steps that did not reach the sidecar back in front of the queue.
    pub fn requeue(&mut self, events: Vec<BookEvent>) {
        for ev in events.into_iter().rev() {
            self.queue.push_front(ev);
        }
    }
}

/// An upper bound of a step's postcard size: varints of at most 10 bytes per number.
fn estimated_size(ev: &BookEvent) -> usize {
    match &ev.kind {
        BookKind::Add(plan) => 64 + 10 * plan.blocks.len(),
        _ => 32,
    }
}
