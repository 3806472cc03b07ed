//! The continuous-batching scheduler of one data-parallel rank, in simulated time.
//!
//! Each call to [`Scheduler::step`] is one forward pass, planned like vLLM's v1
//! scheduler and timed by [`super::timing`]:
//! 1. running sequences first, in admission order: a decoding sequence takes one token
//!    of the `max_num_batched_tokens` budget (and a new block when it crosses a block
//!    boundary; if the pool is full the most recently admitted sequence is preempted and
//!    requeued at the front, to be recomputed later); a sequence in chunked prefill takes
//!    its next chunk;
//! 2. then waiting sequences, first come first served, while the budget, `max_num_seqs`
//!    and the KV pool allow: the leading cached blocks are a prefix hit (at least one
//!    prompt token is always computed, as in vLLM), blocks for the rest of the prompt are
//!    allocated (evicting LRU blocks if needed) and the first chunk is planned. The head
//!    of the queue blocks the rest (FIFO);
//! 3. the pass lasts `prefill_ms(uncached tokens) + decode_ms(usage)`; at its end every
//!    finished prefill and every decoding sequence emits one token, full blocks are
//!    committed to the prefix cache and finished sequences release their blocks.
//!
//! The scheduler never reads a clock: `step(now_ms)` returns the pass duration and the
//! tokens stamped with the pass's end time; the driver sleeps and delivers them. A request
//! is admitted only by a pass starting at or after its arrival.

use super::cache::{BlockCache, CacheFull};
use super::sequence::{Filler, NewRequest, Phase, SeqId, Sequence};
use super::timing::step_ms;
use kvgate_core::events::KvEventData;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Limits of one rank (roughly a small model on one GPU by default).
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Tokens per KV block.
    pub block_size: usize,
    /// KV pool size in blocks.
    pub num_gpu_blocks: usize,
    /// Maximum sequences running at once.
    pub max_num_seqs: usize,
    /// Token budget of one forward pass (chunked prefill splits longer prompts).
    pub max_num_batched_tokens: usize,
    /// Fraction of the pool kept free when admitting new sequences.
    pub watermark: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_gpu_blocks: 16_384,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            watermark: 0.01,
        }
    }
}

/// Why a request was refused outright.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The prompt (plus its output) can never fit in the KV pool.
    #[error("request needs {needed} KV blocks but the pool admits at most {limit}")]
    TooLong {
        /// Blocks the whole sequence needs.
        needed: usize,
        /// Blocks a sequence may use.
        limit: usize,
    },
    /// The prompt is empty.
    #[error("empty prompt")]
    EmptyPrompt,
    /// The id is already in use.
    #[error("duplicate request id {0}")]
    Duplicate(SeqId),
}

/// Facts about a sequence's first token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FirstToken {
    /// Prompt tokens found in the prefix cache at admission.
    pub hit_tokens: usize,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Simulated time from arrival to the first token, in milliseconds.
    pub sim_ttft_ms: f64,
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOut {
    /// The sequence.
    pub id: SeqId,
    /// Position in the output (0 = first token).
    pub index: usize,
    /// Token id.
    pub token: u32,
    /// The last token of the sequence.
    pub finished: bool,
    /// Set on the first token.
    pub first: Option<FirstToken>,
}

/// What one forward pass did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepResult {
    /// Simulated duration in milliseconds (0 when there was nothing to do).
    pub duration_ms: f64,
    /// Simulated end time.
    pub end_ms: f64,
    /// Uncached prompt tokens computed.
    pub prefill_tokens: u64,
    /// Sequences that decoded a token.
    pub decoded: usize,
    /// Tokens emitted at the end of the pass.
    pub outputs: Vec<TokenOut>,
    /// Cache changes, in order, to publish at the end of the pass.
    pub events: Vec<KvEventData>,
    /// For each of `events`, the token ids of its stored blocks (empty for others).
    pub event_tokens: Vec<Vec<u32>>,
    /// Sequences preempted during planning.
    pub preempted: Vec<SeqId>,
}

