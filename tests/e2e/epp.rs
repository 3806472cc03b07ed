//! kvgate as a Gateway API Inference Extension endpoint picker in real Envoy (issue 18):
//! `envoy-config/envoy-epp.yaml` (ext_proc + override_host, no Wasm) in front of the same
//! mock workers as the filter's Envoy, the picker served by the same kvgate-sync
//! (`serve --epp`). The golden chats go to the worker the filter picks for the same index
//! state, with the same overlaps and token ids; a client abort frees the picker's booking;
//! with the picker down, FailOpen routes through the cluster's fallback balancer and
//! FailClose answers an error.

use crate::common::*;
use kvgate_faults::observe::Decision;
use kvgate_http::raw::{self, Stop};
use kvgate_stack::{
    free_port, start_epp_envoy, wait_for, Envoy, EppEnvoyOptions, Stack, StackOptions, MODEL,
};
use serde_json::json;
use std::time::Duration;

/// A stack whose sidecar also serves the picker (with the decision header on, as the
/// filter's), and the EPP gateway in front of the same workers.
fn epp_stack(name: &str) -> (Stack, Envoy, u16) {
    let dir = test_dir(name);
    let epp_port = free_port();
    let cfg = dir.join("epp-config.json");
    std::fs::write(
        &cfg,
        json!({"decision_header": true, "sync_wait_ms": 500}).to_string(),
    )
    .unwrap();
    let mut opts = StackOptions::new(&dir);
    opts.workers = 3;
    opts.plugin = json!({"decision_header": true});
    opts.sidecar_args = vec![
        "--epp".into(),
        format!("127.0.0.1:{epp_port}"),
        "--config".into(),
        cfg.display().to_string(),
    ];
    let stack = routable_stack(&opts);
    let gateway = start_epp_envoy(
        &stack.tools,
        &EppEnvoyOptions {
            workers: stack.workers.iter().map(|w| w.endpoint.clone()).collect(),
            epp_port,
            fail_open: false,
            ..EppEnvoyOptions::default()
        },
        &dir,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    stack
        .wait_routable_on(&gateway, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("the picker never routed: {e}"));
    (stack, gateway, epp_port)
}

fn post(envoy: &Envoy, body: &[u8]) -> (u16, Decision, String) {
    let r = kvgate_http::post(&envoy.url("/v1/chat/completions"), &[], body).unwrap();
    let line = r
        .header("x-kvgate-decision")
        .unwrap_or_default()
        .to_string();
    let d = Decision::parse(&line).unwrap_or_else(|| panic!("no decision line: {line:?}"));
    (r.status, d, line)
}

/// One metric sample of the sidecar's `/metrics` (0 when absent).
fn sidecar_metric(stack: &Stack, name: &str, label: &str) -> f64 {
    let s = stack.sidecar.as_ref().unwrap();
    let text = kvgate_http::get(&s.url("/metrics")).unwrap().text();
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .next()
        .unwrap_or(0.0)
}

#[test]
fn the_picker_routes_golden_chats_to_the_filters_worker() {
    let (stack, gateway, _) = epp_stack("epp-golden");
    // Chats of at least three blocks: their prefix decides, not a tie on load.
    let cases: Vec<Vec<u8>> = golden()
        .iter()
        .filter(|c| golden_ids(c).len() >= 48)
        .take(10)
        .map(golden_body)
        .collect();
    // Each chat once through the filter: its prefix is now cached on one worker. (A chat
    // the filter forwards unrouted by design has no decision to compare.)
    let cases: Vec<Vec<u8>> = cases
        .into_iter()
        .filter(|body| {
            let r = kvgate_http::post(&stack.envoy.url("/v1/chat/completions"), &[], body).unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("x-kvgate-decision").is_some()
        })
        .collect();
    assert!(
        cases.len() >= 5,
        "routed golden chats of three blocks or more"
    );
    std::thread::sleep(Duration::from_secs(1));
    let mut compared = 0;
    for body in &cases {
        let (s1, by_filter, l1) = post(&stack.envoy, body);
        let (s2, by_picker, l2) = post(&gateway, body);
        assert_eq!((s1, s2), (200, 200));
        assert_eq!(by_picker.degraded, None, "{l2}");
        assert!(by_picker.kv_aware(), "the picker used the index: {l2}");
        let (f, p) = (by_filter.chosen().unwrap(), by_picker.chosen().unwrap());
        // Envoy's override_host sent it where the picker said, with the filter's token
        // ids (nvext.token_data from the picker's body mutation).
        let log = request_log(&stack.request_log);
        let (a, b) = (&log[log.len() - 2], &log[log.len() - 1]);
        assert_eq!(b["worker_id"].as_u64(), Some(p.worker), "{b}");
        assert_eq!(a["token_ids"], b["token_ids"]);
        assert!(b["token_ids"].as_array().unwrap().len() >= 48);
        // Two workers holding the same number of the prompt's blocks are a tie the cost
        // formula breaks at random: then both picks must be among the best.
        let best = by_picker
            .candidates
            .iter()
            .map(|c| c.overlap)
            .max()
            .unwrap();
        let tied = by_picker
            .candidates
            .iter()
            .filter(|c| !c.prefill && c.overlap == best)
            .count();
        assert_eq!(p.overlap, best, "{l2}");
        assert_eq!(f.overlap, best, "{l1}");
        if tied > 1 {
            continue;
        }
        compared += 1;
        assert_eq!(
            (f.worker, f.dp_rank),
            (p.worker, p.dp_rank),
            "filter `{l1}` vs picker `{l2}`"
        );
        // Same prompt tokens, same hashes, same index: every candidate's overlap alike.
        let overlaps = |d: &Decision| {
            let mut v: Vec<(u64, u32, u64)> = d
                .candidates
                .iter()
                .map(|c| (c.worker, c.dp_rank, c.overlap))
                .collect();
            v.sort_unstable();
            v
        };
        assert_eq!(overlaps(&by_filter), overlaps(&by_picker), "{l1} vs {l2}");
    }
    assert!(compared >= 3, "only {compared} chats had one best worker");
    let routed = sidecar_metric(&stack, "kvgate_sync_epp_engine_total", "decisions.routed");
    assert!(routed >= cases.len() as f64, "{routed}");
}

#[test]
fn the_picker_frees_an_aborted_request_and_follows_the_failure_mode() {
    let (stack, gateway, _) = epp_stack("epp-abort");
    let inflight = || {
        sidecar_metric(
            &stack,
            "kvgate_sync_epp_engine_gauge",
            "kvgate.inflight.requests",
        )
    };
    // A long stream the client gives up on while it runs.
    let body = json!({
        "model": MODEL, "stream": true, "max_tokens": 2000,
        "messages": [{"role": "user", "content": "tell me a very long story"}]
    })
    .to_string()
    .into_bytes();
    let addr = format!("127.0.0.1:{}", gateway.port);
    let client = std::thread::spawn(move || {
        let req = raw::Request::post_json("/v1/chat/completions", body);
        raw::send(
            &addr,
            &req,
            Stop::AfterSend(Duration::from_secs(3)),
            Duration::from_secs(10),
        )
    });
    let booked = wait_for(Duration::from_secs(3), || (inflight() >= 1.0).then_some(()));
    assert!(booked.is_some(), "the picker never booked the stream");
    client.join().unwrap();
    let freed = wait_for(Duration::from_secs(10), || {
        (inflight() == 0.0).then_some(())
    });
    assert!(
        freed.is_some(),
        "booking not freed after the abort: {}",
        inflight()
    );

    // The picker unreachable: FailOpen forwards (round robin), FailClose fails.
    let dead = free_port();
    let workers: Vec<String> = stack.workers.iter().map(|w| w.endpoint.clone()).collect();
    let chat = long_chat("is the picker there?");
    for (fail_open, name) in [(true, "envoy-epp-open"), (false, "envoy-epp-closed")] {
        let g = start_epp_envoy(
            &stack.tools,
            &EppEnvoyOptions {
                workers: workers.clone(),
                epp_port: dead,
                fail_open,
                name: name.into(),
                ..EppEnvoyOptions::default()
            },
            &stack.dir,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let r = kvgate_http::post(&g.url("/v1/chat/completions"), &[], &chat).unwrap();
        if fail_open {
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.header("x-kvgate-decision").is_none());
        } else {
            assert!(r.status >= 500, "FailClose answered {}", r.status);
        }
    }
}
