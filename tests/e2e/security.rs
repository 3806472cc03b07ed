//! The closed door: a client can never steer its request.
//!
//! * Every client-sent routing header — `x-worker-instance-id`, `x-prefill-instance-id`,
//!   `x-dp-rank`, `x-prefill-dp-rank`, every `x-dynamo-*`, `x-gateway-destination-endpoint`
//!   — in any letter case and repeated, is gone before routing: in our wasmtime host (the
//!   filter's view) and through real Envoy (what the worker received, from its request
//!   log), for routed and for forwarded requests.
//! * The destination is only ever an endpoint of a worker currently known: forged ids and
//!   endpoints in headers or `nvext` never produce another `ip:port`, and a worker the
//!   sidecar dropped (its lease ran out) is never chosen again.
//! * The sidecar listens on loopback by default; NATS credentials never reach its log.
//! * Limits on body size, prompt tokens (`max_match_blocks`), message count and event
//!   size are configurable and enforced.

use crate::common::*;
use kvgate_core::workers::WorkerInfo;
use kvgate_faults::observe::{
    index_blocks, listen_address, sidecar_state, table_workers, worker_cached_blocks, Decision,
};
use kvgate_host::{Action, FilterModule, SharedStore, Vm};
use kvgate_http::raw::{self as client, Request, Stop};
use kvgate_stack::{
    free_port, static_vm_config, wait_for, Proc, Stack, StackOptions, Tools, MODEL,
};
use serde_json::{json, Value};
use std::process::Command;
use std::time::Duration;

/// Routing header names a client may try, with a forged value each.
const FORGED: &[(&str, &str)] = &[
    ("x-worker-instance-id", "666"),
    ("x-prefill-instance-id", "666"),
    ("x-dp-rank", "6"),
    ("x-prefill-dp-rank", "6"),
    ("x-dynamo-worker-instance-id", "666"),
    ("x-dynamo-prefill-instance-id", "666"),
    ("x-dynamo-dp-rank", "6"),
    ("x-dynamo-prefill-dp-rank", "6"),
    ("x-dynamo-routing-mode", "disaggregated"),
    ("x-dynamo-evil", "evil"),
    ("x-gateway-destination-endpoint", "6.6.6.6:666"),
];

/// The letter cases tried.
fn cases(name: &str) -> Vec<String> {
    let title: String = name
        .split('-')
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-");
    vec![name.to_string(), name.to_ascii_uppercase(), title]
}

/// Forged headers in case `i` (0 lower, 1 upper, 2 title), each sent twice with two
/// values (the second an endpoint of a real pool member when given).
fn forged_headers(i: usize, real_endpoint: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in FORGED {
        let n = cases(name)[i].clone();
        out.push((n.clone(), value.to_string()));
        let second = if name.ends_with("endpoint") {
            real_endpoint.to_string()
        } else {
            format!("{value}7")
        };
        out.push((n, second));
    }
    out
}

fn nvext_forged(mut body: Value) -> Value {
    body["nvext"] = json!({
        "backend_instance_id": 666, "decode_worker_id": 666, "prefill_worker_id": 666,
        "dp_rank": 6, "prefill_dp_rank": 6, "annotations": ["kept"]
    });
    body
}

// ---- in the wasmtime host -----------------------------------------------------------

fn module() -> FilterModule {
    let tools = Tools::from_env().unwrap_or_else(|e| panic!("{e}"));
    FilterModule::load(&tools.wasm).unwrap_or_else(|e| panic!("{e}"))
}

fn host_workers() -> Vec<WorkerInfo> {
    (1..=3)
        .map(|i| {
            serde_json::from_value(json!({"instance_id": i, "endpoint": format!("10.0.0.{i}:8000"), "model": MODEL, "block_size": 16}))
                .unwrap()
        })
        .collect()
}

