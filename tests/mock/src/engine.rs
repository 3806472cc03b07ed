//! The async driver: one tokio task per data-parallel rank runs the scheduler's forward
//! passes in (scaled) real time, publishes each pass's KV events at its end, delivers the
//! generated tokens to the waiting requests, and reports load periodically.
//!
//! A pass is planned at its start and takes effect at its end: the task sleeps
//! `duration / speedup`, then publishes the events and tokens. Cache clears are queued
//! and run between passes, so `Cleared` is never overtaken by an older pass's events.

use super::cache::{CacheUsage, CachedBlockInfo};
use super::events::{EventCounters, EventSink, EventStamper, Faults};
use super::scheduler::{
    FirstToken, LoadSnapshot, RankStats, Scheduler, SchedulerConfig, SubmitError, TokenOut,
};
use super::sequence::{Filler, NewRequest, SeqId};
use super::timing::{Clock, WallClock};
use kvgate_core::events::{KvEvent, KvEventData, StorageTier, StoredBlock};
use kvgate_core::{DpRank, WorkerId, WorkerKey};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

/// Engine-wide settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// Limits of each rank.
    pub scheduler: SchedulerConfig,
    /// Number of data-parallel ranks.
    pub dp_size: u32,
    /// Instance id (events' `worker_id`).
    pub worker_id: WorkerId,
    /// Id of each rank's first KV event.
    pub first_event_id: u64,
    /// Event fault injection.
    pub faults: Faults,
    /// Time scale.
    pub speedup: f64,
    /// Wall interval of load reports.
    pub metrics_interval: Duration,
    /// Generated tokens.
    pub filler: Arc<Filler>,
}

/// What a request asks of a rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Submission {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate.
    pub max_tokens: usize,
    /// Block hash seed (`kvgate_core::hash::block_seed`).
    pub hash_seed: u64,
    /// KV already computed by a prefill worker.
    pub prefilled: bool,
}

/// Why the engine refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The dp rank does not exist.
    #[error("dp rank {rank} out of range (dp size {size})")]
    NoSuchRank {
        /// Requested rank.
        rank: DpRank,
        /// Number of ranks.
        size: u32,
    },
    /// The scheduler refused the request.
    #[error(transparent)]
    Submit(#[from] SubmitError),
    /// The engine stopped before the request finished.
    #[error("engine stopped")]
    Stopped,
}

struct RankState {
    sched: Scheduler,
    stamper: EventStamper,
    streams: HashMap<SeqId, mpsc::UnboundedSender<TokenOut>>,
    clears: Vec<oneshot::Sender<()>>,
}

struct Rank {
    dp_rank: DpRank,
    state: Mutex<RankState>,
    wake: Notify,
}

impl Rank {
    fn lock(&self) -> MutexGuard<'_, RankState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running mock engine (all ranks).
pub struct Engine {
    ranks: Vec<Arc<Rank>>,
    next_id: AtomicU64,
    clock: Arc<WallClock>,
    tasks: Vec<JoinHandle<()>>,
    worker_id: WorkerId,
}

/// A request in flight: tokens arrive on [`Self::next`]; dropping it cancels the request.
pub struct RequestHandle {
    id: SeqId,
    rank: Arc<Rank>,
    rx: mpsc::UnboundedReceiver<TokenOut>,
}

impl RequestHandle {
    /// The next generated token (None once the last one was delivered or the engine stopped).
    pub async fn next(&mut self) -> Option<TokenOut> {
        self.rx.recv().await
    }

