//! The held request in real Envoy (issue 15 items 1, 3, 4): a body that ends in HTTP/2
//! trailers is still decided; without `allow_on_headers_stop_iteration` the watchdog resumes
//! requests (unrouted, counted) instead of leaving them hanging; a body that stalls gets a
//! JSON 408 and the stream is never left paused.

use crate::common::*;
use kvgate_http::post as http_post;
use kvgate_http::raw::{self, Request};
use kvgate_stack::{Stack, StackOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn static_stack(name: &str, plugin: Value, flag: bool) -> Stack {
    let dir = test_dir(name);
    let mut opts = StackOptions::new(&dir);
    opts.sidecar = false;
    opts.workers = 2;
    opts.concurrency = 1;
    opts.plugin = plugin;
    opts.allow_on_headers_stop_iteration = flag;
    Stack::start(&opts).unwrap_or_else(|e| panic!("{e}"))
}

/// One HTTP/2 (prior knowledge) POST whose body ends with trailers; the response status
/// and headers.
async fn h2_post_with_trailers(port: u16, body: Vec<u8>) -> (u16, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .header("content-type", "application/json")
        .header("x-worker-instance-id", "666")
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(req, false).unwrap();
    stream.send_data(bytes::Bytes::from(body), false).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-body-checksum", http::HeaderValue::from_static("1"));
    stream.send_trailers(trailers).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("no response in 20 s: the request hung")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let _ = chunk.unwrap();
    }
    (status, headers)
}

#[test]
fn an_http2_body_ending_in_trailers_is_decided() {
    let stack = static_stack("held-trailers", json!({"decision_header": true}), true);
    let mut v: Value = serde_json::from_slice(&long_chat("trailers")).unwrap();
    v["nvext"] = json!({"backend_instance_id": 666});
    let body = serde_json::to_vec(&v).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, headers) = rt.block_on(h2_post_with_trailers(stack.envoy.port, body));
    assert_eq!(status, 200);
    let decision = headers
        .get("x-kvgate-decision")
        .expect("decided at the trailers")
        .to_str()
        .unwrap();
    assert!(decision.starts_with("mode=aggregated"), "{decision}");
    let served = headers.get("x-kvgate-worker").unwrap().to_str().unwrap();
    // The worker got kvgate's routing, not the client's, and the prompt's token ids.
    let log = request_log(&stack.request_log);
    let line = log.last().unwrap();
    assert_eq!(
        line["routing_headers"]["x-worker-instance-id"].as_str(),
        Some(served)
    );
    assert!(line["token_ids"].as_array().unwrap().len() > 500);
}

/// The value of a Prometheus sample `name` (summed over its label sets), 0 when absent.
fn prom_value(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| {
            l.get(name.len()..)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[test]
fn without_the_pause_flag_the_watchdog_resumes_every_request() {
    let stack = static_stack(
        "held-flag-off",
        json!({"decision_header": true, "pause_watchdog_ms": 300}),
        false,
    );
    let url = stack.envoy.url("/v1/chat/completions");
    for q in ["a", "b", "c"] {
        let start = Instant::now();
        let r = http_post(&url, &[], &long_chat(q)).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.header("x-kvgate-decision").is_none(),
            "resumed unrouted, not decided"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "took {:?}",
            start.elapsed()
        );
    }
    let prom = stack.envoy.prometheus();
    assert!(
        prom_value(&prom, "kvgate_watchdog_resumed") >= 3,
        "{}",
        prom.lines()
            .filter(|l| l.contains("kvgate_watchdog"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_stalled_body_gets_a_json_408_and_nothing_stays_paused() {
    let stack = static_stack("held-slow-body", json!({"request_timeout_ms": 1000}), true);
    let addr = format!("127.0.0.1:{}", stack.envoy.port);
    let body = long_chat("slow");
    let req = Request::post_json("/v1/chat/completions", body.clone());
    let half = body.get(..body.len() / 2).unwrap();
    let reply = raw::send_partial_chunked(&addr, &req, half, Duration::from_secs(5));
    assert_eq!(reply.status, Some(408), "{reply:?}");
    let err = reply.json();
    assert_eq!(err["error"]["code"], "request_timeout", "{err}");
    assert!(
        reply.elapsed < Duration::from_secs(4),
        "{:?}",
        reply.elapsed
    );
    // The thread is free: the next request is decided at once.
    let r = http_post(&stack.envoy.url("/v1/chat/completions"), &[], &body).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let prom = stack.envoy.prometheus();
    assert!(prom_value(&prom, "kvgate_errors_request_timeout") >= 1);
}
