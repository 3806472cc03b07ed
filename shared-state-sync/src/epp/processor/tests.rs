//! The picker's message handling against the engine's in-memory host: what each ext_proc
//! message is answered with, booking and freeing (end of response, client abort), the
//! subset hint, local replies, and the sync path that makes the picker ready.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use super::*;
use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
use envoy_types::pb::envoy::service::ext_proc::v3::{
    CommonResponse, HttpBody, HttpHeaders, HttpTrailers, ProtocolConfiguration,
};
use envoy_types::pb::google::protobuf::{value, ListValue, Struct, Value};
use kvgate_core::config::Config;
use kvgate_core::sync::{self as ksync, SyncFrame};
use kvgate_core::workers::WorkerInfo;
use kvgate_engine::testing::FakeHost;
use kvgate_engine::vm::VmConfig;
use serde_json::json;

const W1: &str = "127.0.0.1:18001";
const W2: &str = "127.0.0.1:18002";

fn workers() -> serde_json::Value {
    json!([
        {"instance_id": 1, "endpoint": W1, "model": "m", "block_size": 16},
        {"instance_id": 2, "endpoint": W2, "model": "m", "block_size": 16},
    ])
}

fn processor(extra: serde_json::Value) -> Processor<FakeHost> {
    let mut cfg = json!({"sidecar_cluster": "", "workers": workers(), "decision_header": true});
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    let host = FakeHost::at(1_000);
    let cfg = Config::from_json(cfg.to_string().as_bytes()).unwrap();
    let vm = Vm::from_config(&host, 7, 7, cfg, &VmConfig::default()).unwrap();
    Processor::new(host, vm)
}

fn headers(pairs: &[(&str, &str)], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(HeaderMap {
                headers: pairs
                    .iter()
                    .map(|(k, v)| HeaderValue {
                        key: k.to_string(),
                        value: String::new(),
                        raw_value: v.as_bytes().to_vec(),
                    })
                    .collect(),
            }),
            end_of_stream,
            ..HttpHeaders::default()
        })),
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: BodySendMode::Buffered as i32,
            ..ProtocolConfiguration::default()
        }),
        ..ProcessingRequest::default()
    }
}

fn chat_headers() -> ProcessingRequest {
    headers(
        &[
            (":method", "POST"),
            (":path", "/v1/chat/completions"),
            ("content-type", "application/json"),
            // A client may never choose its worker.
            ("x-gateway-destination-endpoint", "6.6.6.6:1"),
        ],
        false,
    )
}

fn body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn response_body(end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::ResponseBody(HttpBody {
            body: b"data: {}\n\n".to_vec(),
            end_of_stream,
            ..HttpBody::default()
        })),
        ..ProcessingRequest::default()
    }
}

fn response_headers(pairs: &[(&str, &str)]) -> ProcessingRequest {
    let mut r = headers(pairs, false);
    let Some(Request::RequestHeaders(h)) = r.request.take() else {
        unreachable!()
    };
    r.request = Some(Request::ResponseHeaders(h));
    r.protocol_config = None;
    r
}

