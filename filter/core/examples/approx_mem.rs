//! Memory and speed probe of the approximate-mode index ([`kvgate_core::index::ApproxIndex`]):
//! fills it past Dynamo's default cap (`router_max_tree_size` = 1,048,576 (worker, block)
//! pairs) with synthetic records and prints the heap it holds (live and peak, through a
//! counting allocator), bytes per pair, and the mean time of `record_lazily` (with the tick's `expire_when_worth_it`) and
//! `overlap`.
//! Run: `cargo run --release -p kvgate-core --example approx_mem [RECORDS BLOCKS WORKERS]`
//! (defaults 10000 128 4). The same source measures what one filter VM pays when built
//! for wasm32-wasip1 and run under `node tests/tools/wasm-bench.mjs`, but only from a
//! crate without kvgate-core's dev-dependencies (proptest does not build for wasm32):
//! copy it as the `main.rs` of a scratch binary crate that depends on kvgate-core.
#![allow(unsafe_code)]

use kvgate_core::index::ApproxIndex;
use kvgate_core::types::WorkerKey;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

/// Counts live and peak heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let n = LIVE.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(n, Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        // SAFETY: `p` came from `alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(n: usize) -> f64 {
    n as f64 / 1_048_576.0
}

fn arg(i: usize, default: u64) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}

/// A deterministic stream of 64-bit "sequence hashes".
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 ^ (self.0 >> 29)
    }
}

fn main() {
    let records = arg(1, 10_000);
    let blocks = arg(2, 128).max(1);
    let workers = arg(3, 4).max(1);
    let cap = 1usize << 20;
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let mut idx = ApproxIndex::new(120_000, cap);
    let mut rng = Lcg(1);
    let mut kept: Vec<Vec<u64>> = Vec::new();
    let mut seqs = Vec::with_capacity(blocks as usize);
    let mut record_ns = 0u128;
    for r in 0..records {
        seqs.clear();
        // A quarter of the records share a 16-block prefix (a system prompt).
        let shared = if r % 4 == 0 { 16.min(blocks) } else { 0 };
        let mut shared_rng = Lcg(7);
        for b in 0..blocks {
            seqs.push(if b < shared {
                shared_rng.next()
            } else {
                rng.next()
            });
        }
        let t = Instant::now();
        // The filter's path: lazy records, and the tick's sweep when worth it.
        idx.record_lazily(WorkerKey::new(r % workers, 0), &seqs, r);
        idx.expire_when_worth_it(r);
        record_ns += t.elapsed().as_nanos();
        if r % 97 == 0 {
            kept.push(seqs.clone());
        }
    }
    let held = LIVE.load(Relaxed).saturating_sub(base);
    let kept_bytes: usize =
        kept.iter().map(|v| v.capacity() * 8).sum::<usize>() + kept.capacity() * 24;
    let held = held.saturating_sub(kept_bytes + seqs.capacity() * 8);
    let pairs = idx.index().entries();
    let t = Instant::now();
    let mut hits = 0u64;
    let rounds = 20;
    for _ in 0..rounds {
        for s in &kept {
            hits += idx
                .overlap(s)
                .scores
                .values()
                .map(|&v| u64::from(v))
                .sum::<u64>();
        }
    }
    let overlap_ns = t.elapsed().as_nanos();
    let queries = (rounds * kept.len()).max(1) as u128;
    println!(
        "records {records} x {blocks} blocks over {workers} workers, cap {cap}: {pairs} pairs"
    );
    println!(
        "heap held {:.1} MiB ({:.1} B/pair), peak while filling {:.1} MiB",
        mib(held),
        held as f64 / pairs.max(1) as f64,
        mib(PEAK.load(Relaxed).saturating_sub(base))
    );
    println!(
        "record {:.1} us/call, overlap {:.1} us/call (matched blocks {hits})",
        record_ns as f64 / records.max(1) as f64 / 1000.0,
        overlap_ns as f64 / queries as f64 / 1000.0
    );
}
