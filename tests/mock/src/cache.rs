//! The paged prefix cache of one data-parallel rank: physical blocks, reference counts,
//! LRU eviction and the KV events that describe every change to the set of cached blocks.
//!
//! It follows vLLM's block manager:
//! * a request holds physical blocks ([`BlockId`]); a block is *private* while its
//!   tokens are incomplete or uncomputed and becomes *cached* when it is full and
//!   computed ([`BlockCache::commit`]), identified by its chained sequence hash;
//! * a cached block with no reference stays cached (a future prefix hit) on an LRU list;
//!   a request's blocks are released tail first, so the deepest blocks are evicted first
//!   and a parent is never evicted before its child;
//! * allocation evicts unreferenced cached blocks, least recently used first, when the
//!   pool is full;
//! * if a committed block's hash is already cached (two requests computed the same
//!   prefix concurrently) the request switches to the cached copy and its own block is
//!   freed: the hash is stored, and published, once.
//!
//! Events (`KvEventData`) are queued exactly when the set of cached hashes changes:
//! `Stored` when hashes first appear (one event per contiguous run, parent-linked),
//! `Removed` when they are evicted, `Cleared` on [`BlockCache::clear`]. Private blocks
//! never produce events.

use kvgate_core::events::{KvEventData, StoredBlock};
use serde::Serialize;
use std::collections::BTreeMap;
use std::collections::HashMap;

/// A physical block in one rank's pool.
pub type BlockId = u64;

/// The hashes of a full block: its chained sequence hash (the engine's external id)
/// and the local hash of its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockHash {
    /// Chained sequence hash (`kvgate_core::hash::sequence_hashes`).
    pub sequence: u64,
    /// Local block hash (`tokens_hash`).
    pub local: u64,
}

#[derive(Debug, Clone)]
struct Block {
    /// Set while the block is in the prefix cache.
    hash: Option<CachedHash>,
    refs: u32,
    /// Position on the LRU list while cached and unreferenced.
    lru_tick: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct CachedHash {
    hash: BlockHash,
    parent: Option<u64>,
}

/// A contiguous run of newly stored blocks (one `Stored` event).
#[derive(Debug, Default)]
struct Run {
    blocks: Vec<StoredBlock>,
    tokens: Vec<u32>,
}

/// The pool is too small for an allocation (after evicting every unreferenced block).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("KV cache full: {needed} blocks needed, {available} can be made free")]
pub struct CacheFull {
    /// Blocks requested.
    pub needed: usize,
    /// Blocks free or evictable.
    pub available: usize,
}

/// One cached block as the introspection endpoint reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CachedBlockInfo {
    /// Chained sequence hash (also the external hash in KV events).
    pub sequence_hash: u64,
    /// Local block hash (`tokens_hash`).
    pub tokens_hash: u64,
    /// Sequence hash of the previous block, if any.
    pub parent: Option<u64>,
    /// Requests using the block now.
    pub refs: u32,
}

/// Block counts of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct CacheUsage {
    /// Pool size in blocks.
    pub capacity_blocks: usize,
    /// Blocks in use: cached (referenced or not) plus private.
    pub used_blocks: usize,
    /// Blocks referenced by at least one request (what the decode time model sees).
    pub active_blocks: usize,
    /// Blocks in the prefix cache (referenced or not).
    pub cached_blocks: usize,
    /// Cached blocks no request uses: evictable, LRU first.
    pub evictable_blocks: usize,
    /// Blocks neither used nor cached.
    pub free_blocks: usize,
}

/// The paged prefix cache of one rank.
#[derive(Debug, Clone)]
pub struct BlockCache {
    capacity: usize,
    blocks: HashMap<BlockId, Block>,
    by_hash: HashMap<u64, BlockId>,
    lru: BTreeMap<u64, BlockId>,
    next_id: BlockId,
    tick: u64,
    active: usize,
    /// Queued events, each with the token ids of its stored blocks (empty otherwise).
    events: Vec<(KvEventData, Vec<u32>)>,
}

