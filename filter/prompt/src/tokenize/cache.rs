//! A bounded map from segment text to its token ids (a segmented LRU: segments seen once
//! on probation, segments seen again protected), with hit/miss counters.

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
    /// 15–20 MB the tokenizer itself takes). An eighth of both bounds is the probation
    /// part (segments seen once), the rest the protected part (segments seen again);
    /// entries above 1/8 of the bytes are not cached.
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

/// One LRU part of the cache, bounded by entries and bytes.
struct Part {
    map: LruCache<Box<str>, Box<[u32]>>,
    max_entries: usize,
    max_bytes: usize,
    bytes: usize,
}

impl Part {
    fn new(max_entries: usize, max_bytes: usize) -> Self {
        Part {
            map: LruCache::unbounded(),
            max_entries,
            max_bytes,
            bytes: 0,
        }
    }

    /// Whether an entry of `cost` bytes can be held at all.
    fn fits(&self, cost: usize) -> bool {
        self.max_entries > 0 && cost <= self.max_bytes
    }

    /// Inserts (or replaces) an entry, then evicts least-recently-used entries to stay
    /// within bounds; returns how many other entries it evicted.
    fn insert(&mut self, key: Box<str>, ids: Box<[u32]>) -> u64 {
        self.bytes += SegmentCache::cost(&key, &ids);
        if let Some((k, v)) = self.map.push(key, ids) {
            // `push` hands back a replaced value under the same key (never an eviction: the
            // map itself is unbounded).
            self.bytes = self.bytes.saturating_sub(SegmentCache::cost(&k, &v));
        }
        let mut evicted = 0;
        while self.map.len() > self.max_entries || self.bytes > self.max_bytes {
            let Some((k, v)) = self.map.pop_lru() else {
                break;
            };
            self.bytes = self.bytes.saturating_sub(SegmentCache::cost(&k, &v));
            evicted += 1;
        }
        evicted
    }

    fn take(&mut self, key: &str) -> Option<(Box<str>, Box<[u32]>)> {
        let (k, v) = self.map.pop_entry(key)?;
        self.bytes = self.bytes.saturating_sub(SegmentCache::cost(&k, &v));
        Some((k, v))
    }
}

/// A segmented LRU with a record of what was seen: a segment seen for the first time goes
/// into a small probation part (an eighth of the budget); seen again while still there, it
/// moves to the protected part (the rest); seen again after probation dropped it, it is
/// encoded once more and admitted straight to the protected part — a second sighting is
/// recognised by its hash in [`Seen`]. One-off prompts (every first-seen chat) churn
/// through probation only, so they neither fill the cache's memory nor evict the system
/// prompts, tool lists and histories that do recur.
pub(crate) struct SegmentCache {
    probation: Part,
    protected: Part,
    seen: Seen,
    stats: CacheStats,
}

/// Hashes of the segments put in the cache, in a direct-mapped table of eight slots per
/// cache entry (a colliding segment overwrites the slot: at worst a segment seen twice is
/// taken for new, or, with a 64-bit hash, practically never the other way round).
struct Seen {
    slots: Vec<u64>,
}

impl Seen {
    fn new(max_entries: usize) -> Self {
        let n = match max_entries {
            0 => 0,
            n => n.saturating_mul(8).next_power_of_two().min(1 << 20),
        };
        Seen { slots: vec![0; n] }
    }

    /// Records `text` as seen; returns whether it had been seen before.
    fn sighted(&mut self, text: &str) -> bool {
        let n = self.slots.len();
        if n == 0 {
            return false;
        }
        let h = xxhash_rust::xxh3::xxh3_64(text.as_bytes()) | 1; // 0 marks an empty slot
        match self.slots.get_mut((h as usize) & (n - 1)) {
            Some(slot) if *slot == h => true,
            Some(slot) => {
                *slot = h;
                false
            }
            None => false,
        }
    }
}

impl SegmentCache {
    pub(crate) fn new(config: CacheConfig) -> Self {
        let probation_entries = match config.max_entries {
            0 => 0,
            n => (n / 8).max(1),
        };
        let probation_bytes = config.max_bytes / 8;
        SegmentCache {
            probation: Part::new(probation_entries, probation_bytes),
            protected: Part::new(
                config.max_entries - probation_entries,
                config.max_bytes - probation_bytes,
            ),
            seen: Seen::new(config.max_entries),
            stats: CacheStats::default(),
        }
    }

    fn cost(key: &str, ids: &[u32]) -> usize {
        key.len() + ids.len() * 4 + ENTRY_OVERHEAD
    }

