//! Native tests of a VM's life with the sidecar, against the fake host: the sync lease and
//! long poll, ring and snapshot, refused frames, failures and backoff, the bookkeeping
//! queue, model files, and loads shared between VMs — the paths only a real Envoy reached
//! before the engine was split from the glue.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;
use crate::host::CallResponse;
use crate::metrics::{Inflight, Metric};
use crate::outcome::Outcome;
use crate::testing::{FakeHost, SentCall};
use crate::tests::{files, long_chat, worker};
use kvgate_core::sync::{self as ksync, BookBatch, BookKind, ModelEntry, SyncFrame};
use kvgate_core::workers::{WorkerInfo, WorkerRole};

const SIDECAR: &[u8] = br#"{"sidecar_cluster": "kvgate_sidecar", "stale_after_ms": 60000}"#;
const REPLICA: &[u8] =
    br#"{"sidecar_cluster": "kvgate_sidecar", "router_replica_sync": true, "stale_after_ms": 60000}"#;

fn vm(host: &FakeHost, tag: u64, cfg: &[u8]) -> Vm {
    Vm::configure(host, tag, tag, cfg, &VmConfig::default()).unwrap()
}

fn workers(n: u64) -> Vec<WorkerInfo> {
    (1..=n).map(|i| worker(i, WorkerRole::Aggregated)).collect()
}

fn snapshot(epoch: u64, version: u64, models: Vec<ModelEntry>) -> Vec<u8> {
    ksync::encode(&SyncFrame {
        epoch,
        to_version: version,
        snapshot: true,
        workers: Some(workers(3)),
        models: Some(models),
        loads: Some(Vec::new()),
        ..Default::default()
    })
}

fn ok(body: &[u8]) -> CallResponse<'_> {
    CallResponse {
        status: Some(200),
        body,
    }
}

fn one_call(host: &FakeHost) -> SentCall {
    let mut calls = host.take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    calls.remove(0)
}

#[test]
fn one_vm_takes_the_lease_and_long_polls_once() {
    let h1 = FakeHost::at(1_000);
    let h2 = h1.sibling();
    let mut a = vm(&h1, 1, SIDECAR);
    let mut b = vm(&h2, 2, SIDECAR);
    a.on_tick(&h1);
    let call = one_call(&h1);
    assert_eq!(
        (
            call.cluster.as_str(),
            call.method.as_str(),
            call.path.as_str()
        ),
        (
            "kvgate_sidecar",
            "GET",
            "/v1/sync?epoch=0&since=0&wait_ms=1000&client=0000000000000001"
        )
    );
    assert_eq!(call.timeout_ms, 6_000);
    a.on_tick(&h1);
    assert!(h1.take_calls().is_empty(), "one poll in flight at a time");
    b.on_tick(&h2);
    assert!(
        h2.take_calls().is_empty(),
        "the other VM does not hold the lease"
    );
    // The lease runs out when its holder stops renewing it.
    h2.advance(shared::LEASE_MS + 1);
    b.on_tick(&h2);
    assert_eq!(
        one_call(&h2).path,
        "/v1/sync?epoch=0&since=0&wait_ms=1000&client=0000000000000002"
    );
}

#[test]
fn an_applied_frame_enters_the_ring_and_the_next_poll_goes_out_at_once() {
    let h1 = FakeHost::at(1_000);
    let h2 = h1.sibling();
    let mut a = vm(&h1, 1, SIDECAR);
    let mut b = vm(&h2, 2, SIDECAR);
    a.on_tick(&h1);
    let call = one_call(&h1);
    a.on_response(&h1, call.id, ok(&snapshot(7, 5, Vec::new())));
    assert_eq!(a.engine.fleet().all().len(), 3);
    assert_eq!(shared::Ring::sync().head(&h1), 1);
    assert!(
        shared::read_snapshot(&h1).is_some(),
        "frame 1 leaves a snapshot"
    );
    assert_eq!(
        one_call(&h1).path,
        "/v1/sync?epoch=7&since=5&wait_ms=1000&client=0000000000000001",
        "re-polled right after the frame, from the new position"
    );
    assert_eq!(h1.metric_value("kvgate.sync.frames"), 1);
    // The other VM of the same Envoy picks the frame up from the ring.
    assert!(b.engine.fleet().is_empty());
    b.follow_ring(&h2);
    assert_eq!(b.engine.fleet().all().len(), 3);
    assert_eq!(b.engine.sync_position(), (7, 5));
}

#[test]
fn a_refused_frame_resets_the_position_and_waits_for_the_tick() {
    let h = FakeHost::at(1_000);
    let mut a = vm(&h, 1, SIDECAR);
    a.on_tick(&h);
    let call = one_call(&h);
    a.on_response(&h, call.id, ok(&snapshot(7, 5, Vec::new())));
    let call = one_call(&h);
    // A delta that does not continue from version 5.
    let bad = ksync::encode(&SyncFrame {
        epoch: 7,
        from_version: 9,
        to_version: 10,
        ..Default::default()
    });
    a.on_response(&h, call.id, ok(&bad));
    assert!(
        h.take_calls().is_empty(),
        "no immediate re-poll after a refusal"
    );
    assert_eq!(a.engine.sync_position(), (0, 0), "asks for a snapshot next");
    assert_eq!(h.metric_value("kvgate.sync.frame_errors"), 1);
    assert!(h
        .logs(crate::host::Level::Warn)
        .iter()
        .any(|l| l.contains("sync frame refused")));
    a.on_tick(&h);
    assert_eq!(
        one_call(&h).path,
        "/v1/sync?epoch=0&since=0&wait_ms=1000&client=0000000000000001"
    );
}

