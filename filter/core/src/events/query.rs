//! Worker state recovery: the request a router sends to a worker whose KV events it lost,
//! and the worker's answer (the events it still buffers, or a dump of its whole cache).
//!
//! The shapes follow Dynamo's worker KV query (`WorkerKvQueryRequest` /
//! `WorkerKvQueryResponse`, per (worker, dp rank), endpoint
//! `worker_kv_indexer_query_dp{rank}`), as JSON: a request
//! `{"worker_id", "dp_rank", "start_event_id", "end_event_id"}` and an externally tagged
//! answer `{"Events": {"events": [RouterEvent…], "last_event_id"}}`,
//! `{"TreeDump": {…}}`, `{"TooNew": {…}}`, `{"InvalidRange": {…}}` or `{"Error": "…"}`,
//! events in the JSON `RouterEvent` form of [`super::dynamo`]. kvgate carries it on plain
//! NATS request/reply at [`query_subject`]; Dynamo's own request plane frames it
//! differently, so a Dynamo worker does not answer this subject (the sidecar then keeps
//! the worker cold and relearns from live events).

use super::dynamo::{decode_router_event_json, encode_router_event_json, encode_subject_segment};
use super::{EventError, KvEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The query endpoint of `dp_rank` (Dynamo's endpoint name).
pub fn query_endpoint(dp_rank: u32) -> String {
    format!("worker_kv_indexer_query_dp{dp_rank}")
}

/// The NATS subject a worker answers queries for its rank on:
/// `namespace.{ns}.component.{c}.worker_kv_indexer_query_dp{rank}.{worker_id:x}`.
pub fn query_subject(namespace: &str, component: &str, worker_id: u64, dp_rank: u32) -> String {
    format!(
        "namespace.{}.component.{}.{}.{worker_id:x}",
        encode_subject_segment(namespace),
        encode_subject_segment(component),
        query_endpoint(dp_rank)
    )
}

/// What the router asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerKvQueryRequest {
    /// The worker.
    pub worker_id: u64,
    /// Its data-parallel rank.
    #[serde(default)]
    pub dp_rank: u32,
    /// First event id wanted (inclusive); None: a dump of the whole cache.
    pub start_event_id: Option<u64>,
    /// Last event id wanted (inclusive); None: up to the newest.
    pub end_event_id: Option<u64>,
}

/// The worker's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerKvQueryResponse {
    /// Buffered events with their original ids, from the requested start on.
    Events {
        /// The events, oldest first.
        events: Vec<KvEvent>,
        /// The newest event id (continue after it).
        last_event_id: u64,
    },
    /// The whole cache as `Stored` events (synthetic ids), parents before children.
    TreeDump {
        /// The events.
        events: Vec<KvEvent>,
        /// The newest real event id at the time of the dump.
        last_event_id: u64,
    },
    /// The start is newer than anything the worker published.
    TooNew {
        /// Requested start.
        requested_start: Option<u64>,
        /// Requested end.
        requested_end: Option<u64>,
        /// Newest event id.
        newest_available: u64,
    },
    /// End before start.
    InvalidRange {
        /// Start.
        start_id: u64,
        /// End.
        end_id: u64,
    },
    /// The worker could not answer.
    Error(String),
}

fn events_json(events: &[KvEvent]) -> Value {
    Value::Array(
        events
            .iter()
            .filter_map(|e| serde_json::from_slice(&encode_router_event_json(e)).ok())
            .collect(),
    )
}

