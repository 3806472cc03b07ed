//! The worker table: every worker instance known from any discovery source (the
//! configuration's static list, the workers file, NATS announcements with leases),
//! with the rules for merging sources and expiring leases.

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
}

impl Source {
    /// Label for logs and `/v1/state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::File => "file",
            Source::Announce => "announce",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Entry {
    info: WorkerInfo,
    source: Source,
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

impl TableChange {
    fn merge(&mut self, o: TableChange) {
        self.changed |= o.changed;
        self.removed.extend(o.removed);
    }
}

/// The worker table, keyed by instance id.
#[derive(Debug, Clone, Default)]
pub struct WorkerTable {
    entries: BTreeMap<WorkerId, Entry>,
}

impl WorkerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or updates one worker from `source` (the latest source wins an instance id).
    pub fn upsert(
        &mut self,
        source: Source,
        info: WorkerInfo,
        lease_until_ms: Option<u64>,
    ) -> TableChange {
        let new = Entry {
            info,
            source,
            lease_until_ms,
        };
        let changed = match self.entries.get(&new.info.instance_id) {
            Some(old) => old.info != new.info,
            None => true,
        };
        self.entries.insert(new.info.instance_id, new);
        TableChange {
            changed,
            removed: Vec::new(),
        }
    }

    /// Removes `id` if `source` owns its entry.
    pub fn remove(&mut self, source: Source, id: WorkerId) -> TableChange {
        if self.entries.get(&id).is_some_and(|e| e.source == source) {
            self.entries.remove(&id);
            TableChange {
                changed: true,
                removed: vec![id],
            }
        } else {
            TableChange::default()
        }
    }

    /// Makes `source` hold exactly `infos`: adds and updates them, removes the entries
    /// of that source that are not listed.
    pub fn replace(&mut self, source: Source, infos: Vec<WorkerInfo>) -> TableChange {
        let keep: Vec<WorkerId> = infos.iter().map(|w| w.instance_id).collect();
        let gone: Vec<WorkerId> = self
            .entries
            .iter()
            .filter(|(id, e)| e.source == source && !keep.contains(id))
            .map(|(id, _)| *id)
            .collect();
        let mut change = TableChange::default();
        for id in gone {
            change.merge(self.remove(source, id));
        }
        for info in infos {
            change.merge(self.upsert(source, info, None));
        }
        change
    }

    /// Moves every lease end `by_ms` later (time in which announcements could not arrive).
    pub fn extend_leases(&mut self, by_ms: u64) {
        for e in self.entries.values_mut() {
            if let Some(t) = e.lease_until_ms.as_mut() {
                *t = t.saturating_add(by_ms);
            }
        }
    }

    /// Removes announced workers whose lease ended before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> TableChange {
        let gone: Vec<WorkerId> = self
            .entries
            .iter()
            .filter(|(_, e)| e.lease_until_ms.is_some_and(|t| t < now_ms))
            .map(|(id, _)| *id)
            .collect();
        let mut change = TableChange::default();
        for id in gone {
            self.entries.remove(&id);
            change.changed = true;
            change.removed.push(id);
        }
        change
    }

    /// Every worker, by instance id.
    pub fn list(&self) -> Vec<WorkerInfo> {
        self.entries.values().map(|e| e.info.clone()).collect()
    }

    /// The worker with instance id `id`.
    pub fn get(&self, id: WorkerId) -> Option<&WorkerInfo> {
        self.entries.get(&id).map(|e| &e.info)
    }

    /// Whether `id` is known.
    pub fn contains(&self, id: WorkerId) -> bool {
        self.entries.contains_key(&id)
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// (worker, source, lease end) of every entry, for `/v1/state`.
    pub fn describe(&self) -> Vec<(WorkerInfo, Source, Option<u64>)> {
        self.entries
            .values()
            .map(|e| (e.info.clone(), e.source, e.lease_until_ms))
            .collect()
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
}
