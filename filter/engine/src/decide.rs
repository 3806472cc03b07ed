//! The request path: body → parse → template → tokenize → block hashes → overlaps →
//! cost formula → headers, rewritten body and booking. Every failure has a defined
//! [`Outcome`] (a JSON error reply, or forwarding without a decision under fail-open).

use crate::body::{self, Rewrite};
use crate::engine::Engine;
use crate::engine::Prediction;
use crate::headers::{self as h, RoutedPath};
use crate::ledger::{Others, Part};
use crate::outcome::{Degraded, Early, ForwardReason, Outcome, Reply, Route, Timings};
use kvgate_core::config::{FailPolicy, UnknownModel};
use kvgate_core::hash::{BlockHasher, BlockHashes};
use kvgate_core::index::OverlapScores;
use kvgate_core::load::{LoadBook, QueuedPrefill, WorkerLoad};
use kvgate_core::prefill::PrefillRates;
use kvgate_core::route::{self, Decision, LoadView, ReportedLoad, RouteError, RouteRequest};
use kvgate_core::sync::RemoteLoad;
use kvgate_core::WorkerKey;
use kvgate_prompt::error::openai_error_body;
use kvgate_prompt::request;
use kvgate_prompt::{ApiError, Disposition, Endpoint, PromptSource};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::time::Instant;

/// What the glue hands to [`Engine::decide`].
pub struct DecideInput<'a> {
    /// The HTTP context id (the booking key).
    pub ctx: u32,
    /// Which endpoint.
    pub path: RoutedPath,
    /// The whole request body.
    pub body: &'a [u8],
    /// The `x-tenant-id` header (cache salt), if any.
    pub tenant: Option<&'a str>,
    /// The worker named by the request's session-affinity token, if any.
    pub session: Option<WorkerKey>,
    /// Wall clock, ms since the epoch.
    pub now_ms: u64,
}

/// A request made ready for the cost formula by [`Engine::prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The base model whose prompt pipeline was used (or wanted).
    pub model: String,
    /// Workers serving the model.
    pub workers: Vec<kvgate_core::workers::WorkerInfo>,
    /// Tokens per block for the model.
    pub block_size: u32,
    /// Prompt token ids (capped at `max_match_blocks` blocks).
    pub tokens: Vec<u32>,
    /// Whether `tokens` is the whole prompt.
    pub complete: bool,
    /// The whole prompt's length in tokens (estimated when `tokens` is a prefix).
    pub estimated_tokens: usize,
    /// Whether the prompt came as token ids.
    pub from_ids: bool,
    /// Segment cache hits and misses.
    pub segments: (u32, u32),
    /// Tools-list cache hits and misses of the render (0 or 1 each).
    pub tools: (u32, u32),
    /// Block and sequence hashes.
    pub hashes: BlockHashes,
    /// Overlap per worker (events index and/or predictions).
    pub overlaps: OverlapScores,
    /// Set when the decision can only use load, and why.
    pub degraded: Option<Degraded>,
    /// Whether the body has an `nvext` object.
    pub has_nvext: bool,
    /// The session's worker (session affinity), if the request named one.
    pub session: Option<WorkerKey>,
    /// Stage times so far.
    pub timings: Timings,
    /// When the request was prepared, ms since the epoch (the decision's clock).
    pub now_ms: u64,
    started: Instant,
}

/// The load a decision sees: this VM's book, the other VMs' bookings from the ledger,
/// other gateway replicas' and the workers' own reports from the sidecar.
struct View<'a> {
    book: &'a LoadBook<u32>,
    others: &'a Others,
    remote: &'a HashMap<WorkerKey, RemoteLoad>,
    /// Learned prefill rates, when queued prefill decays by time.
    rates: Option<&'a PrefillRates>,
    now_ms: u64,
}

