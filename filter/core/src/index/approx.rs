//! Approximate mode: for workers that publish no KV events, predict their cache from the
//! router's own decisions. Routing a request to a worker records its blocks there for a
//! TTL; a bounded number of predictions is kept (oldest dropped first).
//!
//! Memory is the constraint here: every Envoy worker thread holds one of these, and
//! Dynamo's default cap is 2^20 (worker, block) pairs. So a prediction is one 12-byte
//! row of a single table — the block's sequence hash, the worker's slot and the time
//! it expires — with no per-prediction queue or second map:
//!
//! * The table is linear probing with rows kept in (sequence hash, slot) order. The
//!   home position of a hash is `hash * homes / 2^64`, which grows with the hash, so
//!   the whole table is sorted: a lookup starts at the home and scans forward past
//!   smaller hashes, the holders of one block are adjacent rows, and removing many rows
//!   at once is one forward pass that slides the kept rows left.
//! * A large table is split by the top bits of the hash into shards of at most 16,384
//!   home positions, each such a table over its share of the hashes (in hash order,
//!   shard after shard), growing on its own. Wasm memory never shrinks, and a VM's
//!   model load leaves megabytes of scattered free space behind: shards of ~100 KiB are
//!   placed in it, where one 9 MiB array (and its predecessor, alive while a doubling
//!   copies it) would land on top of the VM's memory and grow it.
//! * Expiry times are rounded up to a quantum (a power of two ≤ TTL/64 ms, so a
//!   prediction lives at most 1/64 of the TTL longer than asked) and stored as a
//!   16-bit count of quanta from a moving base. A histogram of rows per expiry time
//!   says when something is due and, when the table is full, below which time the
//!   oldest rows lie; expiring or pruning is then one sweep over the table. Pruning
//!   sweeps once per `max × (1 − prune target ratio)` new rows. One expiry quantum
//!   often holds more rows than a prune drops; the equally old rows that go are those
//!   whose hash falls in the lowest tie buckets (a mix of all its bits), so they are
//!   spread over the whole table. Taking them in table order instead would empty the
//!   low end and leave the high end crowded past the home positions: inserts there
//!   then shift runs of hundreds of thousands of rows (seconds per request at the cap).
//!   The filter records and queries lazily (`record_lazily`, `overlap_at` skip expired
//!   rows without sweeping) and sweeps expired rows from its tick once they are an
//!   eighth of the table, so no request waits for an expiry sweep.

use super::prefix::OverlapScores;
use super::slots::{SlotSet, SlotTable};
use super::IndexDelta;
use crate::types::WorkerKey;
use hashbrown::HashMap;
use std::collections::BTreeMap;

/// Dynamo's `router_prune_target_ratio` default: a full index prunes down to this share
/// of its cap.
pub const DEFAULT_PRUNE_TARGET_RATIO: f64 = 0.8;

/// Slot value marking an empty row (so at most 65,535 workers can be predicted at once).
const EMPTY: u16 = u16::MAX;
const EMPTY_ROW: u32 = EMPTY as u32;
/// Largest load (rows / home positions) the table grows to, as a fraction.
const LOAD_NUM: usize = 9;
const LOAD_DEN: usize = 10;
/// Smallest allocated table.
const MIN_HOMES: usize = 64;
/// Below this many rows a sweep is cheap: expiry sweeps whenever something is due.
const SMALL_TABLE: u64 = 4096;
/// Tie buckets of a prune (see [`tie_bucket`]).
const TIE_BUCKETS: usize = 1024;
/// Home positions of a shard at the cap: the table has as many shards as it needs to
/// keep each this size or smaller (at most [`MAX_SHARDS`]).
const SHARD_HOMES: usize = 16_384;
/// Most shards of one table.
const MAX_SHARDS: usize = 1024;
/// A shard's share of the cap is padded by 1/64 for the uneven spread of hashes over shards.
const SHARD_SLACK_DEN: usize = 64;

/// The tie bucket of a sequence hash, `0..TIE_BUCKETS`: the top bits of a mix of all its
/// bits (MurmurHash3's finaliser), independent of the row's place in the table.
fn tie_bucket(key: u64) -> usize {
    let mut k = key;
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^= k >> 33;
    (k >> (64 - TIE_BUCKETS.ilog2())) as usize
}