/// Counters of one rank, as `/kvgate/stats` reports them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RankStats {
    /// Data-parallel rank.
    pub dp_rank: u32,
    /// Requests accepted.
    pub requests: u64,
    /// Requests that generated all their tokens.
    pub completed: u64,
    /// Requests cancelled (client gone) before finishing.
    pub cancelled: u64,
    /// Requests refused (too long, empty).
    pub rejected: u64,
    /// Prompt tokens of admitted requests (first admission).
    pub prompt_tokens: u64,
    /// Prompt tokens served from the prefix cache (first admission).
    pub cached_hit_tokens: u64,
    /// Prompt tokens computed here, including recomputation after preemption.
    pub computed_prefill_tokens: u64,
    /// Prompt tokens whose KV came from a prefill worker.
    pub transferred_prefill_tokens: u64,
    /// Tokens generated.
    pub generated_tokens: u64,
    /// Preemptions (pool full while decoding).
    pub preemptions: u64,
    /// Forward passes run.
    pub steps: u64,
    /// Simulated milliseconds spent in passes.
    pub busy_ms: f64,
    /// Requests waiting for admission now.
    pub queue_depth: usize,
    /// Requests running now.
    pub running: usize,
}

/// The load a rank reports (Dynamo's `ActiveLoad`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LoadSnapshot {
    /// Blocks referenced by running requests.
    pub active_decode_blocks: u64,
    /// Prompt tokens still to compute (waiting + prefilling).
    pub active_prefill_tokens: u64,
    /// Blocks in use (cached or private).
    pub kv_used_blocks: u64,
}

#[derive(Debug, Clone, Copy)]
enum Work {
    Decode,
    Prefill { chunk: usize, free: bool },
}

/// The scheduler and KV pool of one rank.
#[derive(Debug, Clone)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    cache: BlockCache,
    filler: Arc<Filler>,
    seqs: HashMap<SeqId, Sequence>,
    waiting: VecDeque<SeqId>,
    running: Vec<SeqId>,
    stats: RankStats,
}

