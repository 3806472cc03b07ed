//! The fleet: which workers exist, where they listen, what role they play, and the
//! registration message workers (or the mock engine) announce themselves with.

use crate::types::{DpRank, WorkerId, WorkerKey};
use serde::{Deserialize, Serialize};

/// What a worker does in disaggregated serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkerRole {
    /// Serves whole requests (prefill and decode).
    #[default]
    Aggregated,
    /// Only runs prefill, then hands the KV cache to a decode worker.
    Prefill,
    /// Runs decode (and prefill when no prefill worker is used).
    Decode,
}

/// One worker instance as discovery reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerInfo {
    /// Dynamo instance id (the `worker_id` of its KV events).
    pub instance_id: WorkerId,
    /// `ip:port` Envoy can reach it on: a literal IP, as override_host requires.
    pub endpoint: String,
    /// Served model name (the OpenAI `model` field).
    pub model: String,
    /// Aggregated, prefill or decode.
    #[serde(default)]
    pub role: WorkerRole,
    /// Tokens per KV block (the model card's `kv_cache_block_size`).
    #[serde(default)]
    pub block_size: Option<u32>,
    /// Number of data-parallel ranks (`data_parallel_size`, default 1).
    #[serde(default = "one")]
    pub dp_size: u32,
    /// First dp rank (`data_parallel_start_rank`, default 0).
    #[serde(default)]
    pub dp_start_rank: DpRank,
    /// KV capacity in blocks (`runtime_config.total_kv_blocks`), if known.
    #[serde(default)]
    pub total_kv_blocks: Option<u64>,
    /// Maximum concurrent sequences (`runtime_config.max_num_seqs`), if known.
    #[serde(default)]
    pub max_num_seqs: Option<u64>,
    /// Maximum tokens in one batch (`runtime_config.max_num_batched_tokens`), if known.
    #[serde(default)]
    pub max_num_batched_tokens: Option<u64>,
    /// vLLM KV-event publisher (`--kv-events-config` endpoint, e.g. `tcp://10.0.0.5:5557`),
    /// for fleets without the Dynamo runtime.
    #[serde(default)]
    pub zmq_events: Option<String>,
    /// vLLM replay endpoint of that publisher.
    #[serde(default)]
    pub zmq_replay: Option<String>,
    /// LoRA adapters it serves on top of `model`: the OpenAI `model` names a request uses
    /// for them (vLLM `--lora-modules NAME=PATH`), also the names its KV events hash with.
    /// (Always serialised: sync frames are postcard, which has no optional fields.)
    #[serde(default)]
    pub lora_adapters: Vec<String>,
}

fn one() -> u32 {
    1
}

impl WorkerInfo {
    /// Every (worker, dp rank) key this worker owns. Ranks stop at `u32::MAX`: a worker
    /// announced with `dp_start_rank + dp_size` beyond it owns only the ranks that exist
    /// (before, the addition overflowed: a panic in debug builds, wrapped ranks in release).
    pub fn keys(&self) -> impl Iterator<Item = WorkerKey> + '_ {
        (0..self.dp_size.max(1)).map_while(move |i| {
            let rank = self.dp_start_rank.checked_add(i)?;
            Some(WorkerKey::new(self.instance_id, rank))
        })
    }
}

/// A worker's self-registration, published on NATS as JSON on
/// [`announce_subject`] every `lease_ms / 3` or so. A worker whose lease runs out without
/// a new announcement is removed, with its index entries; `leaving: true` removes it at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerAnnouncement {
    /// The worker.
    pub worker: WorkerInfo,
    /// How long this announcement stays valid, in milliseconds.
    pub lease_ms: u64,
    /// True when the worker is shutting down.
    #[serde(default)]
    pub leaving: bool,
}

/// NATS subject of worker announcements for a Dynamo namespace:
/// `namespace.{ns}.kvgate.workers`.
pub fn announce_subject(namespace: &str) -> String {
    format!("namespace.{namespace}.kvgate.workers")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Reproduced with the `config` and `sync_codec` fuzz targets (tests/fuzz).
    #[test]
    fn keys_stop_at_the_last_dp_rank() {
        let w: WorkerInfo = serde_json::from_str(
            r#"{"instance_id": 1, "endpoint": "127.0.0.1:1", "model": "m", "dp_size": 3, "dp_start_rank": 4294967294}"#,
        )
        .unwrap();
        let ranks: Vec<DpRank> = w.keys().map(|k| k.dp_rank).collect();
        assert_eq!(ranks, vec![u32::MAX - 1, u32::MAX]);
    }
}
