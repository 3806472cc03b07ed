//! One routing decision: candidates from the worker table (every dp rank of every
//! eligible worker), busy filtering (admission), the cost formula, and the aggregated /
//! disaggregated choice. Returns the chosen worker(s), what to book, and an [`Explain`].

use crate::config::RouterConfig;
use crate::index::OverlapScores;
use crate::load::{QueuedPrefill, RequestPlan, WorkerLoad};
use crate::score::{self, Candidate, ScoreParams, Scored};
use crate::types::WorkerKey;
use crate::workers::{WorkerInfo, WorkerRole};
use std::fmt;

/// What a worker reports about itself (Dynamo `ActiveLoad` / `kv_metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportedLoad {
    /// KV blocks in use on the worker.
    pub kv_used_blocks: Option<u64>,
    /// Its own count of active decode blocks.
    pub active_decode_blocks: Option<u64>,
    /// Its own count of queued prefill tokens.
    pub active_prefill_tokens: Option<u64>,
}

/// Where a decision reads load from: the caller combines its own book, other VMs' and
/// other replicas' bookkeeping, and worker reports.
pub trait LoadView {
    /// In-flight load booked on `worker`.
    fn load(&self, worker: &WorkerKey) -> WorkerLoad;
    /// How many of `blocks` are not active on `worker` yet.
    fn new_blocks(&self, worker: &WorkerKey, blocks: &[u64]) -> u64;
    /// What the worker reported, if anything.
    fn reported(&self, worker: &WorkerKey) -> Option<ReportedLoad>;
    /// The unfinished prefills booked on `worker` with when each was routed, oldest
    /// first, where the view knows them (their tokens are part of `load().prefill_tokens`).
    fn queued_prefills(&self, _worker: &WorkerKey) -> Vec<QueuedPrefill> {
        Vec::new()
    }
    /// The prefill tokens of `load` (booked on `worker`) the cost counts as still queued:
    /// all of them unless the view decays them by time ([`crate::prefill`]).
    fn pending_prefill_tokens(&self, _worker: &WorkerKey, load: &WorkerLoad) -> u64 {
        load.prefill_tokens
    }
}

/// The request as the router sees it.
#[derive(Debug, Clone, Copy)]
pub struct RouteRequest<'a> {
    /// Prompt length in tokens.
    pub isl_tokens: u64,
    /// Tokens per block of this model.
    pub block_size: u32,
    /// Sequence hashes of the prompt's complete blocks (possibly capped).
    pub sequence: &'a [u64],
    /// Overlap of the prompt per worker (already merged from events and predictions).
    pub overlaps: &'a OverlapScores,
    /// The worker of the request's session (session affinity), kept while its cost is
    /// within `session_affinity_slack` of the best.
    pub session: Option<WorkerKey>,
    /// The model requires prefill workers (`enforce_disagg` for it): with none available
    /// the request fails instead of being served aggregated.
    pub enforce_disagg: bool,
}

/// Aggregated or disaggregated serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingMode {
    /// One worker prefills and decodes.
    Aggregated,
    /// A prefill worker, then a decode worker.
    Disaggregated,
}

impl RoutingMode {
    /// The `x-dynamo-routing-mode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingMode::Aggregated => "aggregated",
            RoutingMode::Disaggregated => "disaggregated",
        }
    }
}

/// A chosen (worker, dp rank) and where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// Worker and dp rank.
    pub worker: WorkerKey,
    /// `ip:port`.
    pub endpoint: String,
    /// Its overlap with the request.
    pub overlap_blocks: u32,
}

/// The one-line explanation of a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Explain {
    /// Mode chosen.
    pub mode: RoutingMode,
    /// Prompt tokens and block size.
    pub isl_tokens: u64,
    /// Tokens per block.
    pub block_size: u32,
    /// The decode (or aggregated) stage: scored candidates and the chosen index.
    pub decode: Vec<Scored>,
    /// Chosen decode candidate.
    pub decode_chosen: Option<usize>,
    /// The prefill stage, in disaggregated mode.
    pub prefill: Vec<Scored>,
    /// Chosen prefill candidate.
    pub prefill_chosen: Option<usize>,
    /// Workers skipped as busy.
    pub busy: Vec<WorkerKey>,
}