impl Scheduler {
    /// An idle rank `dp_rank` generating `filler` tokens.
    pub fn new(mut cfg: SchedulerConfig, dp_rank: u32, filler: Arc<Filler>) -> Self {
        cfg.block_size = cfg.block_size.max(1);
        cfg.max_num_seqs = cfg.max_num_seqs.max(1);
        cfg.max_num_batched_tokens = cfg.max_num_batched_tokens.max(1);
        let cache = BlockCache::new(cfg.num_gpu_blocks);
        Self {
            cfg,
            cache,
            filler,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            stats: RankStats {
                dp_rank,
                ..RankStats::default()
            },
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// The KV pool (read-only).
    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// Blocks a single sequence may use: the pool minus the watermark.
    pub fn block_limit(&self) -> usize {
        let keep =
            (self.cfg.watermark.clamp(0.0, 1.0) * self.cfg.num_gpu_blocks as f64).ceil() as usize;
        self.cfg.num_gpu_blocks.saturating_sub(keep)
    }

    /// Queues a request.
    pub fn submit(&mut self, req: NewRequest) -> Result<(), SubmitError> {
        let bs = self.cfg.block_size;
        let needed = (req.prompt.len() + req.max_tokens.max(1)).div_ceil(bs);
        let limit = self.block_limit();
        let err = if req.prompt.is_empty() {
            Some(SubmitError::EmptyPrompt)
        } else if needed > limit {
            Some(SubmitError::TooLong { needed, limit })
        } else if self.seqs.contains_key(&req.id) {
            Some(SubmitError::Duplicate(req.id))
        } else {
            None
        };
        if let Some(e) = err {
            self.stats.rejected += 1;
            return Err(e);
        }
        self.stats.requests += 1;
        let id = req.id;
        self.seqs.insert(id, Sequence::new(req));
        self.waiting.push_back(id);
        Ok(())
    }

    /// Drops a request (client gone); returns whether it was still queued or running.
    pub fn cancel(&mut self, id: SeqId) -> bool {
        let Some(seq) = self.seqs.remove(&id) else {
            return false;
        };
        self.cache.release(&seq.blocks);
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        self.stats.cancelled += 1;
        true
    }

    /// Whether a pass would do anything.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// When the next pass starts in simulated time, given that the previous one ended at
    /// `prev_end_ms`: right then while sequences are running (passes run back to back),
    /// else when the first waiting request arrived, if later.
    pub fn next_start_ms(&self, prev_end_ms: f64) -> f64 {
        if !self.running.is_empty() {
            return prev_end_ms;
        }
        let first = self
            .waiting
            .front()
            .and_then(|id| self.seqs.get(id))
            .map_or(prev_end_ms, |s| s.req.arrival_ms);
        prev_end_ms.max(first)
    }

    /// Clears the prefix cache (queues `Cleared`).
    pub fn clear_cache(&mut self) {
        self.cache.clear();
    }

    /// Takes cache events queued outside a pass (e.g. by [`Self::clear_cache`]).
    pub fn drain_events(&mut self) -> Vec<KvEventData> {
        self.cache.drain_events()
    }

    /// Like [`Self::drain_events`], with the token ids of stored blocks.
    pub fn drain_events_with_tokens(&mut self) -> Vec<(KvEventData, Vec<u32>)> {
        self.cache.drain_events_with_tokens()
    }

    /// Counters, with the current queue depth.
    pub fn stats(&self) -> RankStats {
        RankStats {
            queue_depth: self.waiting.len(),
            running: self.running.len(),
            ..self.stats.clone()
        }
    }

    /// Current load.
    pub fn load(&self) -> LoadSnapshot {
        let pending: usize = self
            .seqs
            .values()
            .map(Sequence::pending_prefill_tokens)
            .sum();
        LoadSnapshot {
            active_decode_blocks: self.cache.active_blocks() as u64,
            active_prefill_tokens: pending as u64,
            kv_used_blocks: self.cache.usage_counts().used_blocks as u64,
        }
    }

    /// Runs one forward pass starting at simulated time `now_ms`.
    pub fn step(&mut self, now_ms: f64) -> StepResult {
        let mut res = StepResult {
            end_ms: now_ms,
            ..StepResult::default()
        };
        let mut budget = self.cfg.max_num_batched_tokens;
        let mut plan: Vec<(SeqId, Work)> = Vec::new();
        self.plan_running(&mut budget, &mut plan, &mut res.preempted);
        self.plan_admissions(now_ms, &mut budget, &mut plan);
        if plan.is_empty() {
            (res.events, res.event_tokens) =
                self.cache.drain_events_with_tokens().into_iter().unzip();
            return res;
        }
        let uncached: usize = plan
            .iter()
            .map(|(_, w)| match w {
                Work::Prefill { chunk, free: false } => *chunk,
                _ => 0,
            })
            .sum();
        let decoders = plan
            .iter()
            .filter(|(_, w)| matches!(w, Work::Decode))
            .count();
        res.duration_ms = step_ms(uncached as u64, decoders, self.cache.usage());
        res.end_ms = now_ms + res.duration_ms;
        res.prefill_tokens = uncached as u64;
        res.decoded = decoders;
        for (id, work) in plan {
            self.apply(id, work, res.end_ms, &mut res.outputs);
        }
        self.stats.steps += 1;
        self.stats.busy_ms += res.duration_ms;
        (res.events, res.event_tokens) = self.cache.drain_events_with_tokens().into_iter().unzip();
        res
    }

    fn plan_running(
        &mut self,
        budget: &mut usize,
        plan: &mut Vec<(SeqId, Work)>,
        preempted: &mut Vec<SeqId>,
    ) {
        let bs = self.cfg.block_size;
        let mut i = 0;
        while let Some(&id) = self.running.get(i) {
            let Some(seq) = self.seqs.get_mut(&id) else {
                self.running.remove(i);
                continue;
            };
            match seq.phase {
                Phase::Decode => {
                    if *budget == 0 {
                        i += 1;
                        continue;
                    }
                    let needed = seq.tokens.len().div_ceil(bs);
                    let mut self_preempted = false;
                    while self.seqs.get(&id).is_some_and(|s| s.blocks.len() < needed) {
                        match self.cache.allocate(1) {
                            Ok(b) => {
                                if let Some(s) = self.seqs.get_mut(&id) {
                                    s.blocks.extend(b);
                                }
                            }
                            Err(CacheFull { .. }) => {
                                let Some(&victim) = self.running.last() else {
                                    break;
                                };
                                self.preempt(victim);
                                preempted.push(victim);
                                if victim == id {
                                    self_preempted = true;
                                    break;
                                }
                            }
                        }
                    }
                    if self_preempted {
                        continue;
                    }
                    *budget -= 1;
                    plan.push((id, Work::Decode));
                }
                Phase::Prefill => {
                    let chunk = seq.prefill_target.saturating_sub(seq.computed).min(*budget);
                    if chunk > 0 {
                        *budget -= chunk;
                        plan.push((id, Work::Prefill { chunk, free: false }));
                    }
                }
                Phase::Waiting => {}
            }
            i += 1;
        }
    }

    fn plan_admissions(&mut self, now_ms: f64, budget: &mut usize, plan: &mut Vec<(SeqId, Work)>) {
        let bs = self.cfg.block_size;
        let limit = self.block_limit();
        while *budget > 0 && self.running.len() < self.cfg.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let Some(seq) = self.seqs.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            // Not arrived yet in simulated time (the pass started before it was
            // received): the queue is in arrival order, so none behind it has either.
            if seq.req.arrival_ms > now_ms {
                break;
            }
            let target = seq.tokens.len();
            let hashes = seq.sequence_hashes(target / bs, bs);
            let max_hit = target.saturating_sub(1) / bs;
            let hit = self.cache.match_prefix(&hashes).min(max_hit);
            let need_new = target.div_ceil(bs).saturating_sub(hit);
            let hit_hashes = hashes.get(..hit).unwrap_or(&[]);
            let reclaimable = self
                .cache
                .available()
                .saturating_sub(self.cache.unreferenced_among(hit_hashes));
            let fits_watermark = self.cache.active_blocks() + need_new <= limit;
            if !fits_watermark || reclaimable < need_new {
                break;
            }
            self.waiting.pop_front();
            let mut blocks = self.cache.acquire_prefix(&hashes, hit);
            match self.cache.allocate(need_new) {
                Ok(b) => blocks.extend(b),
                Err(_) => {
                    // Unreachable after the check above; undo and stop admitting.
                    self.cache.release(&blocks);
                    self.waiting.push_front(id);
                    break;
                }
            }
            seq.blocks = blocks;
            seq.committed = hit;
            seq.computed = hit * bs;
            seq.prefill_target = target;
            seq.phase = Phase::Prefill;
            if seq.hit_tokens.is_none() {
                seq.hit_tokens = Some(hit * bs);
                self.stats.prompt_tokens += target as u64;
                self.stats.cached_hit_tokens += (hit * bs) as u64;
            }
            self.running.push(id);
            let rest = target - hit * bs;
            if seq.req.prefilled {
                self.stats.transferred_prefill_tokens += rest as u64;
                plan.push((
                    id,
                    Work::Prefill {
                        chunk: rest,
                        free: true,
                    },
                ));
            } else {
                let chunk = rest.min(*budget);
                *budget -= chunk;
                plan.push((id, Work::Prefill { chunk, free: false }));
            }
        }
    }

    fn apply(&mut self, id: SeqId, work: Work, end_ms: f64, out: &mut Vec<TokenOut>) {
        let bs = self.cfg.block_size;
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        let sample = match work {
            Work::Decode => {
                seq.computed += 1;
                true
            }
            Work::Prefill { chunk, free } => {
                seq.computed += chunk;
                if !free {
                    self.stats.computed_prefill_tokens += chunk as u64;
                }
                seq.computed >= seq.prefill_target
            }
        };
        // Commit the blocks that are now full and computed.
        let full = (seq.computed / bs).min(seq.blocks.len());
        if full > seq.committed {
            let hashes = seq.block_hashes(full, bs).to_vec();
            let from = seq.committed;
            let parent = from
                .checked_sub(1)
                .and_then(|p| hashes.get(p))
                .map(|h| h.sequence);
            let pairs: Vec<_> = seq
                .blocks
                .get(from..full)
                .unwrap_or(&[])
                .iter()
                .copied()
                .zip(hashes.get(from..).unwrap_or(&[]).iter().copied())
                .collect();
            let tokens = seq.tokens.get(from * bs..full * bs).unwrap_or(&[]);
            let ids = self.cache.commit(parent, &pairs, tokens);
            for (slot, new_id) in seq.blocks.iter_mut().skip(from).zip(ids) {
                *slot = new_id;
            }
            seq.committed = full;
        }
        if !sample {
            return;
        }
        seq.phase = Phase::Decode;
        seq.req.prefilled = false;
        let (token, _) = self.filler.piece(seq.generated);
        seq.tokens.push(token);
        let index = seq.generated;
        seq.generated += 1;
        self.stats.generated_tokens += 1;
        let first = if seq.first_token_ms.is_none() {
            seq.first_token_ms = Some(end_ms);
            Some(FirstToken {
                hit_tokens: seq.hit_tokens.unwrap_or(0),
                prompt_tokens: seq.req.prompt.len(),
                sim_ttft_ms: end_ms - seq.req.arrival_ms,
            })
        } else {
            None
        };
        let finished = seq.is_finished();
        out.push(TokenOut {
            id,
            index,
            token,
            finished,
            first,
        });
        if finished {
            if let Some(seq) = self.seqs.remove(&id) {
                self.cache.release(&seq.blocks);
            }
            self.running.retain(|&r| r != id);
            self.stats.completed += 1;
        }
    }

    fn preempt(&mut self, id: SeqId) {
        let Some(seq) = self.seqs.get_mut(&id) else {
            return;
        };
        self.cache.release(&seq.blocks);
        seq.blocks.clear();
        seq.computed = 0;
        seq.committed = 0;
        seq.prefill_target = 0;
        seq.phase = Phase::Waiting;
        seq.req.prefilled = false;
        self.running.retain(|&r| r != id);
        self.waiting.push_front(id);
        self.stats.preemptions += 1;
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