#[test]
fn an_error_status_or_a_refused_call_backs_off() {
    let h = FakeHost::at(1_000);
    let mut a = vm(&h, 1, SIDECAR);
    a.on_tick(&h);
    let call = one_call(&h);
    a.on_response(
        &h,
        call.id,
        CallResponse {
            status: Some(503),
            body: b"",
        },
    );
    assert_eq!(h.metric_value("kvgate.sync.failures"), 1);
    a.on_tick(&h);
    assert!(h.take_calls().is_empty(), "backing off");
    h.advance(200);
    a.on_tick(&h);
    let call = one_call(&h);
    // A reset (no status) counts the same; the second failure waits twice as long.
    a.on_response(
        &h,
        call.id,
        CallResponse {
            status: None,
            body: b"",
        },
    );
    h.advance(399);
    a.on_tick(&h);
    assert!(h.take_calls().is_empty());
    h.advance(1);
    h.refuse_calls(true);
    a.on_tick(&h);
    assert_eq!(
        h.metric_value("kvgate.sync.failures"),
        3,
        "refused by the host"
    );
    h.refuse_calls(false);
    h.advance(800);
    a.on_tick(&h);
    let call = one_call(&h);
    a.on_response(&h, call.id, ok(&snapshot(1, 1, Vec::new())));
    assert_eq!(
        one_call(&h).path,
        "/v1/sync?epoch=1&since=1&wait_ms=1000&client=0000000000000001"
    );
    // Success resets the backoff: a new failure waits 200 ms again.
    a.on_response(
        &h,
        99,
        CallResponse {
            status: Some(500),
            body: b"",
        },
    );
    assert_eq!(
        h.metric_value("kvgate.sync.failures"),
        3,
        "an answer to a call this VM did not send is ignored"
    );
}

fn decode_batch(call: &SentCall) -> BookBatch {
    assert_eq!(
        (call.method.as_str(), call.path.as_str()),
        ("POST", "/v1/bookkeeping")
    );
    postcard::from_bytes(call.body.as_deref().unwrap()).unwrap()
}

#[test]
fn bookkeeping_goes_out_in_order_one_post_at_a_time_and_survives_failures() {
    let h = FakeHost::at(1_000);
    let mut a = vm(&h, 1, REPLICA);
    a.on_tick(&h);
    let sync = one_call(&h);
    a.on_response(&h, sync.id, ok(&snapshot(3, 1, Vec::new())));
    let _repoll = one_call(&h);
    // Without a tokenizer the VM still routes (on load) and books.
    assert!(matches!(
        a.decide(
            &h,
            1,
            crate::headers::RoutedPath::Chat,
            &long_chat("a"),
            None
        ),
        Outcome::Route(_)
    ));
    a.on_tick(&h);
    let first = one_call(&h);
    let batch = decode_batch(&first);
    assert_eq!(batch.events.len(), 1);
    assert!(matches!(batch.events[0].kind, BookKind::Add(_)));
    // While that POST is in flight, new steps wait.
    a.request_done(&h, 1);
    assert!(matches!(
        a.decide(
            &h,
            2,
            crate::headers::RoutedPath::Chat,
            &long_chat("b"),
            None
        ),
        Outcome::Route(_)
    ));
    a.on_tick(&h);
    assert!(h.take_calls().is_empty());
    assert_eq!(a.bookkeeping_queued(), 2);
    // The POST fails: its steps go back in front, and everything is resent in order.
    a.on_response(
        &h,
        first.id,
        CallResponse {
            status: Some(500),
            body: b"",
        },
    );
    h.advance(1_000);
    a.on_tick(&h);
    let calls = h.take_calls();
    let book = calls.iter().find(|c| c.method == "POST").unwrap();
    let kinds: Vec<(u64, &str)> = decode_batch(book)
        .events
        .iter()
        .map(|e| {
            let k = match e.kind {
                BookKind::Add(_) => "add",
                BookKind::Free => "free",
                _ => "other",
            };
            (e.request_id, k)
        })
        .collect();
    let (r1, r2) = (a.engine.request_id(1), a.engine.request_id(2));
    assert_eq!(kinds, vec![(r1, "add"), (r1, "free"), (r2, "add")]);
    a.on_response(
        &h,
        book.id,
        CallResponse {
            status: Some(204),
            body: b"",
        },
    );
    assert_eq!(a.bookkeeping_queued(), 0);
}

fn auth_of(call: &SentCall) -> Option<&str> {
    call.headers
        .iter()
        .find(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str())
}

