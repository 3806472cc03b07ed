//! Worker load reports: Dynamo's `ActiveLoad`, published on the event plane under the
//! topic `kv_metrics`, decoded into [`WorkerLoadReport`] (and encoded for mocks).
//!
//! ```text
//! ActiveLoad {worker_id: u64, dp_rank: u32, active_decode_blocks: u64|nil,
//!             active_prefill_tokens: u64|nil, scheduler_load_scope: "local"|"replica_synchronized"|nil,
//!             kv_used_blocks: u64|nil}
//! ```
//!
//! Two kinds of publisher share the topic: workers (`kv_used_blocks` and, from some
//! backends, `active_decode_blocks`; no scope) and routers' schedulers
//! (`active_decode_blocks` and `active_prefill_tokens`, with a scope). Older Dynamo
//! had only the first four fields. The subject moved from namespace scope
//! (`namespace.{ns}.kv_metrics`, 1.x) to component and then endpoint scope
//! (`namespace.{ns}.component.{c}.endpoint.{e}.kv_metrics`, current); subscribe to
//! the namespace (`namespace.{ns}.>`) and keep subjects for which
//! [`is_kv_metrics_subject`] holds. Messages arrive wrapped in the event-plane
//! envelope ([`super::dynamo`]); bare MessagePack and JSON are accepted as well.

use super::dynamo::wire::{check_size, msgpack_to_json, Reader, WireError, Writer};
use super::dynamo::{
    component_subject, encode_envelope_bytes, endpoint_subject, namespace_subject, open_message,
    subject_topic, EnvelopeInfo,
};
use super::EventError;
use crate::types::WorkerKey;

/// Format name used in errors.
pub const FORMAT: &str = "dynamo ActiveLoad";
/// Topic of load reports (`KV_METRICS_SUBJECT` in Dynamo).
pub const KV_METRICS_TOPIC: &str = "kv_metrics";

/// Which view of the load a scheduler-published report carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerLoadScope {
    /// Only the publishing router's own requests.
    Local,
    /// Already including requests replicated from peer routers.
    ReplicaSynchronized,
}

/// One load report of one worker (and dp rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct WorkerLoadReport {
    /// Whose load.
    pub worker: WorkerKey,
    /// KV blocks held by running requests (scheduler view, or the worker's own).
    pub active_decode_blocks: Option<u64>,
    /// Prompt tokens still to prefill (scheduler view).
    pub active_prefill_tokens: Option<u64>,
    /// KV blocks in use on the worker (worker-published; authoritative occupancy).
    pub kv_used_blocks: Option<u64>,
    /// Set on scheduler-published reports only.
    pub scheduler_load_scope: Option<SchedulerLoadScope>,
}

impl WorkerLoadReport {
    /// Whether a router's scheduler (rather than the worker) published the report.
    pub fn is_from_scheduler(&self) -> bool {
        self.scheduler_load_scope.is_some()
    }
}

/// A decoded load message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadMessage {
    /// The envelope, when the message had one.
    pub envelope: Option<EnvelopeInfo>,
    /// The report.
    pub report: WorkerLoadReport,
}

fn at<T>(r: Result<T, WireError>, field: &str) -> Result<T, EventError> {
    r.map_err(|e| EventError::Malformed {
        format: FORMAT,
        detail: format!("{field}: {}", e.0),
    })
}

/// Decodes a load message: event-plane envelope, bare MessagePack or JSON `ActiveLoad`.
pub fn decode_load(bytes: &[u8], max_payload: usize) -> Result<LoadMessage, EventError> {
    check_size(bytes.len(), max_payload)?;
    let msg = open_message(bytes, max_payload)?;
    let mut r = Reader::new(&msg.body);
    let report = read_load(&mut r)?;
    at(r.finish(), "ActiveLoad")?;
    Ok(LoadMessage {
        envelope: msg.envelope,
        report,
    })
}

