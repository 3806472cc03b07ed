//! Loads: worker load reports, this gateway's bookkeeping (from the filter) turned into
//! Dynamo replica-sync events, and other routers' replica events applied to a
//! bookkeeping of their requests, whose per-worker loads go to the filter.
//!
//! Mapping of a filter [`BookEvent`] to Dynamo `ActiveSequenceEvent`s (request id
//! `kvgate-{router_id:x}-{request_id:x}`):
//! * `Add(plan)`, aggregated: `AddRequest{token_sequence: plan.blocks,
//!   track_prefill_tokens, prefill_load_hint: plan.prefill_tokens}` on the decode worker.
//!   Disaggregated: the same without prefill tokens on the decode worker, plus
//!   `AddRequest{prefill_load_hint}` for `{id}-prefill` on the prefill worker (as
//!   Dynamo's separate prefill router books it).
//! * `PrefillDone` (or the first `OutputTokens`): `MarkPrefillCompleted` (disaggregated:
//!   `Free` of `{id}-prefill`).
//! * `Free`: `Free` (and of `{id}-prefill`). `OutputTokens` are not synced (as in Dynamo).
//!
//! A receiving kvgate sidecar folds `{id}-prefill` back into the booking of `{id}` (same
//! router), so its bookkeeping of the other replica's requests equals that replica's
//! own; a Dynamo router sees two bookings, as its prefill and decode routers make.

use super::{Hub, OwnRequest};
use crate::time::now_ms;
use kvgate_core::events::metrics::WorkerLoadReport;
use kvgate_core::events::replica::{AddRequest, PrefillLoadHint, ReplicaEvent, ReplicaEventData};
use kvgate_core::load::RequestPlan;
use kvgate_core::sync::{BookBatch, BookKind, RemoteLoad};
use kvgate_core::WorkerKey;
use std::collections::BTreeSet;

/// Suffix of the request id under which a kvgate router books the prefill worker of a
/// disaggregated request.
pub const PREFILL_SUFFIX: &str = "-prefill";

fn merge(into: &mut WorkerLoadReport, r: &WorkerLoadReport) -> bool {
    let before = *into;
    into.worker = r.worker;
    into.kv_used_blocks = r.kv_used_blocks.or(into.kv_used_blocks);
    into.active_decode_blocks = r.active_decode_blocks.or(into.active_decode_blocks);
    into.active_prefill_tokens = r.active_prefill_tokens.or(into.active_prefill_tokens);
    into.scheduler_load_scope = r.scheduler_load_scope.or(into.scheduler_load_scope);
    *into != before
}

impl Hub {
    /// Keeps the latest report of a (worker, dp rank); fields a report leaves out keep
    /// their previous value (workers and routers' schedulers report different fields).
    pub fn apply_report(&self, report: &WorkerLoadReport) {
        let mut st = self.lock();
        st.totals.load_reports += 1;
        self.metrics.load_reports.inc();
        st.status.last_event_ms = now_ms();
        let entry = st.reports.entry(report.worker).or_default();
        if merge(entry, report) {
            st.gens.loads += 1;
            drop(st);
            self.notify();
        }
    }

    /// The loads the filter gets: reports and other replicas' bookkeeping, per key.
    pub fn remote_loads(&self) -> Vec<RemoteLoad> {
        let st = self.lock();
        remote_loads(&st)
    }

    fn replica_request_id(&self, id: u64) -> String {
        format!("kvgate-{:x}-{id:x}", self.router_id)
    }