#[test]
fn every_sidecar_call_carries_the_token_from_config_or_environment() {
    // None configured: no header.
    let h = FakeHost::at(1_000);
    let mut a = vm(&h, 1, SIDECAR);
    a.on_tick(&h);
    assert_eq!(auth_of(&one_call(&h)), None);
    // From the plugin configuration (beats the environment).
    let h = FakeHost::at(1_000);
    h.set_env("KVGATE_SIDECAR_TOKEN", "from-the-environment-0123");
    let cfg =
        br#"{"sidecar_cluster": "kvgate_sidecar", "sidecar_token": "from-the-config-0123456"}"#;
    let mut a = vm(&h, 1, cfg);
    a.on_tick(&h);
    assert_eq!(
        auth_of(&one_call(&h)),
        Some("Bearer from-the-config-0123456")
    );
    // From the VM environment, on the sync poll and on bookkeeping alike.
    let h = FakeHost::at(1_000);
    h.set_env("KVGATE_SIDECAR_TOKEN", "from-the-environment-0123");
    let mut a = vm(&h, 1, REPLICA);
    a.on_tick(&h);
    let sync = one_call(&h);
    assert_eq!(auth_of(&sync), Some("Bearer from-the-environment-0123"));
    a.on_response(&h, sync.id, ok(&snapshot(3, 1, Vec::new())));
    let _repoll = one_call(&h);
    let _ = a.decide(
        &h,
        1,
        crate::headers::RoutedPath::Chat,
        &long_chat("a"),
        None,
    );
    a.on_tick(&h);
    let book = one_call(&h);
    decode_batch(&book);
    assert_eq!(auth_of(&book), Some("Bearer from-the-environment-0123"));
    // A token too short to be one stops the VM with a message, it is never sent.
    let h = FakeHost::at(1_000);
    h.set_env("KVGATE_SIDECAR_TOKEN", "short");
    let err = Vm::configure(&h, 1, 1, SIDECAR, &VmConfig::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("KVGATE_SIDECAR_TOKEN"), "{err}");
    assert!(!err.contains("short"), "the token leaked into: {err}");
}

#[test]
fn a_long_bookkeeping_queue_goes_out_in_posts_the_sidecar_accepts() {
    let h = FakeHost::at(1_000);
    let mut a = vm(&h, 1, REPLICA);
    a.on_tick(&h);
    let sync = one_call(&h);
    a.on_response(&h, sync.id, ok(&snapshot(3, 1, Vec::new())));
    let _repoll = one_call(&h);
    let n = crate::sidecar::BOOK_BATCH_EVENTS as u32 + 10;
    for ctx in 0..n {
        let _ = a.decide(
            &h,
            ctx,
            crate::headers::RoutedPath::Chat,
            &long_chat("a"),
            None,
        );
        a.request_done(&h, ctx);
    }
    let mut sent = 0;
    for _ in 0..10 {
        a.on_tick(&h);
        let Some(book) = h.take_calls().into_iter().find(|c| c.method == "POST") else {
            break;
        };
        let batch = decode_batch(&book);
        assert!(batch.events.len() <= crate::sidecar::BOOK_BATCH_EVENTS);
        assert!(book.body.as_ref().unwrap().len() <= crate::sidecar::BOOK_BATCH_BYTES);
        sent += batch.events.len();
        a.on_response(
            &h,
            book.id,
            CallResponse {
                status: Some(204),
                body: b"",
            },
        );
    }
    assert_eq!(
        sent,
        2 * n as usize,
        "every add and free reached the sidecar"
    );
    assert_eq!(a.bookkeeping_queued(), 0);
}

#[test]
fn model_files_are_fetched_once_shared_and_loaded_by_every_vm() {
    let h1 = FakeHost::at(1_000);
    let h2 = h1.sibling();
    let mut a = vm(&h1, 1, SIDECAR);
    let mut b = vm(&h2, 2, SIDECAR);
    let h3 = h1.sibling();
    let mut main_thread = vm(&h3, 3, SIDECAR);
    a.stream_seen(&h1);
    b.stream_seen(&h2);
    let models = vec![ModelEntry {
        name: "Qwen/Qwen3-0.6B".into(),
        block_size: 16,
        files_digest: "d1".into(),
    }];
    a.on_tick(&h1);
    let call = one_call(&h1);
    a.on_response(&h1, call.id, ok(&snapshot(1, 1, models)));
    let _repoll = one_call(&h1);
    a.on_tick(&h1);
    let fetch = one_call(&h1);
    assert_eq!(
        fetch.path,
        "/v1/models/files?name=Qwen%2FQwen3-0.6B&digest=d1"
    );
    a.on_tick(&h1);
    assert!(h1.take_calls().is_empty(), "one fetch per model in flight");
    let bytes = postcard::to_allocvec(&files()).unwrap();
    a.on_response(&h1, fetch.id, ok(&bytes));
    // Stored in shared data; loaded from there when the VM next needs it (a tick here).
    assert!(h1.take_calls().is_empty());
    a.on_tick(&h1);
    assert!(a.engine.missing_models().is_empty());
    assert_eq!(h1.histogram("kvgate.model_load_ms").len(), 1);
    // The other VM loads from shared data on its next tick, without a call.
    b.on_tick(&h2);
    assert!(b.engine.missing_models().is_empty());
    assert!(h2.take_calls().is_empty());
    // A VM that never handled a stream (Envoy's main thread) neither fetches nor loads.
    main_thread.follow_ring(&h3);
    for _ in 0..3 {
        main_thread.on_tick(&h3);
        h3.advance(1_000);
    }
    assert_eq!(main_thread.engine.missing_models().len(), 1);
    assert!(h3
        .take_calls()
        .iter()
        .all(|c| !c.path.starts_with("/v1/models")));
    assert!(h3.histogram("kvgate.model_load_ms").is_empty());
}