impl fmt::Display for Explain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mode={} isl={} bs={}",
            self.mode.as_str(),
            self.isl_tokens,
            self.block_size
        )?;
        if !self.prefill.is_empty() {
            write!(
                f,
                " prefill:{}",
                score::explain_candidates(&self.prefill, self.prefill_chosen)
            )?;
            write!(f, " decode:")?;
        }
        write!(
            f,
            "{}",
            score::explain_candidates(&self.decode, self.decode_chosen)
        )?;
        if !self.busy.is_empty() {
            let b: Vec<String> = self.busy.iter().map(|w| w.to_string()).collect();
            write!(f, " | busy={}", b.join(","))?;
        }
        Ok(())
    }
}

/// A routing decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Aggregated or disaggregated.
    pub mode: RoutingMode,
    /// The worker that decodes (the destination).
    pub decode: Pick,
    /// The prefill worker, in disaggregated mode.
    pub prefill: Option<Pick>,
    /// Prefill workers the decode worker tries next if the chosen one cannot be reached:
    /// the next-best prefill candidates by cost, distinct workers, at most
    /// `max_fallbacks`.
    pub prefill_fallbacks: Vec<WorkerKey>,
    /// The model requires disaggregated serving: the decode worker must not prefill
    /// locally if no prefill worker can be reached.
    pub prefill_required: bool,
    /// Endpoints Envoy tries next if the destination refuses the connection: the next-best
    /// decode candidates by cost at the chosen dp rank, distinct, at most `max_fallbacks`.
    pub fallbacks: Vec<String>,
    /// What to book.
    pub plan: RequestPlan,
    /// Why.
    pub explain: Explain,
}

/// Why no decision was made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// No worker serves the model.
    #[error("no worker serves this model")]
    NoWorkers,
    /// Every eligible worker is busy.
    #[error("all {candidates} eligible workers are busy")]
    NoCapacity {
        /// How many workers were considered.
        candidates: usize,
    },
    /// Prefill workers are required (enforce_disagg) and none is available.
    #[error("disaggregated serving is enforced and no prefill worker is available")]
    DisaggRequired,
}

/// Whether `worker` at one dp rank is over a busy threshold.
fn rank_busy(cfg: &RouterConfig, info: &WorkerInfo, key: &WorkerKey, loads: &dyn LoadView) -> bool {
    let load = loads.load(key);
    let reported = loads.reported(key).unwrap_or_default();
    let decode_blocks = reported
        .active_decode_blocks
        .unwrap_or(0)
        .max(load.decode_blocks);
    let used_blocks = reported.kv_used_blocks.unwrap_or(0).max(decode_blocks);
    let prefill = reported
        .active_prefill_tokens
        .unwrap_or(0)
        .max(load.prefill_tokens);
    if let (Some(thr), Some(total)) = (cfg.active_decode_blocks_threshold, info.total_kv_blocks) {
        if used_blocks as f64 > thr * total as f64 {
            return true;
        }
    }
    if let Some(thr) = cfg.active_prefill_tokens_threshold {
        if prefill > thr {
            return true;
        }
    }
    if let Some(frac) = cfg.active_prefill_tokens_threshold_frac {
        let batch = info.max_num_batched_tokens.unwrap_or(10_000_000);
        if prefill as f64 > frac * batch as f64 {
            return true;
        }
    }
    if let (Some(thr), Some(total), Some(used)) = (
        cfg.busy_threshold,
        info.total_kv_blocks,
        reported.kv_used_blocks,
    ) {
        if total > 0 && used as f64 / total as f64 > thr {
            return true;
        }
    }
    false
}

struct Stage {
    scored: Vec<Scored>,
    chosen: Option<usize>,
    busy: Vec<WorkerKey>,
}

