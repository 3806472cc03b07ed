//! Disaggregated serving: the peer registry (instance id → `ip:port`, from `--peer` and
//! NATS announcements) and the remote-prefill call a decode worker makes to the prefill
//! worker named by `x-prefill-instance-id` (`POST /kvgate/prefill`).

use kvgate_core::{DpRank, WorkerId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Known peers: instance id → `ip:port`.
#[derive(Debug, Clone, Default)]
pub struct Peers(Arc<RwLock<HashMap<WorkerId, String>>>);

impl Peers {
    /// A registry seeded with `peers`.
    pub fn new(peers: impl IntoIterator<Item = (WorkerId, String)>) -> Self {
        Self(Arc::new(RwLock::new(peers.into_iter().collect())))
    }

    /// Adds or updates a peer.
    pub fn insert(&self, id: WorkerId, endpoint: String) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, endpoint);
    }

    /// Forgets a peer.
    pub fn remove(&self, id: WorkerId) {
        self.0
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// The endpoint of `id`.
    pub fn get(&self, id: WorkerId) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }
}

/// Body of `POST /kvgate/prefill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefillRequest {
    /// The client's request id (for the prefill worker's log).
    pub request_id: String,
    /// Prompt token ids.
    pub token_ids: Vec<u32>,
    /// Rank of the prefill worker to use.
    #[serde(default)]
    pub dp_rank: DpRank,
    /// Block hash seed (LoRA / salt); default 1337.
    #[serde(default = "default_seed")]
    pub hash_seed: u64,
}

fn default_seed() -> u64 {
    kvgate_core::hash::XXH3_SEED
}

/// Response of `POST /kvgate/prefill`: the prefill ran; its KV is "transferred".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrefillResponse {
    /// The prefill worker.
    pub worker_id: WorkerId,
    /// Its rank that ran the prefill.
    pub dp_rank: DpRank,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Prompt tokens found in the prefill worker's cache.
    pub prefix_hit_tokens: usize,
    /// Simulated milliseconds from queueing to the end of the prefill.
    pub sim_ttft_ms: f64,
}

/// Why a remote prefill failed.
#[derive(Debug, thiserror::Error)]
pub enum PrefillError {
    /// No endpoint is known for the instance id.
    #[error("unknown prefill worker {0} (give --peer ID=IP:PORT or enable NATS announcements)")]
    UnknownPeer(WorkerId),
    /// The call failed.
    #[error(transparent)]
    Client(#[from] kvgate_http::HttpError),
    /// The prefill worker refused.
    #[error("prefill worker answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Response body.
        body: String,
    },
    /// The answer is not a [`PrefillResponse`].
    #[error("bad prefill response: {0}")]
    BadResponse(String),
}

/// Runs `req` on the prefill worker `id`.
pub async fn remote_prefill(
    peers: &Peers,
    id: WorkerId,
    req: &PrefillRequest,
    timeout: Duration,
) -> Result<PrefillResponse, PrefillError> {
    let endpoint = peers.get(id).ok_or(PrefillError::UnknownPeer(id))?;
    let body = serde_json::to_vec(req).map_err(|e| PrefillError::BadResponse(e.to_string()))?;
    let rid = req.request_id.as_str();
    // A client per call: one connection per prefill, as a decode worker would open it.
    let resp = kvgate_http::Client::new(false, timeout)?
        .post(
            &format!("http://{endpoint}/kvgate/prefill"),
            &[("x-request-id", rid)],
            body,
        )
        .await?;
    if resp.status != 200 {
        return Err(PrefillError::Status {
            status: resp.status,
            body: String::from_utf8_lossy(&resp.body).into_owned(),
        });
    }
    serde_json::from_slice(&resp.body).map_err(|e| PrefillError::BadResponse(e.to_string()))
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
    fn peers_registry() {
        let p = Peers::new([(1, "127.0.0.1:1".to_string())]);
        assert_eq!(p.get(1).as_deref(), Some("127.0.0.1:1"));
        p.insert(2, "127.0.0.1:2".into());
        p.remove(1);
        assert_eq!(p.get(1), None);
        assert_eq!(p.clone().get(2).as_deref(), Some("127.0.0.1:2"));
    }

    #[test]
    fn prefill_request_defaults() {
        let r: PrefillRequest =
            serde_json::from_str(r#"{"request_id": "x", "token_ids": [1]}"#).unwrap();
        assert_eq!((r.dp_rank, r.hash_seed), (0, 1337));
    }

    #[tokio::test]
    async fn unknown_peer_is_an_error() {
        let req = PrefillRequest {
            request_id: "x".into(),
            token_ids: vec![1],
            dp_rank: 0,
            hash_seed: 1337,
        };
        let err = remote_prefill(&Peers::default(), 9, &req, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, PrefillError::UnknownPeer(9)));
    }
}
