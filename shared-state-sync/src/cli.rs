//! The command line: `serve`, `hash`, `explain`, `check-config` and `vm-config`, with every
//! flag and its default.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// kvgate sidecar: follows KV events, keeps the KV index and feeds the kvgate filter.
#[derive(Debug, Parser)]
#[command(name = "kvgate-sync", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Serve(Box<ServeArgs>),
    /// Print the block and sequence hashes of a token list (Dynamo-compatible).
    Hash(HashArgs),
    /// Show how the filter would route one request, with the sidecar's current index.
    Explain(ExplainArgs),
    /// Check plugin configuration files (JSON objects) with the filter's own parser.
    CheckConfig(CheckConfigArgs),
    /// Print the static-mode VM configuration (model files, tokenizer packed) for Envoy's
    /// `vm_config.configuration`.
    VmConfig(VmConfigArgs),
}

/// Flags of `vm-config`.
#[derive(Debug, Clone, Args)]
pub struct VmConfigArgs {
    /// A served model and its directory (with tokenizer.json and tokenizer_config.json).
    #[arg(long = "model", value_name = "NAME=DIR", required = true)]
    pub models: Vec<String>,
    /// Tokens per KV block of the models' workers.
    #[arg(long, default_value_t = 16)]
    pub block_size: u32,
}

/// Flags of `check-config`.
#[derive(Debug, Clone, Args)]
pub struct CheckConfigArgs {
    /// JSON files, each one plugin configuration object (the keys of the README table).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Flags of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where to serve the filter: `IP:PORT`, or `unix:/path` (or an absolute path) for a
    /// unix socket.
    #[arg(long, default_value = "127.0.0.1:9100")]
    pub listen: String,
    /// Optional second listener serving only `/healthz`, `/readyz` and `/metrics` (e.g.
    /// `0.0.0.0:9101` so kubelet probes and Prometheus reach it; the filter API stays on
    /// `--listen`).
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Dynamo namespace of the workers.
    #[arg(long, default_value = "dynamo")]
    pub namespace: String,
    /// Dynamo component of the workers (whose KV events and replica events are followed).
    #[arg(long, default_value = "backend")]
    pub component: String,
    /// Run without NATS (KV events from vLLM ZMQ publishers, workers from files only).
    #[arg(long)]
    pub no_nats: bool,
    /// NATS server URL(s), comma-separated.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials file (JWT + nkey seed).
    #[arg(long)]
    pub nats_creds: Option<PathBuf>,
    /// CA certificate (PEM) to verify the NATS server with.
    #[arg(long)]
    pub nats_tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; needs --nats-tls-key.
    #[arg(long, requires = "nats_tls_key")]
    pub nats_tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS; needs --nats-tls-cert.
    #[arg(long, requires = "nats_tls_cert")]
    pub nats_tls_key: Option<PathBuf>,
    /// Refuse a NATS connection without TLS.
    #[arg(long)]
    pub nats_tls_required: bool,
    /// Follow KV events on core NATS only (no JetStream stream: no replay after a restart).
    #[arg(long)]
    pub no_jetstream: bool,
    /// JetStream stream capturing the KV-event subjects [default:
    /// kvgate-kv-events-{namespace}-{component}].
    #[arg(long)]
    pub stream: Option<String>,
    /// How long the stream keeps events, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub stream_max_age_secs: u64,
    /// How many bytes the stream keeps (older events are dropped first).
    #[arg(long, default_value_t = 1 << 30)]
    pub stream_max_bytes: i64,
    /// Durable consumer name of this sidecar [default: kvgate-sync-{hostname}].
    #[arg(long)]
    pub durable: Option<String>,
    /// Do not read Dynamo's legacy JetStream stream
    /// (`namespace-{ns}-component-{comp}-kv-events`) even if it exists.
    #[arg(long)]
    pub no_legacy_stream: bool,
    /// Static worker list (JSON array of WorkerInfo), reloaded when it changes.
    #[arg(long)]
    pub workers_file: Option<PathBuf>,
    /// Ignore worker announcements on NATS (`namespace.{ns}.kvgate.workers`).
    #[arg(long)]
    pub no_announce: bool,
    /// Take the workers from this Kubernetes InferencePool (inference.networking.k8s.io/v1):
    /// its ready pods on its target ports. NATS announcements then only enrich pods the
    /// cluster lists.
    #[arg(long, value_name = "NAME")]
    pub k8s_inference_pool: Option<String>,
    /// Namespace of the InferencePool [default: $POD_NAMESPACE, else the service account's
    /// namespace, else `default`].
    #[arg(long, value_name = "NS")]
    pub k8s_namespace: Option<String>,
    /// Kubernetes API server URL used without credentials (e.g. `http://127.0.0.1:8001`
    /// of `kubectl proxy`) [default: the in-cluster service account, else $KUBECONFIG].
    #[arg(long, value_name = "URL")]
    pub k8s_api_url: Option<String>,
    /// Served model name of pods without a `kvgate.io/model` annotation (on the pod or
    /// the pool).
    #[arg(long, value_name = "NAME")]
    pub k8s_default_model: Option<String>,
    /// Role of pods without a `kvgate.io/role` annotation: aggregated, prefill or decode.
    #[arg(long, value_name = "ROLE", default_value = "aggregated")]
    pub k8s_default_role: String,
    /// Tokens per KV block of pods without a `kvgate.io/block-size` annotation.
    #[arg(long, value_name = "N")]
    pub k8s_default_block_size: Option<u32>,
    /// A model to serve tokenizer files for: `NAME=DIR` or `NAME=DIR,block_size=N`; DIR
    /// holds tokenizer.json and tokenizer_config.json. Repeatable.
    #[arg(long = "model", value_name = "NAME=DIR[,block_size=N]")]
    pub models: Vec<String>,
    /// kvgate configuration (the filter's JSON keys); `DYN_*` / `KVGATE_*` variables of
    /// the environment apply first, the file's keys win.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Share request bookkeeping with other gateway replicas (also `router_replica_sync`
    /// / `DYN_ROUTER_REPLICA_SYNC`).
    #[arg(long)]
    pub replica_sync: bool,
    /// Index changes kept for delta frames; a filter further behind gets a snapshot.
    #[arg(long, default_value_t = 1_000_000)]
    pub sync_log_size: usize,
    /// Send the worker table, loads and models at least this often (ms), changed or not.
    #[arg(long, default_value_t = 5000)]
    pub meta_refresh_ms: u64,
    /// Answer a long poll for load changes alone at most this often (ms).
    #[arg(long, default_value_t = 100)]
    pub loads_interval_ms: u64,
    /// File holding the bearer token the filter must send on `/v1/sync`,
    /// `/v1/models/files` and `/v1/bookkeeping` [default: the configuration's
    /// `sidecar_token`, e.g. from `KVGATE_SIDECAR_TOKEN`]. One of a token or
    /// `--allow-unauthenticated` is required.
    #[arg(long, value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,
    /// Serve the filter API without a token (only where nothing but the gateway can reach
    /// `--listen`).
    #[arg(long)]
    pub allow_unauthenticated: bool,
    /// Largest `/v1/bookkeeping` body accepted, in bytes (larger: 413).
    #[arg(long, default_value_t = 8 << 20)]
    pub max_bookkeeping_bytes: usize,
    /// Most steps in one `/v1/bookkeeping` batch (more: 413).
    #[arg(long, default_value_t = 4096)]
    pub max_bookkeeping_events: usize,
    /// Largest event payload accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_payload_bytes: usize,
    /// Also serve the filter's engine as a Gateway API Inference Extension endpoint
    /// picker on `IP:PORT`: Envoy's ext_proc gRPC service (an InferencePool's
    /// `endpointPickerRef`), with gRPC health (`liveness`, `readiness`).
    #[arg(long, value_name = "IP:PORT")]
    pub epp: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    pub log_json: bool,
}