impl LoadView for View<'_> {
    fn load(&self, w: &WorkerKey) -> WorkerLoad {
        let mut l = self.book.load(w);
        if let Some(o) = self.others.loads.get(w) {
            l = l.plus(*o);
        }
        if let Some(r) = self.remote.get(w) {
            l = l.plus(r.replicas);
        }
        l
    }
    fn new_blocks(&self, w: &WorkerKey, blocks: &[u64]) -> u64 {
        self.book.new_blocks(w, blocks)
    }
    fn queued_prefills(&self, w: &WorkerKey) -> Vec<QueuedPrefill> {
        let mut q = self.book.queued_prefills(w);
        if let Some(o) = self.others.prefills.get(w) {
            q.extend_from_slice(o);
            q.sort_by_key(|p| p.since_ms);
        }
        q
    }
    fn pending_prefill_tokens(&self, w: &WorkerKey, load: &WorkerLoad) -> u64 {
        match self.rates {
            Some(r) => r.decayed(
                w,
                load.prefill_tokens,
                &self.queued_prefills(w),
                self.now_ms,
            ),
            None => load.prefill_tokens,
        }
    }
    fn reported(&self, w: &WorkerKey) -> Option<ReportedLoad> {
        self.remote.get(w).map(|r| ReportedLoad {
            kv_used_blocks: r.kv_used_blocks,
            active_decode_blocks: r.active_decode_blocks,
            active_prefill_tokens: r.active_prefill_tokens,
        })
    }
}

