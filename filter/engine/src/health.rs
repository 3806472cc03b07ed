//! Passive health of prefill workers: a decode worker that could not reach the prefill
//! worker the gateway named says so (`x-kvgate-prefill-unreachable`); that worker is kept
//! out of prefill picks for `prefill_quarantine_ms`, long before its lease would expire.

use kvgate_core::workers::{WorkerInfo, WorkerRole};
use kvgate_core::WorkerId;
use std::collections::HashMap;

/// Most ids read from one report (the rest are ignored).
const MAX_IDS_PER_REPORT: usize = 16;

/// Prefill workers out of rotation, until a time.
#[derive(Debug, Default)]
pub struct Quarantine {
    until_ms: HashMap<WorkerId, u64>,
}

impl Quarantine {
    /// Takes a decode worker's report (comma-separated ids): each id that `workers` lists
    /// as a prefill worker is out of rotation until `until_ms`. Returns how many were.
    pub fn report(&mut self, value: &str, workers: &[WorkerInfo], until_ms: u64) -> usize {
        let mut n = 0;
        for id in value
            .split(',')
            .take(MAX_IDS_PER_REPORT)
            .filter_map(|s| s.trim().parse::<WorkerId>().ok())
        {
            let prefill = workers
                .iter()
                .any(|w| w.instance_id == id && w.role == WorkerRole::Prefill);
            if prefill {
                self.until_ms.insert(id, until_ms);
                n += 1;
            }
        }
        n
    }

    /// Drops the prefill workers out of rotation at `now_ms` from `workers` (decode and
    /// aggregated workers stay); forgets expired entries.
    pub fn retain_available(&mut self, workers: &mut Vec<WorkerInfo>, now_ms: u64) {
        if self.until_ms.is_empty() {
            return;
        }
        self.until_ms.retain(|_, until| *until > now_ms);
        let out = &self.until_ms;
        workers.retain(|w| w.role != WorkerRole::Prefill || !out.contains_key(&w.instance_id));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn w(id: WorkerId, role: WorkerRole) -> WorkerInfo {
        serde_json::from_value(serde_json::json!({
            "instance_id": id, "endpoint": format!("127.0.0.1:{}", 9000 + id),
            "model": "m", "role": role,
        }))
        .unwrap()
    }

    #[test]
    fn only_known_prefill_workers_are_quarantined_until_the_time() {
        let fleet = vec![
            w(1, WorkerRole::Prefill),
            w(2, WorkerRole::Prefill),
            w(3, WorkerRole::Decode),
        ];
        let mut q = Quarantine::default();
        assert_eq!(q.report("1, 3,junk,9", &fleet, 1_000), 1);
        let mut ws = fleet.clone();
        q.retain_available(&mut ws, 999);
        let ids: Vec<WorkerId> = ws.iter().map(|w| w.instance_id).collect();
        assert_eq!(ids, vec![2, 3]);
        let mut ws = fleet.clone();
        q.retain_available(&mut ws, 1_000);
        assert_eq!(ws.len(), 3, "expired");
        assert!(q.until_ms.is_empty());
    }
}
