//! The HTTP API the filter (and operators) talk to, on loopback TCP or a unix socket:
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/sync?epoch=E&since=V&wait_ms=W[&client=C]` | long poll → postcard `SyncFrame` (token) |
//! | `GET /v1/models/files?name=N&digest=D` | postcard `ModelFiles` (token) |
//! | `POST /v1/bookkeeping` | postcard `BookBatch` from the filter → 204 (token, size-capped) |
//! | `GET /healthz` | 200 while the process runs |
//! | `GET /readyz` | 200 when NATS is up and replays are done, else 503 with the reason |
//! | `GET /metrics` | Prometheus text |
//! | `GET /v1/state` | JSON debug view |
//!
//! "(token)": the call must carry `authorization: Bearer <token>` of the deployment, else
//! 401 with a JSON error. `--admin-listen` adds a second listener with only `/healthz`,
//! `/readyz` and `/metrics`.

mod admin;
mod auth;
mod sync;

use crate::hub::Hub;
use crate::models::ModelStore;
use crate::settings::{ApiSettings, Listen};
use axum::routing::{get, post};
use axum::Router;
use kvgate_core::events::replica::ReplicaEvent;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What the handlers share.
#[derive(Clone)]
pub struct Api {
    /// The hub.
    pub hub: Arc<Hub>,
    /// Model files.
    pub models: Arc<ModelStore>,
    /// Where replica events go (None: replica sync off).
    pub replica: Option<mpsc::Sender<ReplicaEvent>>,
    /// Token and limits of the filter API.
    pub access: Arc<ApiSettings>,
}

/// The router.
pub fn router(api: Api) -> Router {
    let filter_api = Router::new()
        .route("/v1/sync", get(sync::sync))
        .route("/v1/models/files", get(sync::model_files))
        .route("/v1/bookkeeping", post(admin::bookkeeping))
        .route_layer(axum::middleware::from_fn_with_state(
            api.access.clone(),
            auth::require_token,
        ));
    Router::new()
        .merge(filter_api)
        .route("/v1/state", get(admin::state))
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .with_state(api)
}

/// The operations-only router (`--admin-listen`): health, readiness and metrics.
pub fn admin_router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .with_state(api)
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct ListenError {
    /// The address.
    pub addr: String,
    /// The error.
    pub source: std::io::Error,
}

/// A bound listener.
pub enum Bound {
    /// TCP.
    Tcp(tokio::net::TcpListener),
    /// Unix socket.
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

/// Binds the listen address (a stale unix socket file is replaced).
pub async fn bind(listen: &Listen) -> Result<Bound, ListenError> {
    match listen {
        Listen::Tcp(addr) => tokio::net::TcpListener::bind(addr)
            .await
            .map(Bound::Tcp)
            .map_err(|source| ListenError {
                addr: addr.to_string(),
                source,
            }),
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            tokio::net::UnixListener::bind(path)
                .map(|l| Bound::Unix(l, path.clone()))
                .map_err(|source| ListenError {
                    addr: path.display().to_string(),
                    source,
                })
        }
    }
}

impl Bound {
    /// The address, for logs.
    pub fn describe(&self) -> String {
        match self {
            Bound::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Bound::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }

    /// Serves `router` until `shutdown` completes.
    pub async fn serve(
        self,
        router: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self {
            Bound::Tcp(l) => {
                axum::serve(l, router)
                    .with_graceful_shutdown(shutdown)
                    .await
            }
            Bound::Unix(l, path) => {
                let r = axum::serve(l, router)
                    .with_graceful_shutdown(shutdown)
                    .await;
                let _ = std::fs::remove_file(path);
                r
            }
        }
    }
}
