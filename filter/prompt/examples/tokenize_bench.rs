//! Times first-seen (cold) prompt tokenization and tokenizer load, natively or as a wasm32-wasip1
//! command (run it under Node's WASI, i.e. in V8, with `tests/tools/wasm-bench.mjs`).
//!
//! `tokenize_bench TOKENIZER_JSON SHAREGPT_JSON [TEXTS]` (a `tokenizer.json`, or its canonical form
//! from the `canonicalize` example) packs the ShareGPT prompts, in file order,
//! into texts of about 8.8 KB (≈ 2,048 tokens), encodes 8 of them to warm the tokenizer up, then encodes
//! TEXTS (default 40) others once each through [`PromptTokenizer::encode`] (every segment a cache
//! miss, as for a new chat) and again (every segment a hit). Prints µs per 2,048 tokens, the
//! heap's live bytes at their peak during the load and after it (a counting allocator), and, in
//! wasm, the linear memory size before and after loading the tokenizer.

// The counting allocator is the one unsafe part (the workspace denies unsafe code).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use kvgate_prompt::{CacheConfig, EncodeOptions, PromptTokenizer, TokenizerFile};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to `System` with the caller's own arguments; the counters
// do not touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        // SAFETY: the caller's contract, forwarded.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn mib(n: usize) -> f64 {
    n as f64 / 1048576.0
}

fn memory_mib() -> Option<f64> {
    #[cfg(target_arch = "wasm32")]
    {
        Some(core::arch::wasm32::memory_size(0) as f64 * 65536.0 / 1048576.0)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        None
    }
}

fn show_memory(label: &str) {
    if let Some(mib) = memory_mib() {
        println!("memory.size {label}: {mib:.1} MiB");
    }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(tokenizer_json), Some(sharegpt)) = (args.get(1), args.get(2)) else {
        return Err("usage: tokenize_bench TOKENIZER_JSON SHAREGPT_JSON [TEXTS]".into());
    };
    let n_texts: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(40);
    let warmup = 8;

    show_memory("at start");
    let json = std::fs::read(tokenizer_json)?;
    show_memory("with tokenizer.json read");
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let t0 = Instant::now();
    // As a VM loads it: a packed tokenizer's bytes are freed once unpacked.
    let mut tok = match TokenizerFile::read(&json)? {
        TokenizerFile::Packed(p) => {
            drop(json);
            PromptTokenizer::from_staged(TokenizerFile::Packed(p), CacheConfig::default())?
        }
        file => PromptTokenizer::from_staged(file, CacheConfig::default())?,
    };
    let load = t0.elapsed();
    let (peak, held) = (PEAK.load(Ordering::Relaxed), LIVE.load(Ordering::Relaxed));
    println!("load: {:.1} ms", load.as_secs_f64() * 1e3);
    println!(
        "live heap during load: {:.1} MiB before (the file), peak {:.1} MiB, {:.1} MiB after \
         (a packed file freed)",
        mib(before),
        mib(peak),
        mib(held)
    );
    show_memory("after load");

    let chats: serde_json::Value = serde_json::from_slice(&std::fs::read(sharegpt)?)?;
    let prompts: Vec<&str> = chats
        .as_array()
        .ok_or("not a ShareGPT array")?
        .iter()
        .filter_map(|c| c.pointer("/conversations/0/value")?.as_str())
        .collect();
    let mut texts: Vec<String> = Vec::new();
    let mut current = String::new();
    for p in &prompts {
        current.push_str(p);
        current.push_str("\n\n");
        // About 2,048 Qwen3 / Llama 3 tokens of English-heavy chat text.
        if current.len() >= 8800 {
            texts.push(std::mem::take(&mut current));
        }
        if texts.len() == warmup + n_texts {
            break;
        }
    }
    if texts.len() < warmup + 1 {
        return Err("not enough ShareGPT text".into());
    }

    let opts = EncodeOptions {
        max_tokens: 1 << 20,
        add_special_tokens: false,
    };
    let (warm_texts, measured) = texts.split_at(warmup);
    for t in warm_texts {
        tok.encode(t, opts)?;
    }
    let run = |tok: &mut PromptTokenizer| -> Result<(f64, usize, u32), Box<dyn Error>> {
        let mut tokens = 0;
        let mut misses = 0;
        let t0 = Instant::now();
        for t in measured {
            let out = tok.encode(t, opts)?;
            tokens += out.ids.len();
            misses += out.segments_miss;
        }
        Ok((t0.elapsed().as_secs_f64() * 1e6, tokens, misses))
    };
    let (cold_us, tokens, misses) = run(&mut tok)?;
    let (hit_us, _, hit_misses) = run(&mut tok)?;
    println!(
        "cold: {} texts, {tokens} tokens, {misses} segment misses: {:.0} µs per 2048 tokens",
        measured.len(),
        cold_us / tokens as f64 * 2048.0
    );
    println!(
        "cached: {hit_misses} misses: {:.1} µs per 2048 tokens",
        hit_us / tokens as f64 * 2048.0
    );
    show_memory("at end");
    Ok(())
}
