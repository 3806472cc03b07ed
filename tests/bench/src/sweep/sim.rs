//! One virtual-time run: a trace's requests routed by one policy onto N mock engines
//! (`kvgate_mock::scheduler::Scheduler`, the same scheduler and time model as
//! `mock-worker`), as a discrete-event simulation. Events, in time order: an engine's pass
//! ends (its tokens and KV events are delivered at the pass's end time, the next pass
//! starts), the gateway's own work (ticks, sync frames), a request arrives (the policy
//! picks an engine, the engine queues it and starts a pass if idle). TTFT is engine-side:
//! from arrival to the end of the pass that produced the first token (queue wait +
//! prefill), in trace milliseconds; the hit ratio is the engines' own count at admission.

use super::gateway::{Gateway, GatewayConfig, GatewayError, ModelPool, SIM_MODEL};
use super::oracle;
use crate::policy::{PolicyKind, RequestInfo, Router, Ticket};
use kvgate_engine::ModelFiles;
use kvgate_mock::scheduler::{Scheduler, SchedulerConfig, StepResult};
use kvgate_mock::sequence::{Filler, NewRequest};
use std::collections::HashMap;
use std::sync::Arc;

/// One request of a run.
#[derive(Debug, Clone)]
pub struct SimRequest {
    /// Arrival, trace ms (after load scaling).
    pub arrival_ms: f64,
    /// Prompt token ids.
    pub tokens: Arc<Vec<u32>>,
    /// Output tokens.
    pub max_tokens: usize,
}

/// What a run is told.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The policy.
    pub policy: PolicyKind,
    /// Engines.
    pub workers: usize,
    /// KV pool per engine, blocks.
    pub num_gpu_blocks: usize,
    /// Seed of the policy's and the gateway's random choices.
    pub seed: u64,
    /// The kvgate gateway's setup (kvgate policies).
    pub gateway: GatewayConfig,
}

/// Figures of one run.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// Engine-side TTFT of every served request, trace ms.
    pub ttft_ms: Vec<f64>,
    /// Σ prompt tokens found cached at admission.
    pub hit_tokens: u64,
    /// Σ prompt tokens.
    pub prompt_tokens: u64,
    /// Mean engine utilisation: Σ busy time / (engines × makespan).
    pub utilization: f64,
    /// Requests each engine served.
    pub per_worker: Vec<u64>,
    /// Requests the policy did not route (kvgate errors; 0 expected).
    pub unrouted: u64,
    /// Requests an engine refused (too long for its pool).
    pub refused: u64,
    /// Preemptions.
    pub preemptions: u64,
    /// Wall seconds the run took.
    pub wall_s: f64,
}

impl RunResult {
    /// Σ hit / Σ prompt tokens.
    pub fn hit_ratio(&self) -> f64 {
        if self.prompt_tokens == 0 {
            0.0
        } else {
            self.hit_tokens as f64 / self.prompt_tokens as f64
        }
    }
}

enum Policy {
    Driver(Router, HashMap<u64, Ticket>),
    Kvgate(Box<Gateway>),
    Oracle,
}

struct Engine {
    sched: Scheduler,
    busy_until: Option<f64>,
    pending: Option<StepResult>,
}

impl Engine {
    fn kick(&mut self, now_ms: f64) {
        if self.busy_until.is_some() || !self.sched.has_work() {
            return;
        }
        let r = self.sched.step(now_ms);
        if r.duration_ms > 0.0 {
            self.busy_until = Some(r.end_ms);
        }
        self.pending = Some(r);
    }
}

/// The scheduler limits of the simulated engines (the mock's defaults, `blocks` KV blocks).
pub fn scheduler_config(blocks: usize) -> SchedulerConfig {
    SchedulerConfig {
        num_gpu_blocks: blocks,
        ..SchedulerConfig::default()
    }
}

/// The body a client sends for a token-id prompt.
pub fn completion_body(tokens: &[u32], max_tokens: usize) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": SIM_MODEL,
        "prompt": tokens,
        "max_tokens": max_tokens,
        "stream": true,
    }))
    .unwrap_or_default()
}

