//! The worker table: every worker instance known from any discovery source (the
//! configuration's static list, the workers file, NATS announcements with leases, the
//! Kubernetes InferencePool's ready pods), with the rules for merging sources and
//! expiring leases.
//!
//! Precedence once a cluster source is active ([`Source::Kubernetes`]): the cluster
//! decides which endpoints exist and are ready; a NATS announcement for the same endpoint
//! (`ip:port`) or instance id enriches that worker (its instance id, model, role, block
//! size, dp ranks, capacities, ZMQ endpoints win; the endpoint stays the cluster's); an
//! announcement no ready pod matches is kept (its lease runs) but not routed to. The
//! configuration's list and the workers file are explicit and always listed. Without a
//! cluster source, the latest source wins an instance id, as before.

use kvgate_core::workers::WorkerInfo;
use kvgate_core::WorkerId;
use std::collections::BTreeMap;

/// Where a worker entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// The `workers` key of the kvgate configuration.
    Config,
    /// The `--workers-file`.
    File,
    /// A NATS announcement (with a lease).
    Announce,
    /// A ready pod of the Kubernetes InferencePool.
    Kubernetes,
}

impl Source {
    /// Label for logs and `/v1/state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::File => "file",
            Source::Announce => "announce",
            Source::Kubernetes => "kubernetes",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    info: WorkerInfo,
    source: Source,
    lease_until_ms: Option<u64>,
}

/// One worker as routed: its details and where they came from.
#[derive(Debug, Clone, PartialEq)]
struct Listed {
    info: WorkerInfo,
    source: &'static str,
    lease_until_ms: Option<u64>,
}

/// What a change did to the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChange {
    /// Whether the list of workers (or any worker's details) changed.
    pub changed: bool,
    /// Instances that left the table.
    pub removed: Vec<WorkerId>,
}

/// The worker table, keyed by instance id.
#[derive(Debug, Clone, Default)]
pub struct WorkerTable {
    /// Entries of the configuration, the file and announcements.
    entries: BTreeMap<WorkerId, Entry>,
    /// Ready pods of the cluster source, by endpoint; `None` while it is off.
    cluster: Option<BTreeMap<String, WorkerInfo>>,
    /// The workers routed to (the merge of the above).
    listed: BTreeMap<WorkerId, Listed>,
}