    /// Books this gateway's steps and returns the replica events to publish.
    pub fn book(&self, batch: &BookBatch) -> Vec<ReplicaEvent> {
        let now = now_ms();
        let mut st = self.lock();
        let mut out = Vec::new();
        let track = self.settings.track_prefill_tokens;
        for ev in &batch.events {
            self.metrics.bookkeeping_events.inc();
            let rid = self.replica_request_id(ev.request_id);
            let prefill_rid = format!("{rid}{PREFILL_SUFFIX}");
            let event =
                |worker: WorkerKey, request_id: &str, data: ReplicaEventData| ReplicaEvent {
                    request_id: request_id.to_string(),
                    worker,
                    data,
                    router_id: self.router_id,
                    lora_name: None,
                };
            match &ev.kind {
                BookKind::Add(plan) => {
                    if !st.own_book.add(ev.request_id, plan.clone(), now) {
                        continue;
                    }
                    st.own.insert(
                        ev.request_id,
                        OwnRequest {
                            decode: plan.decode,
                            prefill: plan.prefill,
                        },
                    );
                    let hint = |tokens: u64| {
                        Some(PrefillLoadHint {
                            initial_effective_prefill_tokens: tokens,
                            expected_prefill_duration: None,
                        })
                    };
                    let isl = Some(plan.isl_tokens);
                    match plan.prefill {
                        None => out.push(event(
                            plan.decode,
                            &rid,
                            ReplicaEventData::AddRequest(AddRequest {
                                token_sequence: Some(plan.blocks.clone()),
                                track_prefill_tokens: track,
                                prefill_load_hint: hint(plan.prefill_tokens),
                                isl,
                                ..AddRequest::default()
                            }),
                        )),
                        Some(p) => {
                            out.push(event(
                                plan.decode,
                                &rid,
                                ReplicaEventData::AddRequest(AddRequest {
                                    token_sequence: Some(plan.blocks.clone()),
                                    track_prefill_tokens: false,
                                    prefill_load_hint: hint(0),
                                    isl,
                                    ..AddRequest::default()
                                }),
                            ));
                            out.push(event(
                                p,
                                &prefill_rid,
                                ReplicaEventData::AddRequest(AddRequest {
                                    token_sequence: None,
                                    track_prefill_tokens: track,
                                    prefill_load_hint: hint(plan.prefill_tokens),
                                    isl,
                                    ..AddRequest::default()
                                }),
                            ));
                        }
                    }
                }
                BookKind::PrefillDone | BookKind::OutputTokens(_) => {
                    // The first output token ends the prefill, as in the filter's book.
                    let was_prefilling = st.own_book.prefill_done(&ev.request_id);
                    if let BookKind::OutputTokens(n) = ev.kind {
                        st.own_book.output_tokens(&ev.request_id, n);
                    }
                    let Some(r) = st.own.get(&ev.request_id).copied() else {
                        continue;
                    };
                    if was_prefilling {
                        match r.prefill {
                            None => out.push(event(
                                r.decode,
                                &rid,
                                ReplicaEventData::MarkPrefillCompleted,
                            )),
                            Some(p) => out.push(event(p, &prefill_rid, ReplicaEventData::Free)),
                        }
                    }
                }
                BookKind::Free => {
                    st.own_book.free(&ev.request_id);
                    let Some(r) = st.own.remove(&ev.request_id) else {
                        continue;
                    };
                    if let Some(p) = r.prefill {
                        out.push(event(p, &prefill_rid, ReplicaEventData::Free));
                    }
                    out.push(event(r.decode, &rid, ReplicaEventData::Free));
                }
            }
        }
        st.totals.replica_out += out.len() as u64;
        out
    }

