//! Routing predictions shared by every VM of one Envoy: when a decision is committed, the
//! prompt's blocks are predicted to be cached on the chosen worker (approximate mode, or
//! `router_predicted_ttl_secs` with KV events). Each VM appends its predictions to its own
//! ring in shared data and applies the other VMs' rings before deciding, so every VM
//! predicts from every VM's decisions.
//!
//! A VM publishes in batches: one ring entry holds every prediction made since its last
//! one, written by its tick (every `sync_interval_ms`) or by a decision once the oldest
//! waiting prediction is a tick period old, so a request writes shared data once (its
//! booking) and the other VMs see a prediction at most about one tick later.

use crate::engine::Engine;
pub use crate::engine::Prediction;
use crate::host::Host;
use crate::shared::{self, PredictionRing};

impl Engine {
    /// Whether decisions predict cache contents.
    pub fn predicts(&self) -> bool {
        !self.uses_events() || self.cfg.router.predicted_ttl_ms.is_some()
    }

    /// Records a prediction of this VM and queues it for the other VMs.
    pub(crate) fn predict(&mut self, p: Prediction) {
        self.approx.record_lazily(p.worker, &p.sequence, p.at_ms);
        self.predictions_out.push(p);
    }

    /// Publishes this VM's waiting predictions in its ring as one entry (one shared-data
    /// write).
    pub fn publish_predictions(&mut self, host: &dyn Host) {
        if self.predictions_out.is_empty() {
            return;
        }
        let ring = PredictionRing::of(self.vm);
        if self.predictions_published == 0 {
            self.predictions_published = ring.last_written(host);
        }
        // Numbers stay consecutive: a batch that could not be stored is dropped without
        // using its number (readers stop at the first number they cannot find).
        let seq = self.predictions_published + 1;
        if postcard::to_allocvec(&self.predictions_out)
            .is_ok_and(|bytes| ring.write(host, seq, &bytes))
        {
            self.predictions_published = seq;
        }
        self.predictions_out.clear();
    }

    /// [`Self::publish_predictions`] if the oldest waiting prediction was made at least
    /// `period_ms` before `now_ms` (a decision's check: the tick publishes the rest).
    pub fn publish_predictions_if_due(&mut self, host: &dyn Host, now_ms: u64, period_ms: u64) {
        if self
            .predictions_out
            .first()
            .is_some_and(|p| now_ms.saturating_sub(p.at_ms) >= period_ms)
        {
            self.publish_predictions(host);
        }
    }

    /// Applies the predictions other VMs published since the last call.
    pub fn follow_predictions(&mut self, host: &dyn Host) {
        if !self.predicts() {
            return;
        }
        let now = host.now_ms();
        for vm in shared::vms(host) {
            if vm == self.vm {
                continue;
            }
            let seen = self.predictions_seen.get(&vm).copied().unwrap_or(0);
            let approx = &mut self.approx;
            let last = PredictionRing::of(vm).read_after(host, seen, |bytes| {
                if let Ok(batch) = postcard::from_bytes::<Vec<Prediction>>(bytes) {
                    for p in batch {
                        approx.record_lazily(p.worker, &p.sequence, p.at_ms.min(now));
                    }
                }
            });
            self.predictions_seen.insert(vm, last);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::FakeHost;
    use kvgate_core::config::Config;
    use kvgate_core::WorkerKey;

    fn engine(host: &FakeHost, vm: u64) -> Engine {
        let cfg = Config::from_json(br#"{"sidecar_cluster": ""}"#).unwrap();
        shared::register_vm(host, vm);
        Engine::new(cfg, vm, vm)
    }

    #[test]
    fn every_vm_learns_every_vms_predictions() {
        let h1 = FakeHost::at(1_000);
        let h2 = h1.sibling();
        let mut a = engine(&h1, 1);
        let mut b = engine(&h2, 2);
        let w = WorkerKey::new(7, 0);
        a.predict(Prediction {
            worker: w,
            at_ms: 1_000,
            sequence: vec![11, 12, 13],
        });
        assert_eq!(b.approx.overlap(&[11, 12, 13]).of(&w), 0);
        a.predict(Prediction {
            worker: w,
            at_ms: 1_005,
            sequence: vec![21, 22],
        });
        // Not due yet at 1,010 with a 20 ms period; due at 1,020: both go in one entry.
        a.publish_predictions_if_due(&h1, 1_010, 20);
        b.follow_predictions(&h2);
        assert_eq!(b.approx.overlap(&[11, 12, 13]).of(&w), 0);
        let writes = h1.shared_writes();
        a.publish_predictions_if_due(&h1, 1_020, 20);
        assert_eq!(h1.shared_writes() - writes, 1);
        assert!(a.predictions_out.is_empty());
        b.follow_predictions(&h2);
        assert_eq!(b.approx.overlap(&[11, 12, 13]).of(&w), 3);
        assert_eq!(b.approx.overlap(&[21, 22]).of(&w), 2);
        // Applied once: following again changes nothing, and A ignores its own ring.
        b.follow_predictions(&h2);
        a.follow_predictions(&h1);
        assert_eq!(a.approx.overlap(&[11, 12]).of(&w), 2);
    }
}