/// A serving VM in sidecar mode that knows the fleet and the model but has no tokenizer
/// yet; `cfg` is its plugin configuration.
fn vm_without_tokenizer(h: &FakeHost, cfg: &[u8]) -> Vm {
    let mut v = vm(h, 1, cfg);
    v.stream_seen(h);
    let models = vec![ModelEntry {
        name: "Qwen/Qwen3-0.6B".into(),
        block_size: 16,
        files_digest: "d1".into(),
    }];
    v.on_tick(h);
    let call = one_call(h);
    v.on_response(h, call.id, ok(&snapshot(1, 1, models)));
    let _repoll = one_call(h);
    assert_eq!(v.engine.missing_models().len(), 1);
    v
}

fn chat_stream(v: &mut Vm, h: &FakeHost, ctx: u32) -> crate::Stream {
    let mut s = crate::Stream::new(ctx);
    let headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), "/v1/chat/completions".to_string()),
    ];
    assert_eq!(
        s.request_headers(v, h, &headers, false).next,
        crate::Next::Pause
    );
    assert_eq!(
        s.request_body(v, h, long_chat("hi").len(), true),
        crate::Next::Decide
    );
    s
}

fn routed_tokens(v: &crate::Verdict) -> Option<String> {
    let crate::Verdict::Continue { headers, .. } = v else {
        return None;
    };
    headers
        .iter()
        .find(|(n, _)| *n == crate::headers::DESTINATION_ENDPOINT)
        .map(|(_, v)| v.clone())
}

#[test]
fn a_first_request_waits_for_the_sidecar_model_and_is_routed_with_the_tokenizer() {
    let h = FakeHost::at(1_000);
    let mut v = vm_without_tokenizer(&h, SIDECAR);
    let body = long_chat("hi");
    let mut s = chat_stream(&mut v, &h, 7);
    // No tokenizer yet: the request is parked and the files are asked for on the next
    // tick (from the VM's root context, not the stream's callback).
    assert_eq!(s.decide_or_wait(&mut v, &h, &body), None);
    assert_eq!(h.metric_value("kvgate.model_wait.parked"), 1);
    assert!(
        h.take_calls().is_empty(),
        "no call from inside the stream's callback"
    );
    assert!(v.on_tick(&h).is_empty());
    let fetch = h
        .take_calls()
        .into_iter()
        .find(|c| c.path.starts_with("/v1/models"))
        .unwrap();
    assert_eq!(
        fetch.path,
        "/v1/models/files?name=Qwen%2FQwen3-0.6B&digest=d1"
    );
    // Ticks before the answer neither release it nor fetch again.
    h.advance(100);
    assert!(v.on_tick(&h).is_empty());
    assert!(h
        .take_calls()
        .iter()
        .all(|c| !c.path.starts_with("/v1/models")));
    let bytes = postcard::to_allocvec(&files()).unwrap();
    v.on_response(&h, fetch.id, ok(&bytes));
    assert_eq!(v.take_decidable(), vec![7]);
    let verdict = s.decide(&mut v, &h, &body);
    assert!(routed_tokens(&verdict).is_some(), "{verdict:?}");
    assert_eq!(h.metric_value("kvgate.degraded.no_tokenizer"), 0);
    assert_eq!(h.metric_value("kvgate.model_wait.timed_out"), 0);
    assert_eq!(h.histogram("kvgate.prompt_tokens").len(), 1);
    // The next request of this VM does not wait.
    let mut s2 = chat_stream(&mut v, &h, 8);
    assert!(s2.decide_or_wait(&mut v, &h, &body).is_some());
    assert_eq!(h.metric_value("kvgate.model_wait.parked"), 1);
}

#[test]
fn a_request_waiting_past_model_wait_ms_is_decided_without_the_tokenizer_and_counted() {
    let h = FakeHost::at(1_000);
    let cfg =
        br#"{"sidecar_cluster": "kvgate_sidecar", "stale_after_ms": 60000, "model_wait_ms": 300}"#;
    let mut v = vm_without_tokenizer(&h, cfg);
    let body = long_chat("hi");
    let mut s = chat_stream(&mut v, &h, 3);
    assert_eq!(s.decide_or_wait(&mut v, &h, &body), None);
    assert!(v.on_tick(&h).is_empty());
    let fetch = h
        .take_calls()
        .into_iter()
        .find(|c| c.path.starts_with("/v1/models"))
        .unwrap();
    h.advance(298);
    assert!(v.on_tick(&h).is_empty());
    h.advance(2);
    assert_eq!(v.on_tick(&h), vec![StreamAction::Decide(3)]);
    assert_eq!(h.metric_value("kvgate.model_wait.timed_out"), 1);
    let verdict = s.decide(&mut v, &h, &body);
    assert!(
        routed_tokens(&verdict).is_some(),
        "routed on load: {verdict:?}"
    );
    assert_eq!(h.metric_value("kvgate.degraded.no_tokenizer"), 1);
    // A stream waits once: asked again it is decided at once.
    assert!(s.decide_or_wait(&mut v, &h, &body).is_some());
    // A failed fetch releases the waiting requests at once.
    let mut s4 = chat_stream(&mut v, &h, 4);
    assert_eq!(s4.decide_or_wait(&mut v, &h, &body), None);
    assert_eq!(h.metric_value("kvgate.model_wait.parked"), 2);
    v.on_response(
        &h,
        fetch.id,
        CallResponse {
            status: Some(503),
            body: b"",
        },
    );
    assert_eq!(v.take_decidable(), vec![4]);
    assert_eq!(h.metric_value("kvgate.model_wait.timed_out"), 1);
}

