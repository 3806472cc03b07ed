//! NATS registration: workers announce themselves as `WorkerAnnouncement` JSON on
//! `namespace.{ns}.kvgate.workers` every `lease_ms / 3` or so. An announcement renews the
//! worker's lease (the hub's tick removes it, with its index entries and bookkeeping,
//! when the lease runs out); `leaving: true` removes it at once.

use super::{Discovery, Sink, Task, Update};
use crate::time::now_ms;
use crate::workers::Source;
use futures::StreamExt;
use kvgate_core::workers::{announce_subject, WorkerAnnouncement};
use std::sync::Arc;
use std::time::Duration;

/// Longest lease accepted (a worker asking for more gets this).
pub const MAX_LEASE_MS: u64 = 10 * 60 * 1000;

/// Follows worker announcements on NATS.
pub struct AnnounceDiscovery {
    client: async_nats::Client,
    subject: String,
    on_message: Box<dyn Fn(bool) + Send + Sync>,
    on_subscribed: Box<dyn Fn() + Send + Sync>,
}

impl AnnounceDiscovery {
    /// Announcements of `namespace` through `client`; `on_message(ok)` is called per
    /// message (for metrics), `on_subscribed` once the subscription is in place.
    pub fn new(
        client: async_nats::Client,
        namespace: &str,
        on_message: Box<dyn Fn(bool) + Send + Sync>,
        on_subscribed: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        AnnounceDiscovery {
            client,
            subject: announce_subject(namespace),
            on_message,
            on_subscribed,
        }
    }
}

/// The update one announcement means at `now_ms`.
pub fn update_of(a: WorkerAnnouncement, now_ms: u64) -> Update {
    if a.leaving {
        Update::Remove(Source::Announce, a.worker.instance_id)
    } else {
        let lease = a.lease_ms.clamp(1, MAX_LEASE_MS);
        Update::Upsert(
            Source::Announce,
            a.worker,
            Some(now_ms.saturating_add(lease)),
        )
    }
}

impl Discovery for AnnounceDiscovery {
    fn name(&self) -> &'static str {
        "announcements"
    }

    fn run(self: Box<Self>, sink: Arc<dyn Sink>) -> Task {
        Box::pin(async move {
            loop {
                let mut sub = match self.client.subscribe(self.subject.clone()).await {
                    Ok(s) => {
                        let _ = self.client.flush().await;
                        (self.on_subscribed)();
                        s
                    }
                    Err(e) => {
                        tracing::warn!(subject = %self.subject, "cannot subscribe: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                while let Some(msg) = sub.next().await {
                    match serde_json::from_slice::<WorkerAnnouncement>(&msg.payload) {
                        Ok(a) => {
                            (self.on_message)(true);
                            sink.update(update_of(a, now_ms()));
                        }
                        Err(e) => {
                            (self.on_message)(false);
                            tracing::warn!(subject = %msg.subject, "bad worker announcement: {e}");
                        }
                    }
                }
            }
        })
    }
}
