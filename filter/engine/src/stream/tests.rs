//! Native tests of one stream through the filter: header stripping, body limits, the
//! decision applied (headers, body, route cache, decision header), the response path and
//! the free at the end — what the glue used to do inside proxy-wasm callbacks.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;
use crate::testing::FakeHost;
use crate::tests::{files, long_chat, worker};
use crate::vm::VmConfig;
use kvgate_core::workers::WorkerRole;

fn static_vm(host: &FakeHost, extra: &str) -> Vm {
    let workers: Vec<_> = (1..=2).map(|i| worker(i, WorkerRole::Aggregated)).collect();
    vm_with(host, &workers, extra)
}

fn vm_with(host: &FakeHost, workers: &[kvgate_core::workers::WorkerInfo], extra: &str) -> Vm {
    let cfg = format!(
        r#"{{"sidecar_cluster": "", "max_body_bytes": 100000, "workers": {} {extra}}}"#,
        serde_json::to_string(&workers).unwrap()
    );
    let f = files();
    let vm_cfg = VmConfig::parse(
        &serde_json::to_vec(&serde_json::json!({"models": [{
            "name": f.name,
            "block_size": 16,
            "tokenizer_json": String::from_utf8(f.tokenizer_json).unwrap(),
            "tokenizer_config_json": String::from_utf8(f.tokenizer_config_json).unwrap(),
        }]}))
        .unwrap(),
    )
    .unwrap();
    Vm::configure(host, 1, 1, cfg.as_bytes(), &vm_cfg).unwrap()
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn post(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = headers(&[(":method", "POST"), (":path", "/v1/chat/completions")]);
    h.extend(headers(extra));
    h
}

#[test]
fn client_routing_headers_are_removed_on_every_path() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, "");
    let mut s = Stream::new(1);
    let mut get = headers(&[
        (":method", "GET"),
        (":path", "/v1/models"),
        ("x-worker-instance-id", "9"),
        ("X-Dynamo-Anything", "1"),
        ("x-request-id", "r"),
    ]);
    let step = s.request_headers(&mut vm, &h, &get, true);
    assert_eq!(
        step.remove,
        vec!["x-worker-instance-id", "X-Dynamo-Anything"]
    );
    assert_eq!(step.next, Next::Continue, "not a routed path");
    get[0].1 = "POST".into();
    get[1].1 = "/v1/chat/completions".into();
    let step = Stream::new(2).request_headers(&mut vm, &h, &get, false);
    assert_eq!(step.remove.len(), 2);
    assert_eq!(step.next, Next::Pause, "buffer the body");
}

#[test]
fn bodies_over_the_limit_are_answered_413_declared_or_buffered() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, "");
    let step =
        Stream::new(1).request_headers(&mut vm, &h, &post(&[("content-length", "100001")]), false);
    let Next::Reply(r) = step.next else { panic!() };
    assert_eq!((r.status, r.code), (413, "request_too_large"));
    let mut s = Stream::new(2);
    assert_eq!(
        s.request_headers(&mut vm, &h, &post(&[]), false).next,
        Next::Pause
    );
    assert_eq!(s.request_body(&mut vm, &h, 50_000, false), Next::Pause);
    let Next::Reply(r) = s.request_body(&mut vm, &h, 100_001, false) else {
        panic!()
    };
    assert_eq!(r.status, 413);
    assert_eq!(h.metric_value("kvgate.errors.request_too_large"), 2);
}