    /// Looks `text` up, counting a hit or a miss; a hit in probation moves the entry to the
    /// protected part.
    pub(crate) fn get(&mut self, text: &str) -> Option<&[u32]> {
        let in_protected = self.protected.map.get(text).is_some();
        let found = if in_protected {
            true
        } else if let Some((k, v)) = self.probation.take(text) {
            if self.protected.fits(Self::cost(&k, &v)) {
                self.stats.evictions += self.protected.insert(k, v);
                true
            } else {
                // No room to promote into (a protected part of size 0): stays on probation.
                self.stats.evictions += self.probation.insert(k, v);
                self.probation.map.contains(text)
            }
        } else {
            false
        };
        if found {
            self.stats.hits += 1;
        } else {
            self.stats.misses += 1;
        }
        self.refresh_sizes();
        if !found {
            return None;
        }
        self.protected
            .map
            .peek(text)
            .or_else(|| self.probation.map.peek(text))
            .map(|ids| &**ids)
    }

    /// Stores `ids` for `text` (after a miss): on probation the first time the segment is
    /// seen, in the protected part when it was seen before; evicts least-recently-used
    /// entries to stay within bounds.
    pub(crate) fn put(&mut self, text: &str, ids: &[u32]) {
        let cost = Self::cost(text, ids);
        if !self.probation.fits(cost) {
            return;
        }
        let seen_before = self.seen.sighted(text);
        let part = if self.protected.map.contains(text)
            || (seen_before && !self.probation.map.contains(text) && self.protected.fits(cost))
        {
            &mut self.protected
        } else {
            &mut self.probation
        };
        self.stats.evictions += part.insert(text.into(), ids.into());
        self.refresh_sizes();
    }

    fn refresh_sizes(&mut self) {
        self.stats.entries = self.probation.map.len() + self.protected.map.len();
        self.stats.bytes = self.probation.bytes + self.protected.bytes;
    }

    pub(crate) fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn cache(max_entries: usize, max_bytes: usize) -> SegmentCache {
        SegmentCache::new(CacheConfig {
            max_entries,
            max_bytes,
        })
    }

    #[test]
    fn a_segment_seen_again_is_protected_from_one_off_segments() {
        // 16 entries: 2 on probation, 14 protected.
        let mut c = cache(16, 1 << 20);
        assert!(c.get("system").is_none());
        c.put("system", &[1, 2]);
        assert_eq!(c.get("system"), Some(&[1u32, 2][..])); // second sighting: promoted
        for i in 0..10 {
            let key = format!("one-off {i}");
            assert!(c.get(&key).is_none());
            c.put(&key, &[i]);
        }
        // The one-offs churned through probation (8 of 10 evicted), the system prompt stayed.
        assert_eq!(c.get("system"), Some(&[1u32, 2][..]));
        assert!(c.get("one-off 0").is_none());
        assert_eq!(c.get("one-off 9"), Some(&[9u32][..]));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.evictions), (3, 12, 8));
        assert_eq!(s.entries, 3); // system, one-off 9 (now protected), one-off 8
        assert_eq!(
            s.bytes,
            3 * ENTRY_OVERHEAD + "system".len() + 8 + 2 * ("one-off 9".len() + 4)
        );
    }

    #[test]
    fn a_segment_seen_again_after_probation_dropped_it_is_admitted() {
        let mut c = cache(16, 1 << 20); // 2 on probation
        c.put("history", &[7]);
        for i in 0..4 {
            c.put(&format!("one-off {i}"), &[i]);
        }
        // Dropped from probation before its second sighting: encoded again, then protected.
        assert!(c.get("history").is_none());
        c.put("history", &[7]);
        for i in 4..10 {
            c.put(&format!("one-off {i}"), &[i]);
        }
        assert_eq!(c.get("history"), Some(&[7u32][..]));
        assert!(c.get("one-off 4").is_none());
    }

    #[test]
    fn both_parts_evict_least_recently_used_entries() {
        // 24 entries: 3 on probation, 21 protected; protected bytes bound the promoted ones.
        let budget = 8 * (ENTRY_OVERHEAD + 10);
        let mut c = cache(24, budget);
        for i in 0..12 {
            let key = format!("key{i:02}");
            c.put(&key, &[0]);
            assert!(c.get(&key).is_some());
        }
        let s = c.stats();
        assert!(s.bytes <= budget, "{s:?}");
        assert!(s.evictions > 0);
        assert!(c.get("key00").is_none()); // the oldest promoted entry went first
        assert!(c.get("key11").is_some());
        // Larger than the probation part (1/8 of the bytes): not cached.
        c.put(&"x".repeat(200), &[1]);
        assert!(c.get(&"x".repeat(200)).is_none());
    }

    #[test]
    fn tiny_and_disabled_caches() {
        let mut one = cache(1, 1 << 20); // probation only: a hit stays there
        one.put("a", &[1]);
        assert_eq!(one.get("a"), Some(&[1u32][..]));
        assert_eq!(one.get("a"), Some(&[1u32][..]));
        one.put("b", &[2]);
        assert!(one.get("a").is_none());
        assert_eq!(one.stats().entries, 1);

        let mut off = cache(0, 1 << 20);
        off.put("a", &[1]);
        assert!(off.get("a").is_none());
        assert_eq!(off.stats().entries, 0);
    }
}