#[allow(clippy::too_many_arguments)]
fn stage(
    cfg: &RouterConfig,
    workers: &[&WorkerInfo],
    req: &RouteRequest<'_>,
    loads: &dyn LoadView,
    params: ScoreParams,
    assume_reuse: bool,
    rng: &mut fastrand::Rng,
) -> Stage {
    let mut busy = Vec::new();
    let mut candidates = Vec::new();
    for info in workers {
        let keys: Vec<WorkerKey> = info.keys().collect();
        // A worker is excluded only when every one of its dp ranks is busy (Dynamo).
        if keys.iter().all(|k| rank_busy(cfg, info, k, loads)) {
            busy.extend(keys);
            continue;
        }
        for k in keys {
            let load = loads.load(&k);
            let new_blocks = if !cfg.track_active_blocks {
                0
            } else if assume_reuse {
                loads.new_blocks(&k, req.sequence)
            } else {
                req.sequence.len() as u64
            };
            candidates.push(Candidate {
                worker: k,
                overlap_blocks: req.overlaps.of(&k),
                active_prefill_tokens: loads.pending_prefill_tokens(&k, &load),
                active_decode_blocks: load.decode_blocks,
                new_blocks,
                active_requests: load.requests,
                cached_blocks: req.overlaps.tree_size(&k),
            });
        }
    }
    let scored = score::score(&params, &candidates);
    let mut chosen = score::select(&scored, params.temperature, rng);
    if let (Some(best), Some(session)) = (chosen.and_then(|i| scored.get(i)), req.session) {
        let blocks = req.isl_tokens.div_ceil(u64::from(req.block_size.max(1))) as f64;
        let limit = best.logit + cfg.session_affinity_slack * blocks;
        if let Some(i) = scored
            .iter()
            .position(|s| s.candidate.worker == session && s.logit <= limit)
        {
            chosen = Some(i);
        }
    }
    Stage {
        scored,
        chosen,
        busy,
    }
}

fn pick(stage: &Stage, workers: &[&WorkerInfo]) -> Option<Pick> {
    let s = stage.scored.get(stage.chosen?)?;
    let info = workers
        .iter()
        .find(|w| w.instance_id == s.candidate.worker.worker_id)?;
    Some(Pick {
        worker: s.candidate.worker,
        endpoint: info.endpoint.clone(),
        overlap_blocks: s.candidate.overlap_blocks,
    })
}

/// A stage's candidates, cheapest first.
fn by_cost(stage: &Stage) -> Vec<&Scored> {
    let mut order: Vec<&Scored> = stage.scored.iter().collect();
    order.sort_by(|a, b| a.logit.total_cmp(&b.logit));
    order
}

/// The next-best endpoints after `chosen`, cheapest first: same dp rank (the rank headers
/// name it), another endpoint, each once.
fn fallbacks(stage: &Stage, workers: &[&WorkerInfo], chosen: &Pick, max: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in by_cost(stage) {
        if out.len() >= max {
            break;
        }
        if s.candidate.worker.dp_rank != chosen.worker.dp_rank {
            continue;
        }
        let Some(info) = workers
            .iter()
            .find(|w| w.instance_id == s.candidate.worker.worker_id)
        else {
            continue;
        };
        if info.endpoint != chosen.endpoint && !out.contains(&info.endpoint) {
            out.push(info.endpoint.clone());
        }
    }
    out
}

/// The next-best prefill workers after `chosen`, cheapest first, one rank per worker (a
/// worker that cannot be reached is down at every rank).
fn prefill_fallbacks(stage: &Stage, chosen: &Pick, max: usize) -> Vec<WorkerKey> {
    let mut out: Vec<WorkerKey> = Vec::new();
    for s in by_cost(stage) {
        let w = s.candidate.worker;
        if out.len() >= max {
            break;
        }
        if w.worker_id != chosen.worker.worker_id && !out.iter().any(|o| o.worker_id == w.worker_id)
        {
            out.push(w);
        }
    }
    out
}

