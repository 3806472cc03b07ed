//! Fleet topologies end to end (issue: several gateways per sidecar, data-parallel ranks
//! over vLLM's stream): two Envoys sharing one sidecar both follow every worker-table
//! change at once, not only the first to ask; and a vLLM worker with two dp ranks,
//! publishing only over ZMQ (one PUB socket per rank), is routed to the rank that holds
//! the prefix.

use crate::common::*;
use kvgate_faults::observe::Decision;
use kvgate_http::{get as http_get, post as http_post};
use kvgate_stack::{wait_for, Envoy, Stack, StackOptions};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How long a worker-table change may take to reach a gateway that is following the
/// sidecar: one long-poll answer (it answers as soon as the table changes) plus the next
/// request. The periodic refresh is set far above it (`--meta-refresh-ms 60000`), so only
/// the per-client tracking can make it.
const TABLE_LAG: Duration = Duration::from_secs(3);

/// Worker ids in the sidecar's table.
fn sidecar_workers(stack: &Stack) -> Vec<u64> {
    let Some(s) = &stack.sidecar else {
        return Vec::new();
    };
    let Ok(r) = http_get(&s.url("/v1/state")) else {
        return Vec::new();
    };
    let v: Value = r.json();
    let mut ids: Vec<u64> = v["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|w| w["instance_id"].as_u64())
        .collect();
    ids.sort_unstable();
    ids
}

/// The candidates of one decision of `envoy`.
fn candidates(envoy: &Envoy, question: &str) -> Option<Vec<u64>> {
    let r = http_post(
        &envoy.url("/v1/chat/completions"),
        &[],
        &long_chat(question),
    )
    .ok()?;
    let d = Decision::parse(r.header("x-kvgate-decision")?)?;
    Some(d.worker_ids())
}

/// Waits until every gateway's decisions list exactly `want`; returns how long each took.
fn both_follow(stack: &Stack, want: &[u64], what: &str) -> Vec<Duration> {
    let gateways: Vec<&Envoy> = std::iter::once(&stack.envoy)
        .chain(&stack.more_envoys)
        .collect();
    gateways
        .iter()
        .enumerate()
        .map(|(i, envoy)| {
            let t0 = Instant::now();
            let mut last = None;
            let ok = wait_for(TABLE_LAG, || {
                last = candidates(envoy, &format!("{what} {i}"));
                (last.as_deref() == Some(want)).then_some(())
            });
            assert!(
                ok.is_some(),
                "{what}: gateway {} still decides among {last:?} {TABLE_LAG:?} after the \
                 sidecar's table became {want:?}",
                i + 1
            );
            t0.elapsed()
        })
        .collect()
}

#[test]
fn two_gateways_on_one_sidecar_both_follow_every_worker_table_change() {
    let dir = test_dir("fleet-gateways");
    let mut opts = StackOptions::new(&dir);
    opts.workers = 3;
    opts.gateways = 2;
    opts.spare_endpoints = 1;
    opts.plugin = json!({"decision_header": true});
    opts.sidecar_args = vec!["--meta-refresh-ms".into(), "60000".into()];
    let mut stack = routable_stack(&opts);

    // A worker leaves (graceful stop: it announces `leaving`).
    stack.workers[2].proc.stop(Duration::from_secs(5));
    let gone = wait_for(Duration::from_secs(15), || {
        (sidecar_workers(&stack) == [1, 2]).then_some(())
    });
    assert!(
        gone.is_some(),
        "sidecar still lists {:?}",
        sidecar_workers(&stack)
    );
    let took = both_follow(&stack, &[1, 2], "removed");
    eprintln!("worker removed: gateways followed after {took:?}");

    // A worker joins on the spare endpoint.
    let id = stack
        .add_worker(&[])
        .unwrap_or_else(|e| panic!("{e}"))
        .instance_id;
    assert_eq!(id, 4);
    let joined = wait_for(Duration::from_secs(15), || {
        (sidecar_workers(&stack) == [1, 2, 4]).then_some(())
    });
    assert!(
        joined.is_some(),
        "sidecar lists {:?}",
        sidecar_workers(&stack)
    );
    let took = both_follow(&stack, &[1, 2, 4], "added");
    eprintln!("worker added: gateways followed after {took:?}");
}

/// Worker and dp rank of the last request the mocks served (their request log; a line
/// is written when the response is done).
fn last_served(stack: &Stack) -> Option<(u64, u64)> {
    let last = request_log(&stack.request_log).into_iter().last()?;
    Some((last["worker_id"].as_u64()?, last["dp_rank"].as_u64()?))
}

#[test]
fn a_prefix_cached_on_dp_rank_1_of_a_zmq_only_worker_routes_to_rank_1() {
    let dir = test_dir("fleet-dp-zmq");
    let mut opts = StackOptions::new(&dir);
    opts.workers = 2;
    opts.dp_size = 2;
    opts.zmq_only = true;
    opts.plugin = json!({"decision_header": true});
    let stack = Stack::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    assert!(stack.nats.is_none(), "ZMQ-only: no NATS");
    stack
        .wait_routable(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));

    // Worker 2 caches a prompt on rank 1 (sent to it directly, as another router would).
    let w = &stack.workers[1];
    let r = http_post(
        &w.url("/v1/chat/completions"),
        &[("x-dp-rank", "1")],
        &long_chat("Cached on rank one."),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Its rank-1 events (only on the rank-1 socket, port + 1) reach the sidecar's index.
    let indexed = wait_for(Duration::from_secs(20), || {
        let v: Value = http_get(&stack.sidecar.as_ref()?.url("/v1/state"))
            .ok()?
            .json();
        v["index"]["by_worker"]
            .as_array()?
            .iter()
            .any(|b| b["worker_id"] == 2 && b["dp_rank"] == 1 && b["blocks"].as_u64() > Some(30))
            .then_some(())
    });
    assert!(indexed.is_some(), "rank 1 of worker 2 never indexed");

    // The filter has the index (every request through Envoy is served and cached, so
    // the one request below must be decided with the rank-1 blocks known) ...
    let synced = wait_for(Duration::from_secs(10), || {
        (stack.envoy.stat("wasmcustom.kvgate.index_blocks") > 30).then_some(())
    });
    assert!(synced.is_some(), "the filter never got the index");
    std::thread::sleep(Duration::from_millis(500));
    // ... and the same prefix through the gateway goes to worker 2, rank 1, on its overlap.
    let r = http_post(
        &stack.envoy.url("/v1/chat/completions"),
        &[],
        &long_chat("Where does this go?"),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let d = Decision::parse(r.header("x-kvgate-decision").unwrap()).unwrap();
    let chosen = d.chosen().unwrap().clone();
    assert!(chosen.overlap > 30, "{d:?}");
    let state: Value = http_get(&stack.sidecar.as_ref().unwrap().url("/v1/state"))
        .unwrap()
        .json();
    assert_eq!(
        (chosen.worker, chosen.dp_rank),
        (2, 1),
        "{chosen:?}; sidecar index: {}",
        state["index"]["by_worker"]
    );
    assert_eq!(last_served(&stack), Some((2, 1)));
}