fn chat() -> Vec<u8> {
    json!({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hello"}]})
        .to_string()
        .into_bytes()
}

fn common(r: &ProcessingResponse) -> Option<CommonResponse> {
    match r.response.as_ref().unwrap() {
        Response::RequestHeaders(h) | Response::ResponseHeaders(h) => h.response.clone(),
        Response::RequestBody(b) | Response::ResponseBody(b) => b.response.clone(),
        other => panic!("unexpected {other:?}"),
    }
}

fn set_headers(c: &CommonResponse) -> Vec<(String, String)> {
    c.header_mutation
        .as_ref()
        .map(|m| {
            m.set_headers
                .iter()
                .map(|o| {
                    let h = o.header.as_ref().unwrap();
                    (
                        h.key.clone(),
                        String::from_utf8(h.raw_value.clone()).unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn get<'a>(set: &'a [(String, String)], name: &str) -> Option<&'a str> {
    set.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn metadata_destination(r: &ProcessingResponse) -> Option<String> {
    let md = r.dynamic_metadata.as_ref()?;
    let Some(value::Kind::StructValue(ns)) = &md.fields.get(proto::LB_NAMESPACE)?.kind else {
        return None;
    };
    match &ns.fields.get(DESTINATION_ENDPOINT)?.kind {
        Some(value::Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

/// Routes one chat on stream `ctx`; returns the destination list.
fn route(p: &mut Processor<FakeHost>, ctx: u32) -> String {
    let r = p.handle(ctx, chat_headers()).unwrap();
    let removed = common(&r).unwrap().header_mutation.unwrap().remove_headers;
    assert_eq!(removed, vec!["x-gateway-destination-endpoint".to_string()]);
    let r = p.handle(ctx, body(&chat(), true)).unwrap();
    let c = common(&r).expect("a routed request is mutated");
    assert!(c.clear_route_cache);
    let set = set_headers(&c);
    let dest = get(&set, DESTINATION_ENDPOINT).unwrap().to_string();
    assert_eq!(metadata_destination(&r).as_deref(), Some(dest.as_str()));
    assert!(get(&set, "x-worker-instance-id").is_some(), "{set:?}");
    dest
}

#[test]
fn a_chat_is_routed_booked_and_freed_at_the_end_of_its_response() {
    let mut p = processor(json!({}));
    let dest = route(&mut p, 1);
    let primary = dest.split(',').next().unwrap();
    assert!([W1, W2].contains(&primary), "{dest}");
    assert_eq!(p.vm.engine.in_flight(), 1);
    assert_eq!(p.host.metric_value("kvgate.decisions.routed"), 1);

    let r = p
        .handle(1, response_headers(&[(":status", "200")]))
        .unwrap();
    let set = set_headers(&common(&r).unwrap());
    assert!(get(&set, "x-kvgate-decision").is_some(), "{set:?}");
    p.handle(1, response_body(false)).unwrap();
    assert_eq!(p.vm.engine.in_flight(), 1, "still streaming");
    p.handle(1, response_body(true)).unwrap();
    assert_eq!(p.vm.engine.in_flight(), 0);
    // Envoy closes the stream afterwards: nothing is freed twice.
    p.end(1);
    assert_eq!(p.open_streams(), 0);
    assert_eq!(p.vm.engine.in_flight(), 0);
}

#[test]
fn a_client_abort_frees_the_booking() {
    let mut p = processor(json!({}));
    route(&mut p, 1);
    route(&mut p, 2);
    assert_eq!(p.vm.engine.in_flight(), 2);
    // Stream 1: the client hung up before any response; stream 2 mid-response.
    p.end(1);
    assert_eq!(p.vm.engine.in_flight(), 1);
    p.handle(2, response_headers(&[(":status", "200")]));
    p.handle(2, response_body(false));
    p.end(2);
    assert_eq!(p.vm.engine.in_flight(), 0);
    assert_eq!(p.open_streams(), 0);
}

#[test]
fn trailers_end_the_response_too() {
    let mut p = processor(json!({}));
    route(&mut p, 3);
    p.handle(3, response_headers(&[(":status", "200")]));
    let r = p
        .handle(
            3,
            ProcessingRequest {
                request: Some(Request::ResponseTrailers(HttpTrailers::default())),
                ..ProcessingRequest::default()
            },
        )
        .unwrap();
    assert!(matches!(r.response, Some(Response::ResponseTrailers(_))));
    assert_eq!(p.vm.engine.in_flight(), 0);
}

#[test]
fn a_buffered_body_followed_by_trailers_is_decided_at_the_body() {
    let mut p = processor(json!({}));
    p.handle(4, chat_headers());
    let r = p.handle(4, body(&chat(), false)).unwrap();
    assert!(get(&set_headers(&common(&r).unwrap()), DESTINATION_ENDPOINT).is_some());
    assert_eq!(p.vm.engine.in_flight(), 1);
}

#[test]
fn other_paths_pass_untouched() {
    let mut p = processor(json!({}));
    let r = p
        .handle(
            5,
            headers(&[(":method", "GET"), (":path", "/v1/models")], true),
        )
        .unwrap();
    assert!(common(&r).is_none());
    assert!(r.dynamic_metadata.is_none());
    p.end(5);
    assert_eq!(p.vm.engine.in_flight(), 0);
}

#[test]
fn a_body_over_the_limit_gets_the_filters_413() {
    let mut p = processor(json!({"max_body_bytes": 1024}));
    let r = p
        .handle(
            6,
            headers(
                &[
                    (":method", "POST"),
                    (":path", "/v1/chat/completions"),
                    ("content-length", "5000"),
                ],
                false,
            ),
        )
        .unwrap();
    let Some(Response::ImmediateResponse(i)) = r.response else {
        panic!("{r:?}");
    };
    assert_eq!(i.status.unwrap().code, 413);
    assert!(String::from_utf8(i.body)
        .unwrap()
        .contains("request_too_large"));
}

#[test]
fn a_bad_request_gets_the_filters_json_error() {
    let mut p = processor(json!({}));
    p.handle(7, chat_headers());
    let r = p.handle(7, body(b"{not json", true)).unwrap();
    let Some(Response::ImmediateResponse(i)) = r.response else {
        panic!("{r:?}");
    };
    assert_eq!(i.status.unwrap().code, 400);
    assert_eq!(p.vm.engine.in_flight(), 0);
}

fn with_subset(mut req: ProcessingRequest, allowed: &[&str]) -> ProcessingRequest {
    let list = Value {
        kind: Some(value::Kind::ListValue(ListValue {
            values: allowed
                .iter()
                .map(|s| Value {
                    kind: Some(value::Kind::StringValue(s.to_string())),
                })
                .collect(),
        })),
    };
    req.metadata_context = Some(Metadata {
        filter_metadata: [(
            proto::SUBSET_NAMESPACE.to_string(),
            Struct {
                fields: [(proto::SUBSET_KEY.to_string(), list)].into(),
            },
        )]
        .into(),
        ..Metadata::default()
    });
    req
}

#[test]
fn the_subset_hint_narrows_the_destination_list() {
    let mut p = processor(json!({"max_fallbacks": 1}));
    // Stream 10 stays in flight on its worker: the next pick is the other, less loaded one.
    let dest = route(&mut p, 10);
    let busy = dest.split(',').next().unwrap().to_string();
    let idle = if busy == W1 { W2 } else { W1 };

    // Only the idle worker allowed: the list (idle, then busy as fallback) is cut to it,
    // header and metadata alike.
    p.handle(11, with_subset(chat_headers(), &[idle]));
    let r = p.handle(11, body(&chat(), true)).unwrap();
    let set = set_headers(&common(&r).unwrap());
    assert_eq!(get(&set, DESTINATION_ENDPOINT), Some(idle));
    assert_eq!(metadata_destination(&r).as_deref(), Some(idle));
    p.end(11);

    // The pick (the idle worker) outside the subset: 503, and nothing stays booked.
    p.handle(12, with_subset(chat_headers(), &[&busy]));
    let r = p.handle(12, body(&chat(), true)).unwrap();
    let Some(Response::ImmediateResponse(i)) = r.response else {
        panic!("{r:?}");
    };
    assert_eq!(i.status.unwrap().code, 503);
    p.end(12);
    p.end(10);
    assert_eq!(p.vm.engine.in_flight(), 0);
}

#[test]
fn the_picker_follows_the_sidecar_and_is_ready_after_its_first_frame() {
    let host = FakeHost::at(1_000);
    let cfg = Config::from_json(br#"{"sidecar_cluster": "kvgate_sidecar"}"#).unwrap();
    let vm = Vm::from_config(&host, 9, 9, cfg, &VmConfig::default()).unwrap();
    let mut p = Processor::new(host, vm);
    assert!(!p.ready());
    assert!(p.tick().is_empty());
    let calls = p.host.take_calls();
    let sync = calls
        .iter()
        .find(|c| c.path.starts_with("/v1/sync"))
        .expect("the VM long-polls the sidecar");
    let list: Vec<WorkerInfo> = serde_json::from_value(workers()).unwrap();
    let frame = ksync::encode(&SyncFrame {
        epoch: 42,
        to_version: 1,
        snapshot: true,
        workers: Some(list),
        models: Some(Vec::new()),
        loads: Some(Vec::new()),
        ..SyncFrame::default()
    });
    p.call_done(sync.id, Some(200), &frame);
    assert!(p.ready());
    // The sidecar's workers are the picker's candidates.
    let dest = route(&mut p, 1);
    assert!(dest.starts_with(W1) || dest.starts_with(W2), "{dest}");
}

/// An idle picker fetches the models the sidecar announces: it must not wait for a
/// request to become ready (a readiness probe would keep it out of service forever).
#[test]
fn an_idle_picker_fetches_its_models_and_is_not_ready_without_them() {
    let host = FakeHost::at(1_000);
    let cfg = Config::from_json(br#"{"sidecar_cluster": "kvgate_sidecar"}"#).unwrap();
    let vm = Vm::from_config(&host, 9, 9, cfg, &VmConfig::default()).unwrap();
    let mut p = Processor::new(host, vm);
    p.tick();
    let calls = p.host.take_calls();
    let sync = calls
        .iter()
        .find(|c| c.path.starts_with("/v1/sync"))
        .expect("the VM long-polls the sidecar");
    let frame = ksync::encode(&SyncFrame {
        epoch: 42,
        to_version: 1,
        snapshot: true,
        workers: Some(serde_json::from_value(workers()).unwrap()),
        models: Some(vec![kvgate_core::sync::ModelEntry {
            name: "m".into(),
            block_size: 16,
            files_digest: "d1".into(),
        }]),
        loads: Some(Vec::new()),
        ..SyncFrame::default()
    });
    p.call_done(sync.id, Some(200), &frame);
    assert!(!p.ready(), "its model is not loaded yet");
    p.host.advance(100);
    p.tick();
    let calls = p.host.take_calls();
    assert!(
        calls
            .iter()
            .any(|c| c.path.starts_with("/v1/models/files?name=m&digest=d1")),
        "no stream yet, and the model's files are asked for: {calls:?}"
    );
}

#[test]
fn a_body_envoy_is_still_buffering_is_not_resumed_unrouted_by_the_watchdog() {
    let mut p = processor(json!({"pause_watchdog_ms": 100, "request_timeout_ms": 5000}));
    p.handle(20, chat_headers());
    p.host.advance(1_000);
    assert!(p.tick().is_empty());
    assert_eq!(p.host.metric_value("kvgate.watchdog.resumed"), 0);
    // The body arrives late but whole: still routed.
    let r = p.handle(20, body(&chat(), true)).unwrap();
    assert!(get(&set_headers(&common(&r).unwrap()), DESTINATION_ENDPOINT).is_some());
    // One that never completes gets the filter's 408 past request_timeout_ms.
    p.handle(21, chat_headers());
    p.host.advance(6_000);
    let owed = p.tick();
    assert_eq!(owed.len(), 1, "{owed:?}");
    let (ctx, r) = &owed[0];
    assert_eq!(*ctx, 21);
    let Some(Response::ImmediateResponse(i)) = &r.response else {
        panic!("{r:?}");
    };
    assert_eq!(i.status.as_ref().unwrap().code, 408);
}