impl WorkerKvQueryResponse {
    /// The JSON answer.
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            Self::Events {
                events,
                last_event_id,
            } => {
                serde_json::json!({"Events": {"events": events_json(events), "last_event_id": last_event_id}})
            }
            Self::TreeDump {
                events,
                last_event_id,
            } => {
                serde_json::json!({"TreeDump": {"events": events_json(events), "last_event_id": last_event_id}})
            }
            Self::TooNew {
                requested_start,
                requested_end,
                newest_available,
            } => {
                serde_json::json!({"TooNew": {"requested_start": requested_start, "requested_end": requested_end, "newest_available": newest_available}})
            }
            Self::InvalidRange { start_id, end_id } => {
                serde_json::json!({"InvalidRange": {"start_id": start_id, "end_id": end_id}})
            }
            Self::Error(e) => serde_json::json!({ "Error": e }),
        };
        v.to_string().into_bytes()
    }

    /// Decodes a JSON answer of at most `max_payload` bytes.
    pub fn decode(bytes: &[u8], max_payload: usize) -> Result<Self, EventError> {
        if bytes.len() > max_payload {
            return Err(EventError::TooLarge {
                size: bytes.len(),
                limit: max_payload,
            });
        }
        let bad = |what: &str| EventError::Malformed {
            format: "worker KV query answer",
            detail: what.to_string(),
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(&e.to_string()))?;
        let Some((tag, body)) = v.as_object().and_then(|o| o.iter().next()) else {
            return Err(bad("not a tagged object"));
        };
        let u64_of = |k: &str| body.get(k).and_then(Value::as_u64);
        let events = || -> Result<Vec<KvEvent>, EventError> {
            body.get("events")
                .and_then(Value::as_array)
                .ok_or_else(|| bad("no events array"))?
                .iter()
                .map(|e| decode_router_event_json(e.to_string().as_bytes(), max_payload))
                .collect()
        };
        let last = || u64_of("last_event_id").ok_or_else(|| bad("no last_event_id"));
        Ok(match tag.as_str() {
            "Events" => Self::Events {
                events: events()?,
                last_event_id: last()?,
            },
            "TreeDump" => Self::TreeDump {
                events: events()?,
                last_event_id: last()?,
            },
            "TooNew" => Self::TooNew {
                requested_start: u64_of("requested_start"),
                requested_end: u64_of("requested_end"),
                newest_available: u64_of("newest_available").unwrap_or(0),
            },
            "InvalidRange" => Self::InvalidRange {
                start_id: u64_of("start_id").unwrap_or(0),
                end_id: u64_of("end_id").unwrap_or(0),
            },
            "Error" => Self::Error(body.as_str().unwrap_or_default().to_string()),
            other => return Err(bad(&format!("unknown answer `{other}`"))),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::events::{KvEventData, StorageTier, StoredBlock};
    use crate::types::WorkerKey;

    fn stored(id: u64, parent: Option<u64>, ext: u64) -> KvEvent {
        KvEvent {
            worker: WorkerKey::new(7, 1),
            event_id: id,
            tier: StorageTier::Device,
            data: KvEventData::Stored {
                parent,
                blocks: vec![StoredBlock {
                    external: ext,
                    tokens_hash: ext ^ 0xabc,
                }],
            },
        }
    }

    #[test]
    fn answers_round_trip_and_the_request_has_dynamos_field_names() {
        let req = WorkerKvQueryRequest {
            worker_id: 7,
            dp_rank: 1,
            start_event_id: Some(5),
            end_event_id: None,
        };
        let v: Value = serde_json::to_value(req).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"worker_id": 7, "dp_rank": 1, "start_event_id": 5, "end_event_id": null})
        );
        for a in [
            WorkerKvQueryResponse::Events {
                events: vec![stored(5, None, 1), stored(6, Some(1), 2)],
                last_event_id: 6,
            },
            WorkerKvQueryResponse::TreeDump {
                events: vec![stored(0, None, 1)],
                last_event_id: 9,
            },
            WorkerKvQueryResponse::TooNew {
                requested_start: Some(10),
                requested_end: None,
                newest_available: 9,
            },
            WorkerKvQueryResponse::InvalidRange {
                start_id: 3,
                end_id: 2,
            },
            WorkerKvQueryResponse::Error("busy".into()),
        ] {
            assert_eq!(
                WorkerKvQueryResponse::decode(&a.encode(), 1 << 20).unwrap(),
                a
            );
        }
        let tagged: Value = serde_json::from_slice(
            &WorkerKvQueryResponse::Events {
                events: vec![stored(5, None, 1)],
                last_event_id: 5,
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(tagged["Events"]["last_event_id"], 5);
        assert_eq!(tagged["Events"]["events"][0]["worker_id"], 7);
        assert_eq!(
            query_subject("dynamo", "backend", 255, 1),
            "namespace.dynamo.component.backend.worker_kv_indexer_query_dp1.ff"
        );
    }

    #[test]
    fn malformed_answers_are_errors_not_panics() {
        for bad in [
            &b"{}"[..],
            b"[]",
            b"{\"Events\": {}}",
            b"{\"Events\": {\"events\": [1], \"last_event_id\": 1}}",
            b"{\"Nope\": 1}",
            b"not json",
        ] {
            assert!(WorkerKvQueryResponse::decode(bad, 1 << 20).is_err());
        }
        assert!(WorkerKvQueryResponse::decode(&[b' '; 100], 10).is_err());
    }
}
