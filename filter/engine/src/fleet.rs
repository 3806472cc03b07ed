//! The worker table as the filter sees it: workers by model and by LoRA adapter, and the
//! set of endpoints that may ever be a destination (a forged or stale id never yields an
//! arbitrary ip:port).

use kvgate_core::workers::WorkerInfo;
use std::collections::HashMap;

/// Workers by served model.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    workers: Vec<WorkerInfo>,
    by_model: HashMap<String, Vec<WorkerInfo>>,
    by_adapter: HashMap<String, Vec<WorkerInfo>>,
}

/// What a request's `model` names: a base model, or a LoRA adapter on a base model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served<'a> {
    /// The base model (its tokenizer, template and block size apply).
    pub base: &'a str,
    /// The adapter, when the name is one: it seeds the block hashes.
    pub lora: Option<&'a str>,
    /// The workers that serve it.
    pub workers: &'a [WorkerInfo],
}

impl Fleet {
    /// A fleet of `workers`.
    pub fn new(workers: Vec<WorkerInfo>) -> Self {
        let mut by_model: HashMap<String, Vec<WorkerInfo>> = HashMap::new();
        let mut by_adapter: HashMap<String, Vec<WorkerInfo>> = HashMap::new();
        for w in &workers {
            by_model.entry(w.model.clone()).or_default().push(w.clone());
            for a in &w.lora_adapters {
                by_adapter.entry(a.clone()).or_default().push(w.clone());
            }
        }
        // An adapter is served on one base model: workers that name it on another base
        // (a misconfiguration) are left out rather than mixed into one cache.
        for list in by_adapter.values_mut() {
            if let Some(base) = list.first().map(|w| w.model.clone()) {
                list.retain(|w| w.model == base);
            }
        }
        Fleet {
            workers,
            by_model,
            by_adapter,
        }
    }

    /// What `name` (a request's `model`) is served as: a base model first, else a LoRA
    /// adapter; `None` when no worker serves it.
    pub fn resolve<'a>(&'a self, name: &'a str) -> Option<Served<'a>> {
        if let Some(workers) = self.by_model.get(name) {
            return Some(Served {
                base: name,
                lora: None,
                workers,
            });
        }
        let workers = self.by_adapter.get(name)?;
        let base = workers.first()?.model.as_str();
        Some(Served {
            base,
            lora: Some(name),
            workers,
        })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::tests::worker;
    use kvgate_core::workers::WorkerRole;

    #[test]
    fn adapters_resolve_to_their_workers_and_base_model() {
        let mut a = worker(1, WorkerRole::Aggregated);
        a.lora_adapters = vec!["sql".into(), "chat".into()];
        let mut b = worker(2, WorkerRole::Aggregated);
        b.lora_adapters = vec!["sql".into()];
        let c = worker(3, WorkerRole::Aggregated);
        let mut other = worker(4, WorkerRole::Aggregated);
        other.model = "other-base".into();
        other.lora_adapters = vec!["sql".into()];
        let fleet = Fleet::new(vec![a, b, c, other]);
        let ids = |s: Served<'_>| s.workers.iter().map(|w| w.instance_id).collect::<Vec<_>>();

        let base = fleet.resolve("Qwen/Qwen3-0.6B").unwrap();
        assert_eq!((base.base, base.lora), ("Qwen/Qwen3-0.6B", None));
        assert_eq!(ids(base), vec![1, 2, 3]);
        let sql = fleet.resolve("sql").unwrap();
        assert_eq!((sql.base, sql.lora), ("Qwen/Qwen3-0.6B", Some("sql")));
        assert_eq!(ids(sql), vec![1, 2], "worker 4 serves it on another base");
        assert_eq!(ids(fleet.resolve("chat").unwrap()), vec![1]);
        assert_eq!(fleet.resolve("nope"), None);
    }
}
