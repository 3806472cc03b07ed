//! The worker table as the filter sees it: workers by model, and the set of endpoints
//! that may ever be a destination (a forged or stale id never yields an arbitrary ip:port).

use kvgate_core::workers::WorkerInfo;
use std::collections::HashMap;

/// Workers by served model.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    workers: Vec<WorkerInfo>,
    by_model: HashMap<String, Vec<WorkerInfo>>,
}

impl Fleet {
    /// A fleet of `workers`.
    pub fn new(workers: Vec<WorkerInfo>) -> Self {
        let mut by_model: HashMap<String, Vec<WorkerInfo>> = HashMap::new();
        for w in &workers {
            by_model.entry(w.model.clone()).or_default().push(w.clone());
        }
        Fleet { workers, by_model }
    }

    /// Workers serving `model`.
    pub fn for_model(&self, model: &str) -> &[WorkerInfo] {
        self.by_model
            .get(model)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// Every worker.
    pub fn all(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Whether no worker is known.
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Whether `endpoint` belongs to a known worker.
    pub fn knows_endpoint(&self, endpoint: &str) -> bool {
        self.workers.iter().any(|w| w.endpoint == endpoint)
    }
}
