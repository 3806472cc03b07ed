//! The picker's decisions: one filter VM (`kvgate_engine::Vm`) and one
//! `kvgate_engine::Stream` per ext_proc stream, driven by ext_proc messages instead of
//! proxy-wasm callbacks — so the picker strips, holds, decides, books and frees exactly as
//! the filter does. Single-threaded and synchronous: the engine thread owns it.

use super::proto::{self, Mutation, Phase};
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_request::Request;
use envoy_types::pb::envoy::service::ext_proc::v3::{ProcessingRequest, ProcessingResponse};
use kvgate_engine::headers::{DESTINATION_ENDPOINT, PREFILL_UNREACHABLE};
use kvgate_engine::host::{CallId, CallResponse, Host};
use kvgate_engine::{Next, Reply, Stream, StreamAction, Verdict, Vm};
use kvgate_prompt::error::openai_error_body;
use std::collections::HashMap;

/// One ext_proc stream (one HTTP request through Envoy).
#[derive(Debug)]
struct Entry {
    stream: Stream,
    /// Request body bytes received so far.
    body: Vec<u8>,
    /// Envoy buffers the request body (`BUFFERED`): one body message holds all of it.
    buffered: bool,
    /// The GAIE subset hint, when the data plane sent one.
    subset: Option<Vec<String>>,
    /// The request was decided (routed or not).
    decided: bool,
    /// The booking was freed (end of response).
    finished: bool,
}

/// The VM and its streams.
pub struct Processor<H: Host> {
    /// The host the VM runs on.
    pub host: H,
    /// The filter VM.
    pub vm: Vm,
    streams: HashMap<u32, Entry>,
}

