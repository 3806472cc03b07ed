//! KV events from Dynamo's event plane on NATS.
//!
//! Dynamo ≥ 1.4 publishes KV events on core NATS only (1.x component subject
//! `namespace.{ns}.component.{c}.kv-events`, newer endpoint subject
//! `...component.{c}.endpoint.{e}.kv-events`; payload one `RouterEvent` or an array, in
//! the event-plane envelope). So that a restarted sidecar can rebuild its index, the
//! sidecar creates (or binds to) a JetStream stream capturing exactly those subjects
//! (limits: max age, max bytes) and reads it with a durable pull consumer of its own:
//! * at process start the durable is recreated with "deliver all", so the whole retained
//!   history is replayed into the empty index (`/readyz` waits for it);
//! * after a NATS outage the same durable resumes where it stopped, so nothing published
//!   meanwhile is lost.
//!
//! Dynamo's legacy JetStream stream `namespace-{ns}-component-{c}-kv-events` (JSON
//! payloads) is read the same way when it exists. Without JetStream on the server (or
//! with `--no-jetstream`) the sidecar subscribes to `namespace.{ns}.component.{c}.>` on
//! core NATS and keeps the subjects that end in `kv-events`.

use super::backoff;
use crate::hub::Hub;
use crate::settings::{js_name, JetStreamSettings};
use async_nats::jetstream::{self, consumer, consumer::PullConsumer, stream};
use futures::StreamExt;
use kvgate_core::events::dynamo::{
    component_subject, decode_kv_message, is_kv_events_subject, kv_events_wildcard,
    KV_EVENTS_TOPIC, LEGACY_KV_EVENTS_TOPIC,
};
use std::sync::Arc;
use std::time::Duration;

/// Acknowledge after this many messages (the consumer acks all up to the last).
const ACK_EVERY: u32 = 256;
/// ... or after this much idle time.
const ACK_IDLE: Duration = Duration::from_millis(200);

/// The subjects the kvgate stream captures for `namespace`/`component`.
pub fn stream_subjects(namespace: &str, component: &str) -> Vec<String> {
    let base = component_subject(namespace, component);
    [KV_EVENTS_TOPIC, LEGACY_KV_EVENTS_TOPIC]
        .iter()
        .flat_map(|t| [format!("{base}.{t}"), format!("{base}.endpoint.*.{t}")])
        .collect()
}

/// Name of Dynamo's legacy (JSON, JetStream) KV-event stream.
pub fn legacy_stream_name(namespace: &str, component: &str) -> String {
    js_name(&format!(
        "namespace-{namespace}-component-{component}-kv-events"
    ))
}

/// Follows KV events on NATS.
pub struct KvEvents {
    /// The client.
    pub client: async_nats::Client,
    /// The hub.
    pub hub: Arc<Hub>,
    /// Dynamo namespace.
    pub namespace: String,
    /// Dynamo component.
    pub component: String,
    /// JetStream settings.
    pub js: JetStreamSettings,
    /// Largest payload.
    pub max_payload: usize,
}

/// Consumer errors in a row (no message between them) after which the durable is set up
/// again.
const MAX_ERRORS_IN_A_ROW: u32 = 3;

enum SetupError {
    Unavailable,
    Other(String),
}