/// Routes one request among `workers` (all serving its model).
pub fn route(
    cfg: &RouterConfig,
    workers: &[WorkerInfo],
    req: &RouteRequest<'_>,
    loads: &dyn LoadView,
    rng: &mut fastrand::Rng,
) -> Result<Decision, RouteError> {
    if workers.is_empty() {
        return Err(RouteError::NoWorkers);
    }
    let base = ScoreParams {
        isl_tokens: req.isl_tokens,
        block_size: req.block_size,
        credit: cfg.overlap_score_credit,
        credit_decay: cfg.overlap_score_credit_decay,
        prefill_load_scale: cfg.prefill_load_scale,
        active_request_weight: cfg.decode_active_request_weight,
        track_prefill: cfg.track_prefill_tokens,
        decode_pool: false,
        temperature: cfg.temperature,
    };
    let prefills: Vec<&WorkerInfo> = workers
        .iter()
        .filter(|w| w.role == WorkerRole::Prefill)
        .collect();
    let decoders: Vec<&WorkerInfo> = workers
        .iter()
        .filter(|w| w.role != WorkerRole::Prefill)
        .collect();
    let mut busy = Vec::new();

    if !prefills.is_empty() && !decoders.is_empty() {
        // Prefill workers do no decode: their active-block term is off.
        let mut pcfg = cfg.clone();
        pcfg.track_active_blocks = false;
        let p = stage(&pcfg, &prefills, req, loads, base, true, rng);
        busy.extend(p.busy.iter().copied());
        if let Some(prefill) = pick(&p, &prefills) {
            // Decode: no cache credit, no prefill term, every block counts as new.
            let dparams = ScoreParams {
                credit: 0.0,
                track_prefill: false,
                decode_pool: true,
                ..base
            };
            let d = stage(cfg, &decoders, req, loads, dparams, false, rng);
            busy.extend(d.busy.iter().copied());
            let Some(decode) = pick(&d, &decoders) else {
                return Err(RouteError::NoCapacity {
                    candidates: workers.len(),
                });
            };
            let fallbacks = fallbacks(&d, &decoders, &decode, cfg.max_fallbacks);
            let prefill_fallbacks = prefill_fallbacks(&p, &prefill, cfg.max_fallbacks);
            let plan = plan_for(
                cfg,
                req,
                decode.worker,
                Some((prefill.worker, prefill.overlap_blocks)),
                rng,
            );
            let explain = Explain {
                mode: RoutingMode::Disaggregated,
                isl_tokens: req.isl_tokens,
                block_size: req.block_size,
                decode: d.scored,
                decode_chosen: d.chosen,
                prefill: p.scored,
                prefill_chosen: p.chosen,
                busy,
            };
            return Ok(Decision {
                mode: RoutingMode::Disaggregated,
                decode,
                prefill: Some(prefill),
                prefill_fallbacks,
                prefill_required: req.enforce_disagg,
                fallbacks,
                plan,
                explain,
            });
        }
    }
    if req.enforce_disagg {
        return Err(RouteError::DisaggRequired);
    }
    if decoders.is_empty() {
        return Err(RouteError::NoWorkers);
    }
    let a = stage(cfg, &decoders, req, loads, base, true, rng);
    busy.extend(a.busy.iter().copied());
    let Some(decode) = pick(&a, &decoders) else {
        return Err(RouteError::NoCapacity {
            candidates: decoders.len(),
        });
    };
    let fallbacks = fallbacks(&a, &decoders, &decode, cfg.max_fallbacks);
    let plan = plan_for(cfg, req, decode.worker, None, rng);
    let explain = Explain {
        mode: RoutingMode::Aggregated,
        isl_tokens: req.isl_tokens,
        block_size: req.block_size,
        decode: a.scored,
        decode_chosen: a.chosen,
        prefill: Vec::new(),
        prefill_chosen: None,
        busy,
    };
    Ok(Decision {
        mode: RoutingMode::Aggregated,
        decode,
        prefill: None,
        prefill_fallbacks: Vec::new(),
        prefill_required: false,
        fallbacks,
        plan,
        explain,
    })
}