#[test]
fn with_model_wait_ms_zero_or_a_static_model_nothing_waits() {
    let h = FakeHost::at(1_000);
    let cfg =
        br#"{"sidecar_cluster": "kvgate_sidecar", "stale_after_ms": 60000, "model_wait_ms": 0}"#;
    let mut v = vm_without_tokenizer(&h, cfg);
    let body = long_chat("hi");
    let mut s = chat_stream(&mut v, &h, 1);
    assert!(s.decide_or_wait(&mut v, &h, &body).is_some());
    assert_eq!(h.metric_value("kvgate.degraded.no_tokenizer"), 1);
    assert_eq!(h.metric_value("kvgate.model_wait.parked"), 0);
}

fn static_vm_config_bytes() -> Vec<u8> {
    let f = files();
    serde_json::to_vec(&serde_json::json!({"models": [{
        "name": f.name,
        "block_size": 16,
        "tokenizer_json": String::from_utf8(f.tokenizer_json).unwrap(),
        "tokenizer_config_json": String::from_utf8(f.tokenizer_config_json).unwrap(),
    }]}))
    .unwrap()
}

#[test]
fn a_packed_vm_config_model_loads_to_the_same_prompt_ids() {
    use base64::Engine as _;
    let f = files();
    let packed = kvgate_prompt::pack_tokenizer(&f.tokenizer_json).unwrap();
    let model = vm_config_model(
        &f.name,
        16,
        &f.tokenizer_json,
        std::str::from_utf8(&f.tokenizer_config_json).unwrap(),
    );
    assert_eq!(
        model["tokenizer_packed"],
        base64::engine::general_purpose::STANDARD.encode(&packed)
    );
    let raw = serde_json::to_vec(&serde_json::json!({ "models": [model] })).unwrap();
    let listing = VmConfig::parse(&raw).unwrap();
    let read = listing.model_files(&f.name).unwrap().unwrap();
    assert_eq!(read.tokenizer_json, packed);
    // The base64 is read in place from the configuration's bytes; a writer that escapes
    // its slashes (`\/`, valid JSON) gives the same files through the owned path.
    let escaped = String::from_utf8(raw.clone()).unwrap().replace('/', "\\/");
    assert!(escaped.len() > raw.len());
    let read = VmConfig::parse(escaped.as_bytes())
        .unwrap()
        .model_files(&f.name)
        .unwrap()
        .unwrap();
    assert_eq!(read.tokenizer_json, packed);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "", "workers": workers(2)
    }))
    .unwrap();
    let tokens = |listing: &VmConfig| {
        let h = FakeHost::at(1_000);
        let mut vm = Vm::configure(&h, 1, 1, &cfg, listing).unwrap();
        vm.stream_seen(&h);
        let body = long_chat("Hello, wörld! 123 你好 🙂");
        match vm.decide(&h, 1, crate::headers::RoutedPath::Chat, &body, None) {
            Outcome::Route(r) => {
                assert_eq!(r.degraded, None);
                r.prompt_tokens
            }
            _ => 0,
        }
    };
    let json = VmConfig::parse(&static_vm_config_bytes()).unwrap();
    assert!(tokens(&listing) > 100);
    assert_eq!(tokens(&listing), tokens(&json));
}