fn pack(until: u16, slot: u16) -> u32 {
    (u32::from(until) << 16) | u32::from(slot)
}

fn slot_of(meta: u32) -> u16 {
    (meta & 0xFFFF) as u16
}

fn until_of(meta: u32) -> u16 {
    (meta >> 16) as u16
}

/// The hash of one row of a [`Table`], read when asked for.
#[derive(Debug, Clone, Copy)]
struct RowKey<'a> {
    keys: &'a [u64],
    row: usize,
}

impl RowKey<'_> {
    fn get(&self) -> u64 {
        self.keys.get(self.row).copied().unwrap_or(0)
    }
}

/// The empty table a shard lookup falls back to (never used: every hash has a shard).
static NO_ROWS: Table = Table {
    shard_bits: 0,
    homes: 0,
    keys: Vec::new(),
    meta: Vec::new(),
    rows: 0,
    distinct: 0,
};

/// Rows sorted by (sequence hash, slot) in a linear-probing layout (see the module doc).
#[derive(Debug, Clone, Default)]
struct Table {
    /// Bits of the hash that chose this table's shard, shifted out before homing.
    shard_bits: u32,
    /// Number of home positions (the rows may run on past them at the end).
    homes: usize,
    keys: Vec<u64>,
    /// `until << 16 | slot`; slot [`EMPTY`] marks an empty row.
    meta: Vec<u32>,
    /// Occupied rows.
    rows: usize,
    /// Distinct sequence hashes.
    distinct: usize,
}

impl Table {
    fn home(&self, key: u64) -> usize {
        let key = key << self.shard_bits;
        // The top 32 bits suffice and keep the multiplication in 64 bits (wasm32 has
        // no 128-bit multiply). Non-decreasing in `key` either way.
        match u32::try_from(self.homes) {
            Ok(h) => (((key >> 32) * u64::from(h)) >> 32) as usize,
            Err(_) => ((u128::from(key) * self.homes as u128) >> 64) as usize,
        }
    }

    /// Appends an empty row past the home positions, growing the arrays by a small
    /// step rather than doubling them.
    fn push_empty(&mut self) {
        if self.meta.len() == self.meta.capacity() {
            let step = self.homes / 256 + 16;
            self.keys.reserve_exact(step);
            self.meta.reserve_exact(step);
        }
        self.keys.push(0);
        self.meta.push(EMPTY_ROW);
    }

    /// The row at `i`, if occupied: (hash, meta).
    fn row(&self, i: usize) -> Option<(u64, u32)> {
        let meta = *self.meta.get(i)?;
        if slot_of(meta) == EMPTY {
            return None;
        }
        Some((*self.keys.get(i)?, meta))
    }

    fn key_at(&self, i: usize) -> Option<u64> {
        self.row(i).map(|(k, _)| k)
    }

