//! The KV index: which (worker, dp rank) holds which prefix blocks, and the overlap
//! query "how many leading blocks of this request does each worker already hold".
//!
//! Blocks are keyed by their chained *sequence hash* ([`crate::hash`]), which identifies
//! the whole prefix up to and including the block, so a request's overlap on a worker
//! is the length of the run of its sequence hashes, from block 0, that the worker holds.
//!
//! * [`PrefixIndex`] is the matching structure itself (sequence hash → set of workers).
//!   The filter keeps one per Envoy worker thread and applies [`IndexDelta`]s to it.
//! * [`KvIndexer`] turns KV events (engine block ids with parent links) into index
//!   changes, detects event-id gaps, and reports each change as an [`IndexDelta`] so the
//!   sidecar can ship it to the filter ([`crate::sync`]).
//! * [`ApproxIndex`] predicts cache contents from routing decisions, with a TTL, for
//!   fleets that publish no events.

mod approx;
mod indexer;
mod prefix;
mod slots;

#[cfg(test)]
mod differential;

pub use approx::{ApproxIndex, ApproxView, DEFAULT_PRUNE_TARGET_RATIO};
pub use indexer::{ApplyOutcome, EventGap, KvIndexer};
pub use prefix::{OverlapScores, PrefixIndex};
pub use slots::{SlotSet, SlotTable};

use crate::types::WorkerKey;
use serde::{Deserialize, Serialize};

/// One change to a [`PrefixIndex`]: what the sidecar ships to the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IndexDelta {
    /// `worker` now holds the block with this sequence hash.
    Insert {
        /// The holder.
        worker: WorkerKey,
        /// The block's sequence hash.
        seq: u64,
    },
    /// `worker` no longer holds the block with this sequence hash.
    Remove {
        /// The former holder.
        worker: WorkerKey,
        /// The block's sequence hash.
        seq: u64,
    },
    /// `worker` holds nothing any more (cleared, removed, or being resynced).
    ClearWorker {
        /// The worker.
        worker: WorkerKey,
    },
}