impl BlockCache {
    /// An empty pool of `capacity` blocks.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            blocks: HashMap::new(),
            by_hash: HashMap::new(),
            lru: BTreeMap::new(),
            next_id: 1,
            tick: 0,
            active: 0,
            events: Vec::new(),
        }
    }

    /// Pool size in blocks.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks that an allocation could obtain now (free plus evictable).
    pub fn available(&self) -> usize {
        self.capacity.saturating_sub(self.blocks.len()) + self.lru.len()
    }

    /// Blocks referenced by at least one request.
    pub fn active_blocks(&self) -> usize {
        self.active
    }

    /// Fraction of the pool referenced by requests (`u` of the decode time model).
    pub fn usage(&self) -> f64 {
        if self.capacity == 0 {
            return 0.0;
        }
        self.active as f64 / self.capacity as f64
    }

    /// Whether `sequence_hash` is in the prefix cache.
    pub fn contains(&self, sequence_hash: u64) -> bool {
        self.by_hash.contains_key(&sequence_hash)
    }

    /// Number of leading `sequence_hashes` that are cached.
    pub fn match_prefix(&self, sequence_hashes: &[u64]) -> usize {
        sequence_hashes
            .iter()
            .take_while(|h| self.by_hash.contains_key(*h))
            .count()
    }

    /// How many of `sequence_hashes` are cached but unreferenced (acquiring them takes
    /// them off the evictable list).
    pub fn unreferenced_among(&self, sequence_hashes: &[u64]) -> usize {
        sequence_hashes
            .iter()
            .filter_map(|h| self.by_hash.get(h))
            .filter_map(|id| self.blocks.get(id))
            .filter(|b| b.refs == 0)
            .count()
    }

    /// References the first `count` blocks of `sequence_hashes`, which must be cached
    /// (as [`Self::match_prefix`] reported); returns their ids in order.
    pub fn acquire_prefix(&mut self, sequence_hashes: &[u64], count: usize) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(count);
        for h in sequence_hashes.iter().take(count) {
            let Some(&id) = self.by_hash.get(h) else {
                break;
            };
            self.reference(id);
            out.push(id);
        }
        out
    }

    /// Allocates `n` private blocks, evicting unreferenced cached blocks (LRU first) if
    /// the pool is full. Evictions are published as one `Removed` event.
    pub fn allocate(&mut self, n: usize) -> Result<Vec<BlockId>, CacheFull> {
        let available = self.available();
        if n > available {
            return Err(CacheFull {
                needed: n,
                available,
            });
        }
        let free = self.capacity.saturating_sub(self.blocks.len());
        let mut removed = Vec::new();
        for _ in free..n {
            let Some((_, id)) = self.lru.pop_first() else {
                break;
            };
            if let Some(block) = self.blocks.remove(&id) {
                if let Some(c) = block.hash {
                    self.by_hash.remove(&c.hash.sequence);
                    removed.push(c.hash.sequence);
                }
            }
        }
        if !removed.is_empty() {
            self.events
                .push((KvEventData::Removed { blocks: removed }, Vec::new()));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            self.blocks.insert(
                id,
                Block {
                    hash: None,
                    refs: 1,
                    lru_tick: None,
                },
            );
            self.active += 1;
            out.push(id);
        }
        Ok(out)
    }

    /// Makes full, computed private blocks cached. `blocks` are consecutive blocks of one
    /// sequence, `parent` the sequence hash of the block before the first (None = root).
    ///
    /// Returns the ids the request holds afterwards: a block whose hash is already
    /// cached is replaced by the cached copy (and freed). A block whose parent is not
    /// cached (the cache was cleared under the request) stays private. New hashes are
    /// published as `Stored` events, one per contiguous run. `tokens` are the blocks'
    /// token ids, concatenated (vLLM events carry them); may be empty.
    pub fn commit(
        &mut self,
        parent: Option<u64>,
        blocks: &[(BlockId, BlockHash)],
        tokens: &[u32],
    ) -> Vec<BlockId> {
        let mut out = Vec::with_capacity(blocks.len());
        let mut run = Run::default();
        let mut run_parent = parent;
        let mut prev = parent;
        let bs = if blocks.is_empty() {
            0
        } else {
            tokens.len() / blocks.len()
        };
        for (i, &(id, hash)) in blocks.iter().enumerate() {
            let parent_cached = prev.is_none_or(|p| self.by_hash.contains_key(&p));
            if let Some(&existing) = self.by_hash.get(&hash.sequence) {
                if existing != id {
                    self.reference(existing);
                    self.release_one(id);
                }
                self.flush_run(run_parent, &mut run);
                run_parent = Some(hash.sequence);
                out.push(existing);
            } else if parent_cached && self.blocks.contains_key(&id) {
                if let Some(block) = self.blocks.get_mut(&id) {
                    block.hash = Some(CachedHash { hash, parent: prev });
                }
                self.by_hash.insert(hash.sequence, id);
                run.blocks.push(StoredBlock {
                    external: hash.sequence,
                    tokens_hash: hash.local,
                });
                if let Some(t) = tokens.get(i * bs..(i + 1) * bs) {
                    run.tokens.extend_from_slice(t);
                }
                out.push(id);
            } else {
                self.flush_run(run_parent, &mut run);
                run_parent = Some(hash.sequence);
                out.push(id);
            }
            prev = Some(hash.sequence);
        }
        self.flush_run(run_parent, &mut run);
        out
    }

    /// Releases a request's blocks (given in sequence order). They are released tail
    /// first, so that among blocks freed together the deepest is evicted first.
    pub fn release(&mut self, blocks: &[BlockId]) {
        for &id in blocks.iter().rev() {
            self.release_one(id);
        }
    }

    /// Drops the whole prefix cache and queues `Cleared`. Blocks still used by requests
    /// stay allocated but become private (no longer matchable, freed without events).
    pub fn clear(&mut self) {
        self.by_hash.clear();
        self.lru.clear();
        self.blocks.retain(|_, b| b.refs > 0);
        for b in self.blocks.values_mut() {
            b.hash = None;
            b.lru_tick = None;
        }
        self.events.push((KvEventData::Cleared, Vec::new()));
    }

    /// Takes the events queued since the last call, oldest first.
    pub fn drain_events(&mut self) -> Vec<KvEventData> {
        self.drain_events_with_tokens()
            .into_iter()
            .map(|(e, _)| e)
            .collect()
    }

    /// Takes the queued events with the token ids of their stored blocks.
    pub fn drain_events_with_tokens(&mut self) -> Vec<(KvEventData, Vec<u32>)> {
        std::mem::take(&mut self.events)
    }

    /// Block counts.
    pub fn usage_counts(&self) -> CacheUsage {
        CacheUsage {
            capacity_blocks: self.capacity,
            used_blocks: self.blocks.len(),
            active_blocks: self.active,
            cached_blocks: self.by_hash.len(),
            evictable_blocks: self.lru.len(),
            free_blocks: self.capacity.saturating_sub(self.blocks.len()),
        }
    }

    /// Every cached sequence hash, ascending.
    pub fn cached_hashes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.by_hash.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Every cached block with its parent and reference count, by ascending hash.
    pub fn cached_blocks(&self) -> Vec<CachedBlockInfo> {
        let mut v: Vec<CachedBlockInfo> = self
            .by_hash
            .values()
            .filter_map(|id| self.blocks.get(id))
            .filter_map(|b| {
                b.hash.map(|c| CachedBlockInfo {
                    sequence_hash: c.hash.sequence,
                    tokens_hash: c.hash.local,
                    parent: c.parent,
                    refs: b.refs,
                })
            })
            .collect();
        v.sort_unstable_by_key(|b| b.sequence_hash);
        v
    }

    /// Cached, unreferenced hashes in eviction order (next victim first).
    pub fn eviction_order(&self) -> Vec<u64> {
        self.lru
            .values()
            .filter_map(|id| self.blocks.get(id))
            .filter_map(|b| b.hash.map(|c| c.hash.sequence))
            .collect()
    }

    fn flush_run(&mut self, parent: Option<u64>, run: &mut Run) {
        if !run.blocks.is_empty() {
            let Run { blocks, tokens } = std::mem::take(run);
            self.events
                .push((KvEventData::Stored { parent, blocks }, tokens));
        }
    }

    fn reference(&mut self, id: BlockId) {
        if let Some(block) = self.blocks.get_mut(&id) {
            if block.refs == 0 {
                self.active += 1;
            }
            block.refs += 1;
            if let Some(t) = block.lru_tick.take() {
                self.lru.remove(&t);
            }
        }
    }

    fn release_one(&mut self, id: BlockId) {
        let Some(block) = self.blocks.get_mut(&id) else {
            return;
        };
        if block.refs == 0 {
            return;
        }
        block.refs -= 1;
        if block.refs > 0 {
            return;
        }
        self.active = self.active.saturating_sub(1);
        if block.hash.is_some() {
            self.tick += 1;
            block.lru_tick = Some(self.tick);
            self.lru.insert(self.tick, id);
        } else {
            self.blocks.remove(&id);
        }
    }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