impl WorkerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Recomputes the routed list and says what changed.
    fn relist(&mut self) -> TableChange {
        let mut next: BTreeMap<WorkerId, Listed> = BTreeMap::new();
        match &self.cluster {
            None => {
                for (id, e) in &self.entries {
                    next.insert(*id, listed(e, e.source.as_str()));
                }
            }
            Some(pods) => {
                for pod in pods.values() {
                    let announced = self.entries.values().find(|e| {
                        e.source == Source::Announce
                            && (e.info.endpoint == pod.endpoint
                                || e.info.instance_id == pod.instance_id)
                    });
                    let item = match announced {
                        Some(e) => Listed {
                            info: WorkerInfo {
                                endpoint: pod.endpoint.clone(),
                                ..e.info.clone()
                            },
                            source: "kubernetes+announce",
                            lease_until_ms: e.lease_until_ms,
                        },
                        None => Listed {
                            info: pod.clone(),
                            source: Source::Kubernetes.as_str(),
                            lease_until_ms: None,
                        },
                    };
                    next.insert(item.info.instance_id, item);
                }
                // Explicit lists win an instance id over the cluster.
                for (id, e) in &self.entries {
                    if matches!(e.source, Source::Config | Source::File) {
                        next.insert(*id, listed(e, e.source.as_str()));
                    }
                }
            }
        }
        let removed: Vec<WorkerId> = self
            .listed
            .keys()
            .filter(|id| !next.contains_key(id))
            .copied()
            .collect();
        let changed = !removed.is_empty()
            || next.len() != self.listed.len()
            || next
                .iter()
                .any(|(id, l)| self.listed.get(id).map(|o| &o.info) != Some(&l.info));
        self.listed = next;
        TableChange { changed, removed }
    }

    /// Adds or updates one worker from `source` (the latest source wins an instance id).
    /// A [`Source::Kubernetes`] worker is added to the cluster's list.
    pub fn upsert(
        &mut self,
        source: Source,
        info: WorkerInfo,
        lease_until_ms: Option<u64>,
    ) -> TableChange {
        if source == Source::Kubernetes {
            self.cluster
                .get_or_insert_with(BTreeMap::new)
                .insert(info.endpoint.clone(), info);
        } else {
            self.entries.insert(
                info.instance_id,
                Entry {
                    info,
                    source,
                    lease_until_ms,
                },
            );
        }
        self.relist()
    }

    /// Removes `id` if `source` owns its entry.
    pub fn remove(&mut self, source: Source, id: WorkerId) -> TableChange {
        if source == Source::Kubernetes {
            if let Some(pods) = self.cluster.as_mut() {
                pods.retain(|_, w| w.instance_id != id);
            }
        } else if self.entries.get(&id).is_some_and(|e| e.source == source) {
            self.entries.remove(&id);
        }
        self.relist()
    }

    /// Makes `source` hold exactly `infos`: adds and updates them, removes the entries
    /// of that source that are not listed. For [`Source::Kubernetes`] this also turns
    /// the cluster's say on (even with an empty list: no pod is ready).
    pub fn replace(&mut self, source: Source, infos: Vec<WorkerInfo>) -> TableChange {
        if source == Source::Kubernetes {
            self.cluster = Some(infos.into_iter().map(|w| (w.endpoint.clone(), w)).collect());
        } else {
            self.entries.retain(|_, e| e.source != source);
            for info in infos {
                self.entries.insert(
                    info.instance_id,
                    Entry {
                        info,
                        source,
                        lease_until_ms: None,
                    },
                );
            }
        }
        self.relist()
    }

    /// Moves every lease end `by_ms` later (time in which announcements could not arrive).
    pub fn extend_leases(&mut self, by_ms: u64) {
        for e in self.entries.values_mut() {
            if let Some(t) = e.lease_until_ms.as_mut() {
                *t = t.saturating_add(by_ms);
            }
        }
        for l in self.listed.values_mut() {
            if let Some(t) = l.lease_until_ms.as_mut() {
                *t = t.saturating_add(by_ms);
            }
        }
    }

    /// Removes announced workers whose lease ended before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> TableChange {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| e.lease_until_ms.is_none_or(|t| t >= now_ms));
        if self.entries.len() == before {
            return TableChange::default();
        }
        self.relist()
    }

    /// Every worker routed to, by instance id.
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.listed.values().map(|l| l.info.clone()).collect()
    }

    /// The worker with instance id `id`.
    pub fn get(&self, id: WorkerId) -> Option<&WorkerInfo> {
        self.listed.get(&id).map(|l| &l.info)
    }

    /// Whether `id` is routed to.
    pub fn contains(&self, id: WorkerId) -> bool {
        self.listed.contains_key(&id)
    }

    /// Number of workers routed to.
    pub fn len(&self) -> usize {
        self.listed.len()
    }

    /// Whether no worker is routed to.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// (worker, source label, lease end) of every worker routed to, for `/v1/state`.
    pub fn describe(&self) -> Vec<(WorkerInfo, &'static str, Option<u64>)> {
        self.listed
            .values()
            .map(|l| (l.info.clone(), l.source, l.lease_until_ms))
            .collect()
    }

    /// Announced workers no ready pod matches (kept, not routed to), for `/v1/state`.
    pub fn unmatched_announcements(&self) -> Vec<WorkerId> {
        if self.cluster.is_none() {
            return Vec::new();
        }
        self.entries
            .iter()
            .filter(|(id, e)| e.source == Source::Announce && !self.listed.contains_key(id))
            .map(|(id, _)| *id)
            .collect()
    }
}

