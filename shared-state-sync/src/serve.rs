//! `serve`: builds the hub from the settings, starts every source (NATS KV events,
//! loads, announcements, replica sync, the workers file, vLLM ZMQ streams) and the
//! housekeeping tick, and serves the HTTP API until SIGINT/SIGTERM.
//!
//! Configuration problems surface before anything starts ([`prepare`], exit code 2);
//! later failures (a port in use) are runtime errors.

use crate::discovery::announce::AnnounceDiscovery;
use crate::discovery::file::{read_workers, FileDiscovery};
use crate::discovery::{Discovery, Sink, Update};
use crate::http::{self, Api};
use crate::hub::{Hub, HubSettings};
use crate::models::ModelStore;
use crate::nats;
use crate::settings::Settings;
use crate::workers::Source;
use kvgate_core::workers::WorkerInfo;
use std::sync::Arc;
use std::time::Duration;

/// Housekeeping period (lease expiry, bookkeeping expiry, gauges).
pub const TICK: Duration = Duration::from_millis(250);

/// Everything read and validated before starting.
pub struct Prepared {
    /// The settings.
    pub settings: Settings,
    /// Model files.
    pub models: ModelStore,
    /// The workers file's initial contents.
    pub file_workers: Option<Vec<WorkerInfo>>,
}

/// Why the sidecar could not be prepared (a configuration error: exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A model directory.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// The workers file.
    #[error("--workers-file: {0}")]
    Workers(#[from] crate::discovery::file::FileError),
}

/// Reads model files and the workers file.
pub fn prepare(settings: Settings) -> Result<Prepared, PrepareError> {
    let models = ModelStore::load(&settings.models, settings.config.router.block_size)?;
    let file_workers = match &settings.workers_file {
        Some(p) => Some(read_workers(p)?),
        None => None,
    };
    Ok(Prepared {
        settings,
        models,
        file_workers,
    })
}

#[cfg(feature = "kubernetes")]
fn start_k8s(k: &crate::settings::K8sSettings, hub: Arc<Hub>, sink: Arc<dyn Sink>) {
    use crate::discovery::k8s::{pods::PodDefaults, KubeDiscovery, KubeSettings};
    let settings = KubeSettings {
        namespace: k.namespace.clone(),
        pool: k.pool.clone(),
        api_url: k.api_url.clone(),
        defaults: PodDefaults {
            model: k.default_model.clone(),
            role: k.default_role,
            block_size: k.default_block_size,
        },
    };
    tracing::info!(namespace = %k.namespace, pool = %k.pool, "following the InferencePool");
    let d: Box<dyn Discovery> = Box::new(KubeDiscovery::new(
        settings,
        Box::new(move || hub.done("kubernetes")),
    ));
    tracing::info!(source = d.name(), "discovery started");
    tokio::spawn(d.run(sink));
}

