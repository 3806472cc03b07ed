//! Times whole routing decisions of one VM natively (or as a wasm32-wasip1 command in V8,
//! `tests/tools/wasm-bench.mjs`), against the fake host: first-seen ~2k-token chats built from
//! ShareGPT prompts, each with a new first line, routed to 4 static workers (approximate mode),
//! the stream ended after each decision. Prints p50/p99 µs of the whole `Vm::decide`.
//!
//! `decision_bench MODEL_DIR SHAREGPT_JSON [REQUESTS] [MESSAGES]` (`MODEL_DIR` holds the Qwen3
//! `tokenizer.json` and `tokenizer_config.json`; MESSAGES ~2k-token messages per chat, roles
//! alternating and ending with the user's, default 1: 8 is the overhead bench's 16k body).

#![allow(clippy::indexing_slicing)]

use std::error::Error;
use std::time::Instant;

use kvgate_engine::headers::RoutedPath;
use kvgate_engine::testing::FakeHost;
use kvgate_engine::vm::{vm_config_model, Vm, VmConfig};
use serde_json::{json, Value};

const MODEL: &str = "Qwen/Qwen3-0.6B";

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(sharegpt)) = (args.get(1), args.get(2)) else {
        return Err("usage: decision_bench MODEL_DIR SHAREGPT_JSON [REQUESTS] [MESSAGES]".into());
    };
    let requests: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(400);
    let messages: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let dir = std::path::Path::new(dir);
    let tokenizer = std::fs::read(dir.join("tokenizer.json"))?;
    let config = std::fs::read_to_string(dir.join("tokenizer_config.json"))?;
    let model = vm_config_model(MODEL, 16, &tokenizer, &config);
    let vm_config = VmConfig::parse(json!({ "models": [model] }).to_string().as_bytes())?;
    let workers: Vec<Value> = (1..=4)
        .map(|i| json!({"instance_id": i, "endpoint": format!("127.0.0.1:{}", 18000 + i), "model": MODEL, "block_size": 16}))
        .collect();
    let plugin = json!({"sidecar_cluster": "", "workers": workers}).to_string();
    let host = FakeHost::at(1_796_000_000_000);
    let mut vm = Vm::configure(&host, 1, 1, plugin.as_bytes(), &vm_config)?;

    let chats: Value = serde_json::from_slice(&std::fs::read(sharegpt)?)?;
    let texts: Vec<&str> = chats
        .as_array()
        .ok_or("not a ShareGPT array")?
        .iter()
        .filter_map(|c| c.pointer("/conversations/0/value")?.as_str())
        .collect();
    let mut next = 0usize;
    let mut body = |n: usize| {
        let chat: Vec<Value> = (0..messages)
            .map(|j| {
                let mut text = format!("[{n}.{j}] ");
                while text.len() < 8800 {
                    text.push_str(texts[next % texts.len()]);
                    text.push_str("\n\n");
                    next += 1;
                }
                let role = if (messages - 1 - j) % 2 == 0 {
                    "user"
                } else {
                    "assistant"
                };
                json!({"role": role, "content": text})
            })
            .collect();
        json!({"model": MODEL, "messages": chat, "max_tokens": 1})
            .to_string()
            .into_bytes()
    };
    let mut times = Vec::with_capacity(requests);
    for n in 0..requests + 20 {
        let b = body(n);
        let ctx = 2 + n as u32;
        host.advance(2);
        let t0 = Instant::now();
        let _ = vm.decide(&host, ctx, RoutedPath::Chat, &b, None);
        let us = t0.elapsed().as_secs_f64() * 1e6;
        vm.request_done(&host, ctx);
        if n % 10 == 0 {
            vm.on_tick(&host);
        }
        if n >= 20 {
            times.push(us);
        }
    }
    times.sort_by(f64::total_cmp);
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize];
    println!(
        "decide: {} requests, p50 {:.0} µs, p99 {:.0} µs",
        times.len(),
        p(0.5),
        p(0.99)
    );
    Ok(())
}