    /// The dp rank serving the request.
    pub fn dp_rank(&self) -> DpRank {
        self.rank.dp_rank
    }
}

impl Drop for RequestHandle {
    fn drop(&mut self) {
        let mut st = self.rank.lock();
        st.streams.remove(&self.id);
        st.sched.cancel(self.id);
    }
}

/// One rank's cache for `/kvgate/cache`.
#[derive(Debug, Clone, Serialize)]
pub struct RankCache {
    /// Data-parallel rank.
    pub dp_rank: DpRank,
    /// Block counts.
    #[serde(flatten)]
    pub usage: CacheUsage,
    /// Cached sequence hashes, ascending.
    pub blocks: Vec<u64>,
    /// Cached blocks with parent and reference count (only when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Vec<CachedBlockInfo>>,
}

/// One rank's counters for `/kvgate/stats`.
#[derive(Debug, Clone, Serialize)]
pub struct RankReport {
    /// Scheduler counters.
    #[serde(flatten)]
    pub stats: RankStats,
    /// Current load.
    pub load: LoadSnapshot,
    /// KV event counters.
    pub events: EventCounters,
}

impl Engine {
    /// Starts the rank tasks on the current tokio runtime.
    pub fn start(cfg: EngineConfig, sink: Arc<dyn EventSink>) -> Arc<Self> {
        let clock = Arc::new(WallClock::new(cfg.speedup));
        let mut ranks = Vec::new();
        let mut tasks = Vec::new();
        for r in 0..cfg.dp_size.max(1) {
            let key = WorkerKey::new(cfg.worker_id, r);
            let rank = Arc::new(Rank {
                dp_rank: r,
                state: Mutex::new(RankState {
                    sched: Scheduler::new(cfg.scheduler.clone(), r, cfg.filler.clone()),
                    stamper: EventStamper::new(key, cfg.first_event_id, cfg.faults, sink.clone()),
                    streams: HashMap::new(),
                    clears: Vec::new(),
                }),
                wake: Notify::new(),
            });
            tasks.push(tokio::spawn(drive(rank.clone(), clock.clone())));
            tasks.push(tokio::spawn(report_load(
                rank.clone(),
                cfg.metrics_interval,
            )));
            ranks.push(rank);
        }
        Arc::new(Self {
            ranks,
            next_id: AtomicU64::new(1),
            clock,
            tasks,
            worker_id: cfg.worker_id,
        })
    }

    /// The instance id.
    pub fn worker_id(&self) -> WorkerId {
        self.worker_id
    }

    /// Number of ranks.
    pub fn dp_size(&self) -> u32 {
        self.ranks.len() as u32
    }

    /// The simulated clock.
    pub fn clock(&self) -> &WallClock {
        &self.clock
    }

    fn rank(&self, dp_rank: DpRank) -> Result<&Arc<Rank>, EngineError> {
        self.ranks
            .get(dp_rank as usize)
            .ok_or(EngineError::NoSuchRank {
                rank: dp_rank,
                size: self.dp_size(),
            })
    }

    /// Queues a request on `dp_rank`.
    pub fn submit(&self, dp_rank: DpRank, s: Submission) -> Result<RequestHandle, EngineError> {
        let rank = self.rank(dp_rank)?.clone();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        {
            let mut st = rank.lock();
            st.sched.submit(NewRequest {
                id,
                prompt: s.prompt,
                max_tokens: s.max_tokens.max(1),
                hash_seed: s.hash_seed,
                prefilled: s.prefilled,
                arrival_ms: self.clock.now_ms(),
            })?;
            st.streams.insert(id, tx);
        }
        rank.wake.notify_one();
        Ok(RequestHandle { id, rank, rx })
    }

    /// Runs a prefill only (one token) and returns its first-token facts.
    pub async fn prefill(
        &self,
        dp_rank: DpRank,
        prompt: Vec<u32>,
        hash_seed: u64,
    ) -> Result<FirstToken, EngineError> {
        let mut h = self.submit(
            dp_rank,
            Submission {
                prompt,
                max_tokens: 1,
                hash_seed,
                prefilled: false,
            },
        )?;
        while let Some(t) = h.next().await {
            if let Some(first) = t.first {
                return Ok(first);
            }
        }
        Err(EngineError::Stopped)
    }

    /// Clears every rank's prefix cache (publishing `Cleared`), between passes.
    pub async fn clear(&self) {
        let mut waits = Vec::new();
        for rank in &self.ranks {
            let (tx, rx) = oneshot::channel();
            rank.lock().clears.push(tx);
            rank.wake.notify_one();
            waits.push(rx);
        }
        for w in waits {
            let _ = w.await;
        }
    }

