//! The real `kvgate_filter.wasm` in our wasmtime proxy-wasm host: the request path,
//! header stripping, errors, token ids against Hugging Face, the sidecar sync protocol
//! across two VMs sharing data, and bookkeeping cleanup.

use crate::common::*;
use kvgate_core::index::IndexDelta;
use kvgate_core::sync::{self, ModelEntry, ModelFiles, SyncFrame, SyncLog};
use kvgate_core::workers::WorkerInfo;
use kvgate_core::WorkerKey;
use kvgate_host::{Action, FilterModule, SharedStore, Stream, Vm, VmOptions};
use kvgate_stack::{static_vm_config, Tools, MODEL};
use serde_json::{json, Value};
use std::sync::OnceLock;

fn module() -> FilterModule {
    static M: OnceLock<FilterModule> = OnceLock::new();
    M.get_or_init(|| {
        let tools = Tools::from_env().unwrap_or_else(|e| panic!("{e}"));
        FilterModule::load(&tools.wasm).unwrap_or_else(|e| panic!("{e}"))
    })
    .clone()
}

fn vm_config() -> &'static str {
    static C: OnceLock<String> = OnceLock::new();
    C.get_or_init(|| static_vm_config(&Tools::from_env().unwrap()).unwrap())
}

fn workers(n: u64) -> Vec<WorkerInfo> {
    (1..=n)
        .map(|i| {
            serde_json::from_value(json!({"instance_id": i, "endpoint": format!("10.0.0.{i}:8000"), "model": MODEL, "block_size": 16}))
                .unwrap()
        })
        .collect()
}

fn static_vm(extra: Value) -> Vm {
    let mut cfg = json!({"sidecar_cluster": "", "workers": workers(4)});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    Vm::new(
        &module(),
        vm_config().as_bytes(),
        cfg.to_string().as_bytes(),
        SharedStore::new(),
    )
    .unwrap()
}

