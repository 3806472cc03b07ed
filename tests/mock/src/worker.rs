//! Assembling and running one mock worker: tokenizer, engine, event sinks (NATS, ZMQ),
//! HTTP server, announcements and peer discovery; `LISTENING ip:port` on stdout; a clean
//! shutdown (announcing `leaving`) on SIGTERM / SIGINT.

use super::config::{MockArgs, TokenizerKind};
use super::disagg::Peers;
use super::engine::{Engine, EngineConfig};
use super::events::{EventSink, FanoutSink, Faults, NullSink};
use super::hf::HfTokenizer;
use super::http::{router, AppState};
use super::nats::{
    announce_leaving, connect, random_id53, start_announcer, start_discovery,
    start_query_responder, NatsError, NatsSink,
};
use super::reqlog::RequestLog;
use super::tokenize::{build_filler, Tokenize, TokenizeError, WordTokenizer};
use super::zmq::{ZmqError, ZmqSink};
use kvgate_core::workers::WorkerInfo;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum MockError {
    /// Binding the listener failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// Opening the request log failed.
    #[error("cannot open request log {path}: {source}")]
    RequestLog {
        /// Path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The ZMQ publisher could not start.
    #[error(transparent)]
    Zmq(#[from] ZmqError),
    /// NATS setup failed.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The model's tokenizer could not be loaded (`--tokenizer hf`).
    #[error("cannot load the tokenizer: {0}")]
    Tokenizer(#[from] TokenizeError),
    /// Any other I/O failure.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Picks the prompt tokenizer (`--tokenizer`): the model's chat template and tokenizer via
/// `kvgate-prompt`, or the deterministic [`WordTokenizer`] stand-in.
pub fn load_tokenizer(args: &MockArgs) -> Result<Arc<dyn Tokenize>, MockError> {
    if args.tokenizer == TokenizerKind::Word {
        return Ok(Arc::new(WordTokenizer));
    }
    match HfTokenizer::load(&args.model_dir, &args.model) {
        Ok(t) => {
            tracing::info!("tokenizer: {}", t.name());
            Ok(Arc::new(t))
        }
        Err(e) if args.tokenizer == TokenizerKind::Auto => {
            tracing::warn!("tokenizer: {e}; using the word-level stand-in");
            Ok(Arc::new(WordTokenizer))
        }
        Err(e) => Err(MockError::Tokenizer(e)),
    }
}

/// A running mock worker.
pub struct MockWorker {
    addr: SocketAddr,
    info: WorkerInfo,
    engine: Arc<Engine>,
    nats: Option<async_nats::Client>,
    namespace: String,
    lease_ms: u64,
    tasks: Vec<JoinHandle<()>>,
}

impl MockWorker {
    /// Starts a worker on the current tokio runtime (the listener is bound on return).
    pub async fn start(args: MockArgs) -> Result<Self, MockError> {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| MockError::Bind { addr, source })?;
        let local = listener.local_addr()?;
        let instance_id = args.instance_id.unwrap_or_else(random_id53);
        let tokenizer = load_tokenizer(&args)?;
        let filler = Arc::new(build_filler(tokenizer.as_ref()));
        let mut tasks = Vec::new();
        let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
        let nats = match &args.nats_url {
            Some(url) => {
                let client = connect(url).await?;
                let (sink, task) =
                    NatsSink::start(client.clone(), &args.namespace, &args.component);
                sinks.push(Arc::new(sink));
                tasks.push(task);
                Some(client)
            }
            None => None,
        };
        let mut zmq_events = None;
        if let Some(base) = &args.zmq_pub {
            let (sink, zmq_tasks, bound) = ZmqSink::start(
                base,
                args.dp_size.max(1),
                args.first_event_id,
                args.block_size.max(1),
                &args.zmq_topic,
            )
            .await?;
            tracing::info!("vLLM KV events on ZMQ: {}", bound.join(", "));
            zmq_events = bound.into_iter().next();
            sinks.push(Arc::new(sink));
            tasks.extend(zmq_tasks);
        }
        let sink: Arc<dyn EventSink> = match sinks.len() {
            0 => Arc::new(NullSink),
            _ => Arc::new(FanoutSink(sinks)),
        };
        let cfg = EngineConfig {
            scheduler: args.scheduler_config(),
            dp_size: args.dp_size.max(1),
            worker_id: instance_id,
            first_event_id: args.first_event_id,
            faults: Faults {
                gap_every: args.event_gap_every,
                dup_every: args.event_dup_every,
            },
            speedup: args.speedup,
            metrics_interval: Duration::from_millis(args.metrics_interval_ms.max(1)),
            filler: filler.clone(),
        };
        let engine = Engine::start(cfg, sink);
        let log = match &args.request_log {
            Some(p) => Some(Arc::new(RequestLog::open(p).map_err(|source| {
                MockError::RequestLog {
                    path: p.display().to_string(),
                    source,
                }
            })?)),
            None => None,
        };
        let peers = Peers::new(args.peers.iter().cloned());
        let info = WorkerInfo {
            instance_id,
            endpoint: format!("{}:{}", args.advertised_ip(), local.port()),
            model: args.model.clone(),
            role: args.role.into(),
            block_size: Some(args.block_size),
            dp_size: args.dp_size.max(1),
            dp_start_rank: 0,
            total_kv_blocks: Some(args.num_gpu_blocks as u64),
            max_num_seqs: Some(args.max_num_seqs as u64),
            max_num_batched_tokens: Some(args.max_num_batched_tokens as u64),
            zmq_events,
            zmq_replay: None,
            lora_adapters: args.lora_adapters.clone(),
        };
        if let Some(client) = &nats {
            tasks.push(
                start_discovery(client.clone(), &args.namespace, instance_id, peers.clone())
                    .await?,
            );
            tasks.push(
                start_query_responder(
                    client.clone(),
                    &args.namespace,
                    &args.component,
                    engine.clone(),
                )
                .await?,
            );
            tasks.push(start_announcer(
                client.clone(),
                &args.namespace,
                info.clone(),
                args.lease_ms,
            ));
        }
        let state = Arc::new(AppState {
            engine: engine.clone(),
            tokenizer,
            filler,
            model: args.model.clone(),
            lora_adapters: args.lora_adapters.clone(),
            role: args.role,
            default_max_tokens: args.default_max_tokens.max(1),
            log,
            peers,
            prefill_timeout: Duration::from_millis(args.prefill_timeout_ms),
            block_size: args.block_size.max(1),
            received: AtomicU64::new(0),
        });
        let app = router(state);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("HTTP server stopped: {e}");
            }
        }));
        tracing::info!(instance_id, %local, role = ?args.role, dp_size = args.dp_size, "mock worker up");
        Ok(Self {
            addr: local,
            info,
            engine,
            nats,
            namespace: args.namespace,
            lease_ms: args.lease_ms,
            tasks,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The instance id.
    pub fn instance_id(&self) -> u64 {
        self.info.instance_id
    }

    /// What the worker announces.
    pub fn info(&self) -> &WorkerInfo {
        &self.info
    }

    /// The engine (for in-process tests).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops serving: announces `leaving` (if on NATS), flushes, stops every task.
    pub async fn shutdown(self) {
        if let Some(client) = &self.nats {
            announce_leaving(
                client,
                &self.namespace,
                self.info.clone(),
                self.lease_ms,
                Duration::from_secs(2),
            )
            .await;
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for MockWorker {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Waits for SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs a worker until SIGTERM / SIGINT: prints `LISTENING ip:port` as the first stdout
/// line once the listener is bound.
pub async fn run(args: MockArgs) -> Result<(), MockError> {
    let worker = MockWorker::start(args).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {}", worker.addr())?;
    writeln!(out, "INSTANCE {}", worker.instance_id())?;
    out.flush()?;
    drop(out);
    shutdown_signal().await;
    tracing::info!("shutting down");
    worker.shutdown().await;
    Ok(())
}
