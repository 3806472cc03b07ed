//! Hostile requests, one table, run twice: against the real `kvgate_filter.wasm` in our
//! wasmtime proxy-wasm host, and through real Envoy (static mode) in front of mock
//! workers. Each row is an input and its documented outcome (README "Failure policy"):
//! a status code with an OpenAI error code, "routed" (a destination from the worker
//! table), "forwarded" (no decision, the cluster picks — e.g. a chat template that runs
//! out of fuel), or "abandoned" (the client hung up mid-body: no reply, no upstream
//! request, nothing booked). After every row the next normal request must route, the VM
//! must be alive (host: no trap; Envoy: no VM reload), and nothing may stay booked.

use crate::common::*;
use kvgate_core::workers::WorkerInfo;
use kvgate_faults::observe::{envoy_inflight, worker_requests, Decision};
use kvgate_host::{Action, FilterModule, SharedStore, Stream, Vm};
use kvgate_http::raw::{self as client, Request, Stop};
use kvgate_stack::{wait_for, Stack, StackOptions, Tools, MODEL};
use serde_json::{json, Value};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A chat template that never ends (10¹⁰ iterations): minijinja's fuel stops it.
const LOOPING_TEMPLATE: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}";

/// The static-mode VM configuration with the model's files, where the model's chat
/// template becomes two named templates: the real one as `default` and a looping one as
/// `tool_use` (Hugging Face picks `tool_use` for requests with `tools`), so one VM serves
/// both normal requests and the runaway-template row.
fn vm_config_with_looping_tool_template() -> String {
    let tools = Tools::from_env().unwrap_or_else(|e| panic!("{e}"));
    let read = |f: &str| std::fs::read_to_string(tools.model_dir.join(f)).unwrap();
    let mut cfg: Value = serde_json::from_str(&read("tokenizer_config.json")).unwrap();
    let real = cfg["chat_template"].as_str().unwrap().to_string();
    cfg["chat_template"] = json!([
        {"name": "default", "template": real},
        {"name": "tool_use", "template": LOOPING_TEMPLATE},
    ]);
    json!({"models": [{
        "name": MODEL,
        "block_size": 16,
        "tokenizer_json": read("tokenizer.json"),
        "tokenizer_config_json": cfg.to_string(),
    }]})
    .to_string()
}

/// What a row expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A local reply with this status and OpenAI error code.
    Reply(u16, &'static str),
    /// Routed to a known worker.
    Routed,
    /// Forwarded without a decision.
    Forwarded,
    /// The client hung up: no reply, nothing upstream.
    Abandoned,
}

/// How a row's body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    /// With a Content-Length.
    Sized,
    /// Chunked, in pieces of this size, to the end.
    Chunked(usize),
    /// Content-Length of this size announced, only a small part of the body sent.
    Declared(usize),
    /// Chunked; the first piece of this size, then the client closes.
    StopsEarly(usize),
}

struct Row {
    name: &'static str,
    path: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    how: How,
    want: Want,
}

fn chat(content: &str) -> Value {
    json!({"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": content}]})
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

const MIB: usize = 1 << 20;
/// Most growth of Envoy's RSS over the hostile rows (issue 14 aims at 50 MiB; not met yet).
const RSS_GROWTH_LIMIT: u64 = 96 * MIB as u64;

