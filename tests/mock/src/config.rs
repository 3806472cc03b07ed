//! Command-line configuration of a mock worker (`mock-worker --help`), usable in-process
//! through [`MockArgs::from_args`]. The defaults describe roughly a small model on one
//! GPU, as Dynamo's mocker does: 16-token blocks, 16,384 KV blocks, 256 sequences and
//! 8,192 batched tokens per forward pass.

use super::scheduler::SchedulerConfig;
use clap::{Parser, ValueEnum};
use kvgate_core::workers::WorkerRole;
use kvgate_core::WorkerId;
use std::path::PathBuf;

/// A simulated OpenAI-compatible LLM engine with a paged prefix cache that publishes
/// Dynamo-format KV events (roughly a small model on one GPU; no GPU needed).
#[derive(Debug, Clone, Parser)]
#[command(
    name = "mock-worker",
    version,
    about = "A GPU-free LLM engine for testing kvgate: OpenAI API, paged prefix cache, real KV events",
    long_about = "A GPU-free stand-in for a vLLM/SGLang/TRT-LLM worker, for testing kvgate.\n\n\
        It serves the OpenAI chat and text completion APIs (streamed or whole), tokenizes with \
        the model's real chat template and tokenizer, and runs each request through a \
        scheduler with a paged prefix cache per data-parallel rank: --num-gpu-blocks blocks \
        of --block-size tokens, shared prefixes reused, least recently used blocks evicted. \
        Prefill and decode take simulated time from Dynamo's mocker time model (prefill cost \
        grows with uncached prompt tokens, decode with KV usage), divided by --speedup.\n\n\
        Every cache change is published as a KV event in the real wire formats: Dynamo's \
        (NATS/JetStream, --nats-url) and/or vLLM's native ZMQ stream (--zmq-pub; rank r on \
        the port + r). With NATS it also reports load, announces itself to kvgate \
        (namespace.{ns}.kvgate.workers) and answers worker KV queries with a cache dump. \
        Roles: aggregated, prefill, or decode (a decode worker runs the prefill on the \
        worker named by x-prefill-instance-id, trying x-kvgate-prefill-fallbacks next, and \
        prefills itself when none is reachable unless x-kvgate-prefill-required). \
        GET /kvgate/cache and /kvgate/stats show its true cache and counters."
)]
pub struct MockArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on; 0 picks a free port. The first stdout line is `LISTENING ip:port`.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// IP announced to the fleet (default: --host, or 127.0.0.1 when --host is unspecified).
    #[arg(long)]
    pub advertise_host: Option<String>,
    /// Instance id (the `worker_id` of KV events); default: random 53-bit.
    #[arg(long)]
    pub instance_id: Option<WorkerId>,
    /// Served model name (the OpenAI `model` field).
    #[arg(long, default_value = "Qwen/Qwen3-0.6B")]
    pub model: String,
    /// LoRA adapters served on top of the model, comma-separated (vLLM `--lora-modules`
    /// names): a request whose `model` is one is served, and its KV blocks hashed, with
    /// the adapter's seed (Dynamo's LoRA-aware block hash); announced to the gateway.
    #[arg(long, value_delimiter = ',')]
    pub lora_adapters: Vec<String>,
    /// Directory with tokenizer.json and tokenizer_config.json; without a usable
    /// tokenizer a deterministic word-level stand-in is used.
    #[arg(long, default_value = "target/models/Qwen3-0.6B")]
    pub model_dir: PathBuf,
    /// Prompt tokenizer: `hf` = the model dir's chat template and tokenizer (error if
    /// missing), `word` = a deterministic stand-in, `auto` = `hf` if loadable, else `word`.
    #[arg(long, value_enum, default_value_t = TokenizerKind::Auto)]
    pub tokenizer: TokenizerKind,
    /// Disaggregation role.
    #[arg(long, value_enum, default_value_t = Role::Aggregated)]
    pub role: Role,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub block_size: u32,
    /// KV pool size in blocks, per data-parallel rank.
    #[arg(long, default_value_t = 16_384)]
    pub num_gpu_blocks: usize,
    /// Maximum sequences running at once, per rank.
    #[arg(long, default_value_t = 256)]
    pub max_num_seqs: usize,
    /// Token budget of one forward pass (longer prompts are prefilled in chunks).
    #[arg(long, default_value_t = 8192)]
    pub max_num_batched_tokens: usize,
    /// Fraction of the KV pool kept free when admitting requests.
    #[arg(long, default_value_t = 0.01)]
    pub watermark: f64,
    /// Time-scale: all simulated durations are divided by this (20 = 20× faster).
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Output length when the request sets neither max_tokens nor max_completion_tokens.
    #[arg(long, default_value_t = 16)]
    pub default_max_tokens: usize,
    /// Data-parallel ranks (independent caches and schedulers); chosen per request by
    /// `x-dynamo-dp-rank` / `x-dp-rank` (default 0).
    #[arg(long, default_value_t = 1)]
    pub dp_size: u32,
    /// NATS server for KV events, load metrics and announcements (none: no publishing).
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Dynamo namespace.
    #[arg(long, default_value = "dynamo")]
    pub namespace: String,
    /// Dynamo component.
    #[arg(long, default_value = "backend")]
    pub component: String,
    /// Announcement lease in milliseconds (re-announced every lease/3).
    #[arg(long, default_value_t = 3000)]
    pub lease_ms: u64,
    /// Interval of load-metric reports, in milliseconds of wall time.
    #[arg(long, default_value_t = 100)]
    pub metrics_interval_ms: u64,
    /// Append one JSON line per request to this file (shared by several workers).
    #[arg(long)]
    pub request_log: Option<PathBuf>,
    /// A peer worker, `ID=IP:PORT` (repeatable): where to send remote prefills.
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(WorkerId, String)>,
    /// Also publish vLLM-native KV events on ZMQ PUB sockets: rank r binds this
    /// endpoint's port + r, as vLLM's per-rank engines do (e.g. `tcp://127.0.0.1:5557`;
    /// port 0: consecutive free ports).
    #[arg(long)]
    pub zmq_pub: Option<String>,
    /// Topic frame of the ZMQ messages (vLLM's default is empty).
    #[arg(long, default_value = "")]
    pub zmq_topic: String,
    /// Fault injection: drop every KV event whose id is a multiple of N.
    #[arg(long)]
    pub event_gap_every: Option<u64>,
    /// Fault injection: publish every KV event whose id is a multiple of N twice.
    #[arg(long)]
    pub event_dup_every: Option<u64>,
    /// Id of the first KV event of each rank.
    #[arg(long, default_value_t = 1)]
    pub first_event_id: u64,
    /// Timeout of a remote prefill call, in milliseconds of wall time.
    #[arg(long, default_value_t = 60_000)]
    pub prefill_timeout_ms: u64,
}

