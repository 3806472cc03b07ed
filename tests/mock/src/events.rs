//! Event publication seam: the [`EventSink`] trait the engine publishes KV events and
//! load reports through, the per-rank [`EventStamper`] that numbers events (ids start at
//! 1 and increase by one) and injects faults for the fault tests, and in-memory sinks.
//!
//! The engine logic only knows this trait, so it is tested without NATS or ZMQ; the
//! real transports live in [`super::nats`] and [`super::zmq`].

use super::scheduler::LoadSnapshot;
use kvgate_core::events::{KvEvent, KvEventData, StorageTier};
use kvgate_core::WorkerKey;
use serde::Serialize;
use std::sync::{Arc, Mutex, PoisonError};

/// Where the engine's KV events and load reports go. Calls happen in event-id order per
/// rank and must not block (queue and send from a task).
pub trait EventSink: Send + Sync {
    /// Publishes one numbered KV event; `tokens` are the token ids of its stored blocks,
    /// concatenated (vLLM's `BlockStored` carries them), empty for other events.
    fn publish_kv(&self, event: &KvEvent, tokens: &[u32]);
    /// Publishes the load of one (worker, dp rank).
    fn publish_load(&self, _worker: WorkerKey, _load: &LoadSnapshot) {}
}

/// Discards everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl EventSink for NullSink {
    fn publish_kv(&self, _event: &KvEvent, _tokens: &[u32]) {}
}

/// Sends everything to several sinks, in order.
#[derive(Clone, Default)]
pub struct FanoutSink(pub Vec<Arc<dyn EventSink>>);

impl EventSink for FanoutSink {
    fn publish_kv(&self, event: &KvEvent, tokens: &[u32]) {
        for s in &self.0 {
            s.publish_kv(event, tokens);
        }
    }

    fn publish_load(&self, worker: WorkerKey, load: &LoadSnapshot) {
        for s in &self.0 {
            s.publish_load(worker, load);
        }
    }
}

/// Keeps everything in memory (tests and introspection).
#[derive(Debug, Default)]
pub struct RecordingSink {
    kv: Mutex<Vec<(KvEvent, Vec<u32>)>>,
    loads: Mutex<Vec<(WorkerKey, LoadSnapshot)>>,
}

impl RecordingSink {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every KV event published so far.
    pub fn kv_events(&self) -> Vec<KvEvent> {
        self.kv_events_with_tokens()
            .into_iter()
            .map(|(e, _)| e)
            .collect()
    }

    /// Every KV event published so far, with the token ids of its stored blocks.
    pub fn kv_events_with_tokens(&self) -> Vec<(KvEvent, Vec<u32>)> {
        self.kv
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Every load report published so far.
    pub fn loads(&self) -> Vec<(WorkerKey, LoadSnapshot)> {
        self.loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl EventSink for RecordingSink {
    fn publish_kv(&self, event: &KvEvent, tokens: &[u32]) {
        self.kv
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((event.clone(), tokens.to_vec()));
    }

    fn publish_load(&self, worker: WorkerKey, load: &LoadSnapshot) {
        self.loads
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((worker, *load));
    }
}

/// Faults to inject into the event stream (for the router's gap/duplicate handling).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Drop the event whose id is a multiple of this (the id is used up: a gap).
    pub gap_every: Option<u64>,
    /// Publish the event whose id is a multiple of this twice.
    pub dup_every: Option<u64>,
}

impl Faults {
    fn hits(every: Option<u64>, id: u64) -> bool {
        every.is_some_and(|n| id.checked_rem(n) == Some(0))
    }
}

/// Counters of one stamper.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EventCounters {
    /// The last event id assigned (0 = none yet).
    pub last_event_id: u64,
    /// Events handed to the sink (duplicates count twice).
    pub published: u64,
    /// Events dropped by fault injection.
    pub dropped: u64,
    /// Extra copies sent by fault injection.
    pub duplicated: u64,
}

/// Numbers the cache changes of one (worker, dp rank) and hands them to the sink.
pub struct EventStamper {
    worker: WorkerKey,
    next_id: u64,
    faults: Faults,
    sink: Arc<dyn EventSink>,
    counters: EventCounters,
}

impl EventStamper {
    /// A stamper whose first event id is `first_id` (1 unless testing otherwise).
    pub fn new(worker: WorkerKey, first_id: u64, faults: Faults, sink: Arc<dyn EventSink>) -> Self {
        Self {
            worker,
            next_id: first_id,
            faults,
            sink,
            counters: EventCounters::default(),
        }
    }

