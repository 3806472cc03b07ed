//! Reuses a request's tools list across renders: converted to template values once, and each of its objects' `tojson` text dumped once per set of options.
//!
//! Agent requests resend the same tools (often a dozen JSON schemas, tens of KB) with every
//! turn. The template still runs in full on every request; only two pure functions of the
//! tools are remembered, so the output is exact for any template:
//!
//! - the tools' template value (the JSON converted to minijinja values), keyed by the exact
//!   text it was built from (the caller's key, compared in full on a hit, not only hashed);
//! - the `tojson` text of any list or object *inside that value*, keyed by the object's
//!   address and the dump options. minijinja values are immutable and the entry keeps the
//!   whole tree alive, so an address of the entry's tree always denotes the same contents;
//!   addresses are only looked up if they belong to that tree (recorded when it was built),
//!   never for objects a template made during a render.
//!
//! Entries and bytes are bounded (least recently used entry evicted first).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use lru::LruCache;
use minijinja::value::{Object, Value, ValueKind};
use serde_json::Value as Json;

use super::dump::DumpOptions;

/// Most tools lists kept (distinct tool sets in use at once, e.g. one per agent kind).
pub const MAX_ENTRIES: usize = 16;
/// Most bytes of tools text kept over all entries (each entry is counted as 4× its text:
/// the text, the template values and the dumps).
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// Most `tojson` texts remembered per entry (objects × distinct options used by a template).
const MAX_DUMPS_PER_ENTRY: usize = 4096;

/// Cumulative counters of the tools cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolsCacheStats {
    /// Renders whose tools were found in the cache.
    pub hits: u64,
    /// Renders whose tools had to be converted.
    pub misses: u64,
    /// `tojson` calls answered from an entry.
    pub dump_hits: u64,
    /// Entries held now.
    pub entries: usize,
    /// Bytes accounted to the entries held now.
    pub bytes: usize,
}

/// One tools list in template form, with the `tojson` texts of its objects.
#[derive(Debug)]
pub struct ToolsEntry {
    value: Value,
    /// Addresses of every list and object inside `value`.
    owned: HashSet<usize>,
    dumps: Mutex<HashMap<(usize, DumpOptions), Arc<str>>>,
    bytes: usize,
}

impl ToolsEntry {
    fn new(json: &Json, key_len: usize) -> ToolsEntry {
        let value = Value::from(minijinja::value::Serde(json));
        let mut owned = HashSet::new();
        collect_objects(&value, &mut owned, 0);
        ToolsEntry {
            value,
            owned,
            dumps: Mutex::new(HashMap::new()),
            bytes: key_len.saturating_mul(4),
        }
    }

    /// The tools as the template sees them.
    pub(crate) fn value(&self) -> &Value {
        &self.value
    }

    /// The remembered dump of `value` with `opts`, or `make`'s (remembered if `value` belongs
    /// to this entry). Returns whether it was remembered.
    pub(crate) fn dump(
        &self,
        value: &Value,
        opts: &DumpOptions,
        make: impl FnOnce() -> Result<String, minijinja::Error>,
    ) -> Result<(Arc<str>, bool), minijinja::Error> {
        let Some(addr) = object_addr(value).filter(|a| self.owned.contains(a)) else {
            return Ok((Arc::from(make()?), false));
        };
        let key = (addr, opts.clone());
        if let Some(text) = self.lock().get(&key) {
            return Ok((text.clone(), true));
        }
        let text: Arc<str> = Arc::from(make()?);
        let mut dumps = self.lock();
        if dumps.len() < MAX_DUMPS_PER_ENTRY {
            dumps.insert(key, text.clone());
        }
        Ok((text, false))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, DumpOptions), Arc<str>>> {
        self.dumps.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The entry as a template value (under an internal variable name), for the `tojson` filter,
/// with the template's counter of dumps answered from an entry.
#[derive(Debug)]
pub(crate) struct EntryRef {
    pub entry: Arc<ToolsEntry>,
    pub dump_hits: Arc<AtomicU64>,
}

impl EntryRef {
    pub(crate) fn count_hit(&self) {
        self.dump_hits.fetch_add(1, Ordering::Relaxed);
    }
}

impl Object for EntryRef {}

/// The address of a list or object value (minijinja's own `Vec<Value>` and map types).
fn object_addr(value: &Value) -> Option<usize> {
    if let Some(map) = value.downcast_object_ref::<indexmap::IndexMap<Value, Value>>() {
        return Some(std::ptr::from_ref(map) as usize);
    }
    value
        .downcast_object_ref::<Vec<Value>>()
        .map(|seq| std::ptr::from_ref(seq) as usize)
}

fn collect_objects(value: &Value, out: &mut HashSet<usize>, depth: usize) {
    // Request JSON is at most 64 deep (request limits); deeper values are simply not cached.
    if depth > 128 {
        return;
    }
    let Some(addr) = object_addr(value) else {
        return;
    };
    out.insert(addr);
    let Ok(items) = value.try_iter() else { return };
    for item in items {
        let child = match value.kind() {
            ValueKind::Map => value.get_item(&item).unwrap_or_default(),
            _ => item,
        };
        collect_objects(&child, out, depth + 1);
    }
}

/// The tools lists of recent requests, by the exact text they were built from.
#[derive(Debug)]
pub(crate) struct ToolsCache {
    lru: LruCache<Box<str>, Arc<ToolsEntry>>,
    bytes: usize,
    hits: u64,
    misses: u64,
}

impl ToolsCache {
    pub(crate) fn new() -> ToolsCache {
        ToolsCache {
            lru: LruCache::unbounded(),
            bytes: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// The entry for `key`, else one built from `make()`'s JSON (kept if it fits the bounds).
    pub(crate) fn get_or_insert<E>(
        &mut self,
        key: &str,
        make: impl FnOnce() -> Result<Json, E>,
    ) -> Result<Arc<ToolsEntry>, E> {
        if let Some(entry) = self.lru.get(key) {
            self.hits += 1;
            return Ok(entry.clone());
        }
        self.misses += 1;
        let entry = Arc::new(ToolsEntry::new(&make()?, key.len()));
        if entry.bytes <= MAX_BYTES {
            while self.lru.len() >= MAX_ENTRIES || self.bytes + entry.bytes > MAX_BYTES {
                match self.lru.pop_lru() {
                    Some((_, old)) => self.bytes = self.bytes.saturating_sub(old.bytes),
                    None => break,
                }
            }
            self.bytes += entry.bytes;
            self.lru.put(Box::from(key), entry.clone());
        }
        Ok(entry)
    }

    pub(crate) fn stats(&self, dump_hits: u64) -> ToolsCacheStats {
        ToolsCacheStats {
            hits: self.hits,
            misses: self.misses,
            dump_hits,
            entries: self.lru.len(),
            bytes: self.bytes,
        }
    }
}
