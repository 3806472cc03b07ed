//! A proxy-wasm guest for the tests of kvgate's wasmtime host (`tests/host`): it
//! calls every host function the host implements, and misbehaves on request (panics,
//! passes bad pointers, exits) so the host's traps and error paths can be checked. Built
//! for `wasm32-wasip1` by `make wasm`; never deployed.

// Misbehaving is its job: it panics, unwraps and hands the host invalid pointers on purpose.
#![allow(
    unsafe_code,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
use std::collections::HashMap;
use std::time::{Duration, UNIX_EPOCH};

use log::{debug, error, info, trace, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

#[derive(Default, Clone, Copy)]
struct Metrics {
    requests: u32,
    inflight: u32,
    body_size: u32,
}

#[derive(Default)]
struct Root {
    upstream: String,
    metrics: Metrics,
    queue: u32,
    seen: HashMap<String, u32>,
}

fn cas_increment(key: &str) -> u64 {
    loop {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap();
        let n = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;
        match hostcalls::set_shared_data(key, Some(n.to_string().as_bytes()), cas) {
            Ok(()) => return n,
            Err(Status::CasMismatch) => continue,
            Err(e) => panic!("set_shared_data: {e:?}"),
        }
    }
}

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, nh: usize, body_size: usize, nt: usize) {
        if nh == 0 {
            // Envoy: on failure there is no response header map (reading a header would panic).
            let (code, msg) = self.get_grpc_status();
            warn!("call failed: status={code} message={msg:?}");
            return;
        }
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let trailer = self
            .get_http_call_response_trailer("x-t")
            .unwrap_or_default();
        info!("root call response token={token} headers={nh} body={body_size} trailers={nt} status={status} t={trailer}");
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        for line in String::from_utf8_lossy(&body).lines() {
            if let Some((k, v)) = line.split_once('=') {
                self.set_shared_data(k, Some(v.as_bytes()), None).unwrap();
            }
        }
        self.set_shared_data("last_status", Some(status.as_bytes()), None)
            .unwrap();
    }
}

impl RootContext for Root {
    fn on_vm_start(&mut self, size: usize) -> bool {
        let cfg = self.get_vm_configuration().unwrap_or_default();
        info!(
            "vm start size={size} config={}",
            String::from_utf8_lossy(&cfg)
        );
        let level = hostcalls::get_log_level().unwrap();
        debug!("host log level {level:?}");
        self.metrics = Metrics {
            requests: hostcalls::define_metric(MetricType::Counter, "dev_requests").unwrap(),
            inflight: hostcalls::define_metric(MetricType::Gauge, "dev_inflight").unwrap(),
            body_size: hostcalls::define_metric(MetricType::Histogram, "dev_body_size").unwrap(),
        };
        self.queue = self.register_shared_queue("dev_q");
        println!("stdout from vm start");
        eprintln!("stderr from vm start");
        self.seen.insert("start".into(), 1);
        let now = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        trace!("now_ms={}", now.as_millis());
        let sys = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        trace!("wasi_now_ms={}", sys.as_millis());
        cfg != b"fail"
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = self.get_plugin_configuration().unwrap_or_default();
        let cfg = String::from_utf8_lossy(&cfg).to_string();
        info!("configure {cfg}");
        if cfg == "bad" {
            return false;
        }
        let mut tick = 0;
        for part in cfg.split(';') {
            match part.split_once('=') {
                Some(("tick_ms", v)) => tick = v.parse().unwrap_or(0),
                Some(("upstream", v)) => self.upstream = v.to_string(),
                _ => {}
            }
        }
        if tick > 0 {
            self.set_tick_period(Duration::from_millis(tick));
        }
        let root_id = self
            .get_property(vec!["plugin_root_id"])
            .unwrap_or_default();
        info!("root id {}", String::from_utf8_lossy(&root_id));
        true
    }