    /// Applies replica events of other routers (this sidecar's own echo is skipped).
    pub fn apply_replica(&self, events: &[ReplicaEvent]) {
        let now = now_ms();
        let mut st = self.lock();
        let mut changed = false;
        for ev in events {
            if ev.router_id == self.router_id {
                continue;
            }
            self.metrics
                .replica_events
                .get_or_create(&[("direction", "in")])
                .inc();
            st.totals.replica_in += 1;
            let key = (ev.router_id, ev.request_id.clone());
            changed |= match &ev.data {
                ReplicaEventData::AddRequest(add) => {
                    let bs = st
                        .table
                        .get(ev.worker.worker_id)
                        .and_then(|w| w.block_size)
                        .unwrap_or(self.settings.block_size);
                    let plan = plan_of(ev.worker, add, bs);
                    let base = key
                        .1
                        .strip_suffix(PREFILL_SUFFIX)
                        .map(|b| (key.0, b.to_string()))
                        .filter(|b| st.replica_plans.contains_key(b));
                    match base {
                        // A kvgate router's disaggregated request: fold the prefill
                        // booking into its decode booking, as the origin booked it.
                        Some(base) => {
                            let Some(mut merged) = st.replica_plans.get(&base).cloned() else {
                                continue;
                            };
                            merged.prefill = Some(ev.worker);
                            merged.prefill_tokens = plan.prefill_tokens;
                            st.replicas.free(&base);
                            st.replicas.add(base.clone(), merged.clone(), now);
                            st.replica_plans.insert(base.clone(), merged);
                            st.replica_alias.insert(key, base);
                            true
                        }
                        None => {
                            let added = st.replicas.add(key.clone(), plan.clone(), now);
                            if added {
                                st.replica_plans.insert(key, plan);
                            }
                            added
                        }
                    }
                }
                ReplicaEventData::MarkPrefillCompleted => {
                    let k = st.replica_alias.get(&key).cloned().unwrap_or(key);
                    st.replicas.prefill_done(&k)
                }
                ReplicaEventData::Free => match st.replica_alias.remove(&key) {
                    Some(base) => st.replicas.prefill_done(&base),
                    None => {
                        st.replica_plans.remove(&key);
                        st.replicas.free(&key)
                    }
                },
            };
        }
        if changed {
            st.gens.loads += 1;
            self.gauges(&st);
            drop(st);
            self.notify();
        }
    }
}

/// The plan another router booked, as far as its `AddRequest` tells: prefill tokens
/// from the hint (current Dynamo), else `isl − overlap·block_size` (older Dynamo), else
/// the prompt's blocks × block size.
pub fn plan_of(worker: WorkerKey, add: &AddRequest, block_size: u32) -> RequestPlan {
    let blocks = add.token_sequence.clone().unwrap_or_default();
    let bs = u64::from(block_size.max(1));
    let prefill_tokens = if !add.track_prefill_tokens {
        0
    } else if let Some(h) = add.prefill_load_hint {
        h.initial_effective_prefill_tokens
    } else if let Some(isl) = add.isl {
        isl.saturating_sub(u64::from(add.overlap.unwrap_or(0)).saturating_mul(bs))
    } else {
        (blocks.len() as u64).saturating_mul(bs)
    };
    RequestPlan {
        decode: worker,
        prefill: None,
        prefill_tokens,
        blocks,
        isl_tokens: add.isl.unwrap_or(0),
        block_size: block_size.max(1),
        track_output: false,
    }
}

pub(crate) fn remote_loads(st: &super::State) -> Vec<RemoteLoad> {
    let keys: BTreeSet<WorkerKey> = st
        .reports
        .keys()
        .copied()
        .chain(st.replicas.loads().map(|(k, _)| k))
        .collect();
    keys.into_iter()
        .map(|k| {
            let r = st.reports.get(&k).copied().unwrap_or_default();
            RemoteLoad {
                worker: k,
                replicas: st.replicas.load(&k),
                kv_used_blocks: r.kv_used_blocks,
                active_decode_blocks: r.active_decode_blocks,
                active_prefill_tokens: r.active_prefill_tokens,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_prefill_tokens_from_each_generation_of_add_request() {
        let w = WorkerKey::new(1, 0);
        let mut add = AddRequest {
            token_sequence: Some(vec![1, 2, 3]),
            track_prefill_tokens: true,
            ..AddRequest::default()
        };
        assert_eq!(plan_of(w, &add, 16).prefill_tokens, 48);
        add.isl = Some(50);
        add.overlap = Some(2);
        assert_eq!(plan_of(w, &add, 16).prefill_tokens, 18);
        add.prefill_load_hint = Some(PrefillLoadHint {
            initial_effective_prefill_tokens: 7,
            expected_prefill_duration: None,
        });
        assert_eq!(plan_of(w, &add, 16).prefill_tokens, 7);
        add.track_prefill_tokens = false;
        assert_eq!(plan_of(w, &add, 16).prefill_tokens, 0);
    }
}
