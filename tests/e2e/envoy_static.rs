//! Real Envoy + the filter in static mode (workers from the plugin configuration, no
//! sidecar) in front of mock workers: the worker Envoy forwarded to is the one the filter
//! chose, a repeated long prompt goes to the worker that has it, headers and token ids
//! reach the worker intact, bad inputs get JSON errors.

use crate::common::*;
use kvgate_http::post as http_post;
use kvgate_stack::{Stack, StackOptions};
use serde_json::json;

#[test]
fn static_mode_in_real_envoy() {
    let dir = test_dir("envoy-static");
    let mut opts = StackOptions::new(&dir);
    opts.sidecar = false;
    opts.workers = 3;
    // Static mode predicts caches per Envoy worker thread (no sidecar to share them, see
    // README "Static mode"); one thread makes "the repeat goes to the same worker" exact.
    opts.concurrency = 1;
    opts.plugin = json!({"decision_header": true});
    let stack = Stack::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    let url = stack.envoy.url("/v1/chat/completions");

    // The chosen worker is the one that served it, and the first choice sticks.
    let mut first = None;
    for q in ["a", "b", "c", "d"] {
        let r = http_post(
            &url,
            &[
                ("x-worker-instance-id", "3"),
                ("x-gateway-destination-endpoint", "127.0.0.1:1"),
            ],
            &long_chat(q),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let served = r.header("x-kvgate-worker").unwrap().to_string();
        let decision = r.header("x-kvgate-decision").unwrap().to_string();
        assert!(
            decision.contains(&format!("{served}/0 ")),
            "decision {decision} vs served by {served}"
        );
        match &first {
            None => first = Some(served),
            Some(f) => assert_eq!(&served, f, "repeated prefix moved: {decision}"),
        }
    }
    // What the workers received: routing headers, never the client's, and token ids.
    let log = request_log(&stack.request_log);
    assert_eq!(log.len(), 4);
    for line in &log {
        let h = &line["routing_headers"];
        assert_eq!(
            h["x-worker-instance-id"].as_str().unwrap(),
            line["worker_id"].to_string()
        );
        assert_ne!(
            h["x-gateway-destination-endpoint"].as_str().unwrap(),
            "127.0.0.1:1"
        );
        assert!(line["token_ids"].as_array().unwrap().len() > 500);
    }
    // A golden chat reaches the worker with exactly Hugging Face's token ids.
    let case = &golden()[0];
    let r = http_post(&url, &[], &golden_body(case)).unwrap();
    assert_eq!(r.status, 200);
    let last = request_log(&stack.request_log).pop().unwrap();
    let ids: Vec<u64> = last["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert_eq!(ids, golden_ids(case));

    // Bad input gets JSON errors from the gateway.
    let r = http_post(&url, &[], b"{oops").unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_json");
    let r = http_post(
        &url,
        &[],
        br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    )
    .unwrap();
    assert_eq!(r.status, 404);
    // /v1/models passes through to a worker.
    let status = kvgate_http::get(&stack.envoy.url("/v1/models"))
        .unwrap()
        .status;
    assert_eq!(status, 200);
    let prom = stack.envoy.prometheus();
    assert!(
        prom.contains("kvgate_decisions_routed"),
        "filter metrics on /stats/prometheus"
    );
}

/// The worker the decision header marks as chosen (`w/r ... logit=..*`).
fn chosen_worker(decision: &str) -> String {
    decision
        .split(" | ")
        .find(|seg| seg.ends_with('*'))
        .and_then(|seg| seg.split('/').next())
        .unwrap_or_default()
        .to_string()
}

/// Issue 17 items 4 and 5 in real Envoy: the destination header lists the chosen worker
/// and the next-best ones, so a chosen worker that died costs Envoy a retry to the next
/// listed worker, not an error; an opt-in session token returned with a response brings
/// the next request of that session back to its worker.
#[test]
fn fallbacks_survive_a_dead_worker_and_sessions_stick() {
    let dir = test_dir("envoy-fallback");
    let mut opts = StackOptions::new(&dir);
    opts.sidecar = false;
    opts.workers = 3;
    opts.concurrency = 1;
    opts.plugin = json!({
        "decision_header": true,
        "session_affinity_header": "x-session-token",
        "session_affinity_slack": 100.0,
    });
    let mut stack = Stack::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    let url = stack.envoy.url("/v1/chat/completions");

    let r = http_post(&url, &[], &long_chat("fallback")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let served = r.header("x-kvgate-worker").unwrap().to_string();
    let token = r.header("x-session-token").unwrap().to_string();
    assert_eq!(token, format!("{:x}.0", served.parse::<u64>().unwrap()));
    let log = request_log(&stack.request_log);
    let dest = log[0]["routing_headers"]["x-gateway-destination-endpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let listed: Vec<&str> = dest.split(',').collect();
    assert_eq!(listed.len(), 3, "chosen + max_fallbacks (2): {dest}");
    let served_at = stack
        .workers
        .iter()
        .find(|w| w.instance_id.to_string() == served)
        .unwrap()
        .endpoint
        .clone();
    assert_eq!(listed[0], served_at);

    // Another session's token moves a request to that session's worker.
    for w in stack
        .workers
        .iter()
        .map(|w| w.instance_id)
        .collect::<Vec<_>>()
    {
        let t = format!("{w:x}.0");
        let r = http_post(&url, &[("x-session-token", &t)], &long_chat("other")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-kvgate-worker"), Some(w.to_string().as_str()));
        assert_eq!(r.header("x-session-token"), Some(t.as_str()));
    }

    // Kill the chosen worker: the filter still chooses it (static mode knows no health),
    // and Envoy's connect-failure retry goes to the next listed worker.
    let idx = stack
        .workers
        .iter()
        .position(|w| w.instance_id.to_string() == served)
        .unwrap();
    stack.workers[idx].proc.kill();
    for _ in 0..3 {
        let r = http_post(&url, &[("x-session-token", &token)], &long_chat("fallback")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let decision = r.header("x-kvgate-decision").unwrap();
        let now = r.header("x-kvgate-worker").unwrap();
        assert_eq!(chosen_worker(decision), served, "{decision}");
        assert_ne!(now, served);
        let now_at = &stack
            .workers
            .iter()
            .find(|w| w.instance_id.to_string() == now)
            .unwrap()
            .endpoint;
        assert!(
            listed[1..].contains(&now_at.as_str()),
            "{now_at} not in {dest}"
        );
    }
}