#[test]
fn a_decision_sets_headers_body_and_clears_the_route_cache() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, r#", "decision_header": true"#);
    let mut s = Stream::new(1);
    s.request_headers(&mut vm, &h, &post(&[("x-tenant-id", "t1")]), false);
    let body = long_chat("hi");
    assert_eq!(s.request_body(&mut vm, &h, body.len(), true), Next::Decide);
    let Verdict::Continue {
        headers,
        body: new_body,
        clear_route_cache,
    } = s.decide(&mut vm, &h, &body)
    else {
        panic!()
    };
    assert!(clear_route_cache);
    assert!(headers
        .iter()
        .any(|(n, v)| *n == "x-gateway-destination-endpoint" && v.starts_with("127.0.0.1:")));
    assert!(new_body.is_some(), "token ids injected");
    let rank = |hs: &[(&str, String)]| {
        hs.iter()
            .find(|(n, _)| *n == "x-data-parallel-rank")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(
        rank(&headers).as_deref(),
        Some("0"),
        "plain vLLM's dp rank header"
    );
    let hs = s.response_headers(&vm);
    let (name, explain) = hs[0];
    assert_eq!(name, "x-kvgate-decision");
    assert!(explain.starts_with("mode=aggregated"), "{explain}");
    assert_eq!(h.metric_value("kvgate.decisions.routed"), 1);
    assert_eq!(h.histogram("kvgate.decision_us").len(), 1);
    // After routing, later body callbacks pass.
    assert_eq!(
        s.request_body(&mut vm, &h, body.len(), true),
        Next::Continue
    );
}

#[test]
fn the_route_cache_is_cleared_only_when_the_routing_headers_change() {
    let h = FakeHost::at(1_000);
    // One worker: every decision sets the same headers.
    let mut vm = vm_with(&h, &[worker(1, WorkerRole::Aggregated)], "");
    let body = long_chat("hi");
    let decide = |vm: &mut crate::Vm, ctx: u32, hs: &[(&str, &str)]| {
        let mut s = Stream::new(ctx);
        s.request_headers(vm, &h, &post(hs), false);
        s.request_body(vm, &h, body.len(), true);
        match s.decide(vm, &h, &body) {
            Verdict::Continue {
                headers,
                clear_route_cache,
                ..
            } => (headers, clear_route_cache),
            Verdict::Reply(r) => panic!("{}", r.status),
        }
    };
    // A request without routing headers leaves with them: changed.
    let (set, cleared) = decide(&mut vm, 1, &[]);
    assert!(cleared);
    // One that came with exactly the headers the decision sets (a second gateway behind
    // the first, deciding the same): unchanged, the route stays.
    let same: Vec<(&str, &str)> = set.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let (again, cleared) = decide(&mut vm, 2, &same);
    assert_eq!(again, set);
    assert!(!cleared);
    // A client's own choice of worker differs from the decision: changed.
    let (_, cleared) = decide(
        &mut vm,
        3,
        &[("x-gateway-destination-endpoint", "10.9.9.9:1")],
    );
    assert!(cleared);
}

#[test]
fn errors_are_replied_and_forwards_leave_the_request_alone() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, r#", "unknown_model": "passthrough""#);
    let mut s = Stream::new(1);
    s.request_headers(&mut vm, &h, &post(&[]), false);
    let Verdict::Reply(r) = s.decide(&mut vm, &h, b"[1,2]") else {
        panic!()
    };
    assert_eq!(r.status, 400);
    assert_eq!(h.metric_value(&format!("kvgate.errors.{}", r.code)), 1);
    let mut s = Stream::new(2);
    s.request_headers(&mut vm, &h, &post(&[]), false);
    let unknown = br#"{"model":"other","messages":[{"role":"user","content":"x"}]}"#;
    assert_eq!(
        s.decide(&mut vm, &h, unknown),
        Verdict::Continue {
            headers: Vec::new(),
            body: None,
            clear_route_cache: false
        }
    );
    assert_eq!(h.metric_value("kvgate.forwarded.unknown_model"), 1);
    assert!(s.response_headers(&vm).is_empty());
}

#[test]
fn the_response_ends_the_prefill_and_the_end_of_the_stream_frees() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, r#", "router_track_output_blocks": true"#);
    let mut s = Stream::new(1);
    s.request_headers(&mut vm, &h, &post(&[]), false);
    let body = long_chat("stream");
    assert!(matches!(
        s.decide(&mut vm, &h, &body),
        Verdict::Continue { .. }
    ));
    let prefill = || h.metric_value("kvgate.inflight.prefill_tokens");
    assert!(prefill() > 0);
    assert!(s.wants_response_bytes(&vm, 10));
    s.response_body(&mut vm, &h, 10, b"data: {}\n\n");
    assert!(
        prefill() > 0,
        "published at the next tick, not on the response path"
    );
    vm.on_tick(&h);
    assert_eq!(prefill(), 0, "first chunk: prefill done");
    assert_eq!(h.metric_value("kvgate.inflight.requests"), 1);
    s.done(&mut vm, &h);
    s.done(&mut vm, &h);
    vm.on_tick(&h);
    assert_eq!(h.metric_value("kvgate.inflight.requests"), 0);
    assert_eq!(h.metric_value("kvgate.inflight.decode_blocks"), 0);
    // An unrouted stream never needs response bytes.
    assert!(!Stream::new(9).wants_response_bytes(&vm, 10));
}