fn rows() -> Vec<Row> {
    let row = |name, body: Vec<u8>, how, want| Row {
        name,
        path: "/v1/chat/completions",
        content_type: Some("application/json"),
        body,
        how,
        want,
    };
    let deep_arrays = {
        let mut b = format!(r#"{{"model":"{MODEL}","messages":"#).into_bytes();
        b.extend(std::iter::repeat_n(b'[', 100_000));
        b.extend(std::iter::repeat_n(b']', 100_000));
        b.push(b'}');
        b
    };
    let deep_objects = {
        let mut b = b"{\"model\":\"x\",\"a\":".to_vec();
        for _ in 0..100_000 {
            b.extend_from_slice(b"{\"a\":");
        }
        b.push(b'1');
        b.extend(std::iter::repeat_n(b'}', 100_001));
        b
    };
    let invalid_utf8 = {
        let mut b = bytes(&chat("INVALID"));
        let at = b.windows(7).position(|w| w == b"INVALID").unwrap();
        b.splice(at..at + 7, [0xff, 0xfe, 0xc3, 0x28, b'x', 0x80, b'y']);
        b
    };
    let million_messages = {
        let mut b = format!(r#"{{"model":"{MODEL}","messages":["#).into_bytes();
        for i in 0..1_000_000 {
            if i > 0 {
                b.push(b',');
            }
            b.extend_from_slice(b"{}");
        }
        b.extend_from_slice(b"]}");
        b
    };
    // One 4 MB word (no space, nothing to split on): tokenized no further than routing
    // needs, routed on that prefix.
    let one_big_word = bytes(&chat(&"a".repeat(4 << 20)));
    // 100,000 tiny messages: over the messages limit, refused before they are parsed.
    let tiny_messages = {
        let m: Vec<Value> = (0..100_000)
            .map(|_| json!({"role": "user", "content": "hi"}))
            .collect();
        bytes(&json!({"model": MODEL, "messages": m}))
    };
    let many_token_ids = {
        let ids: Vec<u32> = (0..900_000u32).map(|i| 100 + i % 5000).collect();
        bytes(&json!({"model": MODEL, "max_tokens": 1, "prompt": ids}))
    };
    let looping = {
        let mut v = chat("What is the weather?");
        v["tools"] = json!([{"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}]);
        bytes(&v)
    };
    vec![
        row(
            "body over max_body_bytes, declared",
            vec![b' '; 4096],
            How::Declared(9 * MIB),
            Want::Reply(413, "request_too_large"),
        ),
        row(
            "body over max_body_bytes, chunked",
            vec![b' '; 9 * MIB],
            How::Chunked(MIB),
            Want::Reply(413, "request_too_large"),
        ),
        row(
            "100k nested arrays",
            deep_arrays,
            How::Sized,
            Want::Reply(400, "json_too_deep"),
        ),
        row(
            "100k nested objects",
            deep_objects,
            How::Sized,
            Want::Reply(400, "json_too_deep"),
        ),
        row(
            "invalid UTF-8 inside a string",
            invalid_utf8,
            How::Sized,
            Want::Reply(400, "invalid_json"),
        ),
        row(
            "invalid UTF-8, not JSON",
            b"\xff\xfe\x00\xc3\x28garbage".to_vec(),
            How::Sized,
            Want::Reply(400, "invalid_json"),
        ),
        row("one 4 MB word", one_big_word, How::Sized, Want::Routed),
        row(
            "100k tiny messages",
            tiny_messages,
            How::Sized,
            Want::Reply(400, "array_above_max_length"),
        ),
        row(
            "1M-entry messages array",
            million_messages,
            How::Sized,
            Want::Reply(400, "array_above_max_length"),
        ),
        row(
            "JSON array at the top",
            b"[1,2,3]".to_vec(),
            How::Sized,
            Want::Reply(400, "invalid_type"),
        ),
        Row {
            content_type: Some("text/plain; charset=latin1"),
            ..row(
                "unknown content-type, JSON body",
                bytes(&chat("plain text")),
                How::Sized,
                Want::Routed,
            )
        },
        Row {
            content_type: Some("application/x-www-form-urlencoded"),
            ..row(
                "form content-type, form body",
                b"model=Qwen&messages=hi".to_vec(),
                How::Sized,
                Want::Reply(400, "invalid_json"),
            )
        },
        Row {
            content_type: None,
            ..row(
                "no content-type, JSON body",
                bytes(&chat("none")),
                How::Sized,
                Want::Routed,
            )
        },
        Row {
            path: "/v1/completions",
            ..row(
                "900k prompt token ids (match capped)",
                many_token_ids,
                How::Sized,
                Want::Routed,
            )
        },
        Row {
            path: "/v1/completions",
            ..row(
                "token id above u32",
                bytes(&json!({"model": MODEL, "prompt": [1, 4_294_967_296u64]})),
                How::Sized,
                Want::Reply(400, "invalid_value"),
            )
        },
        row(
            "chat template that loops (fuel)",
            looping,
            How::Sized,
            Want::Forwarded,
        ),
        row(
            "chunked body, client stops early",
            bytes(&chat("never finished")),
            How::StopsEarly(20),
            Want::Abandoned,
        ),
    ]
}

// ---- wasmtime host ------------------------------------------------------------------

fn module() -> FilterModule {
    static M: OnceLock<FilterModule> = OnceLock::new();
    M.get_or_init(|| {
        let tools = Tools::from_env().unwrap_or_else(|e| panic!("{e}"));
        FilterModule::load(&tools.wasm).unwrap_or_else(|e| panic!("{e}"))
    })
    .clone()
}

fn host_workers() -> Vec<WorkerInfo> {
    (1..=3)
        .map(|i| {
            serde_json::from_value(json!({"instance_id": i, "endpoint": format!("10.0.0.{i}:8000"), "model": MODEL, "block_size": 16}))
                .unwrap()
        })
        .collect()
}

fn host_vm() -> Vm {
    let cfg = json!({"sidecar_cluster": "", "workers": host_workers()});
    Vm::new(
        &module(),
        vm_config_with_looping_tool_template().as_bytes(),
        cfg.to_string().as_bytes(),
        SharedStore::new(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

fn drive(vm: &Vm, row: &Row) -> Stream {
    let mut s = vm.new_stream();
    let mut h: Vec<(&str, String)> = vec![
        (":method", "POST".into()),
        (":path", row.path.into()),
        (":authority", "gw".into()),
    ];
    if let Some(ct) = row.content_type {
        h.push(("content-type", ct.into()));
    }
    match row.how {
        How::Sized => h.push(("content-length", row.body.len().to_string())),
        How::Declared(n) => h.push(("content-length", n.to_string())),
        How::Chunked(_) | How::StopsEarly(_) => h.push(("transfer-encoding", "chunked".into())),
    }
    let hv: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = s.request_headers(&hv, false).unwrap();
    if a != Action::Pause || s.local_response().is_some() {
        return s;
    }
    match row.how {
        How::Sized => {
            s.request_body(&row.body, true).unwrap();
        }
        How::Declared(_) => {
            s.request_body(&row.body, false).unwrap();
        }
        How::Chunked(n) => {
            let pieces: Vec<&[u8]> = row.body.chunks(n).collect();
            for (i, p) in pieces.iter().enumerate() {
                s.request_body(p, i + 1 == pieces.len()).unwrap();
                if s.local_response().is_some() {
                    break;
                }
            }
        }
        How::StopsEarly(n) => {
            s.request_body(&row.body[..n], false).unwrap();
        }
    }
    s
}

fn host_routes_normally(vm: &Vm) {
    let mut s = vm.new_stream();
    let body = bytes(&chat("a normal question"));
    let len = body.len().to_string();
    s.request_headers(
        &[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            (":authority", "gw"),
            ("content-length", &len),
        ],
        false,
    )
    .unwrap();
    assert_eq!(s.request_body(&body, true).unwrap(), Action::Continue);
    let dest = s.request_header("x-gateway-destination-endpoint").unwrap();
    let dest = dest.split(',').next().unwrap_or_default().to_string();
    assert!(
        host_workers().iter().any(|w| w.endpoint == dest),
        "unknown destination {dest}"
    );
    s.response_headers(&[(":status", "200")], true).unwrap();
    s.finish().unwrap();
}

#[test]
fn hostile_requests_in_the_wasmtime_host() {
    let vm = host_vm();
    let inflight = |vm: &Vm| vm.metric("kvgate.inflight.requests").map(|m| m.value());
    let passthrough = |vm: &Vm| {
        vm.metric("kvgate.decisions.passthrough")
            .map(|m| m.value())
            .unwrap_or(0)
    };
    for row in rows() {
        let started = Instant::now();
        let before = passthrough(&vm);
        let mut s = drive(&vm, &row);
        let took = started.elapsed();
        match row.want {
            Want::Reply(status, code) => {
                let r = s
                    .local_response()
                    .unwrap_or_else(|| panic!("{}: no local reply", row.name));
                assert_eq!(r.status, u32::from(status), "{}", row.name);
                let v: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(v["error"]["code"], code, "{}: {v}", row.name);
                assert_eq!(s.request_header("x-gateway-destination-endpoint"), None);
            }
            Want::Routed => {
                assert!(s.local_response().is_none(), "{}", row.name);
                let dest = s.request_header("x-gateway-destination-endpoint");
                let dest = dest.as_deref().and_then(|d| d.split(',').next());
                assert!(
                    host_workers()
                        .iter()
                        .any(|w| Some(w.endpoint.as_str()) == dest),
                    "{}: {dest:?}",
                    row.name
                );
                s.response_headers(&[(":status", "200")], true).unwrap();
            }
            Want::Forwarded => {
                assert!(s.local_response().is_none(), "{}", row.name);
                assert_eq!(
                    s.request_header("x-gateway-destination-endpoint"),
                    None,
                    "{}",
                    row.name
                );
                assert!(!s.is_request_paused(), "{}: still paused", row.name);
                assert_eq!(passthrough(&vm), before + 1, "{}", row.name);
                s.response_headers(&[(":status", "200")], true).unwrap();
            }
            Want::Abandoned => {
                assert!(s.local_response().is_none(), "{}", row.name);
                assert!(s.is_request_paused(), "{}: not buffering", row.name);
                assert_eq!(s.request_header("x-gateway-destination-endpoint"), None);
            }
        }
        s.finish().unwrap_or_else(|e| panic!("{}: {e}", row.name));
        assert!(!vm.is_dead(), "{}: the VM trapped", row.name);
        host_routes_normally(&vm);
        // Frees are published at the VM's next tick.
        vm.tick()
            .unwrap_or_else(|e| panic!("{}: tick: {e}", row.name));
        assert_eq!(inflight(&vm), Some(0), "{}: booking left", row.name);
        eprintln!(
            "host  {:<40} {:>8.1} ms",
            row.name,
            took.as_secs_f64() * 1e3
        );
    }
}

// ---- real Envoy ---------------------------------------------------------------------

fn envoy_send(addr: &str, row: &Row) -> client::Reply {
    let mut req = Request {
        method: "POST".into(),
        path: row.path.into(),
        headers: Vec::new(),
        body: row.body.clone(),
    };
    if let Some(ct) = row.content_type {
        req = req.header("Content-Type", ct);
    }
    let timeout = Duration::from_secs(60);
    match row.how {
        How::Sized => client::send(addr, &req, Stop::Never, timeout),
        How::Declared(n) => {
            req = req.header("Content-Length", &n.to_string());
            client::send(
                addr,
                &req,
                Stop::AfterSend(Duration::from_secs(10)),
                timeout,
            )
        }
        How::Chunked(n) => client::send_chunked(addr, &req, n, timeout),
        How::StopsEarly(n) => {
            client::send_partial_chunked(addr, &req, &row.body[..n], Duration::from_millis(300))
        }
    }
}

/// Envoy's resident set size in bytes (`VmRSS` of /proc/<pid>/status).
fn envoy_rss(stack: &Stack) -> u64 {
    let pid = stack.envoy.proc.pid().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// Envoy's count of wasm VMs created for the filter (a reload after a trap creates one).
fn vms_created(stack: &Stack) -> u64 {
    stack.envoy.stat("wasm.envoy.wasm.runtime.v8.created")
}

#[test]
fn hostile_requests_through_envoy() {
    let dir = test_dir("hostile-envoy");
    let mut opts = StackOptions::new(&dir);
    opts.sidecar = false;
    opts.workers = 2;
    opts.plugin = json!({"decision_header": true});
    opts.vm_config = Some(vm_config_with_looping_tool_template());
    // A KV pool that admits the 900k-token prompt (56k blocks): the engine, like vLLM past
    // its max_model_len, would refuse it otherwise; here the gateway is under test.
    opts.worker_args = vec!["--num-gpu-blocks".into(), "65536".into()];
    let stack = Stack::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    let addr = format!("127.0.0.1:{}", stack.envoy.port);
    let endpoints: Vec<String> = stack.workers.iter().map(|w| w.endpoint.clone()).collect();
    let upstream = || -> u64 {
        stack
            .workers
            .iter()
            .map(|w| worker_requests(&w.url("")).unwrap_or(0))
            .sum()
    };
    let normal = || {
        let r = client::send(
            &addr,
            &Request::post_json("/v1/chat/completions", bytes(&chat("a normal question"))),
            Stop::Never,
            Duration::from_secs(30),
        );
        assert!(r.ok(), "{:?} {}", r.status, r.text());
        let d = Decision::parse(r.header("x-kvgate-decision").unwrap()).unwrap();
        let served: u64 = r.header("x-kvgate-worker").unwrap().parse().unwrap();
        assert_eq!(d.chosen().unwrap().worker, served);
    };
    // Warm-up: enough requests (each on its own connection) that every worker thread's VM
    // has loaded the model; then Envoy's resident memory is the baseline.
    for _ in 0..16 {
        normal();
    }
    let rss_warm = envoy_rss(&stack);
    let created = vms_created(&stack);
    assert!(created > 0, "wasm VM stat missing");
    for row in rows() {
        let before = upstream();
        let r = envoy_send(&addr, &row);
        match row.want {
            Want::Reply(status, code) => {
                assert_eq!(r.status, Some(status), "{}: {}", row.name, r.text());
                assert_eq!(r.json()["error"]["code"], code, "{}", row.name);
                assert_eq!(r.header("x-kvgate-error"), Some("1"), "{}", row.name);
            }
            Want::Routed => {
                assert!(r.ok(), "{}: {:?} {}", row.name, r.status, r.text());
                let d = Decision::parse(r.header("x-kvgate-decision").unwrap()).unwrap();
                let served: u64 = r.header("x-kvgate-worker").unwrap().parse().unwrap();
                assert_eq!(d.chosen().unwrap().worker, served, "{}", row.name);
            }
            Want::Forwarded => {
                assert!(r.ok(), "{}: {:?} {}", row.name, r.status, r.text());
                assert_eq!(r.header("x-kvgate-decision"), None, "{}", row.name);
                assert!(r.header("x-kvgate-worker").is_some());
            }
            Want::Abandoned => {
                assert_eq!(r.status, None, "{}: {}", row.name, r.text());
            }
        }
        let sent_up = u64::from(matches!(row.want, Want::Routed | Want::Forwarded));
        let got = wait_for(Duration::from_secs(5), || {
            Some(upstream()).filter(|n| *n == before + sent_up)
        });
        assert_eq!(
            got,
            Some(before + sent_up),
            "{}: upstream requests",
            row.name
        );
        normal();
        let idle = wait_for(Duration::from_secs(5), || {
            Some(envoy_inflight(&stack.envoy)).filter(|b| b.is_zero())
        });
        assert!(idle.is_some(), "{}: booking left in flight", row.name);
        assert_eq!(vms_created(&stack), created, "{}: VM reloaded", row.name);
        eprintln!(
            "envoy {:<40} {:>8.1} ms  {:?}",
            row.name,
            r.elapsed.as_secs_f64() * 1e3,
            r.status
        );
    }
    // The hostile inputs leave bounded memory behind. Issue 14's target is 50 MiB over the
    // warm-up's RSS; measured so far +64 MiB (a Wasm VM's linear memory never shrinks after
    // a multi-MiB body), so this guard holds the growth under RSS_GROWTH_LIMIT until then.
    let rss_after = envoy_rss(&stack);
    eprintln!(
        "envoy RSS after warm-up {:.1} MiB, after the hostile rows {:.1} MiB",
        rss_warm as f64 / MIB as f64,
        rss_after as f64 / MIB as f64
    );
    assert!(
        rss_after <= rss_warm + RSS_GROWTH_LIMIT,
        "Envoy RSS grew from {rss_warm} to {rss_after} bytes over the hostile rows"
    );
    // Every request the workers saw went to a worker of the pool.
    for line in request_log(&stack.request_log) {
        if let Some(dest) = line["routing_headers"]["x-gateway-destination-endpoint"].as_str() {
            for one in dest.split(',') {
                assert!(endpoints.iter().any(|e| e == one), "{dest}");
            }
        }
    }
}