/// Without the `kubernetes` feature the settings refuse `--k8s-inference-pool`.
#[cfg(not(feature = "kubernetes"))]
fn start_k8s(_: &crate::settings::K8sSettings, _: Arc<Hub>, _: Arc<dyn Sink>) {}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// Runs the sidecar until a shutdown signal.
pub async fn run(p: Prepared) -> anyhow::Result<()> {
    let s = p.settings;
    let mut pending = Vec::new();
    if s.nats.enabled {
        pending.extend(["nats", "kv-events", "kv-metrics"]);
        if s.announce {
            pending.push("announcements");
        }
        if s.replica_sync {
            pending.push("replica-sync");
        }
    }
    if s.k8s.is_some() {
        pending.push("kubernetes");
    }
    let hub = Arc::new(Hub::new(HubSettings {
        sync_log_size: s.sync_log_size,
        meta_refresh_ms: s.meta_refresh_ms,
        loads_interval_ms: s.loads_interval_ms,
        active_request_ttl_ms: s.config.router.active_request_ttl_ms,
        block_size: s.config.router.block_size,
        track_prefill_tokens: s.config.router.track_prefill_tokens,
        initially_pending: pending,
    }));
    tracing::info!(
        epoch = hub.epoch,
        router_id = hub.router_id,
        "kvgate-sync starting"
    );
    hub.set_models(p.models.entries());
    if !s.config.gateway.workers.is_empty() {
        hub.update(Update::Replace(
            Source::Config,
            s.config.gateway.workers.clone(),
        ));
    }
    let sink: Arc<dyn Sink> = hub.clone();
    if let Some(k) = &s.k8s {
        // The cluster decides which workers exist: none until its first list.
        hub.update(Update::Replace(Source::Kubernetes, Vec::new()));
        start_k8s(k, hub.clone(), sink.clone());
    }
    if let (Some(path), Some(workers)) = (&s.workers_file, p.file_workers) {
        hub.update(Update::Replace(Source::File, workers));
        let d: Box<dyn Discovery> = Box::new(FileDiscovery::new(
            path.clone(),
            Duration::from_secs(1),
            true,
        ));
        tracing::info!(source = d.name(), "discovery started");
        tokio::spawn(d.run(sink.clone()));
    }

    let mut replica = None;
    if s.nats.enabled {
        let (client, _watch) = nats::connect(&s.nats, hub.clone()).await?;
        let kv = nats::kv_events::KvEvents {
            client: client.clone(),
            hub: hub.clone(),
            namespace: s.namespace.clone(),
            component: s.component.clone(),
            js: s.jetstream.clone(),
            max_payload: s.max_payload,
        };
        tokio::spawn(kv.run());
        tokio::spawn(nats::loads::run(
            client.clone(),
            hub.clone(),
            s.namespace.clone(),
            s.max_payload,
        ));
        tokio::spawn(nats::recovery::run(
            client.clone(),
            hub.clone(),
            s.namespace.clone(),
            s.component.clone(),
            s.max_payload,
        ));
        if s.announce {
            let (h, h2) = (hub.clone(), hub.clone());
            let d: Box<dyn Discovery> = Box::new(AnnounceDiscovery::new(
                client.clone(),
                &s.namespace,
                Box::new(move |_ok| {
                    h.metrics.announcements.inc();
                }),
                Box::new(move || h2.done("announcements")),
            ));
            tracing::info!(source = d.name(), "discovery started");
            tokio::spawn(d.run(sink.clone()));
        }
        if s.replica_sync {
            let (tx, rx) = tokio::sync::mpsc::channel(nats::replica::QUEUE);
            replica = Some(tx);
            tokio::spawn(nats::replica::publish(
                client.clone(),
                hub.clone(),
                s.namespace.clone(),
                s.component.clone(),
                rx,
            ));
            tokio::spawn(nats::replica::follow(
                client,
                hub.clone(),
                s.namespace.clone(),
                s.component.clone(),
                s.max_payload,
            ));
            tracing::info!("replica sync on");
        }
    }
    tokio::spawn(crate::zmq::supervise(hub.clone(), s.max_payload));
    let ticker = hub.clone();
    tokio::spawn(async move {
        let mut t = tokio::time::interval(TICK);
        loop {
            t.tick().await;
            ticker.tick();
        }
    });

    let bound = http::bind(&s.listen).await?;
    // After the bind: the picker's engine long-polls this sidecar's own API.
    #[cfg(feature = "epp")]
    if let Some(addr) = s.epp {
        crate::epp::serve(addr, &s, hub.metrics.epp.clone(), shutdown_signal()).await?;
    }
    tracing::info!(listen = %bound.describe(), "serving the filter");
    let api = Api {
        hub,
        models: Arc::new(p.models),
        replica,
        access: Arc::new(s.api.clone()),
    };
    if let Some(admin) = &s.admin_listen {
        let admin = http::bind(admin).await?;
        tracing::info!(listen = %admin.describe(), "serving health and metrics");
        let router = http::admin_router(api.clone());
        tokio::spawn(async move {
            if let Err(e) = admin.serve(router, shutdown_signal()).await {
                tracing::error!(error = %e, "admin listener stopped");
            }
        });
    }
    bound.serve(http::router(api), shutdown_signal()).await?;
    Ok(())
}