#[test]
fn host_strips_forged_routing_in_any_case_and_repeated() {
    let tools = Tools::from_env().unwrap();
    let cfg = json!({"sidecar_cluster": "", "workers": host_workers()});
    let vm = Vm::new(
        &module(),
        static_vm_config(&tools).unwrap().as_bytes(),
        cfg.to_string().as_bytes(),
        SharedStore::new(),
    )
    .unwrap();
    let known: Vec<String> = host_workers().into_iter().map(|w| w.endpoint).collect();
    let bodies = [
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "hello there"}),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": [1, 2, 3, 4, 5]}),
        ),
    ];
    for i in 0..3 {
        for (path, body) in &bodies {
            let body = serde_json::to_vec(&nvext_forged(body.clone())).unwrap();
            let len = body.len().to_string();
            let forged = forged_headers(i, "10.0.0.2:8000");
            let mut h: Vec<(&str, &str)> = vec![
                (":method", "POST"),
                (":path", path),
                (":authority", "gw"),
                ("content-length", &len),
            ];
            h.extend(forged.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            let mut s = vm.new_stream();
            s.request_headers(&h, false).unwrap();
            assert_eq!(s.request_body(&body, true).unwrap(), Action::Continue);
            let map = s.request_header_map();
            let id = s.request_header("x-worker-instance-id").unwrap();
            for (name, _) in FORGED {
                let values: Vec<String> = map
                    .iter()
                    .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .collect();
                match *name {
                    "x-worker-instance-id" | "x-dynamo-worker-instance-id" => {
                        assert_eq!(values, vec![id.clone()], "{name}")
                    }
                    "x-dp-rank" | "x-dynamo-dp-rank" => assert_eq!(values, vec!["0"], "{name}"),
                    "x-dynamo-routing-mode" => assert_eq!(values, vec!["aggregated"]),
                    "x-gateway-destination-endpoint" => {
                        // The chosen worker, then the fallbacks: every one a known worker.
                        assert_eq!(values.len(), 1, "{values:?}");
                        let listed: Vec<String> =
                            values[0].split(',').map(str::to_string).collect();
                        assert_eq!(listed[0], format!("10.0.0.{id}:8000"));
                        assert!(listed.iter().all(|e| known.contains(e)), "{values:?}");
                    }
                    _ => assert!(values.is_empty(), "{name} survived: {values:?}"),
                }
            }
            let sent: Value = serde_json::from_slice(&s.request_body_bytes()).unwrap();
            for k in [
                "backend_instance_id",
                "decode_worker_id",
                "prefill_worker_id",
                "dp_rank",
                "prefill_dp_rank",
            ] {
                assert!(sent["nvext"].get(k).is_none(), "nvext.{k} survived: {sent}");
            }
            assert_eq!(sent["nvext"]["annotations"], json!(["kept"]));
            s.finish().unwrap();
        }
    }
    // Paths that are not routed are stripped too.
    let forged = forged_headers(1, "10.0.0.2:8000");
    let mut h: Vec<(&str, &str)> = vec![
        (":method", "GET"),
        (":path", "/v1/models"),
        (":authority", "gw"),
    ];
    h.extend(forged.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut s = vm.new_stream();
    assert_eq!(s.request_headers(&h, true).unwrap(), Action::Continue);
    for (name, _) in FORGED {
        assert!(s.request_header(name).is_none(), "{name} on GET /v1/models");
    }
    s.finish().unwrap();
}

// ---- through real Envoy -------------------------------------------------------------

#[test]
fn envoy_strips_forged_routing_and_never_routes_to_a_dropped_worker() {
    let mut opts = StackOptions::new(&test_dir("security"));
    opts.workers = 3;
    opts.plugin = json!({"decision_header": true});
    let stack = routable_stack(&opts);
    let addr = format!("127.0.0.1:{}", stack.envoy.port);
    let endpoints: Vec<String> = stack.workers.iter().map(|w| w.endpoint.clone()).collect();
    let send_within = |headers: &[(String, String)], body: &Value, path: &str, limit| {
        let mut req = Request::post_json(path, serde_json::to_vec(body).unwrap());
        for (k, v) in headers {
            req = req.header(k, v);
        }
        client::send(&addr, &req, Stop::Never, limit)
    };
    let send = |headers: &[(String, String)], body: &Value, path: &str| {
        send_within(headers, body, path, Duration::from_secs(30))
    };
    let log_len = || request_log(&stack.request_log).len();

    // Routed requests (both endpoints) and a forwarded one (multimodal content), with
    // every forged header in three cases, twice each.
    for i in 0..3 {
        for (path, body, routed) in [
            (
                "/v1/chat/completions",
                json!({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": format!("case {i}")}]}),
                true,
            ),
            (
                "/v1/completions",
                json!({"model": MODEL, "max_tokens": 2, "prompt": format!("case {i}")}),
                true,
            ),
            (
                "/v1/chat/completions",
                json!({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": [
                {"type": "text", "text": "what is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}),
                false,
            ),
        ] {
            let headers = forged_headers(i, &endpoints[2]);
            let before = log_len();
            let r = send(&headers, &nvext_forged(body), path);
            assert!(r.status.is_some(), "{path}: {:?}", r.error);
            wait_for(Duration::from_secs(5), || {
                (log_len() > before).then_some(())
            });
            let line = request_log(&stack.request_log).pop().unwrap();
            let mut h = line["routing_headers"].clone();
            h.as_object_mut().unwrap().remove("x-request-id");
            let h = &h;
            let text = h.to_string();
            // Values only: the JSON text itself has commas between keys. The destination is
            // a comma-separated list of known workers (checked below), the rest one value.
            let listed: Vec<String> = h["x-gateway-destination-endpoint"]
                .as_str()
                .map(|d| d.split(',').map(str::to_string).collect())
                .unwrap_or_default();
            assert!(
                listed.iter().all(|e| endpoints.contains(e)),
                "destination lists an unknown worker: {text}"
            );
            let values: Vec<String> = h
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| *k != "x-gateway-destination-endpoint")
                .map(|(_, v)| v)
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                })
                .collect();
            // A forged id is a whole number (`666`, `6667`): a real endpoint's port such
            // as 17666 must not count as one.
            let forged_id = |v: &String| {
                v.split(|c: char| !c.is_ascii_digit())
                    .any(|n| n == "666" || n == "6667")
            };
            assert!(
                !values.iter().any(forged_id),
                "forged `666` reached the worker: {text}"
            );
            for bad in ["6.6.6.6", "evil", ","] {
                assert!(
                    !values.iter().any(|v| v.contains(bad)),
                    "forged `{bad}` reached the worker: {text}"
                );
            }
            assert!(h.get("x-dynamo-evil").is_none(), "{text}");
            assert!(h.get("x-prefill-instance-id").is_none(), "{text}");
            if routed {
                assert_eq!(
                    h["x-worker-instance-id"],
                    line["worker_id"].to_string(),
                    "{text}"
                );
                let w = stack
                    .workers
                    .iter()
                    .find(|w| Some(w.instance_id) == line["worker_id"].as_u64())
                    .unwrap();
                let dest = h["x-gateway-destination-endpoint"]
                    .as_str()
                    .unwrap_or_default();
                assert_eq!(dest.split(',').next(), Some(w.endpoint.as_str()), "{text}");
            } else {
                for (name, _) in FORGED {
                    assert!(
                        h.get(*name).is_none(),
                        "{name} on a forwarded request: {text}"
                    );
                }
            }
        }
    }

    // A worker the sidecar dropped is never chosen: freeze worker 3 (its announcements
    // stop, its lease runs out), keep it frozen, and aim every request at it.
    let sidecar = stack.sidecar.as_ref().unwrap();
    let victim = &stack.workers[2];
    let prefix_body = |q: &str| -> Value { serde_json::from_slice(&long_chat(q)).unwrap() };
    victim.proc.signal("STOP");
    let dropped = wait_for(Duration::from_secs(15), || {
        let s = sidecar_state(&sidecar.url(""))?;
        (!table_workers(&s).contains(&victim.instance_id)).then_some(())
    });
    assert!(dropped.is_some(), "sidecar never dropped the frozen worker");
    // The filter learns it within a sync. Until then a probe may still be sent to the
    // frozen worker and hang, so each probe gets a short time limit of its own.
    let learned = wait_for(Duration::from_secs(20), || {
        let r = send_within(
            &[],
            &prefix_body("probe"),
            "/v1/chat/completions",
            Duration::from_secs(2),
        );
        let d = Decision::parse(r.header("x-kvgate-decision")?)?;
        (r.ok() && !d.worker_ids().contains(&victim.instance_id)).then_some(())
    });
    assert!(learned.is_some(), "filter still lists the dropped worker");
    for i in 0..20 {
        let mut headers = forged_headers(i % 3, &victim.endpoint);
        headers.push((
            "x-worker-instance-id".into(),
            victim.instance_id.to_string(),
        ));
        let mut body = nvext_forged(prefix_body(&format!("aimed {i}")));
        body["nvext"]["backend_instance_id"] = json!(victim.instance_id);
        let r = send(&headers, &body, "/v1/chat/completions");
        assert!(
            r.ok(),
            "request {i}: {:?} {:?} {}",
            r.status,
            r.error,
            r.text()
        );
        let served: u64 = r.header("x-kvgate-worker").unwrap().parse().unwrap();
        assert_ne!(served, victim.instance_id);
        let d = Decision::parse(r.header("x-kvgate-decision").unwrap()).unwrap();
        assert!(!d.worker_ids().contains(&victim.instance_id), "{d:?}");
    }
    // Its index entries went with it.
    let s = sidecar_state(&sidecar.url("")).unwrap();
    assert_eq!(
        index_blocks(&s)
            .get(&victim.instance_id)
            .copied()
            .unwrap_or(0),
        0
    );
    victim.proc.signal("CONT");
}

// ---- the sidecar --------------------------------------------------------------------

/// Base32 (RFC 4648, no padding).
fn base32(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buf, mut bits) = (0u32, 0);
    for b in data {
        buf = (buf << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(A[((buf >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(A[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// CRC-16/XMODEM, as nkeys uses.
fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0u16;
    for b in data {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// A syntactically valid NATS user nkey seed (`SU…`) from 32 bytes.
fn user_seed(raw: [u8; 32]) -> String {
    const SEED: u8 = 18 << 3;
    const USER: u8 = 20 << 3;
    let mut v = vec![SEED | (USER >> 5), (USER & 31) << 3];
    v.extend_from_slice(&raw);
    let c = crc16(&v);
    v.extend_from_slice(&c.to_le_bytes());
    base32(&v)
}

fn sidecar_cmd(tools: &Tools) -> Command {
    let mut cmd = Command::new(tools.sidecar_bin().unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("KVGATE_") && kvgate_core::config::keys::by_env(&k).is_none() {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn sidecar_listens_on_loopback_and_never_logs_nats_credentials() {
    let tools = Tools::from_env().unwrap();
    let dir = test_dir("sidecar-security");
    // The default listen address (no --listen): loopback. Only when its port is free.
    let default_port = 9100;
    if std::net::TcpListener::bind(("127.0.0.1", default_port)).is_ok()
        && std::net::TcpListener::bind(("0.0.0.0", default_port)).is_ok()
    {
        let mut cmd = sidecar_cmd(&tools);
        cmd.args(["serve", "--no-nats", "--allow-unauthenticated"]);
        let mut p = Proc::spawn("sidecar-default", cmd, &dir.join("default.log")).unwrap();
        let up = wait_for(Duration::from_secs(30), || listen_address(default_port));
        let alive = p.alive();
        p.stop(Duration::from_secs(3));
        assert!(
            alive,
            "sidecar exited: {}",
            std::fs::read_to_string(dir.join("default.log")).unwrap_or_default()
        );
        assert_eq!(up.as_deref(), Some("127.0.0.1"), "default listen address");
    } else {
        eprintln!("port {default_port} busy: checking the documented default only");
    }
    let help = sidecar_cmd(&tools)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("[default: 127.0.0.1:9100]"), "{help}");

    // Credentials: a creds file whose JWT and seed must never appear in the log, even at
    // debug level, whether the connection works or not.
    let nats = kvgate_stack::Nats::start(&tools, &dir).unwrap();
    let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJrdmdhdGUiOiJ0b3Atc2VjcmV0LWp3dC1wYXlsb2FkIn0.c2lnbmF0dXJlLW5vdC1yZWFs";
    let seed = user_seed(*b"kvgate-test-seed-do-not-log-it!!");
    let creds = dir.join("user.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let log = dir.join("creds.log");
    let mut cmd = sidecar_cmd(&tools);
    cmd.env("RUST_LOG", "debug")
        .args([
            "serve",
            "--allow-unauthenticated",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args([
            "--nats-url",
            &format!("nats://user:hunter2@127.0.0.1:{}", nats.port),
        ])
        .arg("--nats-creds")
        .arg(&creds);
    let mut p = Proc::spawn("sidecar-creds", cmd, &log).unwrap();
    let up = wait_for(Duration::from_secs(30), || listen_address(port));
    std::thread::sleep(Duration::from_secs(3));
    let alive = p.alive();
    p.stop(Duration::from_secs(3));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        alive && up.is_some(),
        "sidecar did not start with --nats-creds:\n{text}"
    );
    assert!(text.contains("NATS"), "no NATS log lines at all:\n{text}");
    for secret in [jwt, seed.as_str(), "hunter2", "top-secret"] {
        assert!(!text.contains(secret), "`{secret}` logged:\n{text}");
    }
    assert!(
        text.contains("***@127.0.0.1"),
        "the NATS URL is shown redacted:\n{text}"
    );
}

#[test]
fn limits_are_configurable_and_enforced() {
    let mut opts = StackOptions::new(&test_dir("limits"));
    opts.workers = 2;
    opts.plugin = json!({
        "decision_header": true,
        "max_body_bytes": 4096,
        "max_messages": 3,
        "max_match_blocks": 2,
    });
    opts.sidecar_args = vec!["--max-payload-bytes".into(), "1024".into()];
    let stack = routable_stack(&opts);
    let addr = format!("127.0.0.1:{}", stack.envoy.port);
    let post = |body: &Value| {
        client::send(
            &addr,
            &Request::post_json("/v1/chat/completions", serde_json::to_vec(body).unwrap()),
            Stop::Never,
            Duration::from_secs(30),
        )
    };
    let msg = |c: &str| json!({"role": "user", "content": c});

    // Body size.
    let r = post(&json!({"model": MODEL, "messages": [msg(&"x".repeat(5000))]}));
    assert_eq!(r.status, Some(413), "{}", r.text());
    // Message count.
    let r = post(
        &json!({"model": MODEL, "max_tokens": 1, "messages": [msg("a"), msg("b"), msg("c"), msg("d")]}),
    );
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (Some(400), json!("array_above_max_length"))
    );
    let r =
        post(&json!({"model": MODEL, "max_tokens": 1, "messages": [msg("a"), msg("b"), msg("c")]}));
    assert!(r.ok(), "{}", r.text());
    // Prompt tokens: only max_match_blocks × 16 tokens are tokenized for the decision,
    // and the (incomplete) token ids are not injected: the worker tokenizes ~600 itself.
    let long = "You are a careful assistant for a logistics company. Answer precisely. ".repeat(40);
    let r = post(&json!({"model": MODEL, "max_tokens": 1, "messages": [msg(&long)]}));
    assert!(r.ok(), "{}", r.text());
    let d = Decision::parse(r.header("x-kvgate-decision").unwrap()).unwrap();
    assert_eq!(d.isl, 32, "{d:?}");
    let line = request_log(&stack.request_log).pop().unwrap();
    assert!(line["token_ids"].as_array().unwrap().len() > 400, "{line}");
    // Event size: the long prompt's KV event is above 1024 bytes and refused; the short
    // ones were applied.
    let sidecar = stack.sidecar.as_ref().unwrap();
    let refused = wait_for(Duration::from_secs(10), || {
        let s = sidecar_state(&sidecar.url(""))?;
        (s["totals"]["decode_errors"].as_u64()? > 0).then_some(s)
    });
    let s = refused.expect("no event refused for its size");
    let served: u64 = r.header("x-kvgate-worker").unwrap().parse().unwrap();
    let w = stack
        .workers
        .iter()
        .find(|w| w.instance_id == served)
        .unwrap();
    let real = worker_cached_blocks(&w.url("")).unwrap();
    let indexed = index_blocks(&s).get(&served).copied().unwrap_or(0);
    assert!(
        indexed < real,
        "index {indexed} vs cache {real}: the big event was applied"
    );
    assert!(
        index_blocks(&s).values().sum::<u64>() > 0,
        "small events were refused too: {s}"
    );
}

/// The sidecar's filter API in the real stack: a local client without the token gets 401
/// (and books nothing), while the filter in Envoy — which gets the token from Envoy's
/// environment through `vm_config.environment_variables` — syncs and books.
#[test]
fn sidecar_api_needs_the_token_the_filter_gets_from_its_environment() {
    let mut opts = StackOptions::new(&test_dir("sidecar-token"));
    opts.workers = 2;
    opts.plugin = json!({"decision_header": true, "router_replica_sync": true});
    let stack = Stack::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    // Routable means the filter's /v1/sync and model download passed the token check.
    stack
        .wait_routable(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    let sidecar = stack.sidecar.as_ref().unwrap();
    let token = sidecar.token.clone().expect("the stack generates a token");
    let booked = || {
        let m = kvgate_http::get(&sidecar.url("/metrics")).ok()?.text();
        m.lines()
            .find_map(|l| l.strip_prefix("kvgate_sync_bookkeeping_events_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    // The filter's bookkeeping arrives (replica sync on).
    let r = kvgate_http::post(
        &stack.envoy.url("/v1/chat/completions"),
        &[("content-type", "application/json")],
        json!({"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "hello"}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    // Its add and its free; then nothing moves.
    wait_for(Duration::from_secs(10), || booked().filter(|n| *n >= 2))
        .expect("the filter's bookkeeping never reached the sidecar");
    std::thread::sleep(Duration::from_millis(500));
    let before = booked().unwrap();
    // A local process without the token: 401 JSON, nothing booked.
    let batch = postcard::to_allocvec(&kvgate_core::sync::BookBatch {
        events: vec![kvgate_core::sync::BookEvent {
            request_id: 1,
            kind: kvgate_core::sync::BookKind::Free,
        }],
    })
    .unwrap();
    let wrong = format!("Bearer {}x", token);
    for headers in [vec![], vec![("authorization", wrong.as_str())]] {
        let r = kvgate_http::post(&sidecar.url("/v1/bookkeeping"), &headers, &batch).unwrap();
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
        let r = kvgate_http::get(&sidecar.url("/v1/sync?epoch=0&since=0&wait_ms=0")).unwrap();
        assert_eq!(r.status, 401);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(booked(), Some(before), "a refused batch was booked");
    let right = format!("Bearer {token}");
    let r = kvgate_http::post(
        &sidecar.url("/v1/bookkeeping"),
        &[("authorization", right.as_str())],
        &batch,
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(booked(), Some(before + 1));
}