#[test]
fn a_request_that_ends_in_trailers_is_decided_at_the_trailers() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, "");
    let mut s = Stream::new(1);
    assert_eq!(
        s.request_headers(&mut vm, &h, &post(&[]), false).next,
        Next::Pause
    );
    let body = long_chat("trailers");
    assert_eq!(s.request_body(&mut vm, &h, body.len(), false), Next::Pause);
    assert_eq!(s.request_trailers(&mut vm), Next::Decide);
    assert_eq!(s.body_size(), body.len());
    let Verdict::Continue { headers, .. } = s.decide(&mut vm, &h, &body) else {
        panic!()
    };
    assert!(headers
        .iter()
        .any(|(n, _)| *n == "x-gateway-destination-endpoint"));
    assert_eq!(s.request_trailers(&mut vm), Next::Continue, "decided once");
    let mut get = Stream::new(2);
    get.request_headers(&mut vm, &h, &headers_of("GET", "/v1/models"), false);
    assert_eq!(
        get.request_trailers(&mut vm),
        Next::Continue,
        "unrouted path"
    );
}

fn headers_of(method: &str, path: &str) -> Vec<(String, String)> {
    headers(&[(":method", method), (":path", path)])
}

#[test]
fn requests_forwarded_unrouted_lose_the_clients_routing_keys() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, r#", "unknown_model": "passthrough""#);
    for (ctx, body) in [
        (
            1,
            &br#"{"model":"other","messages":[{"role":"user","content":"x"}],"nvext":{"backend_instance_id":2,"decode_worker_id":1}}"#[..],
        ),
        (
            2,
            &br#"{"model":"Qwen/Qwen3-0.6B","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:,"}}]}],"nvext":{"prefill_worker_id":3}}"#[..],
        ),
    ] {
        let mut s = Stream::new(ctx);
        s.request_headers(&mut vm, &h, &post(&[]), false);
        let Verdict::Continue {
            headers,
            body: Some(b),
            ..
        } = s.decide(&mut vm, &h, body)
        else {
            panic!("{ctx}: routing keys kept")
        };
        assert!(headers.is_empty(), "{ctx}: not routed");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["nvext"], serde_json::json!({}), "{ctx}");
    }
    assert_eq!(h.metric_value("kvgate.forwarded.unknown_model"), 1);
    assert_eq!(h.metric_value("kvgate.forwarded.unsupported_request"), 1);
}

#[test]
fn the_watchdog_resumes_streams_without_body_callbacks_and_cuts_slow_bodies() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(
        &h,
        r#", "pause_watchdog_ms": 100, "request_timeout_ms": 1000"#,
    );
    // Envoy without allow_on_headers_stop_iteration: no body callback ever comes.
    let mut s = Stream::new(1);
    assert_eq!(
        s.request_headers(&mut vm, &h, &post(&[]), false).next,
        Next::Pause
    );
    h.advance(99);
    assert!(vm.on_tick(&h).is_empty());
    h.advance(1);
    assert_eq!(vm.on_tick(&h), vec![crate::held::StreamAction::Resume(1)]);
    assert_eq!(h.metric_value("kvgate.watchdog.resumed"), 1);
    // Once resumed, its late body passes unrouted and nothing is booked.
    let body = long_chat("late");
    assert_eq!(
        s.request_body(&mut vm, &h, body.len(), true),
        Next::Continue
    );
    assert_eq!(vm.engine.in_flight(), 0);
    s.done(&mut vm, &h);

    // A body callback proves the pause works; a body that stalls is answered 408.
    let mut slow = Stream::new(2);
    slow.request_headers(&mut vm, &h, &post(&[]), false);
    assert_eq!(slow.request_body(&mut vm, &h, 10, false), Next::Pause);
    h.advance(999);
    assert!(vm.on_tick(&h).is_empty(), "not resumed: only slow");
    h.advance(1);
    let actions = vm.on_tick(&h);
    let [crate::held::StreamAction::Reply(2, r)] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!((r.status, r.code), (408, "request_timeout"));
    assert_eq!(h.metric_value("kvgate.errors.request_timeout"), 1);
    assert_eq!(slow.request_body(&mut vm, &h, 20, true), Next::Continue);
    assert_eq!(vm.engine.in_flight(), 0);
}