impl<H: Host> Processor<H> {
    /// A processor running `vm` on `host`. The picker's one VM decides every stream, so
    /// it is a serving VM from the start: it fetches and loads its models while idle and
    /// is ready before the first request (a main-thread VM of the filter would wait for
    /// a stream).
    pub fn new(host: H, mut vm: Vm) -> Self {
        vm.stream_seen(&host);
        Processor {
            host,
            vm,
            streams: HashMap::new(),
        }
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Whether the VM can decide with its index and tokenizers: it applied a sync frame
    /// from the sidecar (or runs in static mode) and loaded every model it knows of.
    pub fn ready(&self) -> bool {
        let synced = self.vm.engine.cfg.gateway.sidecar_cluster.is_none()
            || self.vm.engine.sync_position().0 != 0;
        synced && self.vm.engine.missing_models().is_empty()
    }

    /// The periodic work of the VM; returns local replies owed to held streams (the
    /// watchdog's stalled-body answer). A held stream the watchdog resumes continues
    /// unrouted when its body arrives (the VM no longer holds it).
    pub fn tick(&mut self) -> Vec<(u32, ProcessingResponse)> {
        let mut out = Vec::new();
        for action in self.vm.on_tick(&self.host) {
            if let StreamAction::Reply(ctx, r) = action {
                if let Some(e) = self.streams.get_mut(&ctx) {
                    e.decided = true;
                    out.push((ctx, proto::immediate(&r)));
                }
            }
        }
        out
    }

    /// The answer to a sidecar call the host made for the VM.
    pub fn call_done(&mut self, id: CallId, status: Option<u16>, body: &[u8]) {
        self.vm
            .on_response(&self.host, id, CallResponse { status, body });
    }

    /// Handles one ext_proc message of stream `ctx`; returns its answer (none for a
    /// message that needs none).
    pub fn handle(&mut self, ctx: u32, req: ProcessingRequest) -> Option<ProcessingResponse> {
        let e = self.streams.entry(ctx).or_insert_with(|| Entry {
            stream: Stream::new(ctx),
            body: Vec::new(),
            buffered: false,
            subset: None,
            decided: false,
            finished: false,
        });
        if let Some(p) = &req.protocol_config {
            e.buffered = p.request_body_mode == BodySendMode::Buffered as i32;
        }
        let vm = &mut self.vm;
        let host = &self.host;
        match req.request? {
            Request::RequestHeaders(h) => {
                e.subset = proto::subset_hint(req.metadata_context.as_ref());
                let pairs = proto::header_pairs(h.headers.as_ref());
                let step = e.stream.request_headers(vm, host, &pairs, h.end_of_stream);
                let strip = Mutation {
                    remove: step.remove,
                    ..Mutation::default()
                };
                Some(match step.next {
                    Next::Pause => {
                        // Envoy buffers the body and sends it whole: it is on its way, so
                        // the watchdog treats the stream as receiving a body (408 after
                        // request_timeout_ms), not as stuck at its headers.
                        let _ = e.stream.request_body(vm, host, 0, false);
                        proto::answer(Phase::RequestHeaders, strip)
                    }
                    Next::Continue => proto::answer(Phase::RequestHeaders, strip),
                    Next::Reply(r) => {
                        e.decided = true;
                        proto::immediate(&r)
                    }
                    Next::Decide => {
                        let mut r = decide(e, vm, host, Phase::RequestHeaders);
                        merge_removals(&mut r, strip.remove);
                        r
                    }
                })
            }
            Request::RequestBody(b) => {
                if e.decided {
                    return Some(proto::answer(Phase::RequestBody, Mutation::default()));
                }
                e.body.extend_from_slice(&b.body);
                let complete = b.end_of_stream || e.buffered;
                Some(
                    match e.stream.request_body(vm, host, e.body.len(), complete) {
                        Next::Decide => decide(e, vm, host, Phase::RequestBody),
                        Next::Reply(r) => {
                            e.decided = true;
                            proto::immediate(&r)
                        }
                        Next::Continue | Next::Pause => {
                            proto::answer(Phase::RequestBody, Mutation::default())
                        }
                    },
                )
            }
            // A body ending in trailers was decided at its (buffered) body message; a
            // streamed one has gone upstream already and stays unrouted.
            Request::RequestTrailers(_) => {
                Some(proto::answer(Phase::RequestTrailers, Mutation::default()))
            }
            Request::ResponseHeaders(h) => {
                let pairs = proto::header_pairs(h.headers.as_ref());
                let unreachable = proto::header(&pairs, PREFILL_UNREACHABLE).map(str::to_string);
                e.stream.upstream_response(vm, host, unreachable.as_deref());
                let m = Mutation {
                    set: e
                        .stream
                        .response_headers(vm)
                        .into_iter()
                        .map(|(n, v)| (n.to_string(), v.to_string()))
                        .collect(),
                    remove: unreachable
                        .map(|_| vec![PREFILL_UNREACHABLE.to_string()])
                        .unwrap_or_default(),
                    ..Mutation::default()
                };
                if h.end_of_stream {
                    finish(e, vm, host);
                }
                Some(proto::answer(Phase::ResponseHeaders, m))
            }
            Request::ResponseBody(b) => {
                e.stream.response_body(vm, host, b.body.len(), &b.body);
                if b.end_of_stream {
                    finish(e, vm, host);
                }
                Some(proto::answer(Phase::ResponseBody, Mutation::default()))
            }
            Request::ResponseTrailers(_) => {
                finish(e, vm, host);
                Some(proto::answer(Phase::ResponseTrailers, Mutation::default()))
            }
        }
    }

    /// Stream `ctx` ended, however it ended (response complete, client gone, Envoy
    /// reset): frees its booking, as the filter's `on_log` does.
    pub fn end(&mut self, ctx: u32) {
        if let Some(mut e) = self.streams.remove(&ctx) {
            finish(&mut e, &mut self.vm, &self.host);
        }
    }
}

fn finish(e: &mut Entry, vm: &mut Vm, host: &dyn Host) {
    if !e.finished {
        e.finished = true;
        e.stream.done(vm, host);
    }
}

fn merge_removals(r: &mut ProcessingResponse, remove: Vec<String>) {
    use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response;
    if remove.is_empty() {
        return;
    }
    if let Some(Response::RequestHeaders(h)) = &mut r.response {
        let c = h.response.get_or_insert_with(Default::default);
        let m = c.header_mutation.get_or_insert_with(Default::default);
        m.remove_headers.extend(remove);
    }
}

/// Decides on the buffered body and answers the message of `phase` with the verdict.
fn decide(e: &mut Entry, vm: &mut Vm, host: &dyn Host, phase: Phase) -> ProcessingResponse {
    e.decided = true;
    let body = std::mem::take(&mut e.body);
    match e.stream.decide(vm, host, &body) {
        Verdict::Reply(r) => proto::immediate(&r),
        Verdict::Continue {
            headers,
            body,
            clear_route_cache,
        } => {
            let mut set: Vec<(String, String)> = headers
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            if let Some(allowed) = &e.subset {
                if let Err(reply) = within_subset(&mut set, allowed) {
                    return proto::immediate(&reply);
                }
            }
            proto::answer(
                phase,
                Mutation {
                    set,
                    remove: Vec::new(),
                    body,
                    clear_route_cache,
                },
            )
        }
    }
}

/// Keeps only destinations of the GAIE subset hint in the destination list. The picked
/// worker itself must be in the subset: otherwise 503, as GAIE asks when no endpoint of
/// the subset is eligible (kvgate picks from its own worker table, which the subset only
/// narrows).
fn within_subset(set: &mut [(String, String)], allowed: &[String]) -> Result<(), Reply> {
    let Some((_, list)) = set.iter_mut().find(|(n, _)| n == DESTINATION_ENDPOINT) else {
        return Ok(());
    };
    let kept: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|d| allowed.iter().any(|a| a == d))
        .collect();
    let primary = list.split(',').next().map(str::trim).unwrap_or_default();
    if kept.first().copied() != Some(primary) {
        let msg = "no endpoint of the gateway's subset hint can serve this request";
        return Err(Reply {
            status: 503,
            body: openai_error_body(msg, "service_unavailable", "no_endpoint_in_subset", None),
            code: "no_endpoint_in_subset",
        });
    }
    *list = kept.join(",");
    Ok(())
}

#[cfg(test)]
mod tests;
