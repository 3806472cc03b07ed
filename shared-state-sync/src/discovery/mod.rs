//! Worker discovery behind one small trait: each source ([`file::FileDiscovery`],
//! [`announce::AnnounceDiscovery`], `k8s::KubeDiscovery` with the `kubernetes` feature)
//! runs on its own and reports [`Update`]s to a [`Sink`] (the hub), which merges them
//! into the worker table (precedence: `crate::workers`).

pub mod announce;
pub mod file;
pub mod instance_id;
#[cfg(feature = "kubernetes")]
pub mod k8s;

use crate::hub::Hub;
use crate::workers::Source;
use kvgate_core::workers::WorkerInfo;
use kvgate_core::WorkerId;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One change reported by a discovery source.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The source now lists exactly these workers.
    Replace(Source, Vec<WorkerInfo>),
    /// One worker appeared or was refreshed, with an optional lease end (ms since epoch).
    Upsert(Source, WorkerInfo, Option<u64>),
    /// One worker left.
    Remove(Source, WorkerId),
}

/// Where discovery updates go.
pub trait Sink: Send + Sync {
    /// Applies one update.
    fn update(&self, update: Update);
}

impl Sink for Hub {
    fn update(&self, update: Update) {
        self.discovery(update);
    }
}

/// A boxed future of a discovery task.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A discovery source.
pub trait Discovery: Send {
    /// Its name, for logs.
    fn name(&self) -> &'static str;
    /// Runs until the process ends, reporting to `sink`.
    fn run(self: Box<Self>, sink: Arc<dyn Sink>) -> Task;
}