#[test]
fn the_vllm_dp_rank_header_can_be_turned_off() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, r#", "vllm_dp_rank_header": false"#);
    let mut s = Stream::new(1);
    s.request_headers(&mut vm, &h, &post(&[("x-data-parallel-rank", "3")]), false);
    let Verdict::Continue { headers, .. } = s.decide(&mut vm, &h, &long_chat("no rank")) else {
        panic!()
    };
    assert!(headers.iter().all(|(n, _)| *n != "x-data-parallel-rank"));
    assert!(headers.iter().any(|(n, _)| *n == "x-dp-rank"));
}

fn destination(headers: &[(&'static str, String)]) -> String {
    headers
        .iter()
        .find(|(n, _)| *n == "x-gateway-destination-endpoint")
        .map(|(_, v)| v.clone())
        .unwrap()
}

#[test]
fn the_destination_lists_a_fallback_and_a_session_token_brings_a_request_back() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(
        &h,
        r#", "session_affinity_header": "X-Session-Token", "session_affinity_slack": 100"#,
    );
    let mut first = Stream::new(1);
    first.request_headers(&mut vm, &h, &post(&[]), false);
    let Verdict::Continue { headers, .. } = first.decide(&mut vm, &h, &long_chat("a")) else {
        panic!()
    };
    let dest = destination(&headers);
    let (chosen, fallback) = dest.split_once(',').expect("a fallback is listed");
    assert_ne!(chosen, fallback);
    assert!(!fallback.contains(','), "two workers: one fallback");
    let hs = first.response_headers(&vm);
    let [(name, token)] = hs.as_slice() else {
        panic!("{hs:?}")
    };
    assert_eq!(*name, "x-session-token");
    let worker = headers::parse_session_token(token).unwrap();
    assert_eq!(chosen, format!("127.0.0.1:{}", 18000 + worker.worker_id));
    first.done(&mut vm, &h);

    // With a wide slack (the slack itself is tested in kvgate-core's route), the session's
    // worker wins every time, for either worker.
    for id in [1u64, 2, 1, 2] {
        let token = headers::session_token(WorkerKey::new(id, 0));
        let mut s = Stream::new(10 + id as u32);
        s.request_headers(&mut vm, &h, &post(&[("x-session-token", &token)]), false);
        let Verdict::Continue { headers, .. } = s.decide(&mut vm, &h, &long_chat("b")) else {
            panic!()
        };
        let out = s.response_headers(&vm);
        assert_eq!(out, vec![("x-session-token", token.as_str())]);
        assert!(headers
            .iter()
            .any(|(n, v)| *n == "x-worker-instance-id" && *v == id.to_string()));
        s.done(&mut vm, &h);
    }
}

#[test]
fn without_affinity_configured_no_token_is_read_or_written() {
    let h = FakeHost::at(1_000);
    let mut vm = static_vm(&h, r#", "max_fallbacks": 0"#);
    for id in [1u64, 2] {
        let token = headers::session_token(WorkerKey::new(id, 0));
        let mut s = Stream::new(id as u32);
        s.request_headers(&mut vm, &h, &post(&[("x-session-token", &token)]), false);
        let Verdict::Continue { headers, .. } = s.decide(&mut vm, &h, &long_chat("c")) else {
            panic!()
        };
        assert!(!destination(&headers).contains(','), "max_fallbacks 0");
        assert!(s.response_headers(&vm).is_empty());
        s.done(&mut vm, &h);
    }
}

/// Decides one long chat on `vm`; returns the routing headers.
fn decide_headers(vm: &mut Vm, h: &FakeHost, ctx: u32) -> (Stream, Vec<(&'static str, String)>) {
    let mut s = Stream::new(ctx);
    s.request_headers(vm, h, &post(&[]), false);
    let Verdict::Continue { headers, .. } = s.decide(vm, h, &long_chat("disaggregate")) else {
        panic!("not routed")
    };
    (s, headers)
}

fn value<'a>(hs: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

#[test]
fn prefill_fallbacks_are_named_and_an_unreachable_prefill_worker_is_quarantined() {
    let h = FakeHost::at(1_000);
    let workers = [
        worker(1, WorkerRole::Prefill),
        worker(2, WorkerRole::Prefill),
        worker(3, WorkerRole::Prefill),
        worker(4, WorkerRole::Decode),
    ];
    let mut vm = vm_with(&h, &workers, r#", "prefill_quarantine_ms": 5000"#);
    let (mut s, hs) = decide_headers(&mut vm, &h, 1);
    let chosen = value(&hs, "x-prefill-instance-id").unwrap().to_string();
    let fallbacks = value(&hs, "x-kvgate-prefill-fallbacks").unwrap();
    let ids: Vec<&str> = fallbacks
        .split(',')
        .map(|f| f.split('/').next().unwrap())
        .collect();
    assert_eq!(ids.len(), 2, "{fallbacks}");
    assert!(
        !ids.contains(&chosen.as_str()),
        "{fallbacks} repeats {chosen}"
    );
    assert_eq!(value(&hs, "x-kvgate-prefill-required"), None);

    // The decode worker reports the chosen prefill worker unreachable (and junk, and a
    // decode worker, which are ignored).
    s.upstream_response(&mut vm, &h, Some(&format!("{chosen},x,4")));
    assert_eq!(vm.engine.counters.prefill_quarantined, 1);
    for ctx in 2..12 {
        let (_, hs) = decide_headers(&mut vm, &h, ctx);
        assert_ne!(value(&hs, "x-prefill-instance-id"), Some(chosen.as_str()));
        assert!(!value(&hs, "x-kvgate-prefill-fallbacks")
            .unwrap_or_default()
            .split(',')
            .any(|f| f.split('/').next() == Some(chosen.as_str())));
    }
    assert_eq!(h.metric_value("kvgate.prefill.quarantined"), 1);
    // After the quarantine it is a candidate again.
    h.advance(5_001);
    let seen = (12..40).any(|ctx| {
        let (_, hs) = decide_headers(&mut vm, &h, ctx);
        value(&hs, "x-prefill-instance-id") == Some(chosen.as_str())
            || value(&hs, "x-kvgate-prefill-fallbacks")
                .unwrap_or_default()
                .contains(&format!("{chosen}/"))
    });
    assert!(seen, "prefill worker {chosen} never came back");
}

#[test]
fn enforce_disagg_names_its_models_and_tells_the_decode_worker() {
    let h = FakeHost::at(1_000);
    let decode_only = [worker(4, WorkerRole::Decode)];
    // Enforced for another model only: this one falls back to aggregated serving.
    let mut vm = vm_with(&h, &decode_only, r#", "enforce_disagg": ["other/model"]"#);
    let (_, hs) = decide_headers(&mut vm, &h, 1);
    assert_eq!(value(&hs, "x-dynamo-routing-mode"), Some("aggregated"));
    // Enforced for this model: 503 no_prefill_worker.
    let mut vm = vm_with(
        &h,
        &decode_only,
        r#", "enforce_disagg": ["Qwen/Qwen3-0.6B"]"#,
    );
    let mut s = Stream::new(1);
    s.request_headers(&mut vm, &h, &post(&[]), false);
    let Verdict::Reply(r) = s.decide(&mut vm, &h, &long_chat("x")) else {
        panic!("not refused")
    };
    assert_eq!((r.status, r.code), (503, "no_prefill_worker"));
    // With a prefill worker, the decode worker is told not to prefill locally.
    let both = [
        worker(1, WorkerRole::Prefill),
        worker(4, WorkerRole::Decode),
    ];
    let mut vm = vm_with(&h, &both, r#", "enforce_disagg": ["Qwen/Qwen3-0.6B"]"#);
    let (_, hs) = decide_headers(&mut vm, &h, 1);
    assert_eq!(value(&hs, "x-kvgate-prefill-required"), Some("true"));
}
