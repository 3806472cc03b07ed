//! What a request comes to, as types: routed (with headers and maybe a new body), answered
//! locally (a JSON error), or forwarded unrouted — and why, so metrics and logs name every
//! outcome from one place.

use kvgate_core::WorkerKey;

/// Why a decision was made on load alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Degraded {
    /// The model's tokenizer is not loaded (yet) in this VM.
    NoTokenizer,
    /// No index update from the sidecar for `stale_after_ms`.
    StaleIndex,
}

impl Degraded {
    /// The name in metrics, logs and the decision header.
    pub const fn as_str(self) -> &'static str {
        match self {
            Degraded::NoTokenizer => "no_tokenizer",
            Degraded::StaleIndex => "stale_index",
        }
    }
}

/// Why a request was forwarded without a decision (the cluster's load balancer picks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardReason {
    /// Fail-open: no worker is known at all.
    NoWorkers,
    /// Fail-open: the chosen endpoint is not in the worker table (never emitted).
    UnknownEndpoint,
    /// `unknown_model: passthrough` and no worker serves the model.
    UnknownModel,
    /// The request is valid but kvgate does not route it (multimodal content, a
    /// per-request chat template).
    UnsupportedRequest,
    /// The prompt could not be rendered or tokenized (template error, fuel exhausted).
    UnsupportedPrompt,
}

impl ForwardReason {
    /// The name in metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            ForwardReason::NoWorkers => "no_workers",
            ForwardReason::UnknownEndpoint => "unknown_endpoint",
            ForwardReason::UnknownModel => "unknown_model",
            ForwardReason::UnsupportedRequest => "unsupported_request",
            ForwardReason::UnsupportedPrompt => "unsupported_prompt",
        }
    }

    /// Whether this forward is a fail-open (counted apart from by-design passthrough).
    pub const fn is_fail_open(self) -> bool {
        matches!(
            self,
            ForwardReason::NoWorkers | ForwardReason::UnknownEndpoint
        )
    }
}

/// A local answer: an HTTP status and an OpenAI-style JSON error body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// JSON body `{"error": {...}}`.
    pub body: Vec<u8>,
    /// The error code (metrics: `kvgate.errors.<code>`).
    pub code: &'static str,
}

/// How a request ends before the cost formula.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Early {
    /// Answer locally.
    Reply(Reply),
    /// Forward unrouted.
    Forward(ForwardReason),
}

/// A routed decision, ready for the glue to apply.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Headers to set on the upstream request.
    pub headers: Vec<(&'static str, String)>,
    /// A replacement body, if it changed.
    pub body: Option<Vec<u8>>,
    /// The one-line explanation.
    pub explain: String,
    /// The chosen decode worker.
    pub worker: WorkerKey,
    /// Blocks of the prompt the chosen worker holds.
    pub matched_blocks: u32,
    /// Prompt tokens used for the decision.
    pub prompt_tokens: usize,
    /// Segment cache hits and misses of this request.
    pub segments: (u32, u32),
    /// Tools-list cache hits and misses of this request's render (0 or 1 each).
    pub tools: (u32, u32),
    /// Stage times.
    pub timings: Timings,
    /// Set when the decision was made on load alone.
    pub degraded: Option<Degraded>,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Route it.
    Route(Box<Route>),
    /// Answer locally.
    Reply(Reply),
    /// Forward it unrouted.
    Forward(ForwardReason),
}

impl From<Early> for Outcome {
    fn from(e: Early) -> Self {
        match e {
            Early::Reply(r) => Outcome::Reply(r),
            Early::Forward(f) => Outcome::Forward(f),
        }
    }
}

/// Time spent per stage, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// JSON parse and validation.
    pub parse_us: u64,
    /// Chat template rendering.
    pub template_us: u64,
    /// Tokenization.
    pub tokenize_us: u64,
    /// Block hashing and index lookup.
    pub hash_us: u64,
    /// Cost formula and selection.
    pub score_us: u64,
    /// The whole decision.
    pub total_us: u64,
}