    /// Where (key, slot) is or would go, and whether it is there.
    fn find(&self, key: u64, slot: u16) -> (usize, bool) {
        let mut i = self.home(key);
        while let Some((k, meta)) = self.row(i) {
            match (k, slot_of(meta)).cmp(&(key, slot)) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Equal => return (i, true),
                std::cmp::Ordering::Greater => break,
            }
        }
        (i, false)
    }

    /// First row holding `key`, if any.
    fn first(&self, key: u64) -> Option<usize> {
        let mut i = self.home(key);
        while let Some(k) = self.key_at(i) {
            if k == key {
                return Some(i);
            }
            if k > key {
                return None;
            }
            i += 1;
        }
        None
    }

    /// The slots holding `key` whose stored expiry is at least `alive_from`.
    fn holders(&self, key: u64, alive_from: u32) -> impl Iterator<Item = u16> + '_ {
        let mut next = self.first(key);
        std::iter::from_fn(move || loop {
            let i = next?;
            let (_, meta) = self.row(i).filter(|(k, _)| *k == key)?;
            next = Some(i + 1);
            if u32::from(until_of(meta)) >= alive_from {
                return Some(slot_of(meta));
            }
        })
    }

    /// Inserts a row at `i` (from [`Table::find`]), shifting the run after it right.
    fn insert_at(&mut self, i: usize, key: u64, meta: u32) {
        let new_key = !(i > 0 && self.key_at(i - 1) == Some(key)) && self.key_at(i) != Some(key);
        let mut end = i;
        while self.row(end).is_some() {
            end += 1;
        }
        while self.meta.len() <= end {
            self.push_empty();
        }
        self.keys.copy_within(i..end, i + 1);
        self.meta.copy_within(i..end, i + 1);
        if let (Some(k), Some(m)) = (self.keys.get_mut(i), self.meta.get_mut(i)) {
            *k = key;
            *m = meta;
        }
        self.rows += 1;
        if new_key {
            self.distinct += 1;
        }
    }

    /// Keeps the rows that pass `keep(meta, hash)` (the hash is read only if `keep` asks
    /// for it), in one forward pass, calling `dropped(hash, meta)` for the others. Rows
    /// after a dropped one slide left until the next empty row.
    fn retain(
        &mut self,
        mut keep: impl FnMut(u32, RowKey<'_>) -> bool,
        mut dropped: impl FnMut(u64, u32),
    ) {
        // First position the next kept row may take.
        let mut write = 0usize;
        // A row was dropped since the last empty row, so kept rows may move.
        let mut dirty = false;
        // A hash that lost a row and has kept none so far.
        let mut pending: Option<u64> = None;
        for read in 0..self.meta.len() {
            let Some(&meta) = self.meta.get(read) else {
                break;
            };
            if slot_of(meta) == EMPTY {
                if pending.take().is_some() {
                    self.distinct -= 1;
                }
                // Rows after an empty row have their home after it: they stay.
                dirty = false;
                write = read + 1;
                continue;
            }
            let key = RowKey {
                keys: &self.keys,
                row: read,
            };
            if !keep(meta, key) {
                let k = key.get();
                dropped(k, meta);
                if let Some(m) = self.meta.get_mut(read) {
                    *m = EMPTY_ROW;
                }
                self.rows -= 1;
                if pending != Some(k) {
                    if pending.is_some() {
                        self.distinct -= 1;
                    }
                    let kept_before = write > 0 && self.key_at(write - 1) == Some(k);
                    pending = (!kept_before).then_some(k);
                }
                dirty = true;
                continue;
            }
            if let Some(p) = pending.take() {
                if key.get() != p {
                    self.distinct -= 1;
                }
            }
            if !dirty {
                write = read + 1;
                continue;
            }
            let k = key.get();
            let to = self.home(k).max(write);
            if to != read {
                if let Some(m) = self.meta.get_mut(read) {
                    *m = EMPTY_ROW;
                }
                if let (Some(kk), Some(m)) = (self.keys.get_mut(to), self.meta.get_mut(to)) {
                    *kk = k;
                    *m = meta;
                }
            }
            write = to + 1;
        }
        if pending.is_some() {
            self.distinct -= 1;
        }
        self.trim();
    }

    /// Drops empty rows past the home positions.
    fn trim(&mut self) {
        while self.meta.len() > self.homes && self.meta.last() == Some(&EMPTY_ROW) {
            self.meta.pop();
            self.keys.pop();
        }
    }

    /// Rebuilds with `homes` home positions (rows keep their order).
    fn resize(&mut self, homes: usize) {
        // Rows can run on past the last home; room for that is reserved now, so pushing
        // one never doubles a vector of a million rows.
        let room = homes + homes / 64 + 64;
        let mut keys = Vec::with_capacity(room);
        keys.resize(homes, 0);
        let mut meta = Vec::with_capacity(room);
        meta.resize(homes, EMPTY_ROW);
        let old = std::mem::replace(
            self,
            Table {
                shard_bits: self.shard_bits,
                homes,
                keys,
                meta,
                rows: self.rows,
                distinct: self.distinct,
            },
        );
        let mut write = 0usize;
        for read in 0..old.meta.len() {
            let Some((key, meta)) = old.row(read) else {
                continue;
            };
            let to = self.home(key).max(write);
            while self.meta.len() <= to {
                self.push_empty();
            }
            if let (Some(k), Some(m)) = (self.keys.get_mut(to), self.meta.get_mut(to)) {
                *k = key;
                *m = meta;
            }
            write = to + 1;
        }
    }
}