fn read_load(r: &mut Reader<'_>) -> Result<WorkerLoadReport, EventError> {
    let (mut worker_id, mut report) = (None, WorkerLoadReport::default());
    for _ in 0..at(r.map_len(), "ActiveLoad")? {
        match at(r.str(), "ActiveLoad key")? {
            "worker_id" => worker_id = Some(at(r.u64(), "worker_id")?),
            "dp_rank" => report.worker.dp_rank = at(r.u32(), "dp_rank")?,
            "active_decode_blocks" => {
                report.active_decode_blocks = at(r.opt(|r| r.u64()), "active_decode_blocks")?
            }
            "active_prefill_tokens" => {
                report.active_prefill_tokens = at(r.opt(|r| r.u64()), "active_prefill_tokens")?
            }
            "kv_used_blocks" => report.kv_used_blocks = at(r.opt(|r| r.u64()), "kv_used_blocks")?,
            "scheduler_load_scope" => {
                report.scheduler_load_scope = match at(r.opt(|r| r.str()), "scheduler_load_scope")?
                {
                    None => None,
                    Some("local") => Some(SchedulerLoadScope::Local),
                    Some("replica_synchronized") => Some(SchedulerLoadScope::ReplicaSynchronized),
                    Some(other) => {
                        return Err(EventError::UnknownKind {
                            format: FORMAT,
                            kind: other.to_owned(),
                        })
                    }
                }
            }
            _ => at(r.skip(), "ActiveLoad")?,
        }
    }
    report.worker.worker_id = worker_id.ok_or_else(|| EventError::Malformed {
        format: FORMAT,
        detail: "missing `worker_id`".into(),
    })?;
    Ok(report)
}

fn write_opt(w: &mut Writer, v: Option<u64>) {
    match v {
        Some(v) => w.uint(v),
        None => w.nil(),
    };
}

/// The report as a bare MessagePack `ActiveLoad` (current field set and order).
pub fn encode_load(report: &WorkerLoadReport) -> Vec<u8> {
    let mut w = Writer::new();
    w.map(6);
    w.str("worker_id").uint(report.worker.worker_id);
    w.str("dp_rank").uint(u64::from(report.worker.dp_rank));
    w.str("active_decode_blocks");
    write_opt(&mut w, report.active_decode_blocks);
    w.str("active_prefill_tokens");
    write_opt(&mut w, report.active_prefill_tokens);
    w.str("scheduler_load_scope");
    match report.scheduler_load_scope {
        Some(SchedulerLoadScope::Local) => w.str("local"),
        Some(SchedulerLoadScope::ReplicaSynchronized) => w.str("replica_synchronized"),
        None => w.nil(),
    };
    w.str("kv_used_blocks");
    write_opt(&mut w, report.kv_used_blocks);
    w.into_bytes()
}

/// The report as a complete event-plane message on topic `kv_metrics`.
pub fn encode_load_envelope(
    publisher_id: u64,
    sequence: u64,
    published_at_ms: u64,
    report: &WorkerLoadReport,
) -> Vec<u8> {
    encode_envelope_bytes(
        publisher_id,
        sequence,
        published_at_ms,
        KV_METRICS_TOPIC,
        &encode_load(report),
    )
}

/// The report as compact JSON (same fields and order).
pub fn encode_load_json(report: &WorkerLoadReport) -> Vec<u8> {
    let bytes = encode_load(report);
    msgpack_to_json(&mut Reader::new(&bytes))
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_default()
}

/// The 1.x subject: `namespace.{ns}.kv_metrics`.
pub fn kv_metrics_subject(namespace: &str) -> String {
    format!("{}.{KV_METRICS_TOPIC}", namespace_subject(namespace))
}

/// The component-scoped subject: `namespace.{ns}.component.{c}.kv_metrics`.
pub fn kv_metrics_component_subject(namespace: &str, component: &str) -> String {
    format!(
        "{}.{KV_METRICS_TOPIC}",
        component_subject(namespace, component)
    )
}

/// The current endpoint-scoped subject: `namespace.{ns}.component.{c}.endpoint.{e}.kv_metrics`.
pub fn kv_metrics_endpoint_subject(namespace: &str, component: &str, endpoint: &str) -> String {
    format!(
        "{}.{KV_METRICS_TOPIC}",
        endpoint_subject(namespace, component, endpoint)
    )
}