fn post(vm: &Vm, path: &str, extra: &[(&str, &str)], body: &[u8]) -> (Stream, Action, Action) {
    let mut s = vm.new_stream();
    let len = body.len().to_string();
    let mut h = vec![
        (":method", "POST"),
        (":path", path),
        (":authority", "gw"),
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    h.extend_from_slice(extra);
    let a = s.request_headers(&h, false).unwrap();
    let b = if a == Action::Pause || a == Action::Continue {
        s.request_body(body, true).unwrap()
    } else {
        a
    };
    (s, a, b)
}

#[test]
fn routes_with_hugging_face_token_ids_and_strips_client_headers() {
    let vm = static_vm(json!({}));
    for case in golden().iter() {
        let spoof = [
            ("x-worker-instance-id", "999"),
            ("X-Dynamo-Worker-Instance-Id", "999"),
            ("x-gateway-destination-endpoint", "6.6.6.6:1"),
            ("X-GATEWAY-DESTINATION-ENDPOINT", "6.6.6.6:2"),
            ("x-prefill-instance-id", "999"),
            ("x-dynamo-routing-mode", "disaggregated"),
            ("x-dynamo-prefill-dp-rank", "7"),
        ];
        let (mut s, a, b) = post(&vm, "/v1/chat/completions", &spoof, &golden_body(case));
        assert_eq!((a, b), (Action::Pause, Action::Continue), "{}", case["id"]);
        let dest = s.request_header("x-gateway-destination-endpoint").unwrap();
        let id = s.request_header("x-worker-instance-id").unwrap();
        assert_eq!(
            dest.split(',').next(),
            Some(format!("10.0.0.{id}:8000").as_str())
        );
        assert_eq!(s.request_header("x-dynamo-worker-instance-id").unwrap(), id);
        assert_eq!(
            s.request_header("x-dynamo-routing-mode").as_deref(),
            Some("aggregated")
        );
        assert_eq!(s.request_header("x-prefill-instance-id"), None);
        assert_eq!(s.request_header("x-dynamo-prefill-dp-rank"), None);
        let body: Value = serde_json::from_slice(&s.request_body_bytes()).unwrap();
        let ids: Vec<u64> = body["nvext"]["token_data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(
            ids,
            golden_ids(case),
            "token ids of {} differ from Hugging Face's",
            case["id"]
        );
        assert_eq!(
            s.request_header("content-length").unwrap(),
            s.request_body_bytes().len().to_string()
        );
        s.finish().unwrap();
    }
}

#[test]
fn passthrough_paths_and_errors() {
    let vm = static_vm(json!({"max_body_bytes": 4096}));
    let mut s = vm.new_stream();
    let a = s
        .request_headers(
            &[
                (":method", "GET"),
                (":path", "/v1/models"),
                (":authority", "gw"),
                ("x-worker-instance-id", "1"),
            ],
            true,
        )
        .unwrap();
    assert_eq!(a, Action::Continue);
    assert_eq!(
        s.request_header("x-worker-instance-id"),
        None,
        "stripped on every path"
    );
    assert_eq!(s.request_header("x-gateway-destination-endpoint"), None);

    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{not json", 400, "invalid_json"),
        (
            br#"{"messages":[{"role":"user","content":"x"}]}"#,
            400,
            "missing_required_parameter",
        ),
        (
            br#"{"model":"m-unknown","messages":[{"role":"user","content":"x"}]}"#,
            404,
            "model_not_found",
        ),
        (br#"{"model":"Qwen/Qwen3-0.6B","messages":"nope"}"#, 400, ""),
        (b"\xff\xfe\x00garbage", 400, ""),
    ];
    for (body, status, code) in cases {
        let (s, _, b) = post(&vm, "/v1/chat/completions", &[], body);
        assert_eq!(b, Action::Pause, "{}", String::from_utf8_lossy(body));
        let r = s.local_response().expect("local reply");
        assert_eq!(
            r.status,
            u32::from(status),
            "{}",
            String::from_utf8_lossy(body)
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string());
        if !code.is_empty() {
            assert_eq!(v["error"]["code"], code);
        }
    }
    // Declared too large: refused at the headers, before buffering.
    let mut s = vm.new_stream();
    let a = s
        .request_headers(
            &[
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                (":authority", "gw"),
                ("content-length", "999999"),
            ],
            false,
        )
        .unwrap();
    assert_eq!(a, Action::Pause);
    assert_eq!(s.local_response().unwrap().status, 413);
    // Chunked (no content-length) and too large: refused while buffering.
    let mut s = vm.new_stream();
    s.request_headers(
        &[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "gw"),
        ],
        false,
    )
    .unwrap();
    assert_eq!(s.request_body(&[b' '; 3000], false).unwrap(), Action::Pause);
    s.request_body(&[b' '; 3000], false).unwrap();
    assert_eq!(s.local_response().unwrap().status, 413);
    // The VM is alive and the next normal request routes.
    let (s, _, b) = post(
        &vm,
        "/v1/chat/completions",
        &[],
        br#"{"model":"Qwen/Qwen3-0.6B","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(b, Action::Continue);
    assert!(s.request_header("x-gateway-destination-endpoint").is_some());
}

fn frame_bytes(f: &SyncFrame) -> Vec<u8> {
    sync::encode(f)
}

fn model_files() -> Vec<u8> {
    let t = Tools::from_env().unwrap();
    postcard::to_allocvec(&ModelFiles {
        name: MODEL.into(),
        block_size: 16,
        tokenizer_json: std::fs::read(t.model_dir.join("tokenizer.json")).unwrap(),
        tokenizer_config_json: std::fs::read(t.model_dir.join("tokenizer_config.json")).unwrap(),
    })
    .unwrap()
}

/// Answers the VM's pending sidecar calls: sync with `frame`, model files with the files.
fn serve_sidecar(vm: &Vm, frame: Option<&[u8]>) -> usize {
    let mut n = 0;
    for c in vm.http_calls() {
        let path = c.header(":path").unwrap_or_default();
        assert_eq!(c.upstream, "kvgate_sidecar");
        if path.starts_with("/v1/sync") {
            if let Some(f) = frame {
                vm.http_call_response(c.token, &[(":status", "200")], f)
                    .unwrap();
                n += 1;
            }
        } else if path.starts_with("/v1/models/files") {
            vm.http_call_response(c.token, &[(":status", "200")], &model_files())
                .unwrap();
            n += 1;
        }
    }
    n
}

#[test]
fn sidecar_sync_reaches_every_vm_and_bookkeeping_is_freed() {
    let shared = SharedStore::new();
    let cfg = json!({"sync_wait_ms": 100}).to_string();
    // Two Envoy worker threads: same module and shared data, their own randomness.
    let vm = |seed| {
        let o = VmOptions {
            plugin_config: cfg.as_bytes().to_vec(),
            random_seed: seed,
            ..VmOptions::default()
        };
        Vm::with_options(&module(), o, shared.clone()).unwrap()
    };
    let (a, b) = (vm(1), vm(2));
    a.tick().unwrap();
    b.tick().unwrap();
    let leaders: Vec<&Vm> = [&a, &b]
        .into_iter()
        .filter(|v| !v.http_calls().is_empty())
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one VM polls the sidecar");
    let (leader, follower) = if std::ptr::eq(leaders[0], &a) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let call = &leader.http_calls()[0];
    let path = call.header(":path").unwrap();
    assert!(path.starts_with("/v1/sync?epoch=0&since=0"), "{path}");

    // Snapshot: 3 workers, the model; then the model files.
    let snap = SyncFrame {
        epoch: 5,
        snapshot: true,
        workers: Some(workers(3)),
        models: Some(vec![ModelEntry {
            name: MODEL.into(),
            block_size: 16,
            files_digest: "abc".into(),
        }]),
        loads: Some(vec![]),
        ..Default::default()
    };
    assert_eq!(serve_sidecar(leader, Some(&frame_bytes(&snap))), 1);
    leader
        .advance_time(std::time::Duration::from_millis(25))
        .unwrap();
    assert_eq!(
        serve_sidecar(leader, None),
        0,
        "no VM fetches a model before it serves a stream (models load lazily)"
    );
    leader
        .advance_time(std::time::Duration::from_millis(25))
        .unwrap();
    follower
        .advance_time(std::time::Duration::from_millis(25))
        .unwrap();

    // Find the request's token ids through the follower (load-only decision), then index
    // its blocks on worker 2 with a delta frame.
    let body = long_chat("where is my parcel?");
    let (mut s, _, _) = post(follower, "/v1/chat/completions", &[], &body);
    // Its first request waits for the tokenizer: the files are asked for on the next tick.
    follower.tick().unwrap();
    assert_eq!(
        serve_sidecar(follower, None),
        1,
        "the follower fetched the model files for its first request"
    );
    let v: Value = serde_json::from_slice(&s.request_body_bytes()).unwrap();
    s.finish().unwrap();
    let toks: Vec<u32> = v["nvext"]["token_data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let seq = kvgate_core::hash::BlockHasher::new(16)
        .hash(&toks, None, None, usize::MAX)
        .sequence;
    let w2 = WorkerKey::new(2, 0);
    let deltas: Vec<IndexDelta> = seq
        .iter()
        .map(|&s| IndexDelta::Insert { worker: w2, seq: s })
        .collect();
    let mut log = SyncLog::new(5, 1 << 16);
    let mut idx = kvgate_core::index::PrefixIndex::new();
    deltas.iter().for_each(|d| {
        idx.apply(d);
    });
    log.record(&deltas);
    let delta = log.frame_since(5, 0, &idx);
    assert!(!delta.snapshot);
    leader
        .advance_time(std::time::Duration::from_millis(25))
        .unwrap();
    assert_eq!(serve_sidecar(leader, Some(&frame_bytes(&delta))), 1);
    follower
        .advance_time(std::time::Duration::from_millis(25))
        .unwrap();

    for vm in [leader, follower] {
        let (mut s, _, b) = post(vm, "/v1/chat/completions", &[], &body);
        assert_eq!(b, Action::Continue);
        assert_eq!(
            s.request_header("x-gateway-destination-endpoint")
                .as_deref()
                .and_then(|d| d.split(',').next()),
            Some("10.0.0.2:8000")
        );
        // In flight: booked in the ledger until the stream ends; the free reaches the
        // ledger at the VM's next tick (no shared-data write on the response path).
        s.finish().unwrap();
        vm.advance_time(std::time::Duration::from_millis(25))
            .unwrap();
    }
    // After on_log every VM's part of the bookings ledger is gone again.
    for vm in [leader, follower] {
        vm.advance_time(std::time::Duration::from_millis(25))
            .unwrap();
    }
    let v = shared
        .get("kvgate", kvgate_engine::ledger::LEDGER_KEY.as_bytes())
        .unwrap()
        .value;
    let ledger: kvgate_engine::ledger::Ledger = postcard::from_bytes(&v).unwrap();
    assert!(
        ledger.parts.iter().all(|p| p.loads.is_empty()),
        "{ledger:?}"
    );
}