fn plan_for(
    cfg: &RouterConfig,
    req: &RouteRequest<'_>,
    decode: WorkerKey,
    prefill: Option<(WorkerKey, u32)>,
    rng: &mut fastrand::Rng,
) -> RequestPlan {
    let overlap = prefill
        .map(|p| p.1)
        .unwrap_or_else(|| req.overlaps.of(&decode));
    let cached = u64::from(overlap) * u64::from(req.block_size);
    let prefill_tokens = if cfg.track_prefill_tokens {
        req.isl_tokens.saturating_sub(cached)
    } else {
        0
    };
    let blocks = if !cfg.track_active_blocks {
        Vec::new()
    } else if prefill.is_some() {
        // Disaggregated decode does not assume reuse: its blocks are unique to the request.
        let salt = rng.u64(..);
        req.sequence.iter().map(|s| s ^ salt).collect()
    } else {
        req.sequence.to_vec()
    };
    RequestPlan {
        decode,
        prefill: prefill.map(|p| p.0),
        prefill_tokens,
        blocks,
        isl_tokens: req.isl_tokens,
        block_size: req.block_size,
        track_output: cfg.track_output_blocks,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::config::Config;
    use crate::index::PrefixIndex;
    use crate::load::LoadBook;

    struct Book(LoadBook<u32>, Option<ReportedLoad>);
    impl LoadView for Book {
        fn load(&self, w: &WorkerKey) -> WorkerLoad {
            self.0.load(w)
        }
        fn new_blocks(&self, w: &WorkerKey, b: &[u64]) -> u64 {
            self.0.new_blocks(w, b)
        }
        fn reported(&self, _: &WorkerKey) -> Option<ReportedLoad> {
            self.1
        }
    }

    fn worker(id: u64, role: WorkerRole) -> WorkerInfo {
        WorkerInfo {
            instance_id: id,
            endpoint: format!("10.0.0.{id}:8000"),
            model: "m".into(),
            role,
            block_size: None,
            dp_size: 1,
            dp_start_rank: 0,
            total_kv_blocks: Some(100),
            max_num_seqs: None,
            max_num_batched_tokens: None,
            zmq_events: None,
            zmq_replay: None,
            lora_adapters: Vec::new(),
        }
    }

    #[test]
    fn fallbacks_are_the_next_cheapest_endpoints_at_the_same_rank() {
        let mut cfg = Config::default().router;
        let workers: Vec<WorkerInfo> = (1..=4).map(|i| worker(i, WorkerRole::Aggregated)).collect();
        // Worker 3 holds 8 blocks, worker 1 holds 4, worker 2 holds 2, worker 4 none.
        let mut idx = PrefixIndex::new();
        for (w, n) in [(3, 8), (1, 4), (2, 2)] {
            for s in 0..n {
                idx.insert(WorkerKey::new(w, 0), s);
            }
        }
        let seq: Vec<u64> = (0..10).collect();
        let ov = idx.overlap(&seq);
        let mut rng = fastrand::Rng::with_seed(1);
        let book = Book(LoadBook::new(), None);
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_eq!(d.decode.endpoint, "10.0.0.3:8000");
        assert_eq!(d.fallbacks, vec!["10.0.0.1:8000", "10.0.0.2:8000"]);
        cfg.max_fallbacks = 0;
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert!(d.fallbacks.is_empty());
        // Another dp rank of a worker is not a fallback: the rank headers name one rank.
        cfg.max_fallbacks = 8;
        let mut two = worker(5, WorkerRole::Aggregated);
        two.dp_size = 2;
        let d = route(&cfg, &[two.clone()], &request(&seq, &ov), &book, &mut rng).unwrap();
        assert!(d.fallbacks.is_empty(), "{:?}", d.fallbacks);
        let mut idx = PrefixIndex::new();
        for s in 0..8 {
            idx.insert(WorkerKey::new(4, 0), s);
        }
        let ov = idx.overlap(&seq);
        let both = [two, worker(4, WorkerRole::Aggregated)];
        let d = route(&cfg, &both, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_eq!(d.decode.worker, WorkerKey::new(4, 0));
        assert_eq!(
            d.fallbacks,
            vec!["10.0.0.5:8000"],
            "rank 0 of worker 5 only"
        );
    }

    #[test]
    fn a_session_stays_on_its_worker_within_the_slack_only() {
        let cfg = Config::default().router;
        let workers = [
            worker(1, WorkerRole::Aggregated),
            worker(2, WorkerRole::Aggregated),
        ];
        // Worker 2 holds 8 of 10 blocks: worker 1 costs 8 blocks more (slack 0.5 × 10 = 5).
        let mut idx = PrefixIndex::new();
        for s in 0..8 {
            idx.insert(WorkerKey::new(2, 0), s);
        }
        let seq: Vec<u64> = (0..10).collect();
        let ov = idx.overlap(&seq);
        let mut rng = fastrand::Rng::with_seed(1);
        let book = Book(LoadBook::new(), None);
        let mut req = request(&seq, &ov);
        req.session = Some(WorkerKey::new(1, 0));
        let d = route(&cfg, &workers, &req, &book, &mut rng).unwrap();
        assert_eq!(
            d.decode.worker,
            WorkerKey::new(2, 0),
            "8 blocks worse: not kept"
        );
        // Worker 2 holds only 3 blocks: worker 1 costs 3 more, within the slack.
        let mut idx = PrefixIndex::new();
        for s in 0..3 {
            idx.insert(WorkerKey::new(2, 0), s);
        }
        let ov = idx.overlap(&seq);
        let mut req = request(&seq, &ov);
        req.session = Some(WorkerKey::new(1, 0));
        let d = route(&cfg, &workers, &req, &book, &mut rng).unwrap();
        assert_eq!(
            d.decode.worker,
            WorkerKey::new(1, 0),
            "within the slack: kept"
        );
        req.session = None;
        let d = route(&cfg, &workers, &req, &book, &mut rng).unwrap();
        assert_eq!(
            d.decode.worker,
            WorkerKey::new(2, 0),
            "without a session: the best"
        );
        req.session = Some(WorkerKey::new(9, 0));
        let d = route(&cfg, &workers, &req, &book, &mut rng).unwrap();
        assert_eq!(
            d.decode.worker,
            WorkerKey::new(2, 0),
            "an unknown worker: the best"
        );
    }

    fn request<'a>(seq: &'a [u64], ov: &'a OverlapScores) -> RouteRequest<'a> {
        RouteRequest {
            isl_tokens: seq.len() as u64 * 16,
            block_size: 16,
            sequence: seq,
            overlaps: ov,
            session: None,
            enforce_disagg: false,
        }
    }

    #[test]
    fn prefers_the_cached_worker_then_load() {
        let cfg = Config::default().router;
        let workers = [
            worker(1, WorkerRole::Aggregated),
            worker(2, WorkerRole::Aggregated),
        ];
        let mut idx = PrefixIndex::new();
        for s in 0..8 {
            idx.insert(WorkerKey::new(2, 0), s);
        }
        let seq: Vec<u64> = (0..10).collect();
        let ov = idx.overlap(&seq);
        let mut rng = fastrand::Rng::with_seed(1);
        let book = Book(LoadBook::new(), None);
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_eq!(d.decode.worker, WorkerKey::new(2, 0));
        assert_eq!(d.decode.endpoint, "10.0.0.2:8000");
        assert_eq!(d.plan.prefill_tokens, 2 * 16);
        assert_eq!(d.mode, RoutingMode::Aggregated);
        let line = d.explain.to_string();
        assert!(
            line.contains("2/0 ov=8") && line.contains('*') && !line.contains('\n'),
            "{line}"
        );

        // Enough queued prefill on worker 2 outweighs its cache.
        let mut book = Book(LoadBook::new(), None);
        let mut plan = d.plan.clone();
        plan.prefill_tokens = 10_000;
        book.0.add(7, plan, 0);
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_eq!(d.decode.worker, WorkerKey::new(1, 0));
    }

    #[test]
    fn busy_workers_are_skipped_and_all_busy_is_no_capacity() {
        let mut cfg = Config::default().router;
        cfg.busy_threshold = Some(0.5);
        let workers = [
            worker(1, WorkerRole::Aggregated),
            worker(2, WorkerRole::Aggregated),
        ];
        let seq = [1u64, 2];
        let ov = OverlapScores::default();
        let mut rng = fastrand::Rng::with_seed(1);
        let busy = Book(
            LoadBook::new(),
            Some(ReportedLoad {
                kv_used_blocks: Some(90),
                ..Default::default()
            }),
        );
        let e = route(&cfg, &workers, &request(&seq, &ov), &busy, &mut rng).unwrap_err();
        assert_eq!(e, RouteError::NoCapacity { candidates: 2 });

        cfg.busy_threshold = None;
        cfg.active_prefill_tokens_threshold = Some(100);
        let mut book = Book(LoadBook::new(), None);
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        let mut plan = d.plan.clone();
        plan.prefill_tokens = 1000;
        book.0.add(1, plan.clone(), 0);
        let d2 = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_ne!(
            d2.decode.worker, d.decode.worker,
            "the busy worker is skipped"
        );
        assert_eq!(d2.explain.busy, vec![d.decode.worker]);
    }

    #[test]
    fn disaggregated_and_enforce() {
        let cfg = Config::default().router;
        let workers = [
            worker(1, WorkerRole::Prefill),
            worker(2, WorkerRole::Decode),
            worker(3, WorkerRole::Decode),
        ];
        let seq = [1u64, 2, 3];
        let mut idx = PrefixIndex::new();
        idx.insert(WorkerKey::new(1, 0), 1);
        let ov = idx.overlap(&seq);
        let mut rng = fastrand::Rng::with_seed(3);
        let book = Book(LoadBook::new(), None);
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_eq!(d.mode, RoutingMode::Disaggregated);
        assert_eq!(d.prefill.as_ref().unwrap().worker, WorkerKey::new(1, 0));
        assert_ne!(d.decode.worker, WorkerKey::new(1, 0));
        assert_eq!(d.plan.prefill, Some(WorkerKey::new(1, 0)));
        assert_eq!(d.plan.prefill_tokens, 2 * 16);

        // No prefill workers: fall back to aggregated, unless enforced.
        let decode_only = [worker(2, WorkerRole::Decode)];
        let d = route(&cfg, &decode_only, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_eq!(d.mode, RoutingMode::Aggregated);
        let enforced = RouteRequest {
            enforce_disagg: true,
            ..request(&seq, &ov)
        };
        let e = route(&cfg, &decode_only, &enforced, &book, &mut rng).unwrap_err();
        assert_eq!(e, RouteError::DisaggRequired);
        // With prefill workers available, enforcing changes nothing.
        let d = route(&cfg, &workers, &enforced, &book, &mut rng).unwrap();
        assert_eq!(d.mode, RoutingMode::Disaggregated);
        assert_eq!(
            route(&cfg, &[], &request(&seq, &ov), &book, &mut rng).unwrap_err(),
            RouteError::NoWorkers
        );
    }

    #[test]
    fn the_next_best_prefill_workers_follow_the_chosen_one() {
        let mut cfg = Config::default().router;
        let mut p2 = worker(2, WorkerRole::Prefill);
        p2.dp_size = 2;
        let workers = [
            worker(1, WorkerRole::Prefill),
            p2,
            worker(3, WorkerRole::Prefill),
            worker(4, WorkerRole::Decode),
        ];
        let seq = [1u64, 2, 3];
        let mut idx = PrefixIndex::new();
        // Worker 1 holds 3 blocks, worker 3 two, worker 2 none.
        for (w, n) in [(1, 3), (3, 2)] {
            for &s in seq.iter().take(n) {
                idx.insert(WorkerKey::new(w, 0), s);
            }
        }
        let ov = idx.overlap(&seq);
        let mut rng = fastrand::Rng::with_seed(3);
        let book = Book(LoadBook::new(), None);
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_eq!(d.prefill.as_ref().unwrap().worker.worker_id, 1);
        let ids: Vec<u64> = d.prefill_fallbacks.iter().map(|k| k.worker_id).collect();
        assert_eq!(ids.first(), Some(&3), "{ids:?}");
        assert_eq!(
            ids.len(),
            2,
            "each worker once, the chosen one never: {ids:?}"
        );
        assert!(ids.contains(&2));
        cfg.max_fallbacks = 1;
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert_eq!(d.prefill_fallbacks.len(), 1);
        cfg.max_fallbacks = 0;
        let d = route(&cfg, &workers, &request(&seq, &ov), &book, &mut rng).unwrap();
        assert!(d.prefill_fallbacks.is_empty());
    }

    #[test]
    fn every_dp_rank_is_a_candidate() {
        let cfg = Config::default().router;
        let mut w = worker(1, WorkerRole::Aggregated);
        w.dp_size = 4;
        w.dp_start_rank = 4;
        let seq = [9u64, 10];
        let mut idx = PrefixIndex::new();
        idx.insert(WorkerKey::new(1, 6), 9);
        idx.insert(WorkerKey::new(1, 6), crate::hash::chain(9, 10));
        let ov = idx.overlap(&[9, crate::hash::chain(9, 10)]);
        let seqh = [9, crate::hash::chain(9, 10)];
        let mut rng = fastrand::Rng::with_seed(3);
        let d = route(
            &cfg,
            &[w],
            &request(&seqh, &ov),
            &Book(LoadBook::new(), None),
            &mut rng,
        )
        .unwrap();
        assert_eq!(d.decode.worker, WorkerKey::new(1, 6));
        assert_eq!(d.explain.decode.len(), 4);
        let _ = seq;
    }
}
