//! The Envoy-wide ledger of bookings: one shared-data key, changed only by
//! compare-and-swap, holding each VM's booked load per worker and its unfinished prefills
//! with their start times. A VM reads it, decides, and writes its booking in one CAS step:
//! if another VM booked in between, the write fails and the VM decides again with that
//! booking in view. So no two VMs of one Envoy ever book blind to each other.

use crate::host::{Cas, Host, SharedError};
use kvgate_core::load::{QueuedPrefill, WorkerLoad};
use kvgate_core::WorkerKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The shared-data key of the ledger.
pub const LEDGER_KEY: &str = "kvgate/ledger";

/// A VM's part older than this is ignored (the VM is gone); live VMs refresh it every
/// second on their tick.
pub const PART_STALE_MS: u64 = 5_000;

/// Most compare-and-swap attempts of one update before it gives up (counted).
pub const MAX_ATTEMPTS: usize = 16;

/// One VM's bookings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The VM's tag.
    pub vm: u64,
    /// When it was written, ms.
    pub at_ms: u64,
    /// Booked load per worker.
    pub loads: Vec<(WorkerKey, WorkerLoad)>,
    /// Unfinished prefills per worker, oldest first.
    pub prefills: Vec<(WorkerKey, QueuedPrefill)>,
}

/// The ledger: every VM's part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// One part per VM that booked recently.
    pub parts: Vec<Part>,
}

/// What the other VMs have booked, summed per worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Others {
    /// Booked load per worker.
    pub loads: HashMap<WorkerKey, WorkerLoad>,
    /// Unfinished prefills per worker (each list oldest first).
    pub prefills: HashMap<WorkerKey, Vec<QueuedPrefill>>,
}

impl Ledger {
    /// The ledger and its CAS token (an empty ledger and None when there is none, or it
    /// does not decode).
    pub fn read(host: &dyn Host) -> (Ledger, Option<Cas>) {
        match host.shared_get(LEDGER_KEY) {
            Some((bytes, cas)) => (postcard::from_bytes(&bytes).unwrap_or_default(), Some(cas)),
            None => (Ledger::default(), None),
        }
    }

    /// Writes the ledger if nobody changed it since the read that gave `cas`.
    pub fn write(&self, host: &dyn Host, cas: Cas) -> Result<(), SharedError> {
        let bytes = postcard::to_allocvec(self).map_err(|e| SharedError::Failed(e.to_string()))?;
        host.shared_set(LEDGER_KEY, &bytes, Some(cas))
    }

    /// Creates an empty ledger if there is none. Envoy has no "create if absent" (a write
    /// to a missing key always lands), so this runs when a VM starts, before it books:
    /// VMs starting together write the same empty ledger, and a VM starting later finds
    /// the ledger there.
    pub fn init(host: &dyn Host) {
        if host.shared_get(LEDGER_KEY).is_none() {
            if let Ok(bytes) = postcard::to_allocvec(&Ledger::default()) {
                let _ = host.shared_set(LEDGER_KEY, &bytes, None);
            }
        }
    }

    /// Replaces `part.vm`'s part (dropping parts of VMs gone for [`PART_STALE_MS`]).
    pub fn put(&mut self, part: Part) {
        let now = part.at_ms;
        self.parts
            .retain(|p| p.vm != part.vm && now.saturating_sub(p.at_ms) <= PART_STALE_MS);
        if !part.loads.is_empty() || !part.prefills.is_empty() {
            self.parts.push(part);
        }
    }

    /// What the live VMs other than `me` booked, as of `now_ms`.
    pub fn others(&self, me: u64, now_ms: u64) -> Others {
        let mut out = Others::default();
        for p in &self.parts {
            if p.vm == me || now_ms.saturating_sub(p.at_ms) > PART_STALE_MS {
                continue;
            }
            for (w, l) in &p.loads {
                let e = out.loads.entry(*w).or_default();
                *e = e.plus(*l);
            }
            for (w, q) in &p.prefills {
                out.prefills.entry(*w).or_default().push(*q);
            }
        }
        for q in out.prefills.values_mut() {
            q.sort_by_key(|p| p.since_ms);
        }
        out
    }
}