    /// Every rank's cache contents.
    pub fn cache(&self, detail: bool) -> Vec<RankCache> {
        self.ranks
            .iter()
            .map(|r| {
                let st = r.lock();
                let c = st.sched.cache();
                RankCache {
                    dp_rank: r.dp_rank,
                    usage: c.usage_counts(),
                    blocks: c.cached_hashes(),
                    detail: detail.then(|| c.cached_blocks()),
                }
            })
            .collect()
    }

    /// A dump of `dp_rank`'s cache as KV events (one `Stored` per block, parents first,
    /// synthetic ids from 0) and the last event id published so far, taken together under
    /// the rank's lock: the answer to a router's worker KV query.
    pub fn kv_dump(&self, dp_rank: DpRank) -> Result<(Vec<KvEvent>, u64), EngineError> {
        let rank = self.rank(dp_rank)?;
        let st = rank.lock();
        let key = st.stamper.worker();
        let last = st.stamper.counters().last_event_id;
        let blocks = st.sched.cache().cached_blocks();
        drop(st);
        let parent_of: HashMap<u64, Option<u64>> =
            blocks.iter().map(|b| (b.sequence_hash, b.parent)).collect();
        let depth = |mut h: u64| {
            let mut d = 0usize;
            while let Some(Some(p)) = parent_of.get(&h) {
                h = *p;
                d += 1;
                if d > parent_of.len() {
                    break;
                }
            }
            d
        };
        let mut ordered: Vec<(usize, &CachedBlockInfo)> =
            blocks.iter().map(|b| (depth(b.sequence_hash), b)).collect();
        ordered.sort_by_key(|(d, b)| (*d, b.sequence_hash));
        let events = ordered
            .into_iter()
            .enumerate()
            .map(|(i, (_, b))| KvEvent {
                worker: key,
                event_id: i as u64,
                tier: StorageTier::Device,
                data: KvEventData::Stored {
                    parent: b.parent,
                    blocks: vec![StoredBlock {
                        external: b.sequence_hash,
                        tokens_hash: b.tokens_hash,
                    }],
                },
            })
            .collect();
        Ok((events, last))
    }