#[test]
fn vm_config_models_load_lazily_in_the_vm_that_tokenizes_and_memory_is_reported() {
    let h = FakeHost::at(1_000);
    h.set_linear_memory(Some(3 << 20));
    let listing = VmConfig::parse(&static_vm_config_bytes()).unwrap();
    assert_eq!(listing.models, vec![("Qwen/Qwen3-0.6B".to_string(), 16)]);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "", "workers": workers(2)
    }))
    .unwrap();
    let mut vm = Vm::configure(&h, 0xab, 1, &cfg, &listing).unwrap();
    let main_gauge = "kvgate.vm_memory_bytes.main_thread.vm_00000000000000ab";
    let tok_gauge = "kvgate.vm_memory_bytes.tokenizing.vm_00000000000000ab";
    assert_eq!(h.metric_value(main_gauge), 3 << 20);
    for _ in 0..3 {
        vm.on_tick(&h);
    }
    assert_eq!(vm.role(), VmRole::MainThread);
    assert!(
        h.histogram("kvgate.model_load_ms").is_empty(),
        "a VM without streams loads nothing"
    );
    assert_eq!(vm.engine.missing_models().len(), 1);

    assert_eq!(
        vm.tick_period_ms(),
        IDLE_TICK_MS,
        "a static idle VM ticks slowly"
    );
    // Its first stream makes it a tokenizing VM; the first decision loads the model.
    vm.stream_seen(&h);
    assert_eq!(vm.tick_period_ms(), vm.engine.cfg.gateway.sync_interval_ms);
    assert_eq!(h.metric_value(main_gauge), 0);
    h.set_linear_memory(Some(20 << 20));
    let Outcome::Route(r) = vm.decide(
        &h,
        1,
        crate::headers::RoutedPath::Chat,
        &long_chat("x"),
        None,
    ) else {
        panic!()
    };
    assert_eq!(r.degraded, None);
    assert!(r.prompt_tokens > 100);
    assert_eq!(h.histogram("kvgate.model_load_ms").len(), 1);
    assert_eq!(h.metric_value(tok_gauge), 20 << 20);
    vm.on_tick(&h);
    assert_eq!(h.histogram("kvgate.model_load_ms").len(), 1, "loaded once");
}

#[test]
fn a_vm_far_behind_the_ring_starts_from_the_snapshot() {
    let h1 = FakeHost::at(1_000);
    let h2 = h1.sibling();
    let mut a = vm(&h1, 1, SIDECAR);
    a.on_tick(&h1);
    let mut call = one_call(&h1);
    a.on_response(&h1, call.id, ok(&snapshot(2, 0, Vec::new())));
    for v in 1..=shared::RING + 10 {
        call = one_call(&h1);
        let delta = ksync::encode(&SyncFrame {
            epoch: 2,
            from_version: v - 1,
            to_version: v,
            ..Default::default()
        });
        a.on_response(&h1, call.id, ok(&delta));
    }
    let mut late = vm(&h2, 2, SIDECAR);
    late.follow_ring(&h2);
    assert_eq!(late.engine.sync_position(), a.engine.sync_position());
    assert_eq!(late.engine.ring_seq, a.engine.ring_seq);
    assert_eq!(late.engine.fleet().all().len(), 3);
}

#[test]
fn loads_are_seen_by_the_other_vms_and_gauges_return_to_zero() {
    let h1 = FakeHost::at(1_000);
    let h2 = h1.sibling();
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "", "workers": workers(2)
    }))
    .unwrap();
    let mut a = Vm::configure(&h1, 1, 1, &cfg, &VmConfig::default()).unwrap();
    let mut b = Vm::configure(&h2, 2, 2, &cfg, &VmConfig::default()).unwrap();
    let Outcome::Route(r) = a.decide(
        &h1,
        1,
        crate::headers::RoutedPath::Chat,
        &long_chat("x"),
        None,
    ) else {
        panic!()
    };
    assert_eq!(h1.metric_value("kvgate.inflight.requests"), 1);
    // B sees A's booking: with two workers and one busy, it picks the other.
    let Outcome::Route(r2) = b.decide(
        &h2,
        1,
        crate::headers::RoutedPath::Chat,
        &long_chat("y"),
        None,
    ) else {
        panic!()
    };
    assert_ne!(r.worker, r2.worker);
    a.request_done(&h1, 1);
    b.request_done(&h2, 1);
    a.on_tick(&h1);
    b.on_tick(&h2);
    let total =
        h1.metric_value("kvgate.inflight.requests") + h2.metric_value("kvgate.inflight.requests");
    assert_eq!(total, 0);
    assert_eq!(
        Metric::Inflight(Inflight::Requests).name(),
        "kvgate.inflight.requests"
    );
}

#[test]
fn bad_configurations_stop_the_vm_with_a_message() {
    let h = FakeHost::at(0);
    assert!(matches!(
        VmConfig::parse(b"{\"modles\": []}"),
        Err(StartError::VmConfig(_))
    ));
    assert!(VmConfig::parse(b"  \n").unwrap().models.is_empty());
    // A model without its files is refused at start, without reading them.
    assert!(matches!(
        VmConfig::parse(br#"{"models": [{"name": "m", "tokenizer_json": "{}"}]}"#),
        Err(StartError::VmConfig(_))
    ));
    // Exactly one of the two tokenizer forms.
    for files in [
        r#""tokenizer_config_json": "{}""#,
        r#""tokenizer_json": "{}", "tokenizer_packed": "", "tokenizer_config_json": "{}""#,
    ] {
        let raw = format!(r#"{{"models": [{{"name": "m", {files}}}]}}"#);
        let e = VmConfig::parse(raw.as_bytes()).err().unwrap();
        assert!(e.to_string().contains("exactly one"), "{e}");
    }
    let e = Vm::configure(&h, 1, 1, b"{\"block_sise\": 16}", &VmConfig::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("block_sise"), "{e}");
}

#[test]
fn a_broken_vm_config_model_is_logged_once_and_routes_on_load() {
    let h = FakeHost::at(1_000);
    let broken = VmConfig::parse(
        br#"{"models": [{"name": "Qwen/Qwen3-0.6B", "tokenizer_json": "{}", "tokenizer_config_json": "{}"}]}"#,
    )
    .unwrap();
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "", "workers": workers(2)
    }))
    .unwrap();
    let mut vm = Vm::configure(&h, 1, 1, &cfg, &broken).unwrap();
    for ctx in 1..=3 {
        let Outcome::Route(r) = vm.decide(
            &h,
            ctx,
            crate::headers::RoutedPath::Chat,
            &long_chat("x"),
            None,
        ) else {
            panic!()
        };
        assert_eq!(r.degraded, Some(crate::Degraded::NoTokenizer));
        vm.request_done(&h, ctx);
    }
    assert_eq!(h.logs(Level::Error).len(), 1, "{:?}", h.logs(Level::Error));
}

