//! In-process HTTP tests: a worker on port 0 streams a chat completion, answers whole
//! completions, reports its cache and stats, logs requests, and a decode worker runs its
//! prefill on a peer. No timing assertions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::{MockArgs, MockWorker};
use kvgate_http::{Client, Response};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

const T: Duration = Duration::from_secs(20);

fn tmp_log(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kvgate-mock-{name}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

async fn worker(extra: &[&str]) -> MockWorker {
    let mut args = vec![
        "--port",
        "0",
        "--speedup",
        "1000",
        "--num-gpu-blocks",
        "256",
        "--tokenizer",
        "word",
    ];
    args.extend_from_slice(extra);
    MockWorker::start(MockArgs::from_args(args).unwrap())
        .await
        .unwrap()
}

fn url(w: &MockWorker, path: &str) -> String {
    format!("http://{}{path}", w.addr())
}

async fn post(w: &MockWorker, path: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    Client::new(false, T)
        .unwrap()
        .post(&url(w, path), headers, body.to_string().into_bytes())
        .await
        .unwrap()
}

async fn get_json(w: &MockWorker, path: &str) -> Value {
    let r = Client::new(false, T)
        .unwrap()
        .get(&url(w, path))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

/// The `data:` payloads of an SSE body.
fn sse_events(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_a_chat_completion_and_reports_cache_stats_and_log() {
    let log = tmp_log("stream");
    let w = worker(&[
        "--instance-id",
        "4242",
        "--request-log",
        log.to_str().unwrap(),
    ])
    .await;
    let tokens: Vec<u32> = (100..150).collect();
    let body = json!({"model": "Qwen/Qwen3-0.6B", "messages": [{"role": "user", "content": "hi"}], "stream": true,
                      "stream_options": {"include_usage": true}, "max_tokens": 5, "nvext": {"token_data": tokens}});
    let headers = [
        ("x-request-id", "req-1"),
        ("x-worker-instance-id", "4242"),
        ("x-dynamo-routing-mode", "kv"),
    ];
    let r = post(&w, "/v1/chat/completions", &headers, &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-kvgate-worker"), Some("4242"));
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_events(&r.body);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks.len(), 6, "5 tokens and a usage chunk");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["id"], "chatcmpl-req-1");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "length");
    assert_eq!(chunks[5]["usage"]["prompt_tokens"], 50);
    assert_eq!(chunks[5]["usage"]["completion_tokens"], 5);

    // 50 prompt tokens = 3 full blocks; the generated tokens complete none.
    let cache = get_json(&w, "/kvgate/cache").await;
    assert_eq!(cache["worker_id"], 4242);
    assert_eq!(cache["ranks"][0]["blocks"].as_array().unwrap().len(), 3);
    assert_eq!(cache["ranks"][0]["capacity_blocks"], 256);
    assert_eq!(cache["ranks"][0]["active_blocks"], 0);
    let want = kvgate_core::hash::BlockHasher::new(16)
        .hash(&tokens, None, None, usize::MAX)
        .sequence;
    let mut want = want.clone();
    want.sort_unstable();
    let got: Vec<u64> = cache["ranks"][0]["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(got, want);

    // The same prompt again, whole: a 48-token prefix hit.
    let body = json!({"prompt": tokens, "max_tokens": 3});
    let r = post(&w, "/v1/completions", &[], &body).await;
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 48);
    assert_eq!(v["usage"]["completion_tokens"], 3);

    let stats = get_json(&w, "/kvgate/stats").await;
    assert_eq!(stats["totals"]["requests"], 2);
    assert_eq!(stats["totals"]["completed"], 2);
    assert_eq!(stats["totals"]["prompt_tokens"], 100);
    assert_eq!(stats["totals"]["cached_hit_tokens"], 48);
    assert_eq!(stats["totals"]["computed_prefill_tokens"], 52);
    assert_eq!(stats["ranks"][0]["events"]["last_event_id"], 1);

    let lines: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["request_id"], "req-1");
    assert_eq!(lines[0]["worker_id"], 4242);
    assert_eq!(lines[0]["token_ids"].as_array().unwrap().len(), 50);
    assert_eq!(lines[0]["prefix_hit_tokens"], 0);
    assert!(lines[0]["ttft_ms"].as_f64().is_some());
    assert_eq!(
        lines[0]["routing_headers"],
        json!({"x-request-id": "req-1", "x-worker-instance-id": "4242", "x-dynamo-routing-mode": "kv"})
    );
    assert_eq!(lines[1]["prefix_hit_tokens"], 48);

    // Clear empties the cache.
    let r = post(&w, "/kvgate/clear", &[], &json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        get_json(&w, "/kvgate/cache").await["ranks"][0]["blocks"],
        json!([])
    );
    w.shutdown().await;
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenizes_without_token_data_and_rejects_bad_requests() {
    let w = worker(&["--dp-size", "2"]).await;
    let body = json!({"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2});
    let r = post(&w, "/v1/chat/completions", &[("x-dp-rank", "1")], &body).await;
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 0);
    let stats = get_json(&w, "/kvgate/stats").await;
    assert_eq!(stats["ranks"][1]["requests"], 1);
    assert_eq!(stats["ranks"][0]["requests"], 0);
    let bad = post(&w, "/v1/chat/completions", &[("x-dp-rank", "5")], &body).await;
    assert_eq!(bad.status, 400);
    assert!(bad.header("x-kvgate-worker").is_some());
    let bad = post(&w, "/v1/completions", &[], &json!({"prompt": 5})).await;
    assert_eq!(bad.status, 400);
    let models = get_json(&w, "/v1/models").await;
    assert_eq!(models["data"][0]["id"], "Qwen/Qwen3-0.6B");
    assert_eq!(get_json(&w, "/health").await["status"], "ok");
    w.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_worker_runs_its_prefill_on_the_named_peer() {
    let p = worker(&["--instance-id", "11", "--role", "prefill"]).await;
    let peer = format!("11={}", p.addr());
    let d = worker(&["--instance-id", "22", "--role", "decode", "--peer", &peer]).await;
    let tokens: Vec<u32> = (0..40).collect();
    let body = json!({"prompt": tokens, "max_tokens": 4});
    let r = post(
        &d,
        "/v1/completions",
        &[("x-prefill-instance-id", "11")],
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-kvgate-worker"), Some("22"));
    let ps = get_json(&p, "/kvgate/stats").await;
    assert_eq!(ps["totals"]["computed_prefill_tokens"], 40);
    let ds = get_json(&d, "/kvgate/stats").await;
    assert_eq!(ds["totals"]["computed_prefill_tokens"], 0);
    assert_eq!(ds["totals"]["transferred_prefill_tokens"], 40);
    // Both caches hold the prompt's two full blocks.
    for w in [&p, &d] {
        assert_eq!(
            get_json(w, "/kvgate/cache").await["ranks"][0]["blocks"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    // An unreachable prefill worker: the next one the gateway listed runs the prefill,
    // and the decode worker names the unreachable one in its answer.
    let other: Vec<u32> = (100..140).collect();
    let body2 = json!({"prompt": other, "max_tokens": 4});
    let r = post(
        &d,
        "/v1/completions",
        &[
            ("x-prefill-instance-id", "99"),
            ("x-kvgate-prefill-fallbacks", "11/0"),
        ],
        &body2,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-kvgate-prefill-unreachable"), Some("99"));
    let ps = get_json(&p, "/kvgate/stats").await;
    assert_eq!(ps["totals"]["computed_prefill_tokens"], 80);
    // None reachable: the decode worker prefills itself (aggregated fallback) ...
    let third: Vec<u32> = (200..240).collect();
    let body3 = json!({"prompt": third, "max_tokens": 4});
    let r = post(
        &d,
        "/v1/completions",
        &[("x-prefill-instance-id", "99")],
        &body3,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-kvgate-prefill-unreachable"), Some("99"));
    let ds = get_json(&d, "/kvgate/stats").await;
    assert_eq!(ds["totals"]["computed_prefill_tokens"], 40);
    // ... unless the model requires disaggregated serving: a gateway error.
    let r = post(
        &d,
        "/v1/completions",
        &[
            ("x-prefill-instance-id", "99"),
            ("x-kvgate-prefill-required", "true"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-kvgate-prefill-unreachable"), Some("99"));
    // A malformed fallback list is a gateway bug: 400.
    let r = post(
        &d,
        "/v1/completions",
        &[
            ("x-prefill-instance-id", "11"),
            ("x-kvgate-prefill-fallbacks", "11"),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 400);
    d.shutdown().await;
    p.shutdown().await;
}
