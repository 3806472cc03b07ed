//! Test-only access to the golden event vectors in `tests/fixtures/events/golden.json`
//! (generated independently by `gen_events.py` with Python's `msgpack` and `xxhash`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::Value;

use super::super::{EventError, KvEvent, KvEventData, StorageTier, StoredBlock};
use super::EnvelopeInfo;
use crate::types::WorkerKey;

const GOLDEN: &str = include_str!("../../../../../tests/fixtures/events/golden.json");

/// The parsed golden file.
pub(crate) struct Golden(pub(crate) Value);

impl Golden {
    /// Parses the embedded golden file.
    pub(crate) fn load() -> Self {
        Self(serde_json::from_str(GOLDEN).expect("golden.json parses"))
    }

    /// One top-level list of cases.
    pub(crate) fn list(&self, key: &str) -> &[Value] {
        self.0[key]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("golden.{key} is a list"))
    }
}

/// Bytes from a hex string.
pub(crate) fn hex(v: &Value) -> Vec<u8> {
    let s = v.as_str().expect("hex string");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

pub(crate) fn u64_of(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is a u64"))
}

pub(crate) fn opt_u64(v: &Value) -> Option<u64> {
    if v.is_null() {
        None
    } else {
        Some(u64_of(v))
    }
}

/// The expected envelope of a case.
pub(crate) fn envelope(v: &Value) -> Option<EnvelopeInfo> {
    if v.is_null() {
        return None;
    }
    Some(EnvelopeInfo {
        publisher_id: u64_of(&v["publisher_id"]),
        sequence: u64_of(&v["sequence"]),
        published_at_ms: u64_of(&v["published_at_ms"]),
        topic: v["topic"].as_str().unwrap().to_owned(),
    })
}

/// The expected events of a case.
pub(crate) fn events(v: &Value) -> Vec<KvEvent> {
    v.as_array().unwrap().iter().map(event).collect()
}

fn event(v: &Value) -> KvEvent {
    let data = match v["kind"].as_str().unwrap() {
        "stored" => KvEventData::Stored {
            parent: opt_u64(&v["parent"]),
            blocks: v["blocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| StoredBlock {
                    external: u64_of(&b["external"]),
                    tokens_hash: u64_of(&b["tokens_hash"]),
                })
                .collect(),
        },
        "removed" => KvEventData::Removed {
            blocks: v["removed"]
                .as_array()
                .unwrap()
                .iter()
                .map(u64_of)
                .collect(),
        },
        "cleared" => KvEventData::Cleared,
        other => panic!("unknown kind {other}"),
    };
    KvEvent {
        worker: WorkerKey::new(u64_of(&v["worker_id"]), u64_of(&v["dp_rank"]) as u32),
        event_id: u64_of(&v["event_id"]),
        tier: match v["tier"].as_str().unwrap() {
            "device" => StorageTier::Device,
            "offloaded" => StorageTier::Offloaded,
            other => panic!("unknown tier {other}"),
        },
        data,
    }
}

/// Asserts that `err` is the error kind a malformed case names.
pub(crate) fn assert_error_kind(err: &EventError, case: &Value) {
    let name = case["name"].as_str().unwrap();
    let ok = match case["error"].as_str().unwrap() {
        "malformed" => matches!(err, EventError::Malformed { .. }),
        "unknown_kind" => matches!(err, EventError::UnknownKind { .. }),
        "too_large" => matches!(err, EventError::TooLarge { .. }),
        other => panic!("unknown error kind {other}"),
    };
    assert!(ok, "{name}: got {err:?}");
}