#[test]
fn two_vms_sharing_the_ledger_never_book_blind_to_each_other() {
    let h1 = FakeHost::at(1_000);
    let h2 = std::rc::Rc::new(h1.sibling());
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "", "workers": workers(2)
    }))
    .unwrap();
    let mut a = Vm::configure(&h1, 1, 1, &cfg, &VmConfig::default()).unwrap();
    let b = std::rc::Rc::new(std::cell::RefCell::new(
        Vm::configure(&*h2, 2, 2, &cfg, &VmConfig::default()).unwrap(),
    ));
    // B books between A's read of the ledger and A's write.
    let (b2, hb) = (b.clone(), h2.clone());
    let b_worker = std::rc::Rc::new(std::cell::Cell::new(None));
    let bw = b_worker.clone();
    h1.before_next_set(crate::ledger::LEDGER_KEY, move || {
        let o = b2.borrow_mut().decide(
            &*hb,
            1,
            crate::headers::RoutedPath::Chat,
            &long_chat("b"),
            None,
        );
        let Outcome::Route(r) = o else { panic!() };
        bw.set(Some(r.worker));
    });
    let Outcome::Route(r) = a.decide(
        &h1,
        1,
        crate::headers::RoutedPath::Chat,
        &long_chat("a"),
        None,
    ) else {
        panic!()
    };
    let b_worker = b_worker.get().unwrap();
    assert_ne!(
        r.worker, b_worker,
        "A decided again with B's booking in view"
    );
    let (ledger, _) = crate::ledger::Ledger::read(&h1);
    let booked: Vec<_> = ledger
        .parts
        .iter()
        .flat_map(|p| p.loads.iter().map(|(w, _)| *w))
        .collect();
    assert_eq!(booked.len(), 2);
    assert!(booked.contains(&r.worker) && booked.contains(&b_worker));
    assert_eq!(h1.metric_value("kvgate.ledger.contended"), 0);
    // Freed on both sides: the ledger empties.
    a.request_done(&h1, 1);
    b.borrow_mut().request_done(&*h2, 1);
    assert_eq!(
        crate::ledger::Ledger::read(&h1).0.parts.len(),
        2,
        "no shared-data write on the response path"
    );
    a.on_tick(&h1);
    b.borrow_mut().on_tick(&*h2);
    assert!(crate::ledger::Ledger::read(&h1).0.parts.is_empty());
}

fn predicted_engine(ttl_secs: f64) -> (FakeHost, Vm) {
    let h = FakeHost::at(10_000);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "kvgate_sidecar",
        "router_predicted_ttl_secs": ttl_secs,
        "stale_after_ms": 600000
    }))
    .unwrap();
    let mut vm = Vm::configure(&h, 1, 1, &cfg, &VmConfig::default()).unwrap();
    vm.on_tick(&h);
    let call = one_call(&h);
    let models = vec![ModelEntry {
        name: "Qwen/Qwen3-0.6B".into(),
        block_size: 16,
        files_digest: "vm-config".into(),
    }];
    vm.on_response(&h, call.id, ok(&snapshot(1, 1, models)));
    vm.engine.load_model("vm-config", &files()).unwrap();
    (h, vm)
}

fn matched(vm: &mut Vm, h: &FakeHost, ctx: u32) -> u32 {
    let Outcome::Route(r) = vm.decide(
        h,
        ctx,
        crate::headers::RoutedPath::Chat,
        &long_chat("same prompt"),
        None,
    ) else {
        panic!()
    };
    vm.request_done(h, ctx);
    r.matched_blocks
}

#[test]
fn router_predicted_ttl_secs_sets_how_long_a_prediction_counts() {
    let (h, mut short) = predicted_engine(1.0);
    assert_eq!(matched(&mut short, &h, 1), 0, "nothing cached yet");
    h.advance(500);
    assert!(matched(&mut short, &h, 2) > 10, "predicted 0.5 s ago");
    h.advance(1_600);
    assert_eq!(matched(&mut short, &h, 3), 0, "the 1 s prediction expired");

    let (h, mut long) = predicted_engine(10.0);
    matched(&mut long, &h, 1);
    h.advance(2_100);
    assert!(
        matched(&mut long, &h, 2) > 10,
        "a 10 s prediction still counts"
    );
}

