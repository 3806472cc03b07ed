//! Bookkeeping under aborts: two gateway replicas (two Envoys with the filter, two
//! kvgate-sync sidecars with replica sync over one NATS) in front of the same mock
//! workers, under load where many clients hang up — after the first streamed chunk, or
//! before any answer — while a worker is killed mid-stream (upstream resets) and
//! restarted. Afterwards every worker's booked requests, queued prefill tokens and
//! decode blocks must be exactly zero everywhere they are kept:
//!
//! * in each Envoy, summed over its VMs: the filter's `kvgate.inflight.*` gauges (each VM
//!   adds the change of its own book, so they are the sum of every VM's load record);
//! * in each sidecar: `own_loads` (this gateway's bookkeeping, from its filter) and
//!   `loads[].replicas` / `replica_requests` (the other gateway's, via NATS).

use crate::common::*;
use kvgate_faults::load::{Load, LoadConfig};
use kvgate_faults::observe::{
    envoy_inflight, own_booked, replica_booked, sidecar_state, worker_stats, Booked, Decision,
};
use kvgate_stack::{wait_for, Envoy, EnvoyOptions, Sidecar, Stack, StackOptions, MODEL};
use serde_json::json;
use std::time::Duration;

/// The second gateway replica: its own sidecar and Envoy, same NATS and workers.
struct Replica {
    envoy: Envoy,
    sidecar: Sidecar,
}

fn plugin() -> serde_json::Value {
    json!({"decision_header": true, "router_replica_sync": true, "sync_wait_ms": 500})
}

fn start_replica(stack: &Stack) -> Replica {
    let dir = stack.dir.join("replica-b");
    std::fs::create_dir_all(&dir).unwrap();
    let nats = stack.nats.as_ref().unwrap().url();
    let sidecar = Sidecar::start(
        &stack.tools,
        &dir,
        &[
            "--nats-url".into(),
            nats,
            "--model".into(),
            format!("{MODEL}={}", stack.tools.model_dir.display()),
            "--replica-sync".into(),
            "--durable".into(),
            "kvgate-b".into(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let opts = EnvoyOptions {
        plugin_config: plugin(),
        workers: stack.workers.iter().map(|w| w.endpoint.clone()).collect(),
        sidecar_port: sidecar.port,
        sidecar_token: sidecar.token.clone(),
        concurrency: 2,
        ..EnvoyOptions::default()
    };
    let envoy = Envoy::start(&stack.tools, &opts, &dir).unwrap_or_else(|e| panic!("{e}"));
    Replica { envoy, sidecar }
}

/// Waits until `envoy` routes with every worker as a candidate and no degradation.
fn wait_routable(envoy: &Envoy, workers: usize) {
    let body =
        json!({"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]})
            .to_string();
    let ok = wait_for(Duration::from_secs(90), || {
        let r = kvgate_http::post(&envoy.url("/v1/chat/completions"), &[], body.as_bytes()).ok()?;
        let d = Decision::parse(r.header("x-kvgate-decision")?)?;
        (r.status == 200 && d.degraded.is_none() && d.worker_ids().len() >= workers).then_some(())
    });
    assert!(ok.is_some(), "replica never routable");
}

/// Everything one gateway replica keeps: (Envoy gauges, sidecar own, sidecar replicas).
fn booked(envoy: &Envoy, sidecar: &Sidecar) -> (Booked, Booked, Booked, u64) {
    let state = sidecar_state(&sidecar.url("")).unwrap_or_default();
    let (replicas, replica_requests) = replica_booked(&state);
    (
        envoy_inflight(envoy),
        own_booked(&state),
        replicas,
        replica_requests,
    )
}

fn all_zero(b: &(Booked, Booked, Booked, u64)) -> bool {
    b.0.is_zero() && b.1.is_zero() && b.2.is_zero() && b.3 == 0
}

#[test]
fn bookkeeping_is_zero_after_client_aborts_and_upstream_resets() {
    let mut opts = StackOptions::new(&test_dir("aborts"));
    opts.workers = 3;
    opts.plugin = plugin();
    opts.sidecar_args = vec![
        "--replica-sync".into(),
        "--durable".into(),
        "kvgate-a".into(),
    ];
    let mut stack = routable_stack(&opts);
    let b = start_replica(&stack);
    wait_routable(&b.envoy, 3);

    let cfg = |envoy: &Envoy, seed| {
        let mut c = LoadConfig::new(&format!("127.0.0.1:{}", envoy.port));
        c.rate = 10.0;
        c.threads = 16;
        c.stream_fraction = 0.8;
        c.abort_fraction = 0.4;
        c.early_abort_fraction = 0.1;
        c.max_tokens = 64;
        c.seed = seed;
        c
    };
    let load_a = Load::start(cfg(&stack.envoy, 1));
    let load_b = Load::start(cfg(&b.envoy, 2));
    // While requests are in flight, both replicas see them: their own in the gauges and
    // own_loads, the other's through replica sync.
    let sidecar_a = stack.sidecar.as_ref().unwrap();
    let seen = wait_for(Duration::from_secs(10), || {
        let a = booked(&stack.envoy, sidecar_a);
        let bb = booked(&b.envoy, &b.sidecar);
        (a.0.requests > 0 && a.2.requests > 0 && bb.0.requests > 0 && bb.2.requests > 0)
            .then_some(())
    });
    assert!(seen.is_some(), "in-flight bookkeeping never visible");
    std::thread::sleep(Duration::from_secs(4));
    // Upstream resets: kill a worker while it streams, restart it.
    let idx = 2;
    wait_for(Duration::from_secs(5), || {
        worker_stats(&stack.workers[idx].url(""))
            .and_then(|v| v["totals"]["running"].as_u64())
            .filter(|n| *n > 0)
    });
    stack.workers[idx].proc.kill();
    std::thread::sleep(Duration::from_secs(2));
    let (tools, dir) = (stack.tools.clone(), stack.dir.clone());
    stack.workers[idx].restart(&tools, &dir).unwrap();
    std::thread::sleep(Duration::from_secs(6));
    let mut samples = load_a.stop();
    samples.extend(load_b.stop());

    let aborted = samples.iter().filter(|s| s.aborted).count();
    let truncated = samples
        .iter()
        .filter(|s| !s.aborted && s.status == Some(200) && !s.complete)
        .count();
    let ok = samples.iter().filter(|s| !s.failed()).count();
    eprintln!(
        "aborts: {} requests, {ok} complete, {aborted} aborted by the client, {truncated} cut by the upstream reset",
        samples.len()
    );
    assert!(aborted >= 20, "too few client aborts: {aborted}");
    let cancelled: u64 = stack
        .workers
        .iter()
        .filter_map(|w| worker_stats(&w.url("")))
        .map(|v| v["totals"]["cancelled"].as_u64().unwrap_or(0))
        .sum();
    eprintln!("workers saw {cancelled} cancelled requests (client aborts propagated upstream)");

    let mut last = Default::default();
    let settled = wait_for(Duration::from_secs(20), || {
        let a = booked(&stack.envoy, sidecar_a);
        let bb = booked(&b.envoy, &b.sidecar);
        last = (a, bb);
        (all_zero(&a) && all_zero(&bb)).then_some(())
    });
    assert!(
        settled.is_some(),
        "bookkeeping left after the load (Envoy gauges, sidecar own, sidecar replicas, replica requests): \
         replica A {:?}, replica B {:?}",
        last.0,
        last.1
    );
}
