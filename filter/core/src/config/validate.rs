//! Raw optional values → validated, typed configuration with defaults applied.

use super::{ConfigError, RawConfig};
use crate::index::DEFAULT_PRUNE_TARGET_RATIO;
use crate::workers::WorkerInfo;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// What to do when the filter cannot make a routing decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailPolicy {
    /// Forward without routing headers: the cluster's own load balancer picks.
    #[default]
    FailOpen,
    /// Answer 503 with a JSON error.
    FailClosed,
}

/// For which models disaggregated serving is required: a request for such a model with
/// no prefill worker available gets 503 `no_prefill_worker` instead of aggregated serving.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EnforceDisagg {
    /// No model (fall back to aggregated serving).
    #[default]
    Off,
    /// Every model.
    All,
    /// Only these models (a LoRA adapter counts as its base model).
    Models(BTreeSet<String>),
}

impl EnforceDisagg {
    /// Whether requests for `model` must be served disaggregated.
    pub fn applies(&self, model: &str) -> bool {
        match self {
            EnforceDisagg::Off => false,
            EnforceDisagg::All => true,
            EnforceDisagg::Models(m) => m.contains(model),
        }
    }
}

fn enforce_disagg(v: Option<super::EnforceDisaggRaw>) -> Result<EnforceDisagg, ConfigError> {
    use super::EnforceDisaggRaw as Raw;
    Ok(match v {
        None | Some(Raw::All(false)) => EnforceDisagg::Off,
        Some(Raw::All(true)) => EnforceDisagg::All,
        Some(Raw::Models(list)) => {
            if let Some(bad) = list.iter().find(|m| m.trim().is_empty() || m.len() > 256) {
                return Err(ConfigError::invalid(
                    "enforce_disagg",
                    format!("`{bad}` is not a model name"),
                ));
            }
            EnforceDisagg::Models(list.into_iter().collect())
        }
    })
}

/// What to do with a request for a model no worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownModel {
    /// 404 with a JSON error.
    #[default]
    Reject,
    /// Forward unrouted.
    Passthrough,
}

/// Whose chat-template input semantics to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TemplateCompat {
    /// transformers' `apply_chat_template`.
    #[default]
    HuggingFace,
    /// vLLM's OpenAI server (tool-call arguments parsed and re-serialised, …).
    Vllm,
}

/// Admission control mode (`DYN_ADMISSION_CONTROL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdmissionControl {
    /// Only the thresholds set explicitly apply.
    #[default]
    None,
    /// Unset thresholds take Dynamo's token-capacity defaults.
    TokenCapacity,
}

/// Settings of the routing core (Dynamo's KV router settings).
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Default tokens per KV block.
    pub block_size: u32,
    /// Prefill blocks credited per overlapping block.
    pub overlap_score_credit: f64,
    /// Credit decay with excess queued prefill.
    pub overlap_score_credit_decay: f64,
    /// Weight of the prefill term.
    pub prefill_load_scale: f64,
    /// Cost per active request.
    pub decode_active_request_weight: f64,
    /// Softmax temperature (0 = argmin).
    pub temperature: f64,
    /// Use KV events (false = approximate mode).
    pub use_kv_events: bool,
    /// Share bookkeeping between gateway replicas.
    pub replica_sync: bool,
    /// Count in-flight blocks as decode load.
    pub track_active_blocks: bool,
    /// Grow decode blocks with streamed output.
    pub track_output_blocks: bool,
    /// Count queued prefill tokens.
    pub track_prefill_tokens: bool,
    /// Decay queued prefill by time at each worker's learned prefill rate.
    pub prefill_decay: bool,
    /// Approximate-mode TTL in ms.
    pub approx_ttl_ms: u64,
    /// Approximate-mode size bound.
    pub approx_max_entries: usize,
    /// Share of the bound a full approximate index prunes down to.
    pub approx_prune_target_ratio: f64,
    /// Predict-on-route TTL in ms with KV events (None = off).
    pub predicted_ttl_ms: Option<u64>,
    /// Expiry of unfreed bookkeeping, ms.
    pub active_request_ttl_ms: u64,
    /// Busy when decode blocks > this × total_kv_blocks.
    pub active_decode_blocks_threshold: Option<f64>,
    /// Busy when queued prefill tokens > this.
    pub active_prefill_tokens_threshold: Option<u64>,
    /// Busy when queued prefill tokens > this × max_num_batched_tokens.
    pub active_prefill_tokens_threshold_frac: Option<f64>,
    /// Busy when reported KV usage fraction > this.
    pub busy_threshold: Option<f64>,
    /// Models that fail rather than fall back to aggregated when no prefill worker is
    /// available.
    pub enforce_disagg: EnforceDisagg,
    /// Status when every worker is busy.
    pub overload_status: u16,
    /// Next-best workers listed after the chosen one in the destination header (and
    /// prefill workers in `x-kvgate-prefill-fallbacks`).
    pub max_fallbacks: usize,
    /// How long a prefill worker reported unreachable stays out of prefill picks (ms).
    pub prefill_quarantine_ms: u64,
    /// Extra cost, as a fraction of the request's blocks, a session's worker may have
    /// over the best and still be kept.
    pub session_affinity_slack: f64,
}