    /// The (worker, dp rank) this stamper publishes for.
    pub fn worker(&self) -> WorkerKey {
        self.worker
    }

    /// Numbers and publishes one change (subject to fault injection).
    pub fn emit(&mut self, data: KvEventData, tokens: &[u32]) {
        let id = self.next_id;
        self.next_id += 1;
        self.counters.last_event_id = id;
        if Faults::hits(self.faults.gap_every, id) {
            self.counters.dropped += 1;
            return;
        }
        let event = KvEvent {
            worker: self.worker,
            event_id: id,
            tier: StorageTier::Device,
            data,
        };
        self.sink.publish_kv(&event, tokens);
        self.counters.published += 1;
        if Faults::hits(self.faults.dup_every, id) {
            self.sink.publish_kv(&event, tokens);
            self.counters.published += 1;
            self.counters.duplicated += 1;
        }
    }

    /// Publishes a batch of changes (with their stored tokens) in order.
    pub fn emit_all(&mut self, data: impl IntoIterator<Item = (KvEventData, Vec<u32>)>) {
        for (d, tokens) in data {
            self.emit(d, &tokens);
        }
    }

    /// Publishes a load report.
    pub fn load(&self, load: &LoadSnapshot) {
        self.sink.publish_load(self.worker, load);
    }

    /// Counters so far.
    pub fn counters(&self) -> EventCounters {
        self.counters
    }
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

    fn stored(h: u64) -> KvEventData {
        KvEventData::Stored {
            parent: None,
            blocks: vec![kvgate_core::events::StoredBlock {
                external: h,
                tokens_hash: h,
            }],
        }
    }

    #[test]
    fn ids_start_at_one_and_increase() {
        let rec = Arc::new(RecordingSink::new());
        let mut s = EventStamper::new(WorkerKey::new(7, 2), 1, Faults::default(), rec.clone());
        s.emit_all([
            (stored(1), vec![5, 6]),
            (KvEventData::Removed { blocks: vec![1] }, vec![]),
            (KvEventData::Cleared, vec![]),
        ]);
        assert_eq!(rec.kv_events_with_tokens()[0].1, vec![5, 6]);
        let ev = rec.kv_events();
        assert_eq!(
            ev.iter().map(|e| e.event_id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(ev
            .iter()
            .all(|e| e.worker == WorkerKey::new(7, 2) && e.tier == StorageTier::Device));
        assert_eq!(s.counters().last_event_id, 3);
    }

    #[test]
    fn faults_drop_and_duplicate_by_id() {
        let rec = Arc::new(RecordingSink::new());
        let faults = Faults {
            gap_every: Some(3),
            dup_every: Some(4),
        };
        let mut s = EventStamper::new(WorkerKey::new(1, 0), 1, faults, rec.clone());
        s.emit_all((1..=8).map(|h| (stored(h), Vec::new())));
        let ids: Vec<u64> = rec.kv_events().iter().map(|e| e.event_id).collect();
        assert_eq!(ids, vec![1, 2, 4, 4, 5, 7, 8, 8]);
        let c = s.counters();
        assert_eq!(
            (c.dropped, c.duplicated, c.published, c.last_event_id),
            (2, 2, 8, 8)
        );
    }

    #[test]
    fn fanout_and_loads_reach_every_sink() {
        let a = Arc::new(RecordingSink::new());
        let b = Arc::new(RecordingSink::new());
        let fan: Arc<dyn EventSink> =
            Arc::new(FanoutSink(vec![a.clone(), b.clone(), Arc::new(NullSink)]));
        let mut s = EventStamper::new(WorkerKey::new(1, 0), 1, Faults::default(), fan);
        s.emit(KvEventData::Cleared, &[]);
        s.load(&LoadSnapshot {
            active_decode_blocks: 3,
            ..LoadSnapshot::default()
        });
        assert_eq!(a.kv_events().len(), 1);
        assert_eq!(b.loads().len(), 1);
    }
}
