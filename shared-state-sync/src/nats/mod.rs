//! NATS: the connection (credentials, TLS, endless reconnect with backoff, connection
//! state mirrored into the hub) and the NATS sources and sinks of the sidecar: KV events
//! ([`kv_events`]), worker loads ([`loads`]), replica sync ([`replica`]) and the
//! recovery of workers whose events were lost ([`recovery`]).
//! Credentials are never logged: URLs are shown without their user information.

pub mod kv_events;
pub mod loads;
pub mod recovery;
pub mod replica;

use crate::hub::Hub;
use crate::settings::NatsSettings;
use kvgate_core::backoff::Backoff;
use std::sync::Arc;
use std::time::Duration;

/// Why the NATS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The credentials file could not be read.
    #[error("cannot read NATS credentials file {path}: {source}")]
    Creds {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The client could not be created.
    #[error("cannot set up the NATS client for {url}: {detail}")]
    Connect {
        /// The server URLs (redacted).
        url: String,
        /// What failed.
        detail: String,
    },
}

/// A URL without its user information (`nats://user:pass@host` → `nats://***@host`).
pub fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((head, host)) => match head.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://***@{host}"),
            None => format!("***@{host}"),
        },
        None => url.to_string(),
    }
}

/// Reconnect pacing of every NATS and ZMQ connection: 100 ms doubling to 5 s, +≤ 20 % jitter.
const RECONNECT: Backoff = Backoff::new(100, 5_000).with_jitter(20);

/// Reconnect delay after `attempts` failures.
pub fn backoff(attempts: usize) -> Duration {
    let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
    Duration::from_millis(RECONNECT.jittered_ms(attempts, &mut fastrand::Rng::new()))
}

/// Subscribes to every subject (retrying each every second until NATS takes it), flushes so
/// the server has them all, and merges them into one stream of messages.
pub async fn subscribe_all(
    client: &async_nats::Client,
    subjects: impl IntoIterator<Item = String>,
) -> futures::stream::SelectAll<async_nats::Subscriber> {
    let mut streams = Vec::new();
    for subject in subjects {
        loop {
            match client.subscribe(subject.clone()).await {
                Ok(s) => {
                    streams.push(s);
                    break;
                }
                Err(e) => {
                    tracing::warn!(%subject, "cannot subscribe: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
    let _ = client.flush().await;
    futures::stream::select_all(streams)
}

/// Creates the client. It connects (and reconnects) in the background forever; the
/// returned task mirrors the connection state into the hub.
pub async fn connect(
    s: &NatsSettings,
    hub: Arc<Hub>,
) -> Result<(async_nats::Client, tokio::task::JoinHandle<()>), NatsError> {
    let shown = s
        .urls
        .iter()
        .map(|u| redact(u))
        .collect::<Vec<_>>()
        .join(",");
    let mut opts = match &s.creds {
        Some(p) => async_nats::ConnectOptions::with_credentials_file(p.clone())
            .await
            .map_err(|source| NatsError::Creds {
                path: p.display().to_string(),
                source,
            })?,
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(ca) = &s.tls_ca {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &s.tls_client {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if s.tls_required {
        opts = opts.require_tls(true);
    }
    let label = shown.clone();
    opts = opts
        .name("kvgate-sync")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .reconnect_delay_callback(backoff)
        .event_callback(move |event| {
            let label = label.clone();
            async move {
                match event {
                    async_nats::Event::Connected => tracing::info!(url = %label, "NATS connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!(url = %label, "NATS disconnected; serving the last index")
                    }
                    other => tracing::info!(url = %label, "NATS: {other}"),
                }
            }
        });
    let client = opts
        .connect(s.urls.clone())
        .await
        .map_err(|e| NatsError::Connect {
            url: shown.clone(),
            detail: e.to_string(),
        })?;
    let watch = client.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            let up = watch.connection_state() == async_nats::connection::State::Connected;
            hub.set_nats_connected(up);
            if up {
                hub.done("nats");
            }
        }
    });
    tracing::info!(url = %shown, "NATS client started");
    Ok((client, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_user_info() {
        assert_eq!(redact("nats://u:p@h:4222"), "nats://***@h:4222");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
        assert_eq!(redact("u:p@h"), "***@h");
    }

    #[test]
    fn backoff_is_bounded() {
        assert!(backoff(0) >= Duration::from_millis(100));
        assert!(backoff(100) <= Duration::from_millis(6000));
    }
}
