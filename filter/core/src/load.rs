//! Request bookkeeping: per (worker, dp rank) the queued prefill tokens and active decode
//! blocks of in-flight requests, and the lifecycle that moves a request from prefill to
//! decode and frees it. Dynamo's `ActiveSequences`, host-free and keyed by any id.
//!
//! ```text
//! add ──► prefilling (prefill tokens + blocks) ──first token──► decoding (blocks, growing
//!                                                               with output) ──free──► gone
//! ```
//! Every step is idempotent: freeing twice, or freeing a request never added, changes
//! nothing. Decode blocks are counted once per distinct block hash per worker (two
//! requests sharing a prefix on one worker share its blocks), as Dynamo does.

use crate::hash::blocks_for_load;
use crate::types::WorkerKey;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::hash::Hash;

/// Load of one (worker, dp rank) from in-flight requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Prompt tokens routed to the worker whose prefill has not finished.
    pub prefill_tokens: u64,
    /// Distinct KV blocks held by in-flight requests.
    pub decode_blocks: u64,
    /// In-flight requests.
    pub requests: u64,
}

impl WorkerLoad {
    /// Component-wise sum.
    pub fn plus(self, o: WorkerLoad) -> WorkerLoad {
        WorkerLoad {
            prefill_tokens: self.prefill_tokens.saturating_add(o.prefill_tokens),
            decode_blocks: self.decode_blocks.saturating_add(o.decode_blocks),
            requests: self.requests.saturating_add(o.requests),
        }
    }
}

/// A booked prefill that has not finished: its uncached prompt tokens and when it was
/// routed. A worker's queue of these is what the cost's prefill term decays over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPrefill {
    /// Prompt tokens to prefill (not cached on the worker).
    pub tokens: u64,
    /// When the request was routed, ms.
    pub since_ms: u64,
}

/// What a routing decision books, derived from the decision and the tracking settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPlan {
    /// The worker that decodes (and, aggregated, prefills).
    pub decode: WorkerKey,
    /// The prefill worker in disaggregated mode.
    pub prefill: Option<WorkerKey>,
    /// Prompt tokens to prefill that are not cached on the prefilling worker
    /// (`max(0, isl − overlap·block_size)`); 0 when prefill tracking is off.
    pub prefill_tokens: u64,
    /// Sequence hashes of the request's complete blocks held on the decode worker
    /// (empty when active-block tracking is off).
    pub blocks: Vec<u64>,
    /// Prompt length in tokens (for output-block growth).
    pub isl_tokens: u64,
    /// Tokens per block.
    pub block_size: u32,
    /// Whether output tokens grow the decode blocks.
    pub track_output: bool,
}