/// Flags of `hash`.
#[derive(Debug, Clone, Args)]
pub struct HashArgs {
    /// Tokens per KV block.
    #[arg(long)]
    pub block_size: u32,
    /// Token ids, comma-separated.
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    pub tokens: Vec<u32>,
    /// LoRA adapter name (seeds the hash).
    #[arg(long)]
    pub lora: Option<String>,
    /// Cache salt (`x-tenant-id`; seeds the hash).
    #[arg(long)]
    pub salt: Option<String>,
}

/// Flags of `explain`.
#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// Served model name (its tokenizer comes from --model-dir or the sidecar).
    #[arg(long)]
    pub model: String,
    /// The request body (JSON file; `-` reads standard input).
    #[arg(long)]
    pub request: PathBuf,
    /// The sidecar: `http://IP:PORT` or `unix:/path`.
    #[arg(long, default_value = "http://127.0.0.1:9100")]
    pub sidecar: String,
    /// File with the sidecar's API token [default: `KVGATE_SIDECAR_TOKEN` of the
    /// environment].
    #[arg(long, value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,
    /// Directory with tokenizer.json and tokenizer_config.json (else fetched from the
    /// sidecar).
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
    /// Endpoint the request is for: `chat` or `completions` [default: chat if the body
    /// has `messages`].
    #[arg(long)]
    pub endpoint: Option<String>,
    /// The `x-tenant-id` header (cache salt).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Tokens per KV block [default: the sidecar's model entry, the workers', the config's].
    #[arg(long)]
    pub block_size: Option<u32>,
    /// kvgate configuration (router settings), as for `serve`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every flag of every subcommand is documented in the sidecar's README.
    #[test]
    fn every_flag_is_in_the_readme() {
        let readme = include_str!("../README.md");
        let mut missing = Vec::new();
        for sub in Cli::command().get_subcommands() {
            for arg in sub.get_arguments() {
                if let Some(long) = arg.get_long() {
                    if long != "help" && !readme.contains(&format!("`--{long}")) {
                        missing.push(format!("{} --{long}", sub.get_name()));
                    }
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in shared-state-sync/README.md: {missing:?}"
        );
    }
}
