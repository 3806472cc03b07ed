//! Times the warm decision path of agentic chat requests stage by stage (parse, conversation,
//! template, tokenize), natively or as a wasm32-wasip1 command in V8 (`tests/tools/wasm-bench.mjs`).
//!
//! `agentic_bench MODEL_DIR GOLDEN_JSONL [ROUNDS]`: `MODEL_DIR` holds the Qwen3 `tokenizer.json`
//! and `tokenizer_config.json`; `GOLDEN_JSONL` is `tests/fixtures/qwen3/qwen3_chat_template_golden.jsonl`.
//! The bodies are built like the overhead benchmark's "agentic" set: for each τ-bench trajectory
//! (its longest request), every prefix ending at a user or tool message that an assistant answers,
//! with the fixture's 14 tools. One warm-up round fills the caches, then ROUNDS (default 20)
//! rounds run every body in order; prints p50/p99 µs per stage, for the plain conversion
//! (`conversation::render_input`, nothing reused) and for the one `ModelPrompt` uses
//! (`render_input_cached`, the tools list reused), measured alternately in the same run.

// Indexing the fixture's JSON values: `Value`'s index yields null for a missing key.
#![allow(clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::error::Error;
use std::time::Instant;

use kvgate_prompt::request::{self, Payload};
use kvgate_prompt::{conversation, Endpoint, Limits, ModelPrompt, PromptOptions, PromptText};
use serde_json::Value;

fn bodies(golden: &str) -> Result<Vec<Vec<u8>>, Box<dyn Error>> {
    let mut longest: BTreeMap<String, Value> = BTreeMap::new();
    for line in golden.lines() {
        let v: Value = serde_json::from_str(line)?;
        let Some(id) = v["id"].as_str() else { continue };
        let req = &v["request"];
        if req["tools"].as_array().is_none_or(|t| t.len() < 10) {
            continue;
        }
        let trajectory = id.rsplit_once(":upto").map_or(id, |(t, _)| t).to_owned();
        let len = |r: &Value| r["messages"].as_array().map_or(0, Vec::len);
        if longest.get(&trajectory).is_none_or(|r| len(r) < len(req)) {
            longest.insert(trajectory, req.clone());
        }
    }
    let mut out = Vec::new();
    for req in longest.values() {
        let msgs = req["messages"].as_array().cloned().unwrap_or_default();
        for i in 0..msgs.len() {
            let role = msgs[i]["role"].as_str().unwrap_or("");
            let answered = msgs
                .get(i + 1)
                .is_none_or(|n| n["role"].as_str() == Some("assistant"));
            if (role == "user" || role == "tool") && answered {
                let body = serde_json::json!({
                    "model": req["model"], "messages": &msgs[..=i], "tools": req["tools"], "max_tokens": 1
                });
                out.push(serde_json::to_vec(&body)?);
            }
        }
    }
    Ok(out)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(golden)) = (args.get(1), args.get(2)) else {
        return Err("usage: agentic_bench MODEL_DIR GOLDEN_JSONL [ROUNDS]".into());
    };
    let rounds: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(20);
    let tok = std::fs::read(format!("{dir}/tokenizer.json"))?;
    let cfg = std::fs::read(format!("{dir}/tokenizer_config.json"))?;
    let mut model = ModelPrompt::new(&tok, &cfg, PromptOptions::default())?;
    let bodies = bodies(&std::fs::read_to_string(golden)?)?;
    let mean_kb = bodies.iter().map(Vec::len).sum::<usize>() as f64 / bodies.len() as f64 / 1e3;
    println!("{} agentic bodies, mean {mean_kb:.1} KB", bodies.len());

    let names = ["parse", "conversation", "template", "tokenize", "total"];
    let mut samples: [Vec<Vec<f64>>; 2] =
        [vec![Vec::new(); names.len()], vec![Vec::new(); names.len()]];
    let limits = Limits::default();
    for round in 0..=rounds {
        for (body, cached) in bodies.iter().flat_map(|b| [(b, false), (b, true)]) {
            let t0 = Instant::now();
            let req = request::parse(Endpoint::ChatCompletions, body, &limits)?;
            let t1 = Instant::now();
            let Payload::Chat(chat) = &req.payload else {
                return Err("not a chat body".into());
            };
            let opts = model.options();
            let input = if cached {
                conversation::render_input_cached(
                    chat,
                    opts.compat,
                    model.template(),
                    &opts.default_chat_template_kwargs,
                    0,
                )?
            } else {
                conversation::render_input(
                    chat,
                    opts.compat,
                    model.template().content_format(),
                    &opts.default_chat_template_kwargs,
                    0,
                )?
            };
            let t2 = Instant::now();
            let text = model.template().render(input)?;
            let t3 = Instant::now();
            let out = model.encode(
                PromptText::Text {
                    text,
                    source: kvgate_prompt::PromptSource::Chat,
                    batch_size: 1,
                    add_special_tokens: false,
                },
                32_768,
            )?;
            let t4 = Instant::now();
            std::hint::black_box(out);
            if round > 0 {
                let us = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e6;
                for (s, v) in samples[usize::from(cached)].iter_mut().zip([
                    us(t0, t1),
                    us(t1, t2),
                    us(t2, t3),
                    us(t3, t4),
                    us(t0, t4),
                ]) {
                    s.push(v);
                }
            }
        }
    }
    for (label, samples) in ["plain", "tools reused"].iter().zip(samples.iter_mut()) {
        println!("{label}:");
        for (name, s) in names.iter().zip(samples.iter_mut()) {
            let p50 = pct(s, 0.5);
            let p99 = pct(s, 0.99);
            println!("  {name:<13} p50 {p50:>8.1} µs   p99 {p99:>8.1} µs");
        }
    }
    println!("{:?}", model.template().tools_cache_stats());
    Ok(())
}