/// Settings of the gateway filter around the core.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// Behaviour when no decision can be made.
    pub fail_policy: FailPolicy,
    /// Largest body buffered.
    pub max_body_bytes: usize,
    /// Most chat messages.
    pub max_messages: usize,
    /// Deepest JSON nesting of a request body.
    pub max_json_depth: usize,
    /// Time from request headers to the end of the body before 408, ms.
    pub request_timeout_ms: u64,
    /// Time a stream may wait at its headers without a body callback before it is resumed, ms.
    pub pause_watchdog_ms: u64,
    /// Most KV blocks tokenized and matched per request.
    pub max_match_blocks: usize,
    /// Inject `nvext.token_data`.
    pub inject_token_data: bool,
    /// With `inject_token_data`: most prompt bytes tokenized (beyond, routed on the prefix
    /// and the body passes unmodified).
    pub max_tokenize_bytes: usize,
    /// Sidecar mode: how long a request waits for its VM to load the model (0: never).
    pub model_wait_ms: u64,
    /// Emit `x-kvgate-decision`.
    pub decision_header: bool,
    /// Emit `x-data-parallel-rank` (plain vLLM's dp rank header).
    pub vllm_dp_rank_header: bool,
    /// Session-affinity header name, lower-case (None = off).
    pub session_affinity_header: Option<String>,
    /// Unknown-model policy.
    pub unknown_model: UnknownModel,
    /// Sidecar cluster (None = static mode).
    pub sidecar_cluster: Option<String>,
    /// Sidecar authority.
    pub sidecar_authority: String,
    /// Bearer token for the sidecar (None = from the VM environment, else none).
    pub sidecar_token: Option<Secret>,
    /// Tick period in ms.
    pub sync_interval_ms: u64,
    /// Long-poll time in ms.
    pub sync_wait_ms: u64,
    /// Staleness bound in ms.
    pub stale_after_ms: u64,
    /// Segment cache entries per VM.
    pub segment_cache_entries: usize,
    /// Chat-template input semantics.
    pub template_compat: TemplateCompat,
    /// Static workers.
    pub workers: Vec<WorkerInfo>,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Routing core settings.
    pub router: RouterConfig,
    /// Gateway filter settings.
    pub gateway: GatewayConfig,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are valid by construction; validate() of an empty RawConfig only
        // fails if a default in this file is wrong, which the unit tests catch.
        validate(RawConfig::default()).unwrap_or_else(|_| unreachable_defaults())
    }
}

#[allow(clippy::panic)]
fn unreachable_defaults() -> Config {
    panic!("kvgate-core: built-in configuration defaults are invalid")
}

fn non_negative(key: &str, v: Option<f64>, default: f64) -> Result<f64, ConfigError> {
    let v = v.unwrap_or(default);
    if !v.is_finite() || v < 0.0 {
        return Err(ConfigError::invalid(
            key,
            format!("{v} must be a finite number ≥ 0"),
        ));
    }
    Ok(v)
}

