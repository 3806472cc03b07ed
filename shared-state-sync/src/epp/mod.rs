//! `serve --epp LISTEN`: kvgate as a Gateway API Inference Extension endpoint picker, for
//! gateways that cannot load the Wasm filter. It serves Envoy's external processing
//! protocol (`envoy.service.ext_proc.v3.ExternalProcessor`) over gRPC and runs the
//! filter's own engine natively on one engine thread: one VM fed by this sidecar's
//! `/v1/sync` long poll (the filter's sync path, over loopback), the same parse, template,
//! tokenizer, hashes, cost formula and bookkeeping. Each request's answer carries the
//! destination header `x-gateway-destination-endpoint`, the same list as GAIE dynamic
//! metadata (`envoy.lb`), the kvgate routing headers and the rewritten body
//! (`nvext.token_data`); the booking is freed at the end of the response or when the
//! stream ends early. gRPC health (`liveness`, `readiness`, the ext_proc service) and the
//! `kvgate_sync_epp_*` metrics come with it.
//!
//! ```text
//!  Envoy ext_proc ──gRPC──► service (one task per stream) ──Msg──► engine thread
//!                                ▲                                  Processor (Vm + Streams)
//!                                └──── ProcessingResponse ◄─────────┘   │ NativeHost
//!                                                                      ▼
//!                                             this sidecar's /v1/sync, /v1/models/files,
//!                                             /v1/bookkeeping (tokio tasks)
//! ```

mod host;
pub mod metrics;
pub mod processor;
pub mod proto;
mod service;

use crate::client::Target;
use crate::settings::{Listen, Settings};
use envoy_types::pb::envoy::service::ext_proc::v3::ProcessingResponse;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    external_processor_server::ExternalProcessorServer, ProcessingRequest,
};
use host::NativeHost;
use kvgate_engine::host::CallId;
use kvgate_engine::vm::VmConfig;
use kvgate_engine::Vm;
use metrics::EppMetrics;
use processor::Processor;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The gRPC service name GAIE health-checks besides `liveness` and `readiness`.
pub const EXT_PROC_SERVICE: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// Where a stream's answers go.
pub type Outbound = tokio::sync::mpsc::Sender<Result<ProcessingResponse, tonic::Status>>;

/// A message to the engine thread.
pub enum Msg {
    /// A new ext_proc stream `ctx`, answered on `out`.
    Open {
        /// Stream id.
        ctx: u32,
        /// Its answers.
        out: Outbound,
    },
    /// One message of stream `ctx`.
    Request {
        /// Stream id.
        ctx: u32,
        /// The message.
        req: Box<ProcessingRequest>,
    },
    /// Stream `ctx` ended (closed, reset or failed).
    End {
        /// Stream id.
        ctx: u32,
    },
    /// The answer to a sidecar call.
    CallDone {
        /// The call.
        id: CallId,
        /// HTTP status, None when the call failed.
        status: Option<u16>,
        /// Body.
        body: Vec<u8>,
    },
}

