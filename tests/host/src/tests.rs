//! Checks of the host against `tests/host-probe`, a guest that calls every host function
//! and misbehaves on request (built by `make wasm`; its path is `KVGATE_HOST_PROBE_WASM`),
//! and a smoke check against the real filter. The pure parts have their own unit tests
//! next to the code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use super::*;

/// A wasm module built by `make wasm` (`var` names it, else the cargo target dir holds it).
/// Missing is a failure, not a skip: `make test` always builds both.
fn built_wasm(what: &'static str, var: &'static str, file: &str) -> String {
    kvgate_stack::require(what, var, &kvgate_stack::wasm_path(var, file))
        .unwrap_or_else(|e| panic!("{e}"))
        .display()
        .to_string()
}

fn probe_module() -> FilterModule {
    let path = built_wasm(
        "kvgate_host_probe.wasm (make wasm)",
        "KVGATE_HOST_PROBE_WASM",
        "kvgate_host_probe.wasm",
    );
    let module = FilterModule::load(&path).unwrap();
    eprintln!(
        "probe module {path}: {} bytes, compiled in {:?}",
        module.size(),
        module.compile_time()
    );
    module
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<FilterModule>();
    check::<SharedStore>();
    check::<Vm>();
    check::<Stream>();
    check::<HostError>();
}

const PLUGIN: &[u8] = b"tick_ms=500;upstream=sidecar";

fn vm(module: &FilterModule, shared: &SharedStore) -> Vm {
    Vm::new(module, b"hello", PLUGIN, shared.clone()).unwrap()
}

const REQ: &[(&str, &str)] = &[
    (":method", "POST"),
    (":path", "/v1/chat"),
    (":authority", "gw"),
    ("x-remove-me", "x"),
];

fn with(extra: (&'static str, &'static str)) -> Vec<(&'static str, &'static str)> {
    let mut h = REQ.to_vec();
    h.push(extra);
    h
}

#[test]
fn startup_sequence_logs_and_settings() {
    let module = probe_module();
    let shared = SharedStore::new();
    let opts = VmOptions {
        vm_config: b"hello".to_vec(),
        plugin_config: PLUGIN.to_vec(),
        root_id: "dev_root".into(),
        ..VmOptions::default()
    };
    let vm = Vm::with_options(&module, opts, shared.clone()).unwrap();
    assert!(vm.has_log("vm start size=5 config=hello"));
    assert!(vm.has_log("configure tick_ms=500;upstream=sidecar"));
    assert!(vm.has_log("root id dev_root"));
    assert!(vm.has_log("host log level Trace"));
    let logs = vm.logs();
    let stdout = logs.iter().find(|l| l.source == LogSource::Stdout).unwrap();
    assert_eq!(
        (stdout.level, stdout.message.as_str()),
        (LogLevel::Info, "stdout from vm start")
    );
    let stderr = logs.iter().find(|l| l.source == LogSource::Stderr).unwrap();
    assert_eq!(
        (stderr.level, stderr.context_id),
        (LogLevel::Error, ROOT_CONTEXT_ID)
    );
    let start_ms = DEFAULT_CLOCK_START_SECS * 1000;
    assert!(vm.has_log(&format!("now_ms={start_ms}")));
    assert!(vm.has_log(&format!("wasi_now_ms={start_ms}")));
    assert_eq!(vm.tick_period(), Some(Duration::from_millis(500)));
    assert_eq!(vm.metric("dev_requests"), Some(MetricValue::Counter(0)));
    assert_eq!(
        vm.metric("dev_body_size"),
        Some(MetricValue::Histogram(vec![]))
    );
    assert!(vm.shutdown().unwrap());
}

#[test]
fn rejected_configurations() {
    let module = probe_module();
    let err = Vm::new(&module, b"fail", PLUGIN, SharedStore::new()).unwrap_err();
    assert!(matches!(err, HostError::VmStartRejected { .. }), "{err}");
    let err = Vm::new(&module, b"", b"bad", SharedStore::new()).unwrap_err();
    match err {
        HostError::ConfigureRejected { logs } => {
            assert!(logs.iter().any(|l| l.message == "configure bad"));
        }
        other => panic!("{other}"),
    }
}

