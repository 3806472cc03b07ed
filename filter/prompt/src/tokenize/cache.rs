//! A bounded LRU map from segment text to its token ids, with hit/miss counters.

use std::num::NonZeroUsize;

use lru::LruCache;

/// Bookkeeping cost of one entry beyond its key and ids (map slot, boxes, list links).
const ENTRY_OVERHEAD: usize = 64;

/// Bounds of the per-tokenizer segment cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries (default 8192); 0 disables the cache.
    pub max_entries: usize,
    /// Most bytes held, counting key text, 4 bytes per id and a fixed overhead per entry
    /// (default 16 MiB per tokenizer instance, i.e. per Envoy worker VM, next to the
    /// 15–20 MB the tokenizer itself takes). Entries above 1/8 of it are not cached.
    pub max_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 8192,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Counters of a segment cache since it was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to encode.
    pub misses: u64,
    /// Entries evicted to stay within bounds.
    pub evictions: u64,
    /// Current number of entries.
    pub entries: usize,
    /// Current accounted size in bytes.
    pub bytes: usize,
}

impl CacheStats {
    /// `hits / (hits + misses)`, 0 when nothing was looked up.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

pub(crate) struct SegmentCache {
    map: Option<LruCache<Box<str>, Box<[u32]>>>,
    max_bytes: usize,
    stats: CacheStats,
}

impl SegmentCache {
    pub(crate) fn new(config: CacheConfig) -> Self {
        SegmentCache {
            map: NonZeroUsize::new(config.max_entries).map(LruCache::new),
            max_bytes: config.max_bytes,
            stats: CacheStats::default(),
        }
    }

    fn cost(key: &str, ids: &[u32]) -> usize {
        key.len() + ids.len() * 4 + ENTRY_OVERHEAD
    }

    /// Looks `text` up, counting a hit or a miss.
    pub(crate) fn get(&mut self, text: &str) -> Option<&[u32]> {
        let found = self.map.as_mut().and_then(|m| m.get(text));
        if found.is_some() {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
        found.map(|ids| &**ids)
    }

    /// Stores `ids` for `text`, evicting least-recently-used entries to stay within bounds.
    pub(crate) fn put(&mut self, text: &str, ids: &[u32]) {
        let cost = Self::cost(text, ids);
        let Some(map) = self.map.as_mut() else {
            return;
        };
        if cost > self.max_bytes / 8 {
            return;
        }
        if let Some((old_key, old_ids)) = map.push(text.into(), ids.into()) {
            // Either the same key replaced, or the LRU entry evicted for the entry count.
            self.stats.bytes = self
                .stats
                .bytes
                .saturating_sub(Self::cost(&old_key, &old_ids));
            if &*old_key != text {
                self.stats.evictions += 1;
            }
        }
        self.stats.bytes += cost;
        while self.stats.bytes > self.max_bytes {
            match map.pop_lru() {
                Some((k, v)) => {
                    self.stats.bytes = self.stats.bytes.saturating_sub(Self::cost(&k, &v));
                    self.stats.evictions += 1;
                }
                None => break,
            }
        }
        self.stats.entries = map.len();
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn counts_and_evicts_by_entries_and_bytes() {
        let mut c = SegmentCache::new(CacheConfig {
            max_entries: 2,
            max_bytes: 10_000,
        });
        assert!(c.get("a").is_none());
        c.put("a", &[1]);
        c.put("b", &[2]);
        assert_eq!(c.get("a"), Some(&[1u32][..]));
        c.put("c", &[3]); // evicts "b", the least recently used
        assert!(c.get("b").is_none());
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.evictions, s.entries), (1, 2, 1, 2));

        let mut c = SegmentCache::new(CacheConfig {
            max_entries: 100,
            max_bytes: 8 * (ENTRY_OVERHEAD + 10),
        });
        for i in 0..20 {
            c.put(&format!("key{i:02}"), &[0]);
        }
        assert!(c.stats().bytes <= 8 * (ENTRY_OVERHEAD + 10));
        assert!(c.stats().evictions > 0);
        c.put(&"x".repeat(200), &[1]); // larger than 1/8 of the budget: not cached
        assert!(c.get(&"x".repeat(200)).is_none());

        let mut off = SegmentCache::new(CacheConfig {
            max_entries: 0,
            max_bytes: 1 << 20,
        });
        off.put("a", &[1]);
        assert!(off.get("a").is_none());
    }
}