impl KvEvents {
    /// Runs forever.
    pub async fn run(self) {
        if !self.js.enabled {
            return self.core().await;
        }
        let ctx = jetstream::new(self.client.clone());
        if self.js.legacy {
            self.start_legacy(&ctx).await;
        }
        let mut fresh = true;
        let mut attempt = 0;
        loop {
            match self.setup(&ctx, fresh).await {
                Ok((consumer, target)) => {
                    fresh = false;
                    attempt = 0;
                    self.consume(consumer, target, "jetstream", "kv-events")
                        .await;
                    tracing::warn!("JetStream consumer ended; resuming the durable");
                }
                Err(SetupError::Unavailable) => {
                    tracing::warn!("JetStream is not enabled on the NATS server: following core NATS only (no replay after a restart)");
                    return self.core().await;
                }
                Err(SetupError::Other(e)) => {
                    tracing::warn!(stream = %self.js.stream, "JetStream setup failed: {e}");
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn setup(
        &self,
        ctx: &jetstream::Context,
        fresh: bool,
    ) -> Result<(PullConsumer, u64), SetupError> {
        let subjects = stream_subjects(&self.namespace, &self.component);
        let config = stream::Config {
            name: self.js.stream.clone(),
            subjects: subjects.clone(),
            max_age: self.js.max_age,
            max_bytes: self.js.max_bytes,
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            description: Some("kvgate: Dynamo KV events, for sidecar restarts".into()),
            ..Default::default()
        };
        let mut s = match ctx.get_or_create_stream(config).await {
            Ok(s) => s,
            Err(e) => match e.kind() {
                jetstream::context::CreateStreamErrorKind::JetStreamUnavailable => {
                    return Err(SetupError::Unavailable)
                }
                // Another stream already captures these subjects (e.g. another sidecar
                // configured with a different name): read that one.
                jetstream::context::CreateStreamErrorKind::JetStream(_) => {
                    let first = subjects.first().cloned().unwrap_or_default();
                    let name = ctx
                        .stream_by_subject(first)
                        .await
                        .map_err(|_| SetupError::Other(e.to_string()))?;
                    tracing::warn!(stream = %name, "cannot create `{}` ({e}); reading the stream that captures its subjects", self.js.stream);
                    ctx.get_stream(&name)
                        .await
                        .map_err(|e| SetupError::Other(e.to_string()))?
                }
                _ => return Err(SetupError::Other(e.to_string())),
            },
        };
        let info = s
            .info()
            .await
            .map_err(|e| SetupError::Other(e.to_string()))?;
        let missing: Vec<&String> = subjects
            .iter()
            .filter(|x| !info.config.subjects.contains(x))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(stream = %self.js.stream, ?missing, "existing stream does not capture every KV-event subject");
        }
        let target = info.state.last_sequence;
        self.consumer(&s, &self.js.durable, fresh)
            .await
            .map(|c| (c, target))
    }

    async fn consumer(
        &self,
        s: &stream::Stream,
        durable: &str,
        fresh: bool,
    ) -> Result<PullConsumer, SetupError> {
        if fresh {
            // A new process has an empty index: replay everything the stream retains.
            let _ = s.delete_consumer(durable).await;
        }
        s.get_or_create_consumer(
            durable,
            consumer::pull::Config {
                durable_name: Some(durable.to_string()),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::All,
                inactive_threshold: self.js.max_age,
                description: Some("kvgate-sync index replay".into()),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| SetupError::Other(e.to_string()))
    }

    async fn start_legacy(&self, ctx: &jetstream::Context) {
        let name = legacy_stream_name(&self.namespace, &self.component);
        let mut attempt = 0;
        let stream = loop {
            match ctx.get_stream(&name).await {
                Ok(s) => break s,
                Err(e) => match e.kind() {
                    jetstream::context::GetStreamErrorKind::JetStream(_) => return,
                    _ if attempt >= 20 => {
                        tracing::warn!(stream = %name, "cannot look up the legacy stream: {e}");
                        return;
                    }
                    _ => {
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                },
            }
        };
        tracing::info!(stream = %name, "reading Dynamo's legacy KV-event stream");
        self.hub.pending("legacy-kv-events");
        let this = KvEvents {
            client: self.client.clone(),
            hub: self.hub.clone(),
            namespace: self.namespace.clone(),
            component: self.component.clone(),
            js: self.js.clone(),
            max_payload: self.max_payload,
        };
        let durable = format!("{}-legacy", self.js.durable);
        tokio::spawn(async move {
            let mut fresh = true;
            let mut attempt = 0;
            loop {
                let mut s = stream.clone();
                let target = s.info().await.map(|i| i.state.last_sequence).unwrap_or(0);
                match this.consumer(&s, &durable, fresh).await {
                    Ok(c) => {
                        fresh = false;
                        attempt = 0;
                        this.consume(c, target, "legacy", "legacy-kv-events").await;
                    }
                    Err(e) => {
                        let e = match e {
                            SetupError::Other(e) => e,
                            SetupError::Unavailable => "JetStream unavailable".into(),
                        };
                        tracing::warn!(stream = %durable, "legacy consumer setup failed: {e}");
                        tokio::time::sleep(backoff(attempt)).await;
                        attempt += 1;
                    }
                }
            }
        });
    }

    fn apply(&self, subject: &str, payload: &[u8], source: &'static str) {
        if source != "legacy" && !is_kv_events_subject(subject) {
            return;
        }
        match decode_kv_message(payload, self.max_payload) {
            Ok(m) => self.hub.apply_kv(source, &m.events),
            Err(e) => self.hub.decode_error(source, &e),
        }
    }

    async fn consume(
        &self,
        mut c: PullConsumer,
        target: u64,
        source: &'static str,
        ready: &'static str,
    ) {
        let mut replayed = target == 0 || c.cached_info().num_pending == 0;
        if replayed {
            self.hub.done(ready);
        }
        let mut messages = match c
            .stream()
            .max_messages_per_batch(1000)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(source, "cannot start the JetStream consumer: {e}");
                return;
            }
        };
        let mut unacked: Option<jetstream::Message> = None;
        let mut since_ack = 0u32;
        let mut errors = 0u32;
        loop {
            let next = if unacked.is_some() || !replayed {
                tokio::time::timeout(ACK_IDLE, messages.next()).await
            } else {
                Ok(messages.next().await)
            };
            match next {
                Err(_idle) => {
                    ack(unacked.take()).await;
                    since_ack = 0;
                    if !replayed && c.info().await.is_ok_and(|i| i.num_pending == 0) {
                        replayed = true;
                        self.hub.done(ready);
                    }
                }
                Ok(None) => return,
                Ok(Some(Err(e))) => {
                    errors += 1;
                    match e.kind() {
                        // A lone pull error can pass; a missing heartbeat or errors in a
                        // row mean the server lost the pull (e.g. it restarted): set the
                        // durable up again, which resumes after the last ack.
                        consumer::pull::MessagesErrorKind::Pull
                        | consumer::pull::MessagesErrorKind::Other
                            if errors < MAX_ERRORS_IN_A_ROW =>
                        {
                            tracing::debug!(source, "JetStream consumer: {e}");
                        }
                        _ => {
                            tracing::warn!(source, "JetStream consumer: {e}; setting it up again");
                            ack(unacked.take()).await;
                            return;
                        }
                    }
                }
                Ok(Some(Ok(msg))) => {
                    errors = 0;
                    let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                    self.apply(msg.subject.as_str(), &msg.payload, source);
                    if !replayed && seq >= target {
                        replayed = true;
                        self.hub.done(ready);
                    }
                    unacked = Some(msg);
                    since_ack += 1;
                    if since_ack >= ACK_EVERY {
                        ack(unacked.take()).await;
                        since_ack = 0;
                    }
                }
            }
        }
    }

    /// Core NATS only: no replay.
    async fn core(&self) {
        let subject = kv_events_wildcard(&self.namespace, &self.component);
        loop {
            match self.client.subscribe(subject.clone()).await {
                Ok(mut sub) => {
                    self.hub.done("kv-events");
                    while let Some(m) = sub.next().await {
                        self.apply(m.subject.as_str(), &m.payload, "nats");
                    }
                }
                Err(e) => {
                    tracing::warn!(%subject, "cannot subscribe: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

async fn ack(msg: Option<jetstream::Message>) {
    if let Some(m) = msg {
        if let Err(e) = m.ack().await {
            tracing::debug!("ack failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_cover_both_forms() {
        let s = stream_subjects("dyn", "backend");
        assert!(s.contains(&"namespace.dyn.component.backend.kv-events".to_string()));
        assert!(s.contains(&"namespace.dyn.component.backend.endpoint.*.kv-events".to_string()));
        assert_eq!(
            legacy_stream_name("dyn", "backend"),
            "namespace-dyn-component-backend-kv-events"
        );
    }
}