/// Where index changes go: collected for the caller, or not at all (the filter's lazy path
/// uses none, and a prune at the cap would collect hundreds of thousands).
struct Deltas<'a>(Option<&'a mut Vec<IndexDelta>>);

impl Deltas<'_> {
    fn push(&mut self, d: IndexDelta) {
        if let Some(v) = self.0.as_mut() {
            v.push(d);
        }
    }
}

/// Keeps the rows of every shard that pass `keep` (see [`Table::retain`]); returns the rows
/// left in all of them.
fn retain_shards(
    shards: &mut [Table],
    mut keep: impl FnMut(u32, RowKey<'_>) -> bool,
    mut dropped: impl FnMut(u64, u32),
) -> usize {
    for t in shards.iter_mut() {
        t.retain(&mut keep, &mut dropped);
    }
    shards.iter().map(|t| t.rows).sum()
}

/// Predicted cache contents with per-entry expiry.
#[derive(Debug, Clone)]
pub struct ApproxIndex {
    /// The table's shards, in hash order.
    shards: Vec<Table>,
    /// log2 of the number of shards.
    shard_bits: u32,
    /// Rows of all shards.
    rows: usize,
    slots: SlotTable,
    /// Rows per slot.
    counts: Vec<u64>,
    /// Rows per stored expiry time.
    by_until: BTreeMap<u16, u32>,
    /// Stored expiry times count quanta from this many quanta since time 0.
    base: u64,
    quantum_ms: u64,
    ttl_ms: u64,
    max_entries: usize,
    prune_to: usize,
    /// Home positions of one shard at the cap (it grows no further).
    max_homes: usize,
}

impl ApproxIndex {
    /// Predictions live `ttl_ms`; at most `max_entries` (worker, block) pairs are kept;
    /// a full index prunes the oldest down to [`DEFAULT_PRUNE_TARGET_RATIO`] of that.
    pub fn new(ttl_ms: u64, max_entries: usize) -> Self {
        let shards = Self::homes_at_cap(max_entries)
            .div_ceil(SHARD_HOMES)
            .next_power_of_two()
            .min(MAX_SHARDS);
        Self::with_shards(ttl_ms, max_entries, shards)
    }

    fn homes_at_cap(max_entries: usize) -> usize {
        max_entries
            .saturating_mul(LOAD_DEN)
            .div_ceil(LOAD_NUM)
            .max(MIN_HOMES)
    }

    /// [`Self::new`] with `shards` shards (a power of two).
    fn with_shards(ttl_ms: u64, max_entries: usize, shards: usize) -> Self {
        let quantum_ms = 1u64 << (ttl_ms / 64).max(1).ilog2();
        let max_entries = max_entries.max(1);
        let shard_bits = shards.max(1).ilog2();
        let homes = Self::homes_at_cap(max_entries);
        let max_homes = if shard_bits == 0 {
            homes
        } else {
            let share = homes >> shard_bits;
            (share + share / SHARD_SLACK_DEN + 1).max(MIN_HOMES)
        };
        let mut a = Self {
            shards: (0..1usize << shard_bits)
                .map(|_| Table {
                    shard_bits,
                    ..Table::default()
                })
                .collect(),
            shard_bits,
            rows: 0,
            slots: SlotTable::default(),
            counts: Vec::new(),
            by_until: BTreeMap::new(),
            base: 0,
            quantum_ms,
            ttl_ms,
            max_entries,
            prune_to: 0,
            max_homes,
        };
        a.set_prune_target_ratio(DEFAULT_PRUNE_TARGET_RATIO);
        a
    }

    fn shard_of(&self, key: u64) -> usize {
        if self.shard_bits == 0 {
            0
        } else {
            (key >> (64 - self.shard_bits)) as usize
        }
    }

    fn shard(&self, key: u64) -> &Table {
        self.shards.get(self.shard_of(key)).unwrap_or(&NO_ROWS)
    }

    /// Sets the share of the cap a full index prunes down to (Dynamo's
    /// `router_prune_target_ratio`, clamped to 0..=1; at least one pair is pruned).
    pub fn set_prune_target_ratio(&mut self, ratio: f64) {
        let r = if ratio.is_finite() {
            ratio.clamp(0.0, 1.0)
        } else {
            DEFAULT_PRUNE_TARGET_RATIO
        };
        self.prune_to = ((self.max_entries as f64 * r) as usize).min(self.max_entries - 1);
    }

    /// The granularity of expiry times: a prediction made at `t` lives until `t + ttl`
    /// rounded up to a multiple of this.
    pub fn quantum_ms(&self) -> u64 {
        self.quantum_ms
    }

    /// Records that `worker` will hold `sequence` (a request's blocks) from `now_ms` on.
    /// Returns the index changes (inserts of new blocks, removals of expired or pruned
    /// ones). Re-recording a pair keeps the later of its two expiry times.
    pub fn record(&mut self, worker: WorkerKey, sequence: &[u64], now_ms: u64) -> Vec<IndexDelta> {
        let mut deltas = self.expire(now_ms);
        self.record_unexpired(worker, sequence, now_ms, &mut Deltas(Some(&mut deltas)));
        deltas
    }

    /// [`Self::record`] without expiring first (no sweep in a request's path): pairs that
    /// expired but were not swept yet stay until [`Self::expire`] runs and are refreshed
    /// in place; [`Self::overlap_at`] ignores them meanwhile. No deltas are collected (a
    /// prune would collect one per dropped pair, hundreds of thousands at the cap).
    pub fn record_lazily(&mut self, worker: WorkerKey, sequence: &[u64], now_ms: u64) {
        self.record_unexpired(worker, sequence, now_ms, &mut Deltas(None));
    }

    fn record_unexpired(
        &mut self,
        worker: WorkerKey,
        sequence: &[u64],
        now_ms: u64,
        deltas: &mut Deltas<'_>,
    ) {
        if sequence.is_empty() {
            return;
        }
        let Ok(slot) = u16::try_from(self.slots.intern(worker)) else {
            self.slots.release(&worker);
            return;
        };
        if slot == EMPTY {
            self.slots.release(&worker);
            return;
        }
        let until = self.stored_until(now_ms.saturating_add(self.ttl_ms), deltas);
        // Rows stored at `until` and rows added to `slot` not counted yet: counted once per
        // call (one map update instead of one per block), and before a prune reads them.
        let (mut at_until, mut added) = (0u32, 0u64);
        for &seq in sequence {
            let shard = self.shard_of(seq);
            let (mut i, found) = self.shards.get(shard).unwrap_or(&NO_ROWS).find(seq, slot);
            if found {
                let Some(meta) = self.shards.get_mut(shard).and_then(|t| t.meta.get_mut(i)) else {
                    continue;
                };
                let old = until_of(*meta);
                if old < until {
                    *meta = pack(until, slot);
                    self.uncount_until(old, 1);
                    at_until += 1;
                }
                continue;
            }
            let mut moved = false;
            if self.rows >= self.max_entries {
                self.count_pending(until, &mut at_until, slot, &mut added);
                self.prune(deltas);
                moved = true;
            }
            let max_homes = self.max_homes;
            let Some(table) = self.shards.get_mut(shard) else {
                continue;
            };
            let crowded = (table.rows + 1) * LOAD_DEN > table.homes * LOAD_NUM;
            if table.homes == 0 || (crowded && table.homes < max_homes) {
                // Doubling, but straight to the cap's size once the next doubling would pass
                // it: the old and new arrays coexist while rows move, and Wasm memory keeps
                // that peak (at most 1.5 × the final shard instead of up to 2 ×).
                let mut grown = (table.homes * 2).clamp(MIN_HOMES, max_homes);
                if grown.saturating_mul(2) > max_homes {
                    grown = max_homes;
                }
                table.resize(grown);
                moved = true;
            }
            if moved {
                i = table.find(seq, slot).0;
            }
            table.insert_at(i, seq, pack(until, slot));
            self.rows += 1;
            at_until += 1;
            added += 1;
            deltas.push(IndexDelta::Insert { worker, seq });
        }
        self.count_pending(until, &mut at_until, slot, &mut added);
    }

    /// Adds the rows a record has not counted yet to the per-expiry and per-slot counts.
    fn count_pending(&mut self, until: u16, at_until: &mut u32, slot: u16, added: &mut u64) {
        if *at_until > 0 {
            *self.by_until.entry(until).or_insert(0) += std::mem::take(at_until);
        }
        if *added > 0 {
            let n = std::mem::take(added);
            if let Some(c) = self.count_mut(slot) {
                *c += n;
            }
        }
    }

    /// Sweeps the expired pairs out once they are at least an eighth of the table (or the
    /// table is small): a sweep passes over the whole table, so it is amortised over many
    /// expiries; queries through [`Self::overlap_at`] ignore expired pairs meanwhile.
    /// Returns whether it swept.
    pub fn expire_when_worth_it(&mut self, now_ms: u64) -> bool {
        let alive_from = self.alive_from(now_ms);
        let due: u64 = match u16::try_from(alive_from) {
            Ok(a) => self.by_until.range(..a).map(|(_, &n)| u64::from(n)).sum(),
            Err(_) => self.by_until.values().map(|&n| u64::from(n)).sum(),
        };
        let rows = self.rows as u64;
        if due == 0 || (rows >= SMALL_TABLE && due * 8 < rows) {
            return false;
        }
        self.expire_into(now_ms, &mut Deltas(None));
        true
    }

    /// The lowest stored expiry of a pair still alive at `now_ms`.
    fn alive_from(&self, now_ms: u64) -> u32 {
        // A pair stored as `u` lives while `now < base + u`. Before the base (a fresh
        // index's first record sets the base to its own expiry) every stored pair lives.
        let now = now_ms / self.quantum_ms;
        (now + 1).saturating_sub(self.base).min(1 << 16) as u32
    }

    /// Drops predictions that expired at or before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<IndexDelta> {
        let mut deltas = Vec::new();
        self.expire_into(now_ms, &mut Deltas(Some(&mut deltas)));
        deltas
    }

    fn expire_into(&mut self, now_ms: u64, deltas: &mut Deltas<'_>) {
        let now = now_ms / self.quantum_ms;
        let due = match self.by_until.first_key_value() {
            Some((&first, _)) => self.base + u64::from(first) <= now,
            None => false,
        };
        if due {
            // Every row with base + until <= now, i.e. until < now - base + 1.
            let below = (now - self.base + 1).min(1 << 16) as u32;
            self.sweep(below, 0, deltas);
        }
    }

    /// Forgets every prediction for `worker` (no deltas: callers clear the worker).
    pub fn remove_worker(&mut self, worker: WorkerKey) {
        let Some(slot) = self.slots.get(&worker) else {
            return;
        };
        let by_until = &mut self.by_until;
        self.rows = retain_shards(
            &mut self.shards,
            |meta, _| u32::from(slot_of(meta)) != slot,
            |_, meta| {
                let u = until_of(meta);
                if let Some(n) = by_until.get_mut(&u) {
                    *n -= 1;
                    if *n == 0 {
                        by_until.remove(&u);
                    }
                }
            },
        );
        if let Some(c) = self.counts.get_mut(slot as usize) {
            *c = 0;
        }
        self.slots.release(&worker);
    }

    /// Overlap of a request against the predictions (expire first for exactness, or use
    /// [`Self::overlap_at`]).
    pub fn overlap(&self, sequence: &[u64]) -> OverlapScores {
        self.overlap_from(sequence, 0)
    }

    /// Overlap of a request against the predictions still alive at `now_ms`, whether or
    /// not the expired ones were swept (the per-worker totals used as tie-breaker still
    /// count unswept ones).
    pub fn overlap_at(&self, sequence: &[u64], now_ms: u64) -> OverlapScores {
        self.overlap_from(sequence, self.alive_from(now_ms))
    }

    fn overlap_from(&self, sequence: &[u64], alive_from: u32) -> OverlapScores {
        let mut out = OverlapScores::default();
        let mut iter = sequence.iter();
        let Some(&first) = iter.next() else {
            return out;
        };
        let mut alive = SlotSet::default();
        for s in self.holders(first, alive_from) {
            alive.insert(u32::from(s));
        }
        if alive.is_empty() {
            return out;
        }
        let mut depth: u32 = 1;
        for &seq in iter {
            let mut next = SlotSet::default();
            for s in self.holders(seq, alive_from) {
                next.insert(u32::from(s));
            }
            let d = depth;
            alive.retain_in(&next, |slot| {
                if let Some(k) = self.slots.key(slot) {
                    out.scores.insert(k, d);
                }
            });
            if alive.is_empty() {
                break;
            }
            depth += 1;
        }
        for slot in alive.iter() {
            if let Some(k) = self.slots.key(slot) {
                out.scores.insert(k, depth);
            }
        }
        for k in out.scores.keys() {
            out.tree_sizes.insert(*k, self.worker_blocks(k));
        }
        out
    }

    /// The slots holding `key` whose stored expiry is at least `alive_from`.
    fn holders(&self, key: u64, alive_from: u32) -> impl Iterator<Item = u16> + '_ {
        self.shard(key).holders(key, alive_from)
    }

    /// A read-only view of the predicted index.
    pub fn index(&self) -> ApproxView<'_> {
        ApproxView { a: self }
    }

    fn worker_blocks(&self, worker: &WorkerKey) -> u64 {
        self.slots
            .get(worker)
            .and_then(|s| self.counts.get(s as usize).copied())
            .unwrap_or(0)
    }

    fn count_mut(&mut self, slot: u16) -> Option<&mut u64> {
        let s = usize::from(slot);
        if self.counts.len() <= s {
            self.counts.resize(s + 1, 0);
        }
        self.counts.get_mut(s)
    }

    fn uncount_until(&mut self, until: u16, n: u32) {
        if let Some(c) = self.by_until.get_mut(&until) {
            *c = c.saturating_sub(n);
            if *c == 0 {
                self.by_until.remove(&until);
            }
        }
    }

    /// The stored form of expiry time `until_ms` (rounded up to the quantum), moving the
    /// base forward first if it does not fit in 16 bits.
    fn stored_until(&mut self, until_ms: u64, deltas: &mut Deltas<'_>) -> u16 {
        let q = until_ms.div_ceil(self.quantum_ms);
        if q < self.base {
            return 0;
        }
        if q - self.base > u64::from(u16::MAX) {
            let oldest = self
                .by_until
                .first_key_value()
                .map_or(q, |(&u, _)| self.base + u64::from(u));
            // Rows too old to share a 16-bit range with `q` go now (never with a TTL
            // below 2^16 quanta, which the quantum guarantees, unless time jumps).
            let new_base = oldest.max(q - u64::from(u16::MAX));
            let below = (new_base - self.base).min(1 << 16) as u32;
            self.sweep(below, 0, deltas);
            let shift = (new_base - self.base) as u16;
            for meta in self.shards.iter_mut().flat_map(|t| t.meta.iter_mut()) {
                if slot_of(*meta) != EMPTY {
                    *meta = pack(until_of(*meta).saturating_sub(shift), slot_of(*meta));
                }
            }
            self.by_until = std::mem::take(&mut self.by_until)
                .into_iter()
                .map(|(u, n)| (u.saturating_sub(shift), n))
                .collect();
            self.base = new_base;
        }
        (q - self.base).min(u64::from(u16::MAX)) as u16
    }

    /// Makes room for one more pair: drops the oldest pairs down to the prune target.
    fn prune(&mut self, deltas: &mut Deltas<'_>) {
        let mut need = self.rows.saturating_sub(self.prune_to) as u64;
        let mut below = 1u32 << 16;
        let mut ties = 0usize;
        for (&u, &n) in &self.by_until {
            if u64::from(n) >= need {
                below = u32::from(u);
                ties = need as usize;
                break;
            }
            need -= u64::from(n);
        }
        self.sweep(below, ties, deltas);
    }

    /// Where `ties` of the rows expiring at `below` are cut: every such row in a tie bucket
    /// below the first number goes, and the first rows (in table order) of that bucket,
    /// as many as the second number.
    fn tie_cut(&self, below: u32, ties: usize) -> (usize, usize) {
        let mut per_bucket = vec![0usize; TIE_BUCKETS];
        let rows = self.shards.iter().flat_map(|t| t.keys.iter().zip(&t.meta));
        for (key, meta) in rows {
            if slot_of(*meta) != EMPTY && u32::from(until_of(*meta)) == below {
                if let Some(n) = per_bucket.get_mut(tie_bucket(*key)) {
                    *n += 1;
                }
            }
        }
        let mut before = 0usize;
        for (bucket, n) in per_bucket.iter().enumerate() {
            if before + n >= ties {
                return (bucket, ties - before);
            }
            before += n;
        }
        // Fewer rows than asked for (cannot happen with consistent counts): all of them.
        (TIE_BUCKETS, 0)
    }

    /// Drops every row that expires before `below` (stored units) and `ties` of the rows
    /// that expire at `below`, the lowest by (tie bucket, table order).
    fn sweep(&mut self, below: u32, ties: usize, deltas: &mut Deltas<'_>) {
        let (cut, mut rest) = if ties > 0 {
            self.tie_cut(below, ties)
        } else {
            (0, 0)
        };
        let slots = &self.slots;
        let counts = &mut self.counts;
        let mut tied = 0u32;
        let keep = |meta: u32, key: RowKey<'_>| {
            let u = u32::from(until_of(meta));
            if u > below || (u == below && ties == 0) {
                return true;
            }
            if u == below {
                let bucket = tie_bucket(key.get());
                let goes = bucket < cut || (bucket == cut && rest > 0);
                if !goes {
                    return true;
                }
                if bucket == cut {
                    rest -= 1;
                }
                tied += 1;
            }
            false
        };
        self.rows = retain_shards(&mut self.shards, keep, |key, meta| {
            let slot = slot_of(meta);
            if let Some(c) = counts.get_mut(usize::from(slot)) {
                *c = c.saturating_sub(1);
            }
            if let Some(worker) = slots.key(u32::from(slot)) {
                deltas.push(IndexDelta::Remove { worker, seq: key });
            }
        });
        self.by_until = match u16::try_from(below) {
            Ok(b) => self.by_until.split_off(&b),
            Err(_) => BTreeMap::new(),
        };
        if let Ok(b) = u16::try_from(below) {
            self.uncount_until(b, tied);
        }
    }
}

