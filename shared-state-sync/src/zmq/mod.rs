//! vLLM native KV events over ZMQ: one [`stream`] task per worker whose `WorkerInfo`
//! names a `zmq_events` endpoint, started, restarted and stopped as the worker table
//! changes (checked twice a second).

pub mod seq;
pub mod stream;

use crate::hub::Hub;
use kvgate_core::workers::WorkerInfo;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use stream::ZmqSpec;
use tokio::task::JoinHandle;

/// The publisher of `w`, if it has one.
pub fn spec_of(w: &WorkerInfo) -> Option<ZmqSpec> {
    Some(ZmqSpec {
        worker_id: w.instance_id,
        events: w.zmq_events.clone()?,
        replay: w.zmq_replay.clone(),
        block_size: w.block_size,
        dp_start_rank: w.dp_start_rank,
    })
}

/// Keeps one stream task per worker publisher, forever.
pub async fn supervise(hub: Arc<Hub>, max_payload: usize) {
    let mut tasks: HashMap<u64, (ZmqSpec, JoinHandle<()>)> = HashMap::new();
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
        let wanted: HashMap<u64, ZmqSpec> = workers
            .iter()
            .filter_map(spec_of)
            .map(|s| (s.worker_id, s))
            .collect();
        tasks.retain(|id, (spec, handle)| {
            let keep = wanted.get(id) == Some(&*spec);
            if !keep {
                tracing::info!(worker_id = id, "stopping vLLM event stream");
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