#[test]
fn buffered_request_headers_body_properties_metrics_queue() {
    let module = probe_module();
    let shared = SharedStore::new();
    let vm = vm(&module, &shared);
    let mut s = vm.new_stream();
    s.set_property(&["request", "id"], b"req-1");
    assert_eq!(s.request_headers(REQ, false).unwrap(), Action::Pause);
    assert!(s.is_request_paused());
    assert_eq!(s.request_body(b"hello ", false).unwrap(), Action::Pause);
    assert_eq!(s.request_body(b"world", true).unwrap(), Action::Continue);
    assert!(!s.is_request_paused());
    assert_eq!(s.request_header("x-dev-seen").as_deref(), Some("1"));
    assert_eq!(
        s.request_header_map().get_all("x-dev-multi"),
        vec!["a", "b"]
    );
    assert!(s.request_header("x-remove-me").is_none());
    assert_eq!(
        s.request_header("x-request-id-seen").as_deref(),
        Some("req-1")
    );
    assert_eq!(s.request_header("x-body-len").as_deref(), Some("11"));
    assert_eq!(s.request_header("x-bodies").as_deref(), Some("1"));
    assert_eq!(s.request_body_bytes(), b"hello world");
    assert_eq!(s.request_body_sent(), b"hello world");
    assert_eq!(s.route_cache_clears(), 1);
    assert_eq!(s.property(&["dev", "marker"]).as_deref(), Some(&b"set"[..]));
    assert!(s.logs().iter().any(|l| l.message.contains("got 4 headers")));
    assert_eq!(vm.metric("dev_requests"), Some(MetricValue::Counter(1)));
    assert_eq!(vm.metric("dev_inflight"), Some(MetricValue::Gauge(1)));
    assert_eq!(
        vm.metric("dev_body_size"),
        Some(MetricValue::Histogram(vec![11]))
    );
    assert_eq!(vm.shared_data("bodies").unwrap().value, b"1");

    s.finish().unwrap();
    assert_eq!(vm.metric("dev_inflight"), Some(MetricValue::Gauge(0)));
    assert!(vm.has_log("on_log ctx 2 path /v1/chat requests 1"));
    assert!(vm.has_log("done 2"));
    assert!(s.request_body(b"x", true).is_err());

    assert_eq!(vm.pending_queue_notifications(), 1);
    assert_eq!(vm.deliver_queue_ready().unwrap(), 1);
    assert!(vm.has_log("dequeued len11"));
    assert_eq!(vm.shared_data("queue_log").unwrap().value, b"len11,");
}

#[test]
fn body_replacement_and_response_path() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    s.send_request(REQ, b"REPLACE:new body").unwrap();
    assert_eq!(s.request_body_bytes(), b"new body");
    assert_eq!(s.request_header("x-body-len").as_deref(), Some("16"));
    assert_eq!(
        s.response_headers(&[(":status", "200")], false).unwrap(),
        Action::Continue
    );
    assert_eq!(s.response_header("x-dev-resp").as_deref(), Some("1"));
    assert_eq!(s.response_body(b"ab", false).unwrap(), Action::Pause);
    assert!(s.response_body_bytes().is_empty() || s.response_body_bytes() == b"ab");
    assert_eq!(s.response_body(b"cd", true).unwrap(), Action::Continue);
    assert_eq!(s.response_body_bytes(), b"abcd!");
    s.finish().unwrap();
}

#[test]
fn set_header_pairs_replaces_the_map() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    assert_eq!(
        s.request_headers(&with(("x-set-pairs", "1")), true)
            .unwrap(),
        Action::Continue
    );
    let pairs = s.request_header_map().to_pairs();
    let expected = vec![
        (":path".to_owned(), "/v1/chat".to_owned()),
        ("x-only".into(), "1".into()),
    ];
    assert_eq!(pairs, expected);
}

#[test]
fn local_response_stops_the_request() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    s.send_request(&with(("x-deny", "1")), b"ignored").unwrap();
    let local = s.local_response().unwrap();
    assert_eq!(local.status, 403);
    assert_eq!(local.header("x-denied").as_deref(), Some("yes"));
    assert_eq!(local.body_str(), "denied");
    let err = s.request_body(b"more", true).unwrap_err();
    assert!(matches!(err, HostError::Stream { .. }), "{err}");
    // The local reply goes through the filter's encoder path.
    s.response_headers(&[(":status", "403")], true).unwrap();
    s.finish().unwrap();
}

#[test]
fn guest_panic_is_a_typed_trap_and_kills_the_vm() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    let err = s
        .request_headers(&with(("x-panic", "1")), true)
        .unwrap_err();
    match &err {
        HostError::Trap {
            function,
            trap,
            panic,
            ..
        } => {
            assert_eq!(*function, "proxy_on_request_headers");
            assert_eq!(*trap, Some(wasmtime::Trap::UnreachableCodeReached));
            assert!(
                panic.as_deref().unwrap().contains("boom requested"),
                "{panic:?}"
            );
        }
        other => panic!("{other}"),
    }
    assert!(vm.is_dead());
    assert!(matches!(vm.tick(), Err(HostError::VmDead)));
}