impl MockArgs {
    /// Parses arguments (without the program name), as the binary would.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("mock-worker"))
            .chain(args.into_iter().map(Into::into));
        Self::try_parse_from(argv)
    }

    /// Scheduler limits of one rank.
    pub fn scheduler_config(&self) -> SchedulerConfig {
        SchedulerConfig {
            block_size: self.block_size.max(1) as usize,
            num_gpu_blocks: self.num_gpu_blocks,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self.max_num_batched_tokens,
            watermark: self.watermark,
        }
    }

    /// The IP announced to the fleet.
    pub fn advertised_ip(&self) -> String {
        match &self.advertise_host {
            Some(h) => h.clone(),
            None if self.host == "0.0.0.0" || self.host == "::" => "127.0.0.1".to_string(),
            None => self.host.clone(),
        }
    }
}

/// Disaggregation role (see `kvgate_core::workers::WorkerRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Role {
    /// Prefill and decode.
    #[default]
    Aggregated,
    /// Serves `/kvgate/prefill` for decode workers (and whole requests too).
    Prefill,
    /// Decodes; runs the prefill on the worker named by `x-prefill-instance-id` if any.
    Decode,
}

impl From<Role> for WorkerRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Aggregated => WorkerRole::Aggregated,
            Role::Prefill => WorkerRole::Prefill,
            Role::Decode => WorkerRole::Decode,
        }
    }
}

/// Which prompt tokenizer to use (`--tokenizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum TokenizerKind {
    /// The model's tokenizer if its files load, else the stand-in (with a warning).
    #[default]
    Auto,
    /// The model's chat template and tokenizer (`kvgate-prompt`); fail if unavailable.
    Hf,
    /// The deterministic word-level stand-in.
    Word,
}

/// Parses `ID=IP:PORT`.
pub fn parse_peer(s: &str) -> Result<(WorkerId, String), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("expected ID=IP:PORT, got `{s}`"))?;
    let id: WorkerId = id
        .trim()
        .parse()
        .map_err(|e| format!("bad peer id `{id}`: {e}"))?;
    let addr = addr.trim();
    if addr
        .rsplit_once(':')
        .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(format!("bad peer address `{addr}` (want IP:PORT)"));
    }
    Ok((id, addr.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    #[test]
    fn defaults_are_a_small_model_on_one_gpu() {
        let a = MockArgs::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(
            (
                a.block_size,
                a.num_gpu_blocks,
                a.max_num_seqs,
                a.max_num_batched_tokens
            ),
            (16, 16_384, 256, 8192)
        );
        assert_eq!(
            (a.port, a.host.as_str(), a.dp_size, a.lease_ms),
            (0, "127.0.0.1", 1, 3000)
        );
        assert_eq!(
            (a.namespace.as_str(), a.component.as_str()),
            ("dynamo", "backend")
        );
        assert_eq!(a.role, Role::Aggregated);
        assert_eq!(a.first_event_id, 1);
        assert!(a.nats_url.is_none());
    }

    #[test]
    fn peers_roles_and_faults_parse() {
        let a = MockArgs::from_args([
            "--role",
            "decode",
            "--peer",
            "7=127.0.0.1:9000",
            "--peer",
            "8=10.0.0.2:80",
            "--event-gap-every",
            "5",
            "--host",
            "0.0.0.0",
        ])
        .unwrap();
        assert_eq!(a.role, Role::Decode);
        assert_eq!(
            a.peers,
            vec![
                (7, "127.0.0.1:9000".to_string()),
                (8, "10.0.0.2:80".to_string())
            ]
        );
        assert_eq!(a.event_gap_every, Some(5));
        assert_eq!(a.advertised_ip(), "127.0.0.1");
        assert!(MockArgs::from_args(["--peer", "x=1.2.3.4:5"]).is_err());
        assert!(parse_peer("1=1.2.3.4").is_err());
        assert!(parse_peer("1=:80").is_err());
    }
}