/// Read-only view of an [`ApproxIndex`]'s predictions, with the queries of a
/// [`super::PrefixIndex`].
#[derive(Debug, Clone, Copy)]
pub struct ApproxView<'a> {
    a: &'a ApproxIndex,
}

impl ApproxView<'_> {
    /// Number of distinct sequence hashes predicted on some worker.
    pub fn len(&self) -> usize {
        self.a.shards.iter().map(|t| t.distinct).sum()
    }

    /// Whether nothing is predicted.
    pub fn is_empty(&self) -> bool {
        self.a.rows == 0
    }

    /// Total (worker, block) pairs.
    pub fn entries(&self) -> u64 {
        self.a.rows as u64
    }

    /// Whether `worker` is predicted to hold `seq`.
    pub fn contains(&self, worker: &WorkerKey, seq: u64) -> bool {
        match self.a.slots.get(worker).map(u16::try_from) {
            Some(Ok(slot)) => self.a.shard(seq).find(seq, slot).1,
            _ => false,
        }
    }

    /// Number of blocks predicted on `worker`.
    pub fn worker_blocks(&self, worker: &WorkerKey) -> u64 {
        self.a.worker_blocks(worker)
    }

    /// Predicted blocks per worker, for every worker with a slot.
    pub fn tree_sizes(&self) -> HashMap<WorkerKey, u64> {
        self.a
            .slots
            .keys()
            .map(|k| (k, self.a.worker_blocks(&k)))
            .collect()
    }

    /// Every predicted (worker, sequence hash) pair, ordered by hash.
    pub fn iter(&self) -> impl Iterator<Item = (WorkerKey, u64)> + '_ {
        let a = self.a;
        a.shards.iter().flat_map(move |t| {
            (0..t.meta.len()).filter_map(move |i| {
                let (key, meta) = t.row(i)?;
                Some((a.slots.key(u32::from(slot_of(meta)))?, key))
            })
        })
    }
}

#[cfg(test)]
mod tests;