/// Runs `step` against the current ledger until its CAS write lands: `step` gets the
/// other VMs' bookings and returns this VM's new part (or None to write nothing).
/// Returns the last `step` result, and whether the write landed.
pub fn update<T>(
    host: &dyn Host,
    me: u64,
    mut step: impl FnMut(&Others) -> (T, Option<Part>),
) -> (T, bool) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let now = host.now_ms();
        let (mut ledger, cas) = Ledger::read(host);
        let Some(cas) = cas else {
            Ledger::init(host);
            if attempt < MAX_ATTEMPTS {
                continue;
            }
            return (step(&Others::default()).0, false);
        };
        let (out, part) = step(&ledger.others(me, now));
        let Some(part) = part else {
            return (out, true);
        };
        ledger.put(part);
        match ledger.write(host, cas) {
            Ok(()) => return (out, true),
            Err(SharedError::CasMismatch) if attempt < MAX_ATTEMPTS => continue,
            Err(_) => return (out, false),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::testing::FakeHost;

    fn part(vm: u64, at: u64, w: u64, tokens: u64) -> Part {
        let k = WorkerKey::new(w, 0);
        Part {
            vm,
            at_ms: at,
            loads: vec![(
                k,
                WorkerLoad {
                    prefill_tokens: tokens,
                    decode_blocks: 1,
                    requests: 1,
                },
            )],
            prefills: vec![(
                k,
                QueuedPrefill {
                    tokens,
                    since_ms: at,
                },
            )],
        }
    }

    #[test]
    fn parts_of_other_live_vms_are_summed_and_stale_ones_dropped() {
        let mut l = Ledger::default();
        l.put(part(1, 1_000, 9, 10));
        l.put(part(2, 1_000, 9, 20));
        l.put(part(3, 0, 9, 40));
        let o = l.others(1, 5_500);
        let w = WorkerKey::new(9, 0);
        assert_eq!(o.loads[&w].prefill_tokens, 20, "VM 3 is over 5 s old");
        assert_eq!(o.prefills[&w].len(), 1);
        l.put(part(2, 6_000, 9, 5));
        assert_eq!(l.parts.len(), 2, "VM 3 dropped, VM 2 replaced");
        l.put(Part {
            vm: 2,
            at_ms: 6_000,
            ..Part::default()
        });
        assert_eq!(l.parts.len(), 1, "an empty part is removed");
    }

    #[test]
    fn a_write_over_a_changed_ledger_is_refused_and_retried_with_the_change_in_view() {
        let h = FakeHost::at(1_000);
        assert_eq!(Ledger::read(&h).1, None);
        Ledger::init(&h);
        let (mut l, cas) = Ledger::read(&h);
        l.put(part(1, 1_000, 9, 10));
        l.write(&h, cas.unwrap()).unwrap();
        let (stale, stale_cas) = Ledger::read(&h);
        // Another VM books in between.
        update(&h, 2, |_| ((), Some(part(2, 1_000, 9, 20))));
        let mut mine = stale.clone();
        mine.put(part(3, 1_000, 9, 30));
        assert_eq!(
            mine.write(&h, stale_cas.unwrap()),
            Err(SharedError::CasMismatch)
        );
        let mut seen = Vec::new();
        let (_, landed) = update(&h, 3, |o| {
            seen.push(o.loads[&WorkerKey::new(9, 0)].prefill_tokens);
            ((), Some(part(3, 1_000, 9, 30)))
        });
        assert!(landed);
        assert_eq!(seen, vec![30], "VM 3 sees VMs 1 and 2");
        assert_eq!(Ledger::read(&h).0.parts.len(), 3);
    }
}
