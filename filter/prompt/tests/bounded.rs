//! Bounded tokenizing work on the real Qwen3 tokenizer: hostile prompts (one 4 MB word, a
//! long run of spaces, a prompt over the byte budget) are encoded only up to a certain
//! prefix — ids equal to the full encode's first ids, marked incomplete, with an estimated
//! length — instead of costing seconds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use kvgate_prompt::tokenize::{CacheConfig, EncodeOptions, PromptTokenizer, MAX_WORD_BYTES};
use std::path::PathBuf;

fn tokenizer() -> PromptTokenizer {
    let dir = std::env::var_os("KVGATE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/Qwen3-0.6B")
        });
    let json = std::fs::read(dir.join("tokenizer.json"))
        .unwrap_or_else(|e| panic!("{}: {e} — run `make setup`", dir.display()));
    PromptTokenizer::from_bytes(&json, CacheConfig::default()).unwrap()
}

fn opts(max_tokens: usize) -> EncodeOptions {
    EncodeOptions {
        max_tokens,
        add_special_tokens: false,
    }
}

fn prose(words: usize) -> String {
    let vocab = [
        "the",
        "router",
        "matches",
        "cached",
        "blocks",
        "of",
        "a",
        "prompt",
        "on",
        "workers,",
        "and",
        "counts",
        "queued",
        "prefill",
        "tokens.",
        "Numbers",
        "1234",
        "ünïcödé",
        "日本語",
    ];
    (0..words)
        .map(|i| vocab[(i * 7 + i / 3) % vocab.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_huge_word_stops_the_ids_before_it() {
    let mut t = tokenizer();
    let head = prose(200);
    for filler in ["a", " ", "é"] {
        let text = format!("{head} {}", filler.repeat((4 << 20) / filler.len()));
        let out = t.encode(&text, opts(131_072)).unwrap();
        assert!(!out.complete, "filler {filler:?}");
        let full_head = t.encode_full(&head, false).unwrap();
        // A certain prefix: equal to the full encode's first ids, the last words left out.
        assert!(!out.ids.is_empty() && out.ids.len() <= full_head.len());
        assert!(
            out.ids.len() + 4 >= full_head.len(),
            "{} of {}",
            out.ids.len(),
            full_head.len()
        );
        assert_eq!(out.ids[..], full_head[..out.ids.len()]);
        assert!(out.estimated_tokens(text.len()) > out.ids.len());
    }
    // A word just under the limit is encoded as usual, and the result is exact.
    let text = format!("{head} {}", "b".repeat(MAX_WORD_BYTES - 16));
    let out = t.encode(&text, opts(131_072)).unwrap();
    assert!(out.complete);
    assert_eq!(out.ids, t.encode_full(&text, false).unwrap());
}

#[test]
fn the_byte_budget_bounds_the_text_read() {
    let mut t = tokenizer();
    let text = prose(30_000);
    let full = t.encode_full(&text, false).unwrap();
    let out = t.encode_bounded(&text, opts(1 << 20), 20_000).unwrap();
    assert!(!out.complete);
    assert!(out.ids.len() > 1_000 && out.ids.len() < full.len() / 4);
    assert_eq!(out.ids[..], full[..out.ids.len()]);
    let est = out.estimated_tokens(text.len());
    assert!(
        est > full.len() * 3 / 4 && est < full.len() * 5 / 4,
        "estimated {est}, real {}",
        full.len()
    );
    // Within budget: the whole prompt, exactly.
    let out = t.encode_bounded(&text, opts(1 << 20), text.len()).unwrap();
    assert!(out.complete);
    assert_eq!(out.ids, full);
    assert_eq!(out.estimated_tokens(text.len()), full.len());
}

#[test]
fn the_token_cap_bounds_the_bytes_read() {
    let mut t = tokenizer();
    // Far more text than 512 ids can need: only a window is read, the ids are exact.
    let text = prose(200_000);
    let out = t.encode(&text, opts(512)).unwrap();
    assert_eq!(out.ids.len(), 512);
    assert!(!out.complete);
    let head_full = t.encode_full(&text[..20_000], false).unwrap();
    assert_eq!(out.ids[..], head_full[..512]);
}
