//! The table of every configuration key: JSON name, Dynamo environment-variable names,
//! value kind, default and meaning. The README's configuration table is checked against
//! it, and environment-style maps are translated to JSON through it.

/// How a key's value is written in an environment-style map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `true`/`false`/`1`/`0`/`yes`/`no`.
    Bool,
    /// A non-negative integer.
    UInt,
    /// A floating-point number.
    Float,
    /// A string.
    Str,
    /// A JSON value (lists and objects).
    Json,
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Name in the JSON plugin configuration.
    pub json: &'static str,
    /// Environment-variable names, canonical first; deprecated aliases after.
    pub env: &'static [&'static str],
    /// Value kind.
    pub kind: Kind,
    /// Default, as shown in the README.
    pub default: &'static str,
    /// One-line meaning.
    pub doc: &'static str,
}

macro_rules! key {
    ($json:literal, [$($env:literal),*], $kind:ident, $default:literal, $doc:literal) => {
        Key { json: $json, env: &[$($env),*], kind: Kind::$kind, default: $default, doc: $doc }
    };
}

/// Every key, routing first, then gateway.
pub const KEYS: &[Key] = &[
    key!("block_size", ["DYN_KV_CACHE_BLOCK_SIZE"], UInt, "16", "Tokens per KV block when a worker does not announce its own (vLLM's CUDA default)."),
    key!("overlap_score_credit", ["DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT"], Float, "1.0", "Prefill blocks credited per cached (overlapping) block; 0 ignores the cache."),
    key!("overlap_score_credit_decay", ["DYN_ROUTER_KV_OVERLAP_SCORE_CREDIT_DECAY"], Float, "0.0", "Shrinks the credit on workers with more queued prefill than the least-loaded one: credit / (1 + decay·excess_blocks/request_blocks)."),
    key!("prefill_load_scale", ["DYN_ROUTER_PREFILL_LOAD_SCALE"], Float, "1.0", "Weight of the prefill term of the cost."),
    key!("overlap_score_weight", ["DYN_ROUTER_KV_OVERLAP_SCORE_WEIGHT", "DYN_OVERLAP_SCORE_WEIGHT", "DYN_KV_OVERLAP_SCORE_WEIGHT"], Float, "unset", "Deprecated: sets prefill_load_scale; 0 also sets overlap_score_credit to 0."),
    key!("decode_active_request_weight", ["DYN_ROUTER_DECODE_ACTIVE_REQUEST_WEIGHT"], Float, "0.0", "Cost added per active request on the worker."),
    key!("router_temperature", ["DYN_ROUTER_TEMPERATURE"], Float, "0.0", "Softmax temperature over normalised costs; 0 picks the minimum."),
    key!("use_kv_events", ["DYN_ROUTER_USE_KV_EVENTS", "DYN_USE_KV_EVENTS"], Bool, "true", "Match against workers' KV events; false predicts caches from routing decisions (approximate mode)."),
    key!("router_replica_sync", ["DYN_ROUTER_REPLICA_SYNC"], Bool, "false", "Share request bookkeeping between gateway replicas over NATS."),
    key!("router_track_active_blocks", ["DYN_ROUTER_TRACK_ACTIVE_BLOCKS"], Bool, "true", "Count the KV blocks of in-flight requests as decode load."),
    key!("router_track_output_blocks", ["DYN_ROUTER_TRACK_OUTPUT_BLOCKS"], Bool, "false", "Grow a request's decode blocks as its output streams (needs router_track_active_blocks)."),
    key!("router_track_prefill_tokens", ["DYN_ROUTER_TRACK_PREFILL_TOKENS"], Bool, "true", "Count queued prefill tokens of in-flight requests as prefill load."),
    key!("router_prefill_decay", ["KVGATE_ROUTER_PREFILL_DECAY"], Bool, "true", "With router_track_prefill_tokens: count a worker's booked prefill as still queued only for the part its prefill rate (learned from when its booked prefills finish) says has not run yet; until it has finished 3 prefills, all of it counts (no Dynamo equivalent)."),
    key!("router_ttl_secs", ["DYN_ROUTER_TTL_SECS"], Float, "120", "Approximate mode: how long a predicted block stays in the index."),
    key!("router_max_tree_size", ["DYN_ROUTER_MAX_TREE_SIZE"], UInt, "1048576", "Approximate mode: most predicted (worker, block) entries kept."),
    key!("router_prune_target_ratio", ["DYN_ROUTER_PRUNE_TARGET_RATIO"], Float, "0.8", "Approximate mode: a full index drops its oldest predictions down to this share of router_max_tree_size (0..1)."),
    key!("router_predicted_ttl_secs", ["DYN_ROUTER_PREDICTED_TTL_SECS"], Float, "unset", "With KV events: also predict blocks from routing decisions for this long (covers the event delay)."),
    key!("active_request_ttl_secs", ["KVGATE_ACTIVE_REQUEST_TTL_SECS"], Float, "300", "Bookkeeping of a request nobody freed expires after this long."),
    key!("admission_control", ["DYN_ADMISSION_CONTROL"], Str, "none", "`token_capacity` turns on the busy thresholds below with Dynamo's token-capacity defaults (1.0, 10000000, 10.0)."),
    key!("active_decode_blocks_threshold", ["DYN_ACTIVE_DECODE_BLOCKS_THRESHOLD"], Float, "unset", "A dp rank is busy when its decode blocks exceed this fraction of its total_kv_blocks (0..=1)."),
    key!("active_prefill_tokens_threshold", ["DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD"], UInt, "unset", "A dp rank is busy when its queued prefill tokens exceed this."),
    key!("active_prefill_tokens_threshold_frac", ["DYN_ACTIVE_PREFILL_TOKENS_THRESHOLD_FRAC"], Float, "unset", "A dp rank is busy when its queued prefill tokens exceed this times its max_num_batched_tokens."),
    key!("busy_threshold", ["DYN_BUSY_THRESHOLD"], Float, "unset", "A dp rank is busy when its reported KV usage (kv_used_blocks / total_kv_blocks) exceeds this (0..=1; negative = off)."),
    key!("enforce_disagg", ["DYN_ENFORCE_DISAGG"], Json, "false", "Require prefill workers: `true` for every model, or a list of model names; a request for such a model with no prefill worker available gets 503 `no_prefill_worker` instead of aggregated serving."),
    key!("prefill_quarantine_ms", ["KVGATE_PREFILL_QUARANTINE_MS"], UInt, "5000", "A prefill worker a decode worker reports unreachable (x-kvgate-prefill-unreachable) is left out of prefill picks for this long, per Envoy worker thread (0 = off, ≤ 600000)."),
    key!("max_fallbacks", ["KVGATE_MAX_FALLBACKS"], UInt, "2", "Next-best workers (by cost, same dp rank) listed after the chosen one in x-gateway-destination-endpoint; Envoy tries them in order on connect failure (0..=8)."),
    key!("session_affinity_header", ["KVGATE_SESSION_AFFINITY_HEADER"], Str, "unset", "Opt-in session affinity: the response carries this header with a token naming the worker; a request sending it back stays on that worker while its cost is within session_affinity_slack of the best."),
    key!("session_affinity_slack", ["KVGATE_SESSION_AFFINITY_SLACK"], Float, "0.5", "How much worse (in prompt blocks, as a fraction of the request's blocks) the session's worker may cost and still be kept."),
    key!("overload_status", ["DYN_HTTP_OVERLOAD_STATUS_CODE"], UInt, "529", "HTTP status when every eligible worker is busy."),
    key!("fail_policy", ["KVGATE_FAIL_POLICY"], Str, "fail_open", "`fail_open`: when no decision can be made, let the cluster's load balancer pick (counted); `fail_closed`: answer 503."),
    key!("max_body_bytes", ["KVGATE_MAX_BODY_BYTES"], UInt, "8388608", "Largest request body buffered; larger gets 413."),
    key!("max_messages", ["KVGATE_MAX_MESSAGES"], UInt, "10000", "Most chat messages accepted; more gets 400."),
    key!("max_json_depth", ["KVGATE_MAX_JSON_DEPTH"], UInt, "64", "Deepest nesting of JSON arrays/objects in a request body (2..=128); deeper gets 400 `json_too_deep`."),
    key!("request_timeout_ms", ["KVGATE_REQUEST_TIMEOUT_MS"], UInt, "30000", "A routed request whose body has not fully arrived this long after its headers gets 408 `request_timeout` (a slow body never keeps the stream paused)."),
    key!("pause_watchdog_ms", ["KVGATE_PAUSE_WATCHDOG_MS"], UInt, "500", "A request held at its headers that sees no body callback for this long is resumed unrouted (fail-open, `kvgate.watchdog.resumed`): what happens when Envoy lacks allow_on_headers_stop_iteration."),
    key!("model_wait_ms", ["KVGATE_MODEL_WAIT_MS"], UInt, "5000", "Sidecar mode: a request reaching a VM whose tokenizer is not loaded yet waits (held) up to this long while the VM fetches and loads the model's files, then is decided; past it the request is decided without a tokenizer (`kvgate.model_wait.timed_out`). 0 never waits (0..=60000; no Dynamo equivalent)."),
    key!("max_match_blocks", ["KVGATE_MAX_MATCH_BLOCKS"], UInt, "8192", "Tokenize and match at most this many KV blocks of a prompt (caps the tokenizer's time per request)."),
    key!("inject_token_data", ["KVGATE_INJECT_TOKEN_DATA"], Bool, "true", "Add the prompt's token ids as nvext.token_data when the whole prompt was tokenized."),
    key!("max_tokenize_bytes", ["KVGATE_MAX_TOKENIZE_BYTES"], UInt, "1048576", "With inject_token_data: tokenize at most this many bytes of prompt text (1024..=2^30); a longer prompt is routed on the prefix tokenized and its body passes without token_data (no Dynamo equivalent). Without it, tokenizing stops at the bytes that can hold max_match_blocks blocks."),
    key!("vllm_dp_rank_header", ["KVGATE_VLLM_DP_RANK_HEADER"], Bool, "true", "Also send the decode dp rank as `x-data-parallel-rank`, the header a plain vLLM server reads (Dynamo frontends read `x-dp-rank`)."),
    key!("decision_header", ["KVGATE_DECISION_HEADER"], Bool, "false", "Add x-kvgate-decision (the one-line explanation) to responses."),
    key!("unknown_model", ["KVGATE_UNKNOWN_MODEL"], Str, "reject", "`reject`: 404 for a model no worker serves; `passthrough`: forward unrouted to the cluster's load balancer."),
    key!("sidecar_cluster", ["KVGATE_SIDECAR_CLUSTER"], Str, "kvgate_sidecar", "Envoy cluster of the sidecar; empty = static mode (workers from this config, approximate matching)."),
    key!("sidecar_authority", ["KVGATE_SIDECAR_AUTHORITY"], Str, "kvgate-sidecar", "`:authority` sent to the sidecar."),
    key!("sidecar_token", ["KVGATE_SIDECAR_TOKEN"], Str, "unset", "Bearer token between filter and sidecar (kvgate-sync reads `--api-token-file` or this key); unset = the VM environment's `KVGATE_SIDECAR_TOKEN` (Envoy `vm_config.environment_variables`, Istio `vmConfig.env`), else none."),
    key!("sync_interval_ms", ["KVGATE_SYNC_INTERVAL_MS"], UInt, "20", "How often each VM checks shared data for new index deltas (the tick period)."),
    key!("sync_wait_ms", ["KVGATE_SYNC_WAIT_MS"], UInt, "1000", "Long-poll time of one sync request to the sidecar."),
    key!("stale_after_ms", ["KVGATE_STALE_AFTER_MS"], UInt, "10000", "With no successful sync for this long the index is stale: routing uses load only (counted)."),
    key!("template_compat", ["KVGATE_TEMPLATE_COMPAT"], Str, "huggingface", "Chat-template input semantics: `huggingface` (transformers' apply_chat_template) or `vllm` (vLLM's message and tool-call normalisation)."),
    key!("segment_cache_entries", ["KVGATE_SEGMENT_CACHE_ENTRIES"], UInt, "4096", "Per-VM cache of tokenized prompt segments (at most 16 MiB): an eighth on probation for segments seen once, the rest for segments seen again."),
    key!("workers", ["KVGATE_WORKERS"], Json, "[]", "Static worker list (instance_id, endpoint ip:port, model, role, dp_size, …) used without a sidecar."),
];

/// The key with this JSON name.
pub fn by_json(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.json == name)
}

/// The key with this environment-variable name (canonical or alias).
pub fn by_env(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.env.contains(&name))
}

/// The README's configuration table, generated from [`KEYS`].
pub fn markdown_table() -> String {
    let mut s =
        String::from("| key | environment variable | default | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        let env: Vec<String> = k.env.iter().map(|e| format!("`{e}`")).collect();
        s.push_str(&format!(
            "| `{}` | {} | `{}` | {} |\n",
            k.json,
            env.join(", "),
            k.default,
            k.doc
        ));
    }
    s
}
