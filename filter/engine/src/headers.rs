//! Routing headers: the names kvgate sets, and the rule that strips every client-sent
//! routing header before routing so a client can never choose its destination, and the
//! session-affinity token format.

use kvgate_core::WorkerKey;

/// Decode worker instance id (Dynamo 1.x name).
pub const WORKER_INSTANCE_ID: &str = "x-worker-instance-id";
/// Decode worker instance id (`x-dynamo-` name).
pub const DYNAMO_WORKER_INSTANCE_ID: &str = "x-dynamo-worker-instance-id";
/// Decode dp rank (Dynamo 1.x name).
pub const DP_RANK: &str = "x-dp-rank";
/// Decode dp rank (`x-dynamo-` name).
pub const DYNAMO_DP_RANK: &str = "x-dynamo-dp-rank";
/// Prefill worker instance id (Dynamo 1.x name).
pub const PREFILL_INSTANCE_ID: &str = "x-prefill-instance-id";
/// Prefill worker instance id (`x-dynamo-` name).
pub const DYNAMO_PREFILL_INSTANCE_ID: &str = "x-dynamo-prefill-instance-id";
/// Prefill dp rank (Dynamo 1.x name).
pub const PREFILL_DP_RANK: &str = "x-prefill-dp-rank";
/// Prefill dp rank (`x-dynamo-` name).
pub const DYNAMO_PREFILL_DP_RANK: &str = "x-dynamo-prefill-dp-rank";
/// Decode dp rank as plain vLLM's OpenAI server reads it (`X-data-parallel-rank`).
pub const VLLM_DP_RANK: &str = "x-data-parallel-rank";
/// `aggregated` or `disaggregated`.
pub const DYNAMO_ROUTING_MODE: &str = "x-dynamo-routing-mode";
/// The chosen endpoint `ip:port`, honoured by Envoy's override_host load balancing policy.
pub const DESTINATION_ENDPOINT: &str = "x-gateway-destination-endpoint";
/// Prefill worker `ip:port` (Dynamo EPP name).
pub const PREFILLER_HOST_PORT: &str = "x-prefiller-host-port";
/// Prefill workers (`id/rank`, comma-separated, best first) the decode worker tries if
/// the named prefill worker cannot be reached (kvgate's own; Dynamo workers ignore it).
pub const PREFILL_FALLBACKS: &str = "x-kvgate-prefill-fallbacks";
/// `true` when the model requires disaggregated serving (`enforce_disagg`): the decode
/// worker must not prefill locally when no prefill worker can be reached.
pub const PREFILL_REQUIRED: &str = "x-kvgate-prefill-required";
/// Response header a decode worker sets naming each prefill worker it could not reach
/// (`id`, comma-separated).
pub const PREFILL_UNREACHABLE: &str = "x-kvgate-prefill-unreachable";
/// Opt-in response header with the one-line explanation of the decision.
pub const DECISION: &str = "x-kvgate-decision";
/// Tenant id: Dynamo turns it into the cache salt of the block hashes.
pub const TENANT_ID: &str = "x-tenant-id";

/// The session-affinity token naming `worker`: its instance id in hex, a dot, its dp rank.
/// Not a secret: a client that forges one only states a preference, kept while that
/// worker's cost is within the configured slack of the best.
pub fn session_token(worker: WorkerKey) -> String {
    format!("{:x}.{}", worker.worker_id, worker.dp_rank)
}

/// The worker a session-affinity token names, if it is well formed.
pub fn parse_session_token(token: &str) -> Option<WorkerKey> {
    let (id, rank) = token.trim().split_once('.')?;
    if id.is_empty() || id.len() > 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let worker_id = u64::from_str_radix(id, 16).ok()?;
    let dp_rank = rank.parse().ok()?;
    Some(WorkerKey::new(worker_id, dp_rank))
}

/// Exact names (besides every `x-dynamo-*` and `x-kvgate-*`) a client may not send.
const RESERVED: &[&str] = &[
    WORKER_INSTANCE_ID,
    DP_RANK,
    VLLM_DP_RANK,
    PREFILL_INSTANCE_ID,
    PREFILL_DP_RANK,
    DESTINATION_ENDPOINT,
    PREFILLER_HOST_PORT,
    "x-gateway-destination-endpoint-subset",
    "x-gateway-destination-endpoint-served",
];

/// Whether a request header sent by the client must be removed before routing.
/// Names are compared case-insensitively (Envoy lower-cases them already).
pub fn is_client_routing_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.starts_with("x-dynamo-")
        || lower.starts_with("x-kvgate-")
        || RESERVED.contains(&lower.as_str())
}

/// The routed request paths (query string ignored): OpenAI chat and text completions.
pub fn is_routed(method: &str, path: &str) -> Option<RoutedPath> {
    if !method.eq_ignore_ascii_case("POST") {
        return None;
    }
    let path = path.split(['?', '#']).next().unwrap_or_default();
    match path.trim_end_matches('/') {
        "/v1/chat/completions" => Some(RoutedPath::Chat),
        "/v1/completions" => Some(RoutedPath::Completions),
        _ => None,
    }
}

/// Which OpenAI endpoint a routed request targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutedPath {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_every_routing_header_in_any_case() {
        for h in [
            "x-worker-instance-id",
            "X-Worker-Instance-Id",
            "x-prefill-instance-id",
            "x-dynamo-worker-instance-id",
            "X-DYNAMO-ROUTING-MODE",
            "x-dynamo-anything-new",
            "x-gateway-destination-endpoint",
            "X-Gateway-Destination-Endpoint",
            "x-dp-rank",
            "x-prefill-dp-rank",
            "x-kvgate-decision",
            "x-prefiller-host-port",
        ] {
            assert!(is_client_routing_header(h), "{h}");
        }
        for h in [
            "content-type",
            "x-request-id",
            "authorization",
            "x-tenant-id",
            "x-dynamo",
        ] {
            assert!(!is_client_routing_header(h), "{h}");
        }
    }

    #[test]
    fn session_tokens_round_trip_and_junk_is_none() {
        for w in [
            WorkerKey::new(0, 0),
            WorkerKey::new(0xdead_beef, 3),
            WorkerKey::new(u64::MAX, u32::MAX),
        ] {
            assert_eq!(parse_session_token(&session_token(w)), Some(w));
        }
        assert_eq!(session_token(WorkerKey::new(255, 1)), "ff.1");
        for junk in [
            "",
            ".",
            "ff",
            "ff.",
            ".1",
            "zz.1",
            "+f.1",
            "ff.-1",
            "11111111111111111.0",
            "ff.1.2",
        ] {
            assert_eq!(parse_session_token(junk), None, "{junk}");
        }
    }

    #[test]
    fn routed_paths() {
        assert_eq!(
            is_routed("POST", "/v1/chat/completions"),
            Some(RoutedPath::Chat)
        );
        assert_eq!(
            is_routed("post", "/v1/chat/completions?x=1"),
            Some(RoutedPath::Chat)
        );
        assert_eq!(
            is_routed("POST", "/v1/completions/"),
            Some(RoutedPath::Completions)
        );
        assert_eq!(is_routed("GET", "/v1/chat/completions"), None);
        assert_eq!(is_routed("POST", "/v1/models"), None);
        assert_eq!(is_routed("POST", "/health"), None);
    }
}
