//! Core benchmarks (`make bench`): overlap query for a 64-block prefix against an index of
//! 1M blocks over 16 workers, KV events applied per second, and memory per indexed block.
//! Prints a JSON line with the figures (`KVGATE_BENCH_JSON=path` also writes it).

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use criterion::{criterion_group, Criterion, Throughput};
use kvgate_core::events::{KvEvent, KvEventData, StorageTier, StoredBlock};
use kvgate_core::hash::{chain, sequence_hashes};
use kvgate_core::index::{KvIndexer, PrefixIndex};
use kvgate_core::WorkerKey;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::hint::black_box;
use std::time::Instant;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const WORKERS: u64 = 16;
const BLOCKS: u64 = 1 << 20;
const CHAIN: u64 = 64;

/// 1M blocks as 16K chains of 64 blocks, each chain held by one or two of 16 workers.
fn build_index() -> (PrefixIndex, Vec<Vec<u64>>) {
    let mut idx = PrefixIndex::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut chains = Vec::new();
    for c in 0..BLOCKS / CHAIN {
        let local: Vec<u64> = (0..CHAIN).map(|_| rng.u64(..)).collect();
        let seq = sequence_hashes(&local);
        let w = WorkerKey::new(c % WORKERS, 0);
        for &s in &seq {
            idx.insert(w, s);
        }
        if c % 4 == 0 {
            for &s in &seq[..32] {
                idx.insert(WorkerKey::new((c + 1) % WORKERS, 0), s);
            }
        }
        chains.push(seq);
    }
    (idx, chains)
}

fn events(n: usize) -> Vec<KvEvent> {
    let mut rng = fastrand::Rng::with_seed(3);
    let mut out = Vec::with_capacity(n);
    let mut ids = [0u64; WORKERS as usize];
    for i in 0..n {
        let w = (i as u64) % WORKERS;
        ids[w as usize] += 1;
        let blocks = (0..8)
            .map(|_| StoredBlock {
                external: rng.u64(..),
                tokens_hash: rng.u64(..),
            })
            .collect();
        out.push(KvEvent {
            worker: WorkerKey::new(w, 0),
            event_id: ids[w as usize],
            tier: StorageTier::Device,
            data: KvEventData::Stored {
                parent: None,
                blocks,
            },
        });
    }
    out
}

fn benches(c: &mut Criterion) {
    let (idx, chains) = build_index();
    let mut g = c.benchmark_group("index");
    g.throughput(Throughput::Elements(1));
    let hit = chains[1234].clone();
    g.bench_function("overlap_64_blocks_hit_1M_index_16_workers", |b| {
        b.iter(|| black_box(idx.overlap(black_box(&hit))))
    });
    let mut partial = chains[4444].clone();
    partial[40] = chain(1, 2);
    g.bench_function("overlap_64_blocks_partial_1M_index", |b| {
        b.iter(|| black_box(idx.overlap(black_box(&partial))))
    });
    let miss: Vec<u64> = (0..64).map(|i| chain(i, 99)).collect();
    g.bench_function("overlap_64_blocks_miss_1M_index", |b| {
        b.iter(|| black_box(idx.overlap(black_box(&miss))))
    });
    g.finish();

    let evs = events(4096);
    let mut g = c.benchmark_group("indexer");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.bench_function("apply_4096_stored_events_8_blocks", |b| {
        b.iter_batched(
            KvIndexer::new,
            |mut ix| {
                for e in &evs {
                    black_box(ix.apply(e));
                }
            },
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(group, benches);

/// Figures criterion does not report: memory per block and a one-shot events/s.
fn figures() {
    let reg = Region::new(GLOBAL);
    let (idx, chains) = build_index();
    let stats = reg.change();
    let entries = idx.entries();
    let bytes = stats
        .bytes_allocated
        .saturating_sub(stats.bytes_deallocated) as f64
        - (chains.len() * (CHAIN as usize * 8 + 24)) as f64;
    let per_block = bytes / idx.len() as f64;

    let evs = events(200_000);
    let mut ix = KvIndexer::new();
    let t = Instant::now();
    for e in &evs {
        black_box(ix.apply(e));
    }
    let secs = t.elapsed().as_secs_f64();
    let blocks_per_s = evs.len() as f64 * 8.0 / secs;

    let hit = chains[99].clone();
    let n = 100_000;
    let t = Instant::now();
    for _ in 0..n {
        black_box(idx.overlap(black_box(&hit)));
    }
    let overlap_ns = t.elapsed().as_nanos() as f64 / n as f64;
    let line = format!(
        "{{\"index_blocks\": {}, \"index_entries\": {}, \"workers\": {}, \"bytes_per_block\": {:.1}, \"overlap_64_blocks_ns\": {:.0}, \"events_per_s\": {:.0}, \"event_blocks_per_s\": {:.0}}}",
        idx.len(), entries, WORKERS, per_block, overlap_ns, evs.len() as f64 / secs, blocks_per_s
    );
    println!("{line}");
    if let Some(path) = std::env::var_os("KVGATE_BENCH_JSON") {
        let _ = std::fs::write(path, format!("{line}\n"));
    }
}

fn main() {
    figures();
    group();
    Criterion::default().configure_from_args().final_summary();
}