#[test]
fn headers_are_gone_after_continue_like_envoy() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    let action = s
        .request_headers(&with(("x-continue-early", "1")), false)
        .unwrap();
    assert_eq!(action, Action::Continue);
    let err = s.request_body(b"body", true).unwrap_err();
    assert_eq!(
        err.panic_message()
            .map(|m| m.contains("unexpected status: 2")),
        Some(true),
        "{err}"
    );
}

#[test]
fn bad_guest_pointers_get_invalid_memory_access() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    s.request_headers(&with(("x-bad-ptr", "1")), true).unwrap();
    assert!(vm.has_log("bad ptr status=6 6"));
    assert!(!vm.is_dead());
}

#[test]
fn proc_exit_is_reported() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    let err = s.request_headers(&with(("x-exit", "1")), true).unwrap_err();
    assert!(matches!(err, HostError::Exit { code: 3, .. }), "{err}");
}

#[test]
fn tick_http_call_response_fills_shared_data() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    vm.tick().unwrap();
    let calls = vm.http_calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.upstream, "sidecar");
    assert_eq!(call.header(":path").as_deref(), Some("/index"));
    assert_eq!(call.body, b"tick");
    assert_eq!(call.timeout, Duration::from_secs(5));
    assert_eq!(call.context_id, ROOT_CONTEXT_ID);
    let body = b"kv/hello=10.0.0.7:8000\nkv/other=10.0.0.8:8000";
    vm.http_call_response_with_trailers(call.token, &[(":status", "200")], body, &[("x-t", "tv")])
        .unwrap();
    assert!(vm.has_log("status=200 t=tv"));
    assert!(vm.http_calls().is_empty());
    assert!(matches!(
        vm.http_call_response(call.token, &[], b""),
        Err(HostError::UnknownHttpCall(_))
    ));
    assert_eq!(vm.shared_data("kv/hello").unwrap().value, b"10.0.0.7:8000");
    assert_eq!(vm.shared_data("ticks").unwrap().value, b"1");

    let mut s = vm.new_stream();
    s.send_request(REQ, b"hello world").unwrap();
    assert_eq!(
        s.request_header("x-endpoint").as_deref(),
        Some("10.0.0.7:8000")
    );
}

#[test]
fn http_call_failure_reports_broken_connection() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    vm.tick().unwrap();
    let token = vm.http_calls()[0].token;
    vm.http_call_failure(token).unwrap();
    assert!(vm.has_log("call failed: status=11 message=Some(\"reset\")"));
}

#[test]
fn unknown_cluster_is_bad_argument() {
    let module = probe_module();
    let opts = VmOptions {
        plugin_config: b"upstream=nope".to_vec(),
        clusters: Some(vec!["sidecar".into()]),
        ..VmOptions::default()
    };
    let vm = Vm::with_options(&module, opts, SharedStore::new()).unwrap();
    vm.tick().unwrap();
    assert!(vm.has_log("dispatch=Err(BadArgument)"));
    assert!(vm.all_http_calls().is_empty());
}

#[test]
fn http_call_from_a_stream_resumes_it() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    assert_eq!(
        s.request_headers(&with(("x-call", "sidecar")), true)
            .unwrap(),
        Action::Pause
    );
    let calls = s.http_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].context_id, s.context_id());
    assert_eq!(calls[0].timeout, Duration::from_millis(250));
    vm.http_call_response(calls[0].token, &[(":status", "201")], b"found")
        .unwrap();
    assert_eq!(s.request_header("x-call-status").as_deref(), Some("201"));
    assert_eq!(s.request_header("x-call-body").as_deref(), Some("found"));
    assert_eq!(s.request_resumes(), 1);
    assert!(!s.is_request_paused());
}