    /// Every rank's counters.
    pub fn stats(&self) -> Vec<RankReport> {
        self.ranks
            .iter()
            .map(|r| {
                let st = r.lock();
                RankReport {
                    stats: st.sched.stats(),
                    load: st.sched.load(),
                    events: st.stamper.counters(),
                }
            })
            .collect()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The pass loop of one rank. Passes run back to back in simulated time: the next one
/// starts where the last ended (or when a request arrives at an idle rank), and the task
/// sleeps until that end on the wall clock. Planning each pass at "now" instead would add
/// this task's wake-up latency — multiplied by the speedup — to every pass, and queueing
/// would grow with the machine's load rather than with the model's.
async fn drive(rank: Arc<Rank>, clock: Arc<WallClock>) {
    let mut end_ms = 0.0f64;
    loop {
        let planned = {
            let mut st = rank.lock();
            run_clears(&mut st);
            st.sched.has_work().then(|| {
                // Never start in the future (arrivals are stamped with the wall clock).
                let start = st.sched.next_start_ms(end_ms).min(clock.now_ms());
                st.sched.step(start)
            })
        };
        let Some(result) = planned else {
            rank.wake.notified().await;
            continue;
        };
        if result.duration_ms > 0.0 {
            end_ms = result.end_ms;
            let at = tokio::time::Instant::from_std(clock.instant_at(end_ms));
            tokio::time::sleep_until(at).await;
        } else {
            // Nothing could run (a request not arrived yet in simulated time, or the pool
            // full): look again from now.
            end_ms = end_ms.max(clock.now_ms());
            tokio::task::yield_now().await;
        }
        let mut st = rank.lock();
        st.stamper
            .emit_all(result.events.into_iter().zip(result.event_tokens));
        for out in result.outputs {
            let id = out.id;
            let finished = out.finished;
            let delivered = st.streams.get(&id).is_some_and(|tx| tx.send(out).is_ok());
            if !delivered {
                st.streams.remove(&id);
                st.sched.cancel(id);
            } else if finished {
                st.streams.remove(&id);
            }
        }
        // Cancellations during the pass only released blocks: no events to flush.
        let late = st.sched.drain_events_with_tokens();
        st.stamper.emit_all(late);
    }
}

fn run_clears(st: &mut RankState) {
    if st.clears.is_empty() {
        return;
    }
    st.sched.clear_cache();
    let ev = st.sched.drain_events_with_tokens();
    st.stamper.emit_all(ev);
    for c in st.clears.drain(..) {
        let _ = c.send(());
    }
}

/// Periodic load reports: on change, and at least every 10 intervals.
async fn report_load(rank: Arc<Rank>, interval: Duration) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<LoadSnapshot> = None;
    let mut quiet = 0u32;
    loop {
        tick.tick().await;
        let st = rank.lock();
        let load = st.sched.load();
        if last != Some(load) || quiet >= 9 {
            st.stamper.load(&load);
            last = Some(load);
            quiet = 0;
        } else {
            quiet += 1;
        }
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
    use crate::events::RecordingSink;
    use crate::tokenize::{build_filler, WordTokenizer};
    use kvgate_core::events::KvEventData;

    fn engine(sink: Arc<RecordingSink>, dp: u32) -> Arc<Engine> {
        let cfg = EngineConfig {
            scheduler: SchedulerConfig {
                num_gpu_blocks: 64,
                ..SchedulerConfig::default()
            },
            dp_size: dp,
            worker_id: 42,
            first_event_id: 1,
            faults: Faults::default(),
            speedup: 1000.0,
            metrics_interval: Duration::from_millis(5),
            filler: Arc::new(build_filler(&WordTokenizer)),
        };
        Engine::start(cfg, sink)
    }

    fn sub(prompt: Vec<u32>, max_tokens: usize) -> Submission {
        Submission {
            prompt,
            max_tokens,
            hash_seed: kvgate_core::hash::XXH3_SEED,
            prefilled: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn streams_tokens_and_publishes_events_per_rank() {
        let sink = Arc::new(RecordingSink::new());
        let e = engine(sink.clone(), 2);
        let mut h = e.submit(1, sub((0..40).collect(), 3)).unwrap();
        let mut idx = Vec::new();
        while let Some(t) = h.next().await {
            idx.push(t.index);
        }
        assert_eq!(idx, vec![0, 1, 2]);
        let ev = sink.kv_events();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].worker, WorkerKey::new(42, 1));
        assert_eq!(ev[0].event_id, 1);
        let with_tokens = sink.kv_events_with_tokens();
        assert_eq!(
            with_tokens[0].1,
            (0..32).collect::<Vec<u32>>(),
            "stored blocks carry their tokens"
        );
        assert_eq!(e.cache(false)[1].blocks.len(), 2);
        assert!(e.cache(false)[0].blocks.is_empty());
        assert!(matches!(
            e.submit(2, sub(vec![1], 1)),
            Err(EngineError::NoSuchRank { rank: 2, size: 2 })
        ));
        e.clear().await;
        let ev = sink.kv_events();
        assert_eq!(
            ev.iter().filter(|e| e.data == KvEventData::Cleared).count(),
            2
        );
        assert!(e.cache(false).iter().all(|r| r.blocks.is_empty()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_a_handle_cancels_and_frees_blocks() {
        let sink = Arc::new(RecordingSink::new());
        let e = engine(sink, 1);
        let mut h = e.submit(0, sub((0..40).collect(), 500)).unwrap();
        let first = h.next().await.unwrap();
        assert_eq!(first.first.map(|f| f.prompt_tokens), Some(40));
        drop(h);
        let st = &e.stats()[0];
        assert_eq!(st.stats.cancelled, 1);
        assert_eq!(st.load.active_decode_blocks, 0);
        let f = e
            .prefill(0, (0..40).collect(), kvgate_core::hash::XXH3_SEED)
            .await
            .unwrap();
        assert_eq!(f.hit_tokens, 32);
    }
}
