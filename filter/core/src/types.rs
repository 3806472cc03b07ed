//! Small identifier types used across the core: worker ids, data-parallel ranks and
//! the (worker, dp rank) pair that is the unit of routing and of KV-cache ownership.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A worker's instance id as Dynamo assigns it (53-bit in Kubernetes, any u64 here).
pub type WorkerId = u64;

/// A data-parallel rank inside one worker instance.
pub type DpRank = u32;

/// One routable KV-cache owner: a worker instance and one of its data-parallel ranks.
///
/// Dynamo calls this `WorkerWithDpRank`; every index entry and every load counter is
/// kept per `WorkerKey`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct WorkerKey {
    /// The worker instance id.
    pub worker_id: WorkerId,
    /// The data-parallel rank inside the worker (0 when the worker has no DP).
    pub dp_rank: DpRank,
}

impl WorkerKey {
    /// A key for `worker_id` at `dp_rank`.
    pub const fn new(worker_id: WorkerId, dp_rank: DpRank) -> Self {
        Self { worker_id, dp_rank }
    }
}

impl fmt::Display for WorkerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.worker_id, self.dp_rank)
    }
}
