//! Passive health of prefill workers: a decode worker that could not reach the prefill
//! worker the gateway named says so (`x-kvgate-prefill-unreachable`); that worker is kept
//! out of prefill picks for `prefill_quarantine_ms`, long before its lease would expire.

use crate::engine::Engine;
use kvgate_core::workers::WorkerRole;
use kvgate_core::WorkerId;
use std::collections::HashMap;

/// Most ids read from one header (the rest are ignored).
const MAX_IDS_PER_REPORT: usize = 16;

/// Prefill workers out of rotation, until a time.
#[derive(Debug, Default)]
pub struct Quarantine {
    until_ms: HashMap<WorkerId, u64>,
}

impl Quarantine {
    /// Whether `id` is out of rotation at `now_ms` (expired entries are dropped).
    pub fn contains(&mut self, id: WorkerId, now_ms: u64) -> bool {
        match self.until_ms.get(&id) {
            Some(&until) if until > now_ms => true,
            Some(_) => {
                self.until_ms.remove(&id);
                false
            }
            None => false,
        }
    }

    /// Whether nothing is out of rotation.
    pub fn is_empty(&self) -> bool {
        self.until_ms.is_empty()
    }
}

impl Engine {
    /// A decode worker's `x-kvgate-prefill-unreachable` value: each listed id that is a
    /// known prefill worker is kept out of prefill picks until `now_ms +
    /// prefill_quarantine_ms`. Returns how many were.
    pub fn prefill_unreachable(&mut self, value: &str, now_ms: u64) -> usize {
        let ms = self.cfg.router.prefill_quarantine_ms;
        if ms == 0 {
            return 0;
        }
        let mut n = 0;
        for id in value
            .split(',')
            .take(MAX_IDS_PER_REPORT)
            .filter_map(|s| s.trim().parse::<WorkerId>().ok())
        {
            let known = self
                .fleet
                .all()
                .iter()
                .any(|w| w.instance_id == id && w.role == WorkerRole::Prefill);
            if known {
                self.quarantine
                    .until_ms
                    .insert(id, now_ms.saturating_add(ms));
                self.counters.prefill_quarantined += 1;
                n += 1;
            }
        }
        n
    }

    /// Drops quarantined prefill workers from `workers` (decode and aggregated workers
    /// stay).
    pub(crate) fn without_quarantined(
        &mut self,
        workers: &mut Vec<kvgate_core::workers::WorkerInfo>,
        now_ms: u64,
    ) {
        if self.quarantine.is_empty() {
            return;
        }
        let q = &mut self.quarantine;
        workers.retain(|w| w.role != WorkerRole::Prefill || !q.contains(w.instance_id, now_ms));
    }
}