/// Runs `requests` (sorted by arrival) under `spec`.
pub fn run(
    spec: &RunSpec,
    requests: &[SimRequest],
    files: &Arc<ModelFiles>,
    pool: &mut ModelPool,
) -> Result<RunResult, GatewayError> {
    let started = std::time::Instant::now();
    let n = spec.workers.max(1);
    let cfg = scheduler_config(spec.num_gpu_blocks);
    let filler = Arc::new(Filler::new(Vec::new()));
    let mut engines: Vec<Engine> = (0..n)
        .map(|_| Engine {
            sched: Scheduler::new(cfg.clone(), 0, filler.clone()),
            busy_until: None,
            pending: None,
        })
        .collect();
    let t0 = requests.first().map_or(0.0, |r| r.arrival_ms);
    let mut policy = match spec.policy {
        PolicyKind::KvgateApprox | PolicyKind::KvgateEvents => {
            let mut g = spec.gateway.clone();
            g.use_kv_events = spec.policy == PolicyKind::KvgateEvents;
            let table = super::gateway::worker_table(
                n,
                spec.num_gpu_blocks,
                cfg.max_num_seqs,
                cfg.max_num_batched_tokens,
            );
            Policy::Kvgate(Box::new(Gateway::start(
                &g, &table, files, pool, spec.seed, t0 as u64,
            )?))
        }
        PolicyKind::Oracle => Policy::Oracle,
        kind => Policy::Driver(
            Router::new(kind, (1..=n as u64).collect(), spec.seed, None),
            HashMap::new(),
        ),
    };
    let seed = kvgate_core::hash::block_seed(None, None);
    let mut out = RunResult {
        per_worker: vec![0; n],
        ..RunResult::default()
    };
    let mut next = 0usize;
    let mut last_end = t0;
    loop {
        let arrival = requests.get(next).map_or(f64::INFINITY, |r| r.arrival_ms);
        let (pass_w, pass_t) = engines
            .iter()
            .enumerate()
            .filter_map(|(i, e)| e.busy_until.map(|t| (i, t)))
            .fold(
                (usize::MAX, f64::INFINITY),
                |a, b| if b.1 < a.1 { b } else { a },
            );
        let gw_t = match &policy {
            Policy::Kvgate(g) if pass_t.is_finite() || arrival.is_finite() => g.next_due(),
            _ => f64::INFINITY,
        };
        let now = arrival.min(pass_t).min(gw_t);
        if !now.is_finite() {
            break;
        }
        if pass_t <= now && pass_w != usize::MAX {
            // A pass ends: deliver its tokens and events, start the next one.
            let Some(e) = engines.get_mut(pass_w) else {
                break;
            };
            e.busy_until = None;
            let r = e.pending.take().unwrap_or_default();
            last_end = last_end.max(r.end_ms);
            deliver(&mut policy, &mut out, pass_w, &r, now);
            e.kick(now);
            flush_idle(e, &mut policy, &mut out, pass_w, now);
        } else if gw_t <= now {
            if let Policy::Kvgate(g) = &mut policy {
                g.advance(now)?;
            }
        } else {
            let Some(req) = requests.get(next) else {
                break;
            };
            let id = next as u64;
            next += 1;
            let new = NewRequest {
                id,
                prompt: req.tokens.to_vec(),
                max_tokens: req.max_tokens.max(1),
                hash_seed: seed,
                prefilled: false,
                arrival_ms: now,
            };
            let w = match &mut policy {
                Policy::Driver(router, tickets) => {
                    let text;
                    let info = RequestInfo {
                        isl: req.tokens.len(),
                        sequence_hashes: &[],
                        text: if spec.policy.needs_text() {
                            text = serde_json::to_string(req.tokens.as_slice()).unwrap_or_default();
                            &text
                        } else {
                            ""
                        },
                    };
                    let t = router.pick(&info);
                    let w = t.worker;
                    tickets.insert(id, t);
                    Some(w)
                }
                Policy::Kvgate(g) => {
                    g.advance(now)?;
                    let body = completion_body(&req.tokens, req.max_tokens);
                    g.decide(id, &body, now)
                }
                Policy::Oracle => {
                    let view: Vec<(&Scheduler, Option<f64>)> =
                        engines.iter().map(|e| (&e.sched, e.busy_until)).collect();
                    Some(oracle::pick(&view, &new, now))
                }
            };
            let Some(w) = w else {
                out.unrouted += 1;
                continue;
            };
            let Some(e) = engines.get_mut(w) else {
                out.unrouted += 1;
                continue;
            };
            if e.sched.submit(new).is_err() {
                out.refused += 1;
                finish(&mut policy, id, now);
                continue;
            }
            if let Some(c) = out.per_worker.get_mut(w) {
                *c += 1;
            }
            e.kick(now);
            flush_idle(e, &mut policy, &mut out, w, now);
        }
    }
    let busy: f64 = engines.iter().map(|e| e.sched.stats().busy_ms).sum();
    let span = (last_end - t0).max(1.0);
    out.utilization = busy / (n as f64 * span);
    out.preemptions = engines.iter().map(|e| e.sched.stats().preemptions).sum();
    if let Policy::Kvgate(g) = policy {
        out.unrouted += g.unrouted;
        g.release(pool);
    }
    out.wall_s = started.elapsed().as_secs_f64();
    Ok(out)
}