/// Issue 14 item 3: a main-thread VM (it never decides) does not copy the other VMs'
/// predictions into an approximate index of its own; once it serves a stream it does.
#[test]
fn only_vms_that_decide_follow_the_shared_predictions() {
    let h1 = FakeHost::at(1_000);
    let h2 = h1.sibling();
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "", "workers": workers(2)
    }))
    .unwrap();
    let vm_config = VmConfig::parse(&static_vm_config_bytes()).unwrap();
    let mut worker_vm = Vm::configure(&h1, 1, 1, &cfg, &vm_config).unwrap();
    let mut main_thread = Vm::configure(&h2, 2, 2, &cfg, &vm_config).unwrap();
    worker_vm.stream_seen(&h1);
    let Outcome::Route(_) = worker_vm.decide(
        &h1,
        1,
        crate::headers::RoutedPath::Chat,
        &long_chat("predicted"),
        None,
    ) else {
        panic!()
    };
    let predicted = |v: &Vm| v.engine.approx.index().len();
    assert!(predicted(&worker_vm) > 0);
    h2.advance(100);
    worker_vm.on_tick(&h1); // publishes the prediction
    main_thread.on_tick(&h2);
    assert_eq!(predicted(&main_thread), 0, "a main-thread VM keeps no copy");
    main_thread.stream_seen(&h2);
    main_thread.on_tick(&h2);
    assert_eq!(predicted(&main_thread), predicted(&worker_vm));
}

#[test]
fn tools_cache_hits_and_misses_are_counted_per_decision() {
    let h = FakeHost::at(1_000);
    let listing = VmConfig::parse(&static_vm_config_bytes()).unwrap();
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "", "workers": workers(2)
    }))
    .unwrap();
    let mut vm = Vm::configure(&h, 1, 1, &cfg, &listing).unwrap();
    vm.stream_seen(&h);
    let tool = |name: &str| {
        serde_json::json!({"type": "function", "function": {
            "name": name, "description": "Looks something up.",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}
        }})
    };
    let body = |tools: Vec<serde_json::Value>, turn: &str| {
        serde_json::to_vec(&serde_json::json!({
            "model": files().name,
            "messages": [{"role": "user", "content": turn}],
            "tools": tools,
        }))
        .unwrap()
    };
    let mut decide = |ctx: u32, b: &[u8]| {
        let Outcome::Route(r) = vm.decide(&h, ctx, crate::headers::RoutedPath::Chat, b, None)
        else {
            panic!("not routed")
        };
        r.tools
    };
    // First sighting converts, the same list again is reused, another list converts; a
    // request without tools touches nothing.
    assert_eq!(decide(1, &body(vec![tool("a"), tool("b")], "one")), (0, 1));
    assert_eq!(decide(2, &body(vec![tool("a"), tool("b")], "two")), (1, 0));
    assert_eq!(decide(3, &body(vec![tool("c")], "three")), (0, 1));
    assert_eq!(decide(4, &long_chat("no tools")), (0, 0));
    assert_eq!(h.metric_value("kvgate.tools_cache.hits"), 1);
    assert_eq!(h.metric_value("kvgate.tools_cache.misses"), 2);
}

/// Issue 14 item 4: a decision writes shared data once — its booking (the ledger,
/// compare-and-swap); its prediction waits for the VM's next tick, which publishes every
/// waiting prediction in one ring entry (or for a decision once the oldest waiting one is a
/// tick period old) — and the response and the end of the stream write nothing: the
/// booking's release reaches the ledger with the next tick's one write, however many
/// streams ended.
#[test]
fn a_decision_writes_shared_data_once_and_its_end_not_at_all() {
    let h = FakeHost::at(1_000);
    let cfg = serde_json::to_vec(&serde_json::json!({
        "sidecar_cluster": "", "workers": workers(2)
    }))
    .unwrap();
    let vm_config = VmConfig::parse(&static_vm_config_bytes()).unwrap();
    let mut vm = Vm::configure(&h, 1, 1, &cfg, &vm_config).unwrap();
    vm.stream_seen(&h);
    let decide = |vm: &mut Vm, ctx: u32| {
        let body = long_chat(&format!("writes {ctx}"));
        let Outcome::Route(_) = vm.decide(&h, ctx, crate::headers::RoutedPath::Chat, &body, None)
        else {
            panic!("routed")
        };
    };
    decide(&mut vm, 1); // loads the model
    for ctx in 2..6 {
        let before = h.shared_writes();
        decide(&mut vm, ctx);
        assert_eq!(h.shared_writes() - before, 1, "decision {ctx}");
    }
    let before = h.shared_writes();
    for ctx in 1..6 {
        vm.response_started(&h, ctx);
        vm.request_done(&h, ctx);
    }
    assert_eq!(h.shared_writes(), before, "no write on the response path");
    h.advance(20);
    vm.on_tick(&h);
    assert_eq!(
        h.shared_writes() - before,
        2,
        "the tick publishes the releases at once, and the five predictions in one entry"
    );
    let (ledger, _) = crate::ledger::Ledger::read(&h);
    assert!(
        ledger.parts.is_empty(),
        "every booking released: {ledger:?}"
    );
    // Without a tick in between, a decision publishes the waiting predictions once the
    // oldest is a tick period old: then it writes twice.
    decide(&mut vm, 6);
    h.advance(20);
    let before = h.shared_writes();
    decide(&mut vm, 7);
    assert_eq!(h.shared_writes() - before, 2);
}