    fn on_tick(&mut self) {
        let n = cas_increment("ticks");
        let res = self.dispatch_http_call(
            &self.upstream,
            vec![
                (":method", "GET"),
                (":path", "/index"),
                (":authority", "sidecar"),
            ],
            Some(b"tick"),
            vec![],
            Duration::from_secs(5),
        );
        info!("tick {n} dispatch={res:?}");
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = self.dequeue_shared_queue(queue_id) {
            let item = String::from_utf8_lossy(&item).to_string();
            info!("dequeued {item}");
            let mut log = self.get_shared_data("queue_log").0.unwrap_or_default();
            log.extend_from_slice(item.as_bytes());
            log.push(b',');
            self.set_shared_data("queue_log", Some(&log), None).unwrap();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            metrics: self.metrics,
            continued_early: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

extern "C" {
    fn proxy_log(level: u32, ptr: *const u8, len: usize) -> u32;
    fn proxy_get_shared_data(
        k: *const u8,
        kn: usize,
        v: *mut *mut u8,
        vn: *mut usize,
        cas: *mut u32,
    ) -> u32;
}

struct Http {
    id: u32,
    metrics: Metrics,
    continued_early: bool,
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _nh: usize, body_size: usize, _nt: usize) {
        let status = self
            .get_http_call_response_header(":status")
            .unwrap_or_default();
        let body = self
            .get_http_call_response_body(0, body_size)
            .unwrap_or_default();
        info!("http ctx {} call {token} -> {status}", self.id);
        self.set_http_request_header("x-call-status", Some(&status));
        self.set_http_request_header("x-call-body", Some(&String::from_utf8_lossy(&body)));
        self.resume_http_request();
    }

    fn on_done(&mut self) -> bool {
        debug!("done {}", self.id);
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, n: usize, eos: bool) -> Action {
        hostcalls::increment_metric(self.metrics.requests, 1).unwrap();
        hostcalls::increment_metric(self.metrics.inflight, 1).unwrap();
        let headers = self.get_http_request_headers();
        debug!(
            "ctx {} got {n} headers (pairs {}) eos={eos}",
            self.id,
            headers.len()
        );
        if self.get_http_request_header("x-panic").is_some() {
            panic!("boom requested");
        }
        if self.get_http_request_header("x-bad-ptr").is_some() {
            let st = unsafe { proxy_log(2, 0xffff_fff0 as *const u8, 100) };
            let st2 = unsafe {
                proxy_get_shared_data(
                    0xffff_fff0 as *const u8,
                    64,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
            info!("bad ptr status={st} {st2}");
            return Action::Continue;
        }
        if self.get_http_request_header("x-exit").is_some() {
            std::process::exit(3);
        }
        if self.get_http_request_header("x-set-pairs").is_some() {
            let path = self.get_http_request_header(":path").unwrap_or_default();
            self.set_http_request_headers(vec![(":path", &path), ("x-only", "1")]);
            return Action::Continue;
        }
        if self.get_http_request_header("x-deny").is_some() {
            self.send_http_response(403, vec![("x-denied", "yes")], Some(b"denied"));
            return Action::Pause;
        }
        if let Some(target) = self.get_http_request_header("x-call") {
            let token = self
                .dispatch_http_call(
                    &target,
                    vec![
                        (":method", "POST"),
                        (":path", "/lookup"),
                        (":authority", "side"),
                    ],
                    Some(b"q"),
                    vec![],
                    Duration::from_millis(250),
                )
                .unwrap();
            info!("ctx {} dispatched {token}", self.id);
            return Action::Pause;
        }
        self.set_http_request_header("x-dev-seen", Some("1"));
        self.add_http_request_header("x-dev-multi", "a");
        self.add_http_request_header("x-dev-multi", "b");
        self.set_http_request_header("x-remove-me", None);
        if let Some(id) = self.get_property(vec!["request", "id"]) {
            self.set_http_request_header("x-request-id-seen", Some(&String::from_utf8_lossy(&id)));
        }
        self.set_property(vec!["dev", "marker"], Some(b"set"));
        if self.get_http_request_header("x-continue-early").is_some() {
            self.continued_early = true;
            return Action::Continue;
        }
        if self.get_http_request_header("x-reset").is_some() {
            self.reset_http_request();
        }
        if eos {
            Action::Continue
        } else {
            Action::Pause
        }
    }

    fn on_http_request_body(&mut self, size: usize, eos: bool) -> Action {
        if self.continued_early {
            // Envoy: request headers are gone once on_request_headers returned Continue.
            self.set_http_request_header("x-late", Some("1"));
        }
        if !eos {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        hostcalls::record_metric(self.metrics.body_size, size as u64).unwrap();
        let n = cas_increment("bodies");
        if let Some(q) = self.resolve_shared_queue("", "dev_q") {
            self.enqueue_shared_queue(q, Some(format!("len{size}").as_bytes()))
                .unwrap();
        }
        self.set_http_request_header("x-body-len", Some(&size.to_string()));
        self.set_http_request_header("x-bodies", Some(&n.to_string()));
        let text = String::from_utf8_lossy(&body).to_string();
        if let Some(rest) = text.strip_prefix("REPLACE:") {
            self.set_http_request_body(0, size, rest.as_bytes());
        }
        if let Some(first) = text.split_whitespace().next() {
            if let (Some(ep), _) = self.get_shared_data(&format!("kv/{first}")) {
                self.set_http_request_header("x-endpoint", Some(&String::from_utf8_lossy(&ep)));
            }
        }
        let r = self.call_foreign_function("clear_route_cache", None);
        debug!("clear_route_cache -> {r:?}");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        self.set_http_response_header("x-dev-resp", Some("1"));
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, eos: bool) -> Action {
        if !eos {
            return Action::Pause;
        }
        self.set_http_response_body(size, 0, b"!");
        Action::Continue
    }

    fn on_log(&mut self) {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        hostcalls::increment_metric(self.metrics.inflight, -1).unwrap();
        let v = hostcalls::get_metric(self.metrics.requests).unwrap();
        error!("on_log ctx {} path {path} requests {v}", self.id);
    }
}