fn us(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

fn merge_max(mut a: OverlapScores, b: OverlapScores) -> OverlapScores {
    for (k, v) in b.scores {
        let e = a.scores.entry(k).or_insert(0);
        *e = (*e).max(v);
    }
    for (k, v) in b.tree_sizes {
        let e = a.tree_sizes.entry(k).or_insert(0);
        *e = (*e).max(v);
    }
    a
}

fn reply(status: u16, code: &'static str, message: &str, error_type: &str) -> Reply {
    Reply {
        status,
        body: openai_error_body(message, error_type, code, None),
        code,
    }
}

impl Engine {
    fn fail(&mut self, reason: ForwardReason, message: &str) -> Early {
        match self.cfg.gateway.fail_policy {
            FailPolicy::FailOpen => {
                self.counters.fail_open += 1;
                Early::Forward(reason)
            }
            FailPolicy::FailClosed => {
                self.counters.fail_closed += 1;
                Early::Reply(reply(503, reason.as_str(), message, "service_unavailable"))
            }
        }
    }

    /// Whether the sidecar index is too old to trust.
    pub fn index_stale(&self, now_ms: u64) -> bool {
        let limit = self.cfg.gateway.stale_after_ms;
        match self.last_sync_ms {
            None => true,
            Some(t) => now_ms.saturating_sub(t) > limit || self.source_age_ms > limit,
        }
    }

    /// Everything up to the cost formula: parse, model lookup, template, tokenize,
    /// hash, overlaps. `Err` is how requests that end here end (errors, fail-open).
    pub fn prepare(&mut self, input: &DecideInput<'_>) -> Result<Prepared, Early> {
        let start = Instant::now();
        let mut t = Timings::default();
        let endpoint = match input.path {
            RoutedPath::Chat => Endpoint::ChatCompletions,
            RoutedPath::Completions => Endpoint::Completions,
        };
        let limits = self.prompt_options(self.cfg.router.block_size).limits;
        let parsed = request::parse(endpoint, input.body, &limits);
        t.parse_us = us(start);
        let req = parsed.map_err(|e| self.api_error(&e, ForwardReason::UnsupportedRequest))?;
        if self.fleet.is_empty() {
            return Err(self.fail(
                ForwardReason::NoWorkers,
                "no inference worker is known to the gateway",
            ));
        }
        // A base model, or a LoRA adapter: its base model's prompt pipeline, its workers
        // only, and block hashes seeded with the adapter's name.
        let Some(served) = self.fleet.resolve(&req.model) else {
            return Err(self.unknown_model(&req.model));
        };
        let (base, lora) = (served.base.to_string(), served.lora.map(str::to_string));
        let mut workers = served.workers.to_vec();
        if workers.is_empty() {
            return Err(self.unknown_model(&req.model));
        }
        self.quarantine.retain_available(&mut workers, input.now_ms);
        let block_size = self
            .models
            .get(&base)
            .map(|m| m.block_size)
            .or_else(|| workers.iter().find_map(|w| w.block_size))
            .unwrap_or(self.cfg.router.block_size);

        // Prompt → tokens, through the model's one prompt pipeline.
        let mut p = Prepared {
            model: base.clone(),
            session: input.session,
            workers,
            block_size,
            tokens: Vec::new(),
            complete: false,
            estimated_tokens: 0,
            from_ids: false,
            segments: (0, 0),
            tools: (0, 0),
            hashes: BlockHashes::default(),
            overlaps: OverlapScores::default(),
            degraded: None,
            has_nvext: req.nvext.is_some(),
            timings: t,
            now_ms: input.now_ms,
            started: start,
        };
        let max_tokens = self
            .cfg
            .gateway
            .max_match_blocks
            .saturating_mul(block_size as usize);
        match self.models.get_mut(&base).and_then(|m| m.prompt.as_mut()) {
            None => p.degraded = Some(Degraded::NoTokenizer),
            Some(model) => {
                let s = Instant::now();
                // The template is this engine's own (one thread), so the counters' growth
                // across the render is this request's.
                let before = model.template().tools_cache_stats();
                let text = model.text(&req, input.now_ms);
                let after = model.template().tools_cache_stats();
                p.timings.template_us = us(s);
                p.tools = (
                    u32::try_from(after.hits.saturating_sub(before.hits)).unwrap_or(u32::MAX),
                    u32::try_from(after.misses.saturating_sub(before.misses)).unwrap_or(u32::MAX),
                );
                let s = Instant::now();
                let out = text.and_then(|text| model.encode(text, max_tokens));
                p.timings.tokenize_us = us(s);
                let out = out.map_err(|e| self.api_error(&e, ForwardReason::UnsupportedPrompt))?;
                p.segments = (out.segments_hit, out.segments_miss);
                p.complete = out.complete;
                p.estimated_tokens = out.estimated_tokens;
                p.from_ids = out.source == PromptSource::CompletionTokens;
                p.tokens = out.token_ids;
            }
        }

        // Tokens → block hashes → overlaps.
        let s = Instant::now();
        let salt = input
            .tenant
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .or_else(|| {
                req.nvext
                    .as_ref()
                    .and_then(|n| n.get("cache_salt"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
        p.hashes = BlockHasher::new(block_size).hash(
            &p.tokens,
            lora.as_deref(),
            salt.as_deref(),
            self.cfg.gateway.max_match_blocks,
        );
        p.overlaps = if self.uses_events() {
            if self.index_stale(input.now_ms) {
                p.degraded = p.degraded.or(Some(Degraded::StaleIndex));
                OverlapScores::default()
            } else {
                let o = self.index.overlap(&p.hashes.sequence);
                if self.cfg.router.predicted_ttl_ms.is_some() {
                    merge_max(o, self.approx.overlap_at(&p.hashes.sequence, input.now_ms))
                } else {
                    o
                }
            }
        } else {
            // Expired predictions are skipped here and swept by the tick.
            self.approx.overlap_at(&p.hashes.sequence, input.now_ms)
        };
        p.timings.hash_us = us(s);
        Ok(p)
    }

    /// The cost formula and selection for a prepared request, with this VM's loads and
    /// the other VMs' bookings `others`. Books nothing.
    pub fn choose(&mut self, p: &mut Prepared, others: &Others) -> Result<Decision, RouteError> {
        let s = Instant::now();
        let isl = if p.complete || p.from_ids {
            p.tokens.len() as u64
        } else {
            (p.estimated_tokens.max(p.tokens.len()) as u64).max(1)
        };
        let rreq = RouteRequest {
            isl_tokens: isl,
            block_size: p.block_size,
            sequence: &p.hashes.sequence,
            overlaps: &p.overlaps,
            session: p.session,
            enforce_disagg: p
                .workers
                .first()
                .is_some_and(|w| self.cfg.router.enforce_disagg.applies(&w.model)),
        };
        let decay = self.cfg.router.prefill_decay && self.cfg.router.track_prefill_tokens;
        let view = View {
            book: &self.book,
            others,
            remote: &self.remote,
            rates: decay.then_some(&self.prefill_rates),
            now_ms: p.now_ms,
        };
        let decision = route::route(&self.cfg.router, &p.workers, &rreq, &view, &mut self.rng);
        p.timings.score_us = us(s);
        decision
    }

    /// Books decision `d` for stream `ctx` (undone by [`Engine::unbook`] if the ledger
    /// write fails and the VM decides again).
    pub fn book(&mut self, ctx: u32, d: &Decision, now_ms: u64) {
        self.book.add(ctx, d.plan.clone(), now_ms);
    }

    /// Undoes a booking made by [`Engine::book`] that was not committed.
    pub fn unbook(&mut self, ctx: u32) {
        self.book.free(&ctx);
    }

    /// This VM's part of the ledger: its booked loads and unfinished prefills.
    pub fn ledger_part(&self, now_ms: u64) -> Part {
        Part {
            vm: self.vm,
            at_ms: now_ms,
            loads: self.book.loads().collect(),
            prefills: self.book.all_queued_prefills(),
        }
    }

    /// Decides where one request goes with `others` in view, and books it when routed
    /// (for a single VM: `explain`, tests). `Vm::decide` does the same through the ledger.
    pub fn decide(&mut self, input: &DecideInput<'_>, others: &Others) -> Outcome {
        let mut p = match self.prepare(input) {
            Ok(p) => p,
            Err(early) => return early.into(),
        };
        match self.choose(&mut p, others) {
            Ok(d) => {
                self.book(input.ctx, &d, input.now_ms);
                self.commit(input, p, d)
            }
            Err(e) => self.route_failed(e),
        }
    }

    /// The outcome of a decision that could not be made.
    pub fn route_failed(&mut self, e: RouteError) -> Outcome {
        match e {
            RouteError::NoWorkers => self
                .fail(
                    ForwardReason::NoWorkers,
                    "no inference worker serves this model",
                )
                .into(),
            RouteError::NoCapacity { .. } => {
                self.counters.no_capacity += 1;
                Outcome::Reply(reply(
                    self.cfg.router.overload_status,
                    "all_workers_busy",
                    "All workers serving this model are busy; retry later.",
                    "overloaded_error",
                ))
            }
            RouteError::DisaggRequired => {
                self.counters.fail_closed += 1;
                Outcome::Reply(reply(
                    503,
                    "no_prefill_worker",
                    &RouteError::DisaggRequired.to_string(),
                    "service_unavailable",
                ))
            }
        }
    }

    /// Completes a booked decision: the new body, predictions, replica-sync note,
    /// counters and the [`Route`] for the glue.
    pub fn commit(&mut self, input: &DecideInput<'_>, mut p: Prepared, d: Decision) -> Outcome {
        match p.degraded {
            Some(Degraded::NoTokenizer) => self.counters.no_tokenizer += 1,
            Some(Degraded::StaleIndex) => self.counters.stale_index += 1,
            None => {}
        }
        if !self.fleet.knows_endpoint(&d.decode.endpoint) {
            // Cannot happen with a consistent table; never emit an unknown destination.
            self.unbook(input.ctx);
            return self
                .fail(ForwardReason::UnknownEndpoint, "internal routing error")
                .into();
        }

        // Body: strip client routing keys, inject token ids.
        let inject =
            self.cfg.gateway.inject_token_data && p.complete && !p.from_ids && !p.tokens.is_empty();
        // The common case splices the ids into the original bytes.
        let spliced = (inject && !p.has_nvext)
            .then(|| body::splice_token_data(input.body, &p.tokens))
            .flatten();
        let new_body = if spliced.is_some() {
            spliced
        } else if inject || p.has_nvext {
            serde_json::from_slice::<Map<String, Value>>(input.body)
                .ok()
                .and_then(|m| body::rewrite(m, inject.then_some(p.tokens.as_slice())).ok())
                .and_then(|r| match r {
                    Rewrite::Changed(b) => Some(b),
                    Rewrite::Unchanged => None,
                })
        } else {
            None
        };

        // Predict where the prompt's blocks will be cached.
        if self.predicts() {
            let worker = d
                .prefill
                .as_ref()
                .map(|x| x.worker)
                .unwrap_or(d.decode.worker);
            self.predict(Prediction {
                worker,
                at_ms: input.now_ms,
                sequence: p.hashes.sequence.clone(),
            });
        }
        self.note(input.ctx, kvgate_core::sync::BookKind::Add(d.plan.clone()));
        self.counters.routed += 1;
        p.timings.total_us = us(p.started);
        let matched_blocks = d
            .decode
            .overlap_blocks
            .max(d.prefill.as_ref().map(|x| x.overlap_blocks).unwrap_or(0));
        Outcome::Route(Box::new(Route {
            headers: routing_headers(&d, self.cfg.gateway.vllm_dp_rank_header),
            body: new_body,
            explain: match p.degraded {
                Some(why) => format!("{} | degraded={}", d.explain, why.as_str()),
                None => d.explain.to_string(),
            },
            worker: d.decode.worker,
            matched_blocks,
            prompt_tokens: p.tokens.len(),
            segments: p.segments,
            tools: p.tools,
            timings: p.timings,
            degraded: p.degraded,
        }))
    }

    fn unknown_model(&mut self, model: &str) -> Early {
        match self.cfg.gateway.unknown_model {
            UnknownModel::Reject => {
                self.counters.rejected += 1;
                let msg = format!("The model `{model}` does not exist or is not served here.");
                Early::Reply(Reply {
                    status: 404,
                    body: openai_error_body(
                        &msg,
                        "invalid_request_error",
                        "model_not_found",
                        Some("model"),
                    ),
                    code: "model_not_found",
                })
            }
            UnknownModel::Passthrough => {
                self.counters.passthrough += 1;
                Early::Forward(ForwardReason::UnknownModel)
            }
        }
    }

    /// The outcome of a request or prompt error: a JSON reply, or forwarding unrouted.
    fn api_error(&mut self, e: &dyn ApiError, forward: ForwardReason) -> Early {
        match e.disposition() {
            Disposition::Reject => {
                self.counters.rejected += 1;
                Early::Reply(Reply {
                    status: e.status(),
                    body: e.openai_body(),
                    code: e.code(),
                })
            }
            Disposition::Forward => {
                self.counters.passthrough += 1;
                Early::Forward(forward)
            }
        }
    }
}

/// The destination header's value: the chosen endpoint, then the fallbacks Envoy's
/// override_host load balancer tries in order when a connection fails.
fn destination(d: &Decision) -> String {
    let mut v = d.decode.endpoint.clone();
    for f in &d.fallbacks {
        v.push(',');
        v.push_str(f);
    }
    v
}

/// The upstream headers for a decision (both Dynamo 1.x and `x-dynamo-` names, and plain
/// vLLM's dp rank header when `vllm_dp_rank` is set).
pub fn routing_headers(d: &Decision, vllm_dp_rank: bool) -> Vec<(&'static str, String)> {
    let mut v = vec![
        (h::WORKER_INSTANCE_ID, d.decode.worker.worker_id.to_string()),
        (
            h::DYNAMO_WORKER_INSTANCE_ID,
            d.decode.worker.worker_id.to_string(),
        ),
        (h::DP_RANK, d.decode.worker.dp_rank.to_string()),
        (h::DYNAMO_DP_RANK, d.decode.worker.dp_rank.to_string()),
        (h::DYNAMO_ROUTING_MODE, d.mode.as_str().to_string()),
        (h::DESTINATION_ENDPOINT, destination(d)),
    ];
    if vllm_dp_rank {
        v.push((h::VLLM_DP_RANK, d.decode.worker.dp_rank.to_string()));
    }
    if let Some(p) = &d.prefill {
        v.push((h::PREFILL_INSTANCE_ID, p.worker.worker_id.to_string()));
        v.push((
            h::DYNAMO_PREFILL_INSTANCE_ID,
            p.worker.worker_id.to_string(),
        ));
        v.push((h::PREFILL_DP_RANK, p.worker.dp_rank.to_string()));
        v.push((h::DYNAMO_PREFILL_DP_RANK, p.worker.dp_rank.to_string()));
        v.push((h::PREFILLER_HOST_PORT, p.endpoint.clone()));
        if !d.prefill_fallbacks.is_empty() {
            let list: Vec<String> = d
                .prefill_fallbacks
                .iter()
                .map(|k| format!("{}/{}", k.worker_id, k.dp_rank))
                .collect();
            v.push((h::PREFILL_FALLBACKS, list.join(",")));
        }
        if d.prefill_required {
            v.push((h::PREFILL_REQUIRED, "true".to_string()));
        }
    }
    v
}