/// A pass with nothing to do (duration 0) ends at once: deliver its events now.
fn flush_idle(e: &mut Engine, policy: &mut Policy, out: &mut RunResult, w: usize, now: f64) {
    if e.busy_until.is_none() {
        if let Some(r) = e.pending.take() {
            deliver(policy, out, w, &r, now);
        }
    }
}

fn deliver(policy: &mut Policy, out: &mut RunResult, w: usize, r: &StepResult, now: f64) {
    for o in &r.outputs {
        if let Some(f) = o.first {
            out.ttft_ms.push(f.sim_ttft_ms);
            out.hit_tokens += f.hit_tokens as u64;
            out.prompt_tokens += f.prompt_tokens as u64;
            match policy {
                Policy::Driver(router, tickets) => {
                    if let Some(t) = tickets.get_mut(&o.id) {
                        router.first_token(t);
                    }
                }
                Policy::Kvgate(g) => g.first_token(o.id, now),
                Policy::Oracle => {}
            }
        }
        if o.finished {
            finish(policy, o.id, now);
        }
    }
    if let Policy::Kvgate(g) = policy {
        g.kv_events(w, &r.events, now);
    }
}

fn finish(policy: &mut Policy, id: u64, now: f64) {
    match policy {
        Policy::Driver(router, tickets) => {
            if let Some(t) = tickets.remove(&id) {
                router.finish(t);
            }
        }
        Policy::Kvgate(g) => g.finish(id, now),
        Policy::Oracle => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use super::*;
    use crate::sweep::gateway::GatewayConfig;
    use crate::trace::synth_tokens;

    pub(crate) fn files() -> Arc<ModelFiles> {
        let dir = std::env::var_os("KVGATE_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../target/models/Qwen3-0.6B")
            });
        crate::sweep::model_files(&dir).expect("run `make setup` to fetch the tokenizer")
    }

    /// 56 requests in 7 conversations of 8 turns (7 is prime to the 3 engines, so
    /// round-robin scatters each conversation), each turn extending its conversation's
    /// prompt by one 512-token block, arriving 150 ms apart.
    fn conversations() -> Vec<SimRequest> {
        let mut out = Vec::new();
        for turn in 0..8u64 {
            for conv in 0..7u64 {
                let ids: Vec<u64> = (0..4 + turn).map(|b| conv * 1000 + b).collect();
                let len = ids.len() * 512;
                out.push(SimRequest {
                    arrival_ms: (turn * 7 + conv) as f64 * 150.0,
                    tokens: Arc::new(synth_tokens(&ids, len)),
                    max_tokens: 8,
                });
            }
        }
        out
    }

    fn spec(policy: PolicyKind) -> RunSpec {
        RunSpec {
            policy,
            workers: 3,
            num_gpu_blocks: 8_192,
            seed: 1,
            gateway: GatewayConfig {
                use_kv_events: true,
                vms: 2,
                event_delay_ms: 20.0,
                tick_ms: 100.0,
                plugin: serde_json::json!({}),
            },
        }
    }

    #[test]
    fn every_policy_serves_every_request_and_kv_awareness_finds_the_prefixes() {
        let reqs = conversations();
        let files = files();
        let mut pool = Vec::new();
        let mut hit = HashMap::new();
        for p in crate::sweep::SWEEP_POLICIES {
            let r = run(&spec(p), &reqs, &files, &mut pool).unwrap();
            assert_eq!(r.ttft_ms.len(), reqs.len(), "{}", p.name());
            assert_eq!((r.unrouted, r.refused), (0, 0), "{}", p.name());
            assert!(r.ttft_ms.iter().all(|t| *t > 0.0));
            assert!(r.utilization > 0.0 && r.utilization <= 1.0);
            assert_eq!(r.per_worker.iter().sum::<u64>(), reqs.len() as u64);
            hit.insert(p.name(), r.hit_ratio());
        }
        // Each conversation's turn t shares t+3 of its t+4 blocks with turn t−1: a router
        // that follows the prefixes hits far more than round-robin over 3 engines.
        for p in ["kvgate_events", "kvgate_approx", "oracle"] {
            assert!(
                hit[p] > hit["round_robin"] + 0.2,
                "{p} {} vs round_robin {}",
                hit[p],
                hit["round_robin"]
            );
        }
    }

    #[test]
    fn a_run_is_reproducible_for_a_seed() {
        let reqs = conversations();
        let files = files();
        let mut pool = Vec::new();
        let a = run(&spec(PolicyKind::KvgateEvents), &reqs, &files, &mut pool).unwrap();
        assert_eq!(pool.len(), 2, "both VMs' models kept");
        let b = run(&spec(PolicyKind::KvgateEvents), &reqs, &files, &mut pool).unwrap();
        assert_eq!(a.ttft_ms, b.ttft_ms);
        assert_eq!(a.per_worker, b.per_worker);
    }
}