fn fraction(key: &str, v: Option<f64>) -> Result<Option<f64>, ConfigError> {
    match v {
        Some(f) if !f.is_finite() || !(0.0..=1.0).contains(&f) => Err(ConfigError::invalid(
            key,
            format!("{f} must be between 0 and 1"),
        )),
        other => Ok(other),
    }
}

fn secs_to_ms(key: &str, v: Option<f64>, default: f64) -> Result<u64, ConfigError> {
    let s = non_negative(key, v, default)?;
    if s > 1e9 {
        return Err(ConfigError::invalid(
            key,
            format!("{s} seconds is too long"),
        ));
    }
    Ok((s * 1000.0).round() as u64)
}

fn ranged(key: &str, v: Option<u64>, default: u64, min: u64, max: u64) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if v < min || v > max {
        return Err(ConfigError::invalid(
            key,
            format!("{v} must be between {min} and {max}"),
        ));
    }
    Ok(v)
}

/// The session-affinity header name: lower-cased, a valid header token, and not a name the
/// filter strips from clients (`x-dynamo-*`, `x-kvgate-*`); empty = off.
fn session_header(v: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(name) = v.map(|n| n.trim().to_ascii_lowercase()) else {
        return Ok(None);
    };
    if name.is_empty() {
        return Ok(None);
    }
    let token = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token || name.starts_with("x-dynamo-") || name.starts_with("x-kvgate-") {
        return Err(ConfigError::invalid(
            "session_affinity_header",
            format!("`{name}` must be a header name outside x-dynamo-* and x-kvgate-*"),
        ));
    }
    Ok(Some(name))
}

/// A secret value (the sidecar token): compared and cloned, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Checks a bearer token: 16 to 512 visible ASCII characters without spaces, so it
    /// fits an `authorization` header as is and is not trivially short.
    pub fn new(key: &'static str, value: &str) -> Result<Secret, ConfigError> {
        let v = value.trim();
        if !(16..=512).contains(&v.len()) || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ConfigError::invalid(
                key,
                "must be 16 to 512 visible ASCII characters (no spaces)".to_string(),
            ));
        }
        Ok(Secret(v.to_string()))
    }

    /// The value, for the one header that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

fn sidecar_token(v: Option<String>) -> Result<Option<Secret>, ConfigError> {
    match v.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => Secret::new("sidecar_token", t).map(Some),
    }
}