/// Why the picker could not start.
#[derive(Debug, thiserror::Error)]
pub enum EppError {
    /// The listen address.
    #[error("--epp: {0}")]
    Listen(String),
    /// The engine refused the configuration.
    #[error("--epp: {0}")]
    Start(#[from] kvgate_engine::StartError),
    /// The engine thread could not be started.
    #[error("--epp: cannot start the engine thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// The sidecar's own API as the picker's engine reaches it.
fn sidecar_target(listen: &Listen) -> Target {
    match listen {
        Listen::Tcp(a) if a.ip().is_unspecified() => {
            let ip = if a.is_ipv4() { "127.0.0.1" } else { "[::1]" };
            Target::Tcp(format!("{ip}:{}", a.port()))
        }
        Listen::Tcp(a) => Target::Tcp(a.to_string()),
        Listen::Unix(p) => Target::Unix(p.clone()),
    }
}

/// Starts the engine thread and serves the picker on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    settings: &Settings,
    metrics: Arc<EppMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, EppError> {
    let (tx, rx) = std::sync::mpsc::channel::<Msg>();
    let ready = Arc::new(AtomicBool::new(false));
    let rt = tokio::runtime::Handle::current();
    let token = settings.api.token.as_ref().map(|t| t.expose().to_string());
    let target = sidecar_target(&settings.listen);
    let (host_tx, m) = (tx.clone(), metrics.clone());
    let cfg = settings.config.clone();
    let max_body = cfg.gateway.max_body_bytes;
    let r = ready.clone();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    // The VM lives and dies on its thread (it is not Send): built there, then run.
    std::thread::Builder::new()
        .name("kvgate-epp-engine".into())
        .spawn(move || {
            let host = NativeHost::new(rt, target, token, host_tx, m.clone());
            let tag = fastrand::u64(..);
            match Vm::from_config(&host, tag, tag, cfg, &VmConfig::default()) {
                Ok(vm) => {
                    let _ = started_tx.send(Ok(()));
                    engine_thread(Processor::new(host, vm), rx, r, m);
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e));
                }
            }
        })?;
    started
        .await
        .map_err(|_| EppError::Listen("the engine thread stopped at start".into()))??;

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| EppError::Listen(format!("cannot listen on {addr}: {e}")))?;
    let (reporter, health) = tonic_health::server::health_reporter();
    let service = service::Epp::new(tx, metrics);
    let grpc = ExternalProcessorServer::new(service)
        .max_decoding_message_size(max_body.saturating_add(1 << 20));
    tokio::spawn(report_health(reporter, ready));
    tracing::info!(listen = %addr, "serving the endpoint picker (ext_proc)");
    // Each ext_proc exchange is a few small frames one way then the other: without
    // TCP_NODELAY, Nagle's algorithm holds a reply until the gateway's delayed ACK
    // (tens of ms per request). Incoming sockets do not get tonic's own nodelay setting.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(c) = &conn {
                if let Err(e) = c.set_nodelay(true) {
                    tracing::debug!(error = %e, "epp: TCP_NODELAY not set");
                }
            }
            conn
        },
    );
    Ok(tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(grpc)
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "endpoint picker stopped");
        }
    }))
}

/// Keeps the gRPC health statuses in step with the engine: `liveness` always serving,
/// `readiness` and the ext_proc service once the engine is ready.
async fn report_health(reporter: tonic_health::server::HealthReporter, ready: Arc<AtomicBool>) {
    use tonic_health::ServingStatus;
    reporter
        .set_service_status("liveness", ServingStatus::Serving)
        .await;
    let mut last = None;
    loop {
        let now = ready.load(Ordering::Relaxed);
        if last != Some(now) {
            let status = if now {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in ["", "readiness", EXT_PROC_SERVICE] {
                reporter.set_service_status(name, status).await;
            }
            last = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The engine thread: ticks the VM, answers sidecar calls and stream messages in order.
fn engine_thread(
    mut p: Processor<NativeHost>,
    rx: Receiver<Msg>,
    ready: Arc<AtomicBool>,
    metrics: Arc<EppMetrics>,
) {
    let period = Duration::from_millis(p.vm.tick_period_ms().clamp(5, 1_000));
    let mut outs: HashMap<u32, Outbound> = HashMap::new();
    let mut next_tick = Instant::now();
    loop {
        if Instant::now() >= next_tick {
            for (ctx, r) in p.tick() {
                send(&outs, ctx, r);
            }
            let is_ready = p.ready();
            ready.store(is_ready, Ordering::Relaxed);
            metrics.ready.set(i64::from(is_ready));
            next_tick = Instant::now() + period;
        }
        let msg = match rx.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match msg {
            Msg::Open { ctx, out } => {
                outs.insert(ctx, out);
                metrics.open_streams.set(outs.len() as i64);
            }
            Msg::Request { ctx, req } => {
                if let Some(r) = p.handle(ctx, *req) {
                    send(&outs, ctx, r);
                }
            }
            Msg::End { ctx } => {
                p.end(ctx);
                outs.remove(&ctx);
                metrics.open_streams.set(outs.len() as i64);
            }
            Msg::CallDone { id, status, body } => p.call_done(id, status, &body),
        }
    }
}

fn send(outs: &HashMap<u32, Outbound>, ctx: u32, r: ProcessingResponse) {
    if let Some(out) = outs.get(&ctx) {
        if out.try_send(Ok(r)).is_err() {
            tracing::warn!(ctx, "epp: a stream's answer queue is full or closed");
        }
    }
}
