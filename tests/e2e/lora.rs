//! LoRA adapters end to end (real Envoy + the filter, the sidecar, nats-server, mock
//! workers announcing adapters): a request naming an adapter goes only to the workers
//! serving it, its blocks are hashed with the adapter's seed on both sides (the filter's
//! match of the worker's KV events proves it), and an adapter nobody serves is a 404.

use crate::common::*;
use kvgate_http::post as http_post;
use kvgate_stack::{wait_for, StackOptions};
use serde_json::{json, Value};
use std::time::Duration;

fn chat_for(model: &str, user: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&long_chat(user)).unwrap();
    v["model"] = model.into();
    serde_json::to_vec(&v).unwrap()
}

/// The overlap the decision header gives worker `id` (rank 0), and the chosen worker.
fn overlap_and_chosen(decision: &str, id: u64) -> Option<(u32, u64)> {
    let candidates: Vec<&str> = decision.split(" | ").skip(1).collect();
    let ov = |c: &str| -> Option<u32> { c.split("ov=").nth(1)?.split(' ').next()?.parse().ok() };
    let mine = candidates
        .iter()
        .find(|c| c.starts_with(&format!("{id}/0 ")))?;
    let chosen = candidates.iter().find(|c| c.ends_with('*'))?;
    Some((ov(mine)?, chosen.split('/').next()?.parse().ok()?))
}

#[test]
fn adapters_route_to_their_workers_and_match_their_own_cache() {
    let dir = test_dir("lora");
    let mut opts = StackOptions::new(&dir);
    opts.workers = 3;
    opts.per_worker_args = vec![
        vec!["--lora-adapters".into(), "sql-lora".into()],
        vec!["--lora-adapters".into(), "chat-lora".into()],
        Vec::new(),
    ];
    opts.plugin = json!({"decision_header": true});
    let stack = routable_stack(&opts);
    let url = stack.envoy.url("/v1/chat/completions");

    // Each adapter's requests reach only its worker (worker 3 serves no adapter).
    for (model, worker) in [("sql-lora", "1"), ("chat-lora", "2")] {
        for q in 0..3 {
            let body = chat_for(model, &format!("question {q}"));
            let r = wait_for(Duration::from_secs(20), || {
                http_post(&url, &[], &body).ok().filter(|r| r.status == 200)
            })
            .unwrap_or_else(|| panic!("{model} never routed"));
            assert_eq!(r.header("x-kvgate-worker"), Some(worker), "{model}");
        }
    }

    // Worker 1 cached the system prompt under sql-lora's seed; once its events reach the
    // filter, a new sql-lora request matches most of its prompt there: the filter hashed
    // with the same seed the worker stored.
    let matched = wait_for(Duration::from_secs(20), || {
        let r = http_post(&url, &[], &chat_for("sql-lora", "one more")).ok()?;
        let d = r.header("x-kvgate-decision")?.to_string();
        let (ov, chosen) = overlap_and_chosen(&d, 1)?;
        (ov >= 40 && chosen == 1).then_some(d)
    });
    assert!(
        matched.is_some(),
        "the filter never matched worker 1's LoRA blocks"
    );

    // The same prompt for the base model matches nothing there: another seed.
    let r = http_post(&url, &[], &chat_for("Qwen/Qwen3-0.6B", "one more")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let d = r.header("x-kvgate-decision").unwrap();
    let (ov, _) = overlap_and_chosen(d, 1).unwrap();
    assert_eq!(ov, 0, "base-model blocks matched LoRA blocks: {d}");

    // An adapter nobody serves: a JSON 404 from the gateway, not a worker.
    let r = http_post(&url, &[], &chat_for("no-such-lora", "x")).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let err: Value = r.json();
    assert_eq!(err["error"]["code"], "model_not_found", "{err}");
    assert!(r.header("x-kvgate-worker").is_none());
}