/// Validates raw values and applies defaults.
pub fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut credit = non_negative("overlap_score_credit", raw.overlap_score_credit, 1.0)?;
    let mut scale = non_negative("prefill_load_scale", raw.prefill_load_scale, 1.0)?;
    if let Some(w) = raw.overlap_score_weight {
        // Deprecated alias, as Dynamo maps it: the weight becomes the prefill scale, and a
        // zero weight also switches the cache credit off.
        scale = non_negative("overlap_score_weight", Some(w), 1.0)?;
        if scale == 0.0 {
            credit = 0.0;
        }
    }
    let admission = match raw.admission_control.as_deref().unwrap_or("none") {
        "none" | "" => AdmissionControl::None,
        "token_capacity" | "token-capacity" => AdmissionControl::TokenCapacity,
        other => {
            return Err(ConfigError::invalid(
                "admission_control",
                format!("`{other}` is not one of `none`, `token_capacity`"),
            ))
        }
    };
    let mut decode_thr = fraction(
        "active_decode_blocks_threshold",
        raw.active_decode_blocks_threshold,
    )?;
    let mut prefill_thr = raw.active_prefill_tokens_threshold;
    let mut prefill_frac = raw.active_prefill_tokens_threshold_frac;
    if let Some(f) = prefill_frac {
        if !f.is_finite() || f < 0.0 {
            return Err(ConfigError::invalid(
                "active_prefill_tokens_threshold_frac",
                format!("{f} must be ≥ 0"),
            ));
        }
    }
    if admission == AdmissionControl::TokenCapacity {
        decode_thr = decode_thr.or(Some(1.0));
        prefill_thr = prefill_thr.or(Some(10_000_000));
        prefill_frac = prefill_frac.or(Some(10.0));
    }
    let busy = match raw.busy_threshold {
        Some(b) if b < 0.0 => None,
        other => fraction("busy_threshold", other)?,
    };
    let track_active_blocks = raw.router_track_active_blocks.unwrap_or(true);
    let track_output_blocks = raw.router_track_output_blocks.unwrap_or(false);
    if track_output_blocks && !track_active_blocks {
        return Err(ConfigError::invalid(
            "router_track_output_blocks",
            "needs router_track_active_blocks = true",
        ));
    }
    let predicted = match raw.router_predicted_ttl_secs {
        None => None,
        Some(s) => Some(secs_to_ms("router_predicted_ttl_secs", Some(s), 0.0)?),
    };
    let router = RouterConfig {
        block_size: ranged("block_size", raw.block_size.map(u64::from), 16, 1, 1 << 16)? as u32,
        overlap_score_credit: credit,
        overlap_score_credit_decay: non_negative(
            "overlap_score_credit_decay",
            raw.overlap_score_credit_decay,
            0.0,
        )?,
        prefill_load_scale: scale,
        decode_active_request_weight: non_negative(
            "decode_active_request_weight",
            raw.decode_active_request_weight,
            0.0,
        )?,
        temperature: non_negative("router_temperature", raw.router_temperature, 0.0)?,
        use_kv_events: raw.use_kv_events.unwrap_or(true),
        replica_sync: raw.router_replica_sync.unwrap_or(false),
        track_active_blocks,
        track_output_blocks,
        track_prefill_tokens: raw.router_track_prefill_tokens.unwrap_or(true),
        prefill_decay: raw.router_prefill_decay.unwrap_or(true),
        approx_ttl_ms: secs_to_ms("router_ttl_secs", raw.router_ttl_secs, 120.0)?,
        approx_max_entries: ranged(
            "router_max_tree_size",
            raw.router_max_tree_size,
            1 << 20,
            1,
            1 << 32,
        )? as usize,
        approx_prune_target_ratio: fraction(
            "router_prune_target_ratio",
            raw.router_prune_target_ratio,
        )?
        .unwrap_or(DEFAULT_PRUNE_TARGET_RATIO),
        predicted_ttl_ms: predicted,
        active_request_ttl_ms: secs_to_ms(
            "active_request_ttl_secs",
            raw.active_request_ttl_secs,
            300.0,
        )?,
        active_decode_blocks_threshold: decode_thr,
        active_prefill_tokens_threshold: prefill_thr,
        active_prefill_tokens_threshold_frac: prefill_frac,
        busy_threshold: busy,
        enforce_disagg: enforce_disagg(raw.enforce_disagg)?,
        overload_status: ranged(
            "overload_status",
            raw.overload_status.map(u64::from),
            529,
            400,
            599,
        )? as u16,
        max_fallbacks: ranged("max_fallbacks", raw.max_fallbacks, 2, 0, 8)? as usize,
        prefill_quarantine_ms: ranged(
            "prefill_quarantine_ms",
            raw.prefill_quarantine_ms,
            5_000,
            0,
            600_000,
        )?,
        session_affinity_slack: non_negative(
            "session_affinity_slack",
            raw.session_affinity_slack,
            0.5,
        )?,
    };
    let fail_policy = match raw.fail_policy.as_deref().unwrap_or("fail_open") {
        "fail_open" => FailPolicy::FailOpen,
        "fail_closed" => FailPolicy::FailClosed,
        other => {
            return Err(ConfigError::invalid(
                "fail_policy",
                format!("`{other}` is not one of `fail_open`, `fail_closed`"),
            ))
        }
    };
    let unknown_model = match raw.unknown_model.as_deref().unwrap_or("reject") {
        "reject" => UnknownModel::Reject,
        "passthrough" => UnknownModel::Passthrough,
        other => {
            return Err(ConfigError::invalid(
                "unknown_model",
                format!("`{other}` is not one of `reject`, `passthrough`"),
            ))
        }
    };
    let template_compat = match raw.template_compat.as_deref().unwrap_or("huggingface") {
        "huggingface" => TemplateCompat::HuggingFace,
        "vllm" => TemplateCompat::Vllm,
        other => {
            return Err(ConfigError::invalid(
                "template_compat",
                format!("`{other}` is not one of `huggingface`, `vllm`"),
            ))
        }
    };
    let workers = raw.workers.unwrap_or_default();
    let mut ids = BTreeSet::new();
    for w in &workers {
        if w.endpoint.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "workers",
                format!(
                    "endpoint `{}` of worker {} must be a literal ip:port",
                    w.endpoint, w.instance_id
                ),
            ));
        }
        if !ids.insert(w.instance_id) {
            return Err(ConfigError::invalid(
                "workers",
                format!("instance_id {} appears twice", w.instance_id),
            ));
        }
        if w.dp_size == 0 || w.dp_size > 1024 {
            return Err(ConfigError::invalid(
                "workers",
                format!("dp_size of worker {} must be 1..=1024", w.instance_id),
            ));
        }
        if w.dp_start_rank.checked_add(w.dp_size - 1).is_none() {
            return Err(ConfigError::invalid(
                "workers",
                format!(
                    "dp ranks of worker {} go past {} (dp_start_rank + dp_size)",
                    w.instance_id,
                    u32::MAX
                ),
            ));
        }
    }
    let sidecar = raw
        .sidecar_cluster
        .unwrap_or_else(|| "kvgate_sidecar".into());
    let gateway = GatewayConfig {
        fail_policy,
        max_body_bytes: ranged("max_body_bytes", raw.max_body_bytes, 8 << 20, 1024, 1 << 30)?
            as usize,
        max_messages: ranged("max_messages", raw.max_messages, 10_000, 1, 10_000_000)? as usize,
        max_json_depth: ranged("max_json_depth", raw.max_json_depth, 64, 2, 128)? as usize,
        request_timeout_ms: ranged(
            "request_timeout_ms",
            raw.request_timeout_ms,
            30_000,
            100,
            3_600_000,
        )?,
        pause_watchdog_ms: ranged(
            "pause_watchdog_ms",
            raw.pause_watchdog_ms,
            500,
            20,
            3_600_000,
        )?,
        max_match_blocks: ranged("max_match_blocks", raw.max_match_blocks, 8192, 1, 1 << 24)?
            as usize,
        inject_token_data: raw.inject_token_data.unwrap_or(true),
        max_tokenize_bytes: ranged(
            "max_tokenize_bytes",
            raw.max_tokenize_bytes,
            1 << 20,
            1024,
            1 << 30,
        )? as usize,
        model_wait_ms: ranged("model_wait_ms", raw.model_wait_ms, 5_000, 0, 60_000)?,
        decision_header: raw.decision_header.unwrap_or(false),
        vllm_dp_rank_header: raw.vllm_dp_rank_header.unwrap_or(true),
        session_affinity_header: session_header(raw.session_affinity_header)?,
        unknown_model,
        sidecar_cluster: if sidecar.is_empty() {
            None
        } else {
            Some(sidecar)
        },
        sidecar_authority: raw
            .sidecar_authority
            .unwrap_or_else(|| "kvgate-sidecar".into()),
        sidecar_token: sidecar_token(raw.sidecar_token)?,
        sync_interval_ms: ranged("sync_interval_ms", raw.sync_interval_ms, 20, 1, 60_000)?,
        sync_wait_ms: ranged("sync_wait_ms", raw.sync_wait_ms, 1000, 0, 60_000)?,
        stale_after_ms: ranged(
            "stale_after_ms",
            raw.stale_after_ms,
            10_000,
            100,
            86_400_000,
        )?,
        segment_cache_entries: ranged(
            "segment_cache_entries",
            raw.segment_cache_entries,
            4096,
            0,
            1 << 20,
        )? as usize,
        template_compat,
        workers,
    };
    Ok(Config { router, gateway })
}