#[derive(Debug, Clone)]
struct Active {
    plan: RequestPlan,
    prefilling: bool,
    output_tokens: u64,
    output_blocks: u64,
    added_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct WorkerState {
    load: WorkerLoad,
    blocks: HashMap<u64, u32>,
    extra_blocks: u64,
}

/// The bookkeeping of one router (one VM, one sidecar, or one remote replica).
#[derive(Debug, Clone)]
pub struct LoadBook<K: Hash + Eq + Clone> {
    requests: HashMap<K, Active>,
    workers: HashMap<WorkerKey, WorkerState>,
}

impl<K: Hash + Eq + Clone> Default for LoadBook<K> {
    fn default() -> Self {
        Self {
            requests: HashMap::new(),
            workers: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone> LoadBook<K> {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Books a routed request. Returns false (and changes nothing) if `id` is active.
    pub fn add(&mut self, id: K, plan: RequestPlan, now_ms: u64) -> bool {
        if self.requests.contains_key(&id) {
            return false;
        }
        let prefill_at = plan.prefill.unwrap_or(plan.decode);
        let p = self.workers.entry(prefill_at).or_default();
        p.load.prefill_tokens = p.load.prefill_tokens.saturating_add(plan.prefill_tokens);
        let d = self.workers.entry(plan.decode).or_default();
        d.load.requests += 1;
        for &b in &plan.blocks {
            let n = d.blocks.entry(b).or_insert(0);
            if *n == 0 {
                d.load.decode_blocks += 1;
            }
            *n += 1;
        }
        self.requests.insert(
            id,
            Active {
                plan,
                prefilling: true,
                output_tokens: 0,
                output_blocks: 0,
                added_ms: now_ms,
            },
        );
        true
    }

    /// The unfinished prefill of `id` and the worker running it, if it is still
    /// prefilling.
    pub fn prefilling(&self, id: &K) -> Option<(WorkerKey, QueuedPrefill)> {
        let a = self.requests.get(id).filter(|a| a.prefilling)?;
        Some((
            a.plan.prefill.unwrap_or(a.plan.decode),
            QueuedPrefill {
                tokens: a.plan.prefill_tokens,
                since_ms: a.added_ms,
            },
        ))
    }

    /// The first response token arrived: the prefill is done. Returns whether it changed
    /// anything.
    pub fn prefill_done(&mut self, id: &K) -> bool {
        let Some(a) = self.requests.get_mut(id) else {
            return false;
        };
        if !a.prefilling {
            return false;
        }
        a.prefilling = false;
        let at = a.plan.prefill.unwrap_or(a.plan.decode);
        let tokens = a.plan.prefill_tokens;
        if let Some(w) = self.workers.get_mut(&at) {
            w.load.prefill_tokens = w.load.prefill_tokens.saturating_sub(tokens);
        }
        true
    }

    /// `n` more output tokens streamed. With output tracking, the decode blocks grow each
    /// time `ceil((isl + output) / block_size)` grows. Returns the blocks added.
    pub fn output_tokens(&mut self, id: &K, n: u64) -> u64 {
        self.prefill_done(id);
        let Some(a) = self.requests.get_mut(id) else {
            return 0;
        };
        if !a.plan.track_output || n == 0 {
            return 0;
        }
        let before = blocks_for_load(a.plan.isl_tokens + a.output_tokens, a.plan.block_size);
        a.output_tokens = a.output_tokens.saturating_add(n);
        let after = blocks_for_load(a.plan.isl_tokens + a.output_tokens, a.plan.block_size);
        let grown = after.saturating_sub(before);
        if grown > 0 {
            a.output_blocks += grown;
            if let Some(w) = self.workers.get_mut(&a.plan.decode) {
                w.extra_blocks += grown;
                w.load.decode_blocks += grown;
            }
        }
        grown
    }

    /// The request ended (completed, aborted or reset). Idempotent.
    pub fn free(&mut self, id: &K) -> bool {
        self.prefill_done(id);
        let Some(a) = self.requests.remove(id) else {
            return false;
        };
        let mut emptied = None;
        if let Some(w) = self.workers.get_mut(&a.plan.decode) {
            w.load.requests = w.load.requests.saturating_sub(1);
            for b in &a.plan.blocks {
                if let Some(n) = w.blocks.get_mut(b) {
                    *n -= 1;
                    if *n == 0 {
                        w.blocks.remove(b);
                        w.load.decode_blocks = w.load.decode_blocks.saturating_sub(1);
                    }
                }
            }
            w.extra_blocks = w.extra_blocks.saturating_sub(a.output_blocks);
            w.load.decode_blocks = w.load.decode_blocks.saturating_sub(a.output_blocks);
            if w.load == WorkerLoad::default() {
                emptied = Some(a.plan.decode);
            }
        }
        if let Some(k) = emptied {
            self.workers.remove(&k);
        }
        if let Some(p) = a.plan.prefill {
            if self
                .workers
                .get(&p)
                .is_some_and(|w| w.load == WorkerLoad::default())
            {
                self.workers.remove(&p);
            }
        }
        true
    }

    /// Frees requests booked more than `ttl_ms` before `now_ms`; returns their ids.
    pub fn expire(&mut self, now_ms: u64, ttl_ms: u64) -> Vec<K> {
        let old: Vec<K> = self
            .requests
            .iter()
            .filter(|(_, a)| now_ms.saturating_sub(a.added_ms) > ttl_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.free(k);
        }
        old
    }

    /// Load of `worker`.
    pub fn load(&self, worker: &WorkerKey) -> WorkerLoad {
        self.workers.get(worker).map(|w| w.load).unwrap_or_default()
    }

    /// The prefills booked on `worker` that have not finished, oldest first.
    pub fn queued_prefills(&self, worker: &WorkerKey) -> Vec<QueuedPrefill> {
        let mut q: Vec<QueuedPrefill> = self
            .requests
            .values()
            .filter(|a| a.prefilling && a.plan.prefill.unwrap_or(a.plan.decode) == *worker)
            .map(|a| QueuedPrefill {
                tokens: a.plan.prefill_tokens,
                since_ms: a.added_ms,
            })
            .collect();
        q.sort_by_key(|p| p.since_ms);
        q
    }

    /// Every unfinished prefill with the worker it runs on, oldest first.
    pub fn all_queued_prefills(&self) -> Vec<(WorkerKey, QueuedPrefill)> {
        let mut q: Vec<(WorkerKey, QueuedPrefill)> = self
            .requests
            .values()
            .filter(|a| a.prefilling && a.plan.prefill_tokens > 0)
            .map(|a| {
                (
                    a.plan.prefill.unwrap_or(a.plan.decode),
                    QueuedPrefill {
                        tokens: a.plan.prefill_tokens,
                        since_ms: a.added_ms,
                    },
                )
            })
            .collect();
        q.sort_by_key(|(_, p)| p.since_ms);
        q
    }

    /// How many of `blocks` are not yet held by in-flight requests on `worker`.
    pub fn new_blocks(&self, worker: &WorkerKey, blocks: &[u64]) -> u64 {
        match self.workers.get(worker) {
            None => blocks.len() as u64,
            Some(w) => blocks.iter().filter(|b| !w.blocks.contains_key(*b)).count() as u64,
        }
    }

    /// Loads of every worker with any.
    pub fn loads(&self) -> impl Iterator<Item = (WorkerKey, WorkerLoad)> + '_ {
        self.workers.iter().map(|(k, w)| (*k, w.load))
    }

    /// Whether `id` is in flight.
    pub fn contains(&self, id: &K) -> bool {
        self.requests.contains_key(id)
    }

    /// In-flight requests.
    pub fn len(&self) -> usize {
        self.requests.len()
    }

    /// Whether nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Forgets every request on `worker` (it left the fleet).
    pub fn remove_worker(&mut self, worker: &WorkerKey) {
        let ids: Vec<K> = self
            .requests
            .iter()
            .filter(|(_, a)| a.plan.decode == *worker || a.plan.prefill == Some(*worker))
            .map(|(k, _)| k.clone())
            .collect();
        for id in ids {
            self.free(&id);
        }
        self.workers.remove(worker);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn plan(w: u64, tokens: u64, blocks: &[u64]) -> RequestPlan {
        RequestPlan {
            decode: WorkerKey::new(w, 0),
            prefill: None,
            prefill_tokens: tokens,
            blocks: blocks.to_vec(),
            isl_tokens: blocks.len() as u64 * 4,
            block_size: 4,
            track_output: true,
        }
    }

    #[test]
    fn queued_prefills_are_the_unfinished_ones_oldest_first() {
        let w = WorkerKey::new(1, 0);
        let mut b: LoadBook<u32> = LoadBook::new();
        b.add(1, plan(1, 100, &[1]), 50);
        b.add(2, plan(1, 30, &[2]), 10);
        b.add(3, plan(2, 7, &[3]), 20);
        let q = b.queued_prefills(&w);
        assert_eq!(
            q,
            vec![
                QueuedPrefill {
                    tokens: 30,
                    since_ms: 10
                },
                QueuedPrefill {
                    tokens: 100,
                    since_ms: 50
                }
            ]
        );
        b.prefill_done(&2);
        assert_eq!(b.queued_prefills(&w).len(), 1);
        assert_eq!(b.all_queued_prefills().len(), 2);
        b.free(&1);
        assert!(b.queued_prefills(&w).is_empty());
    }

    #[test]
    fn lifecycle_and_idempotent_free() {
        let w = WorkerKey::new(1, 0);
        let mut b: LoadBook<u32> = LoadBook::new();
        assert!(b.add(1, plan(1, 100, &[10, 11]), 0));
        assert!(!b.add(1, plan(1, 100, &[10, 11]), 0));
        assert_eq!(
            b.load(&w),
            WorkerLoad {
                prefill_tokens: 100,
                decode_blocks: 2,
                requests: 1
            }
        );
        assert!(b.prefill_done(&1));
        assert!(!b.prefill_done(&1));
        assert_eq!(b.load(&w).prefill_tokens, 0);
        assert!(b.free(&1));
        assert!(!b.free(&1));
        assert!(!b.free(&99));
        assert_eq!(b.load(&w), WorkerLoad::default());
        assert!(b.is_empty());
    }

    #[test]
    fn shared_prefix_blocks_count_once() {
        let w = WorkerKey::new(1, 0);
        let mut b: LoadBook<u32> = LoadBook::new();
        b.add(1, plan(1, 0, &[10, 11]), 0);
        b.add(2, plan(1, 0, &[10, 12]), 0);
        assert_eq!(b.load(&w).decode_blocks, 3);
        assert_eq!(b.new_blocks(&w, &[10, 11, 13]), 1);
        b.free(&1);
        assert_eq!(b.load(&w).decode_blocks, 2);
        b.free(&2);
        assert_eq!(b.load(&w), WorkerLoad::default());
    }

    #[test]
    fn output_blocks_grow_on_block_boundaries_and_are_freed() {
        let w = WorkerKey::new(1, 0);
        let mut b: LoadBook<u32> = LoadBook::new();
        b.add(1, plan(1, 8, &[10, 11]), 0); // isl 8 tokens = 2 blocks of 4
        assert_eq!(b.output_tokens(&1, 1), 1); // 9 tokens → 3 blocks
        assert_eq!(b.output_tokens(&1, 3), 0); // 12 → 3
        assert_eq!(b.output_tokens(&1, 5), 2); // 17 → 5
        assert_eq!(b.load(&w).decode_blocks, 5);
        assert_eq!(
            b.load(&w).prefill_tokens,
            0,
            "first output token ends prefill"
        );
        b.free(&1);
        assert_eq!(b.load(&w), WorkerLoad::default());
    }

    #[test]
    fn disaggregated_prefill_tokens_go_to_the_prefill_worker() {
        let (p, d) = (WorkerKey::new(1, 0), WorkerKey::new(2, 0));
        let mut b: LoadBook<u32> = LoadBook::new();
        b.add(
            1,
            RequestPlan {
                prefill: Some(p),
                decode: d,
                ..plan(2, 50, &[7])
            },
            0,
        );
        assert_eq!(b.load(&p).prefill_tokens, 50);
        assert_eq!(
            b.load(&d),
            WorkerLoad {
                prefill_tokens: 0,
                decode_blocks: 1,
                requests: 1
            }
        );
        b.free(&1);
        assert_eq!(b.load(&p), WorkerLoad::default());
        assert_eq!(b.load(&d), WorkerLoad::default());
    }

    #[test]
    fn expiry_frees_stale_requests() {
        let mut b: LoadBook<u32> = LoadBook::new();
        b.add(1, plan(1, 5, &[1]), 0);
        b.add(2, plan(1, 5, &[2]), 1000);
        assert_eq!(b.expire(1500, 1000), vec![1]);
        assert_eq!(b.len(), 1);
    }
}