/// Whether a subject carries load reports (its last token is `kv_metrics`).
pub fn is_kv_metrics_subject(subject: &str) -> bool {
    subject_topic(subject) == KV_METRICS_TOPIC
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]
    use super::super::dynamo::golden::{self, Golden};
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;

    fn expected(v: &Value) -> WorkerLoadReport {
        WorkerLoadReport {
            worker: WorkerKey::new(
                golden::u64_of(&v["worker_id"]),
                golden::u64_of(&v["dp_rank"]) as u32,
            ),
            active_decode_blocks: golden::opt_u64(&v["active_decode_blocks"]),
            active_prefill_tokens: golden::opt_u64(&v["active_prefill_tokens"]),
            kv_used_blocks: golden::opt_u64(&v["kv_used_blocks"]),
            scheduler_load_scope: match v["scheduler_load_scope"].as_str() {
                None => None,
                Some("local") => Some(SchedulerLoadScope::Local),
                Some("replica_synchronized") => Some(SchedulerLoadScope::ReplicaSynchronized),
                Some(other) => panic!("{other}"),
            },
        }
    }

    #[test]
    fn golden_reports_decode_and_canonical_ones_re_encode() {
        let g = Golden::load();
        let mut canonical = 0;
        for case in g.list("metrics") {
            let name = case["name"].as_str().unwrap();
            let bytes = golden::hex(&case["hex"]);
            let msg = decode_load(&bytes, 1 << 20).unwrap();
            assert_eq!(msg.report, expected(&case["report"]), "{name}");
            assert_eq!(msg.envelope, golden::envelope(&case["envelope"]), "{name}");
            if case["canonical"] != true {
                continue;
            }
            let rebuilt = match (case["form"].as_str().unwrap(), &msg.envelope) {
                ("json", _) => encode_load_json(&msg.report),
                (_, Some(e)) => {
                    encode_load_envelope(e.publisher_id, e.sequence, e.published_at_ms, &msg.report)
                }
                (_, None) => encode_load(&msg.report),
            };
            assert_eq!(rebuilt, bytes, "{name}");
            canonical += 1;
        }
        assert!(canonical >= 4);
    }

    #[test]
    fn golden_malformed_reports_give_typed_errors() {
        let g = Golden::load();
        let cases: Vec<&Value> = g
            .list("malformed")
            .iter()
            .filter(|c| c["decoder"] == "metrics")
            .collect();
        assert!(cases.len() >= 5);
        for case in cases {
            let max = case["max_payload"].as_u64().map_or(1 << 20, |m| m as usize);
            let err = decode_load(&golden::hex(&case["hex"]), max).unwrap_err();
            golden::assert_error_kind(&err, case);
        }
    }

    #[test]
    fn subjects() {
        assert_eq!(kv_metrics_subject("dynamo"), "namespace.dynamo.kv_metrics");
        assert_eq!(
            kv_metrics_component_subject("dynamo", "backend"),
            "namespace.dynamo.component.backend.kv_metrics"
        );
        assert_eq!(
            kv_metrics_endpoint_subject("dynamo", "backend", "generate"),
            "namespace.dynamo.component.backend.endpoint.generate.kv_metrics"
        );
        assert!(is_kv_metrics_subject(&kv_metrics_subject("x")));
        assert!(!is_kv_metrics_subject("namespace.x.component.y.kv-events"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_load(&bytes, 1 << 20);
        }

        #[test]
        fn reports_round_trip(worker_id in any::<u64>(), dp in any::<u32>(), a in any::<Option<u64>>(),
                              b in any::<Option<u64>>(), c in any::<Option<u64>>(), s in 0u8..3) {
            let report = WorkerLoadReport {
                worker: WorkerKey::new(worker_id, dp),
                active_decode_blocks: a,
                active_prefill_tokens: b,
                kv_used_blocks: c,
                scheduler_load_scope: [None, Some(SchedulerLoadScope::Local), Some(SchedulerLoadScope::ReplicaSynchronized)][s as usize],
            };
            prop_assert_eq!(decode_load(&encode_load(&report), 1 << 20).unwrap().report, report);
            prop_assert_eq!(decode_load(&encode_load_json(&report), 1 << 20).unwrap().report, report);
            prop_assert_eq!(decode_load(&encode_load_envelope(1, 2, 3, &report), 1 << 20).unwrap().report, report);
        }
    }
}
