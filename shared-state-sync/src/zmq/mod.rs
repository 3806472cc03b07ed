//! vLLM native KV events over ZMQ: one [`stream`] task per data-parallel rank of each
//! worker whose `WorkerInfo` names a `zmq_events` endpoint, started, restarted and
//! stopped as the worker table changes (checked twice a second).
//!
//! vLLM runs one engine per dp rank and each publishes on its own socket: the engine of
//! local rank `r` (global rank `dp_start_rank + r`) on the announced port + `r`, its
//! replay socket likewise. A worker announces the first endpoint and its `dp_size`.

pub mod seq;
pub mod stream;

use crate::hub::Hub;
use kvgate_core::events::vllm::rank_endpoint;
use kvgate_core::workers::WorkerInfo;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use stream::ZmqSpec;
use tokio::task::JoinHandle;

/// The publishers of `w`, one per dp rank (none without `zmq_events`; a rank whose port
/// would not be a port is skipped with a warning).
pub fn specs_of(w: &WorkerInfo) -> Vec<ZmqSpec> {
    let Some(events) = &w.zmq_events else {
        return Vec::new();
    };
    let mut specs = Vec::new();
    for r in 0..w.dp_size.max(1) {
        let replay = w.zmq_replay.as_deref().map(|ep| rank_endpoint(ep, r));
        match (rank_endpoint(events, r), replay) {
            (Some(events), None) => specs.push(spec(w, events, None, r)),
            (Some(events), Some(Some(replay))) => specs.push(spec(w, events, Some(replay), r)),
            _ => tracing::warn!(
                worker_id = w.instance_id,
                rank_offset = r,
                "no ZMQ endpoint for this dp rank (want tcp://HOST:PORT with room for the rank)"
            ),
        }
    }
    specs
}

/// Keeps one stream task per worker publisher, forever.
pub async fn supervise(hub: Arc<Hub>, max_payload: usize) {
    let mut tasks: HashMap<(u64, u32), (ZmqSpec, JoinHandle<()>)> = HashMap::new();
    let mut seen_gen = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let (gen, workers) = {
            let st = hub.lock();
            let gen = st.workers_gen();
            if seen_gen == Some(gen) {
                continue;
            }
            (gen, st.workers())
        };
        seen_gen = Some(gen);
        let wanted: HashMap<(u64, u32), ZmqSpec> = workers
            .iter()
            .flat_map(specs_of)
            .map(|s| ((s.worker_id, s.dp_start_rank), s))
            .collect();
        tasks.retain(|id, (spec, handle)| {
            let keep = wanted.get(id) == Some(&*spec);
            if !keep {
                tracing::info!(
                    worker_id = id.0,
                    dp_rank = id.1,
                    "stopping vLLM event stream"
                );
                handle.abort();
            }
            keep
        });
        for (id, spec) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(id) {
                let handle = tokio::spawn(stream::run(hub.clone(), spec.clone(), max_payload));
                slot.insert((spec, handle));
            }
        }
    }
}

fn spec(w: &WorkerInfo, events: String, replay: Option<String>, offset: u32) -> ZmqSpec {
    ZmqSpec {
        worker_id: w.instance_id,
        events,
        replay,
        block_size: w.block_size,
        dp_start_rank: w.dp_start_rank.saturating_add(offset),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use kvgate_core::workers::WorkerRole;

    fn worker(dp_size: u32, dp_start_rank: u32) -> WorkerInfo {
        WorkerInfo {
            instance_id: 7,
            endpoint: "127.0.0.1:1".into(),
            model: "m".into(),
            role: WorkerRole::Aggregated,
            block_size: Some(16),
            dp_size,
            dp_start_rank,
            total_kv_blocks: None,
            max_num_seqs: None,
            max_num_batched_tokens: None,
            zmq_events: Some("tcp://127.0.0.1:5557".into()),
            zmq_replay: Some("tcp://127.0.0.1:6557".into()),
            lora_adapters: Vec::new(),
        }
    }

    #[test]
    fn every_dp_rank_is_followed_on_its_own_port() {
        let specs = specs_of(&worker(3, 4));
        let got: Vec<(&str, Option<&str>, u32)> = specs
            .iter()
            .map(|s| (s.events.as_str(), s.replay.as_deref(), s.dp_start_rank))
            .collect();
        assert_eq!(
            got,
            vec![
                ("tcp://127.0.0.1:5557", Some("tcp://127.0.0.1:6557"), 4),
                ("tcp://127.0.0.1:5558", Some("tcp://127.0.0.1:6558"), 5),
                ("tcp://127.0.0.1:5559", Some("tcp://127.0.0.1:6559"), 6),
            ]
        );
        let mut single = worker(1, 0);
        single.zmq_replay = None;
        assert_eq!(specs_of(&single).len(), 1);
        single.zmq_events = None;
        assert!(specs_of(&single).is_empty());
        let mut edge = worker(2, 0);
        edge.zmq_events = Some("tcp://h:65535".into());
        edge.zmq_replay = None;
        assert_eq!(specs_of(&edge).len(), 1, "rank 1 would be port 65536");
    }
}