fn listed(e: &Entry, source: &'static str) -> Listed {
    Listed {
        info: e.info.clone(),
        source,
        lease_until_ms: e.lease_until_ms,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn w(id: u64, endpoint: &str) -> WorkerInfo {
        serde_json::from_value(serde_json::json!({
            "instance_id": id, "endpoint": endpoint, "model": "m"
        }))
        .unwrap()
    }

    #[test]
    fn replace_removes_only_its_own_source() {
        let mut t = WorkerTable::new();
        t.upsert(Source::Announce, w(1, "10.0.0.1:1"), Some(100));
        let c = t.replace(Source::File, vec![w(2, "10.0.0.2:1")]);
        assert!(c.changed && c.removed.is_empty());
        let c = t.replace(Source::File, vec![]);
        assert_eq!(c.removed, vec![2]);
        assert!(t.contains(1));
        let c = t.replace(Source::File, vec![]);
        assert!(!c.changed);
    }

    #[test]
    fn leases_expire_and_unchanged_upserts_are_quiet() {
        let mut t = WorkerTable::new();
        assert!(t.upsert(Source::Announce, w(1, "a:1"), Some(100)).changed);
        assert!(!t.upsert(Source::Announce, w(1, "a:1"), Some(200)).changed);
        assert!(t.expire(150).removed.is_empty());
        assert_eq!(t.expire(201).removed, vec![1]);
        assert!(t.is_empty());
    }

    #[test]
    fn extended_leases_outlive_a_pause() {
        let mut t = WorkerTable::new();
        t.upsert(Source::Announce, w(1, "a:1"), Some(100));
        t.upsert(Source::File, w(2, "b:1"), None);
        t.extend_leases(5_000);
        assert!(t.expire(4_000).removed.is_empty());
        assert_eq!(t.expire(5_101).removed, vec![1]);
        assert!(t.contains(2));
    }

    fn pod(id: u64, endpoint: &str) -> WorkerInfo {
        serde_json::from_value(serde_json::json!({
            "instance_id": id, "endpoint": endpoint, "model": "from-pod"
        }))
        .unwrap()
    }

    #[test]
    fn the_cluster_decides_which_endpoints_exist() {
        let mut t = WorkerTable::new();
        t.upsert(Source::Announce, w(1, "10.0.0.1:8000"), Some(1_000));
        t.upsert(Source::Announce, w(2, "10.0.0.2:8000"), Some(1_000));
        assert_eq!(t.len(), 2);
        // The cluster source turns on with no ready pod: nothing announced is routed.
        let c = t.replace(Source::Kubernetes, vec![]);
        assert_eq!(c.removed, vec![1, 2]);
        assert!(t.is_empty());
        assert_eq!(t.unmatched_announcements(), vec![1, 2]);
        // Pod 10.0.0.1 is ready: announcement 1 (same endpoint) enriches it, with its
        // instance id (KV events use it) and its model; the pod's own id is not listed.
        let c = t.replace(
            Source::Kubernetes,
            vec![pod(77, "10.0.0.1:8000"), pod(78, "10.0.0.3:8000")],
        );
        assert!(c.changed && c.removed.is_empty());
        assert_eq!(t.get(1).unwrap().model, "m");
        assert!(!t.contains(77));
        // A pod without announcement is routed with the details the cluster gave.
        assert_eq!(t.get(78).unwrap().model, "from-pod");
        let d = t.describe();
        assert_eq!(
            d.iter().find(|x| x.0.instance_id == 1).unwrap().1,
            "kubernetes+announce"
        );
        assert_eq!(
            d.iter().find(|x| x.0.instance_id == 78).unwrap().1,
            "kubernetes"
        );
        assert_eq!(t.unmatched_announcements(), vec![2]);
        // The pod goes not-ready: its worker leaves although the lease still runs.
        let c = t.replace(Source::Kubernetes, vec![pod(78, "10.0.0.3:8000")]);
        assert_eq!(c.removed, vec![1]);
        // An announcement can also match a pod by instance id.
        t.upsert(Source::Announce, w(78, "10.9.9.9:1"), Some(1_000));
        assert_eq!(t.get(78).unwrap().endpoint, "10.0.0.3:8000");
        assert_eq!(t.get(78).unwrap().model, "m");
    }

    #[test]
    fn explicit_lists_are_kept_beside_the_cluster() {
        let mut t = WorkerTable::new();
        t.replace(Source::File, vec![w(5, "10.1.0.1:1")]);
        t.replace(Source::Kubernetes, vec![pod(6, "10.0.0.6:8000")]);
        assert!(t.contains(5) && t.contains(6));
        assert_eq!(t.remove(Source::Kubernetes, 6).removed, vec![6]);
        assert!(t.contains(5));
    }
}