#[test]
fn several_vms_share_data_queues_and_metrics() {
    let module = probe_module();
    let shared = SharedStore::new();
    let vm1 = vm(&module, &shared);
    let vm2 = vm(&module, &shared);
    vm1.tick().unwrap();
    vm2.tick().unwrap();
    assert_eq!(vm1.shared_data("ticks").unwrap().value, b"2");
    // vm2 registered the queue last: it gets the notification for vm1's enqueue.
    let mut s = vm1.new_stream();
    s.send_request(REQ, b"abc").unwrap();
    assert_eq!(vm1.pending_queue_notifications(), 0);
    assert_eq!(vm2.deliver_queue_ready().unwrap(), 1);
    assert!(vm2.has_log("dequeued len3"));
    let mut s2 = vm2.new_stream();
    s2.send_request(REQ, b"abcd").unwrap();
    assert_eq!(s2.request_header("x-bodies").as_deref(), Some("2"));
    assert_eq!(shared.metric("dev_requests"), Some(MetricValue::Counter(2)));
    // Different vm_id: separate namespace.
    let opts = VmOptions {
        vm_id: "other".into(),
        plugin_config: PLUGIN.to_vec(),
        ..VmOptions::default()
    };
    let vm3 = Vm::with_options(&module, opts, shared.clone()).unwrap();
    vm3.tick().unwrap();
    assert_eq!(vm3.shared_data("ticks").unwrap().value, b"1");
}

#[test]
fn advance_time_fires_ticks() {
    let module = probe_module();
    let shared = SharedStore::new();
    let vm = vm(&module, &shared);
    let t0 = shared.clock().now_nanos();
    assert_eq!(vm.advance_time(Duration::from_millis(1200)).unwrap(), 2);
    assert_eq!(shared.clock().now_nanos() - t0, 1_200_000_000);
    assert_eq!(vm.advance_time(Duration::from_millis(300)).unwrap(), 1);
    assert_eq!(vm.all_http_calls().len(), 3);
}

/// Smoke check against the real filter (`KVGATE_WASM`): it compiles, links (every
/// import satisfied), starts without trapping, and a second load comes from the cache.
#[test]
fn real_filter_compiles_links_and_is_cached() {
    let path = built_wasm(
        "kvgate_filter.wasm (make wasm)",
        "KVGATE_WASM",
        "kvgate_filter.wasm",
    );
    let module = FilterModule::load(&path).unwrap();
    eprintln!(
        "{path}: {} bytes, compiled in {:?}",
        module.size(),
        module.compile_time()
    );
    let started = std::time::Instant::now();
    let again = FilterModule::load(&path).unwrap();
    assert_eq!(again.compile_time(), module.compile_time());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not cached: {:?}",
        started.elapsed()
    );
    let started = std::time::Instant::now();
    match Vm::new(&module, b"", b"", SharedStore::new()) {
        Ok(vm) => eprintln!(
            "started in {:?}; {} log lines",
            started.elapsed(),
            vm.logs().len()
        ),
        Err(HostError::VmStartRejected { logs } | HostError::ConfigureRejected { logs }) => {
            eprintln!("empty configuration rejected: {:?}", logs.last());
        }
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn trailers_release_the_buffered_body_and_reset_is_recorded() {
    let module = probe_module();
    let vm = vm(&module, &SharedStore::new());
    let mut s = vm.new_stream();
    assert_eq!(s.request_headers(REQ, false).unwrap(), Action::Pause);
    assert_eq!(s.request_body(b"partial", false).unwrap(), Action::Pause);
    assert!(s.request_body_sent().is_empty());
    assert_eq!(
        s.request_trailers(&[("grpc-status", "0")]).unwrap(),
        Action::Continue
    );
    assert_eq!(s.request_body_sent(), b"partial");
    assert_eq!(
        s.request_trailer_map().get("grpc-status").as_deref(),
        Some("0")
    );
    assert!(s.request_body(b"late", true).is_err());

    let mut s = vm.new_stream();
    s.request_headers(&with(("x-reset", "1")), false).unwrap();
    assert!(s.was_reset());
    assert!(matches!(
        s.request_body(b"x", true),
        Err(HostError::Stream { .. })
    ));
}

#[test]
fn vms_on_threads_share_cas_counters() {
    let module = probe_module();
    let shared = SharedStore::new();
    // As in Envoy, reading a missing key gives CAS 0 and a write with CAS 0 is
    // unconditional: two first increments would both write 1. Seed the key so every
    // increment is a compare-and-swap.
    shared.set("kvgate", b"bodies", b"0", 0);
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (module, shared) = (module.clone(), shared.clone());
            std::thread::spawn(move || {
                let vm = vm(&module, &shared);
                for _ in 0..25 {
                    let mut s = vm.new_stream();
                    s.send_request(REQ, b"body").unwrap();
                    s.finish().unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let bodies = shared.get("kvgate", b"bodies").unwrap();
    assert_eq!(bodies.value, b"100");
    assert_eq!(
        shared.metric("dev_requests"),
        Some(MetricValue::Counter(100))
    );
    assert_eq!(shared.metric("dev_inflight"), Some(MetricValue::Gauge(0)));
}
