//! `explain`: how the filter would route one request right now. The request is parsed,
//! templated and tokenized by `kvgate-prompt` with the filter's settings (block-size cap
//! included), hashed with the core's `BlockHasher`, matched against a snapshot fetched
//! from the sidecar (`/v1/sync?epoch=0&since=0`), and decided by the core's
//! `route::route` — the same functions the filter calls — with the sidecar's loads
//! (other replicas and worker reports; this tool books nothing).

mod report;

pub use report::Report;
use report::{CandidateRow, DecisionRow, PickRow, WorkerRow};

use crate::cli::ExplainArgs;
use crate::client::{self, query_escape, Target};
use crate::models::read_model;
use crate::settings::{load_config, process_env};
use crate::time::now_ms;
use anyhow::{anyhow, bail, Context};
use kvgate_core::config::Config;
use kvgate_core::hash::BlockHasher;
use kvgate_core::index::PrefixIndex;
use kvgate_core::load::WorkerLoad;
use kvgate_core::route::{self, LoadView, ReportedLoad, RouteRequest};
use kvgate_core::sync::{self, ModelFiles, RemoteLoad, SyncFrame, SyncState};
use kvgate_core::WorkerKey;
use kvgate_prompt::request::{self, Payload, Prompt};
use kvgate_prompt::{Endpoint, Limits, ModelPrompt, PromptOptions};
use serde_json::Value;
use std::collections::HashMap;

/// Largest snapshot accepted.
const MAX_FRAME: usize = 512 << 20;

struct Loads(HashMap<WorkerKey, RemoteLoad>);

impl LoadView for Loads {
    fn load(&self, w: &WorkerKey) -> WorkerLoad {
        self.0.get(w).map(|r| r.replicas).unwrap_or_default()
    }
    fn new_blocks(&self, _w: &WorkerKey, blocks: &[u64]) -> u64 {
        blocks.len() as u64
    }
    fn reported(&self, w: &WorkerKey) -> Option<ReportedLoad> {
        self.0.get(w).map(|r| ReportedLoad {
            kv_used_blocks: r.kv_used_blocks,
            active_decode_blocks: r.active_decode_blocks,
            active_prefill_tokens: r.active_prefill_tokens,
        })
    }
}

/// The filter's prompt options for `block_size` (see the filter's `engine::models`).
pub fn prompt_options(cfg: &Config, block_size: u32) -> PromptOptions {
    let g = &cfg.gateway;
    let mut o = PromptOptions {
        limits: Limits {
            max_body_bytes: g.max_body_bytes,
            max_messages: g.max_messages,
            ..Limits::default()
        },
        max_prompt_tokens: g.max_match_blocks.saturating_mul(block_size as usize),
        ..PromptOptions::default()
    };
    o.cache.max_entries = g.segment_cache_entries;
    o
}

async fn snapshot(target: &Target) -> anyhow::Result<SyncFrame> {
    let (status, body) =
        client::get(target, "/v1/sync?epoch=0&since=0&wait_ms=0&client=explain").await?;
    if status != 200 {
        bail!("sidecar answered {status} to /v1/sync");
    }
    Ok(sync::decode(&body, MAX_FRAME)?)
}

async fn model_files(
    args: &ExplainArgs,
    frame: &SyncFrame,
    target: &Target,
    block_size: u32,
) -> anyhow::Result<ModelFiles> {
    if let Some(dir) = &args.model_dir {
        return Ok(read_model(&args.model, dir, block_size)?);
    }
    let entry = frame
        .models
        .iter()
        .flatten()
        .find(|m| m.name == args.model)
        .ok_or_else(|| {
            anyhow!(
                "the sidecar serves no tokenizer for `{}`; pass --model-dir",
                args.model
            )
        })?;
    let path = format!(
        "/v1/models/files?name={}&digest={}",
        query_escape(&entry.name),
        query_escape(&entry.files_digest)
    );
    let (status, body) = client::get(target, &path).await?;
    if status != 200 {
        bail!("sidecar answered {status} to {path}");
    }
    postcard::from_bytes(&body).map_err(|e| anyhow!("bad model files from the sidecar: {e}"))
}

/// Runs `explain` and returns what to print.
pub async fn run(args: &ExplainArgs) -> anyhow::Result<String> {
    let env = process_env();
    let cfg = load_config(
        args.config.as_deref(),
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    let body = if args.request.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)?;
        b
    } else {
        std::fs::read(&args.request)
            .with_context(|| format!("cannot read {}", args.request.display()))?
    };
    let endpoint = match args.endpoint.as_deref() {
        Some("chat") => Endpoint::ChatCompletions,
        Some("completions") => Endpoint::Completions,
        Some(other) => {
            bail!("invalid value for `--endpoint`: `{other}` is not chat or completions")
        }
        None => {
            let v: Value = serde_json::from_slice(&body).context("the request is not JSON")?;
            if v.get("messages").is_some() {
                Endpoint::ChatCompletions
            } else {
                Endpoint::Completions
            }
        }
    };
    let target = Target::parse(&args.sidecar)?;
    let frame = snapshot(&target).await?;
    let all_workers = frame.workers.clone().unwrap_or_default();
    let workers: Vec<_> = all_workers
        .into_iter()
        .filter(|w| w.model == args.model)
        .collect();
    let block_size = args
        .block_size
        .or_else(|| {
            frame
                .models
                .iter()
                .flatten()
                .find(|m| m.name == args.model)
                .map(|m| m.block_size)
        })
        .or_else(|| workers.iter().find_map(|w| w.block_size))
        .unwrap_or(cfg.router.block_size);
    let files = model_files(args, &frame, &target, block_size).await?;
    let opts = prompt_options(&cfg, block_size);
    let limits = opts.limits.clone();
    let mut model = ModelPrompt::new(&files.tokenizer_json, &files.tokenizer_config_json, opts)?;
    let req = request::parse(endpoint, &body, &limits)?;
    let from_ids =
        matches!(&req.payload, Payload::Completion(c) if matches!(c.prompt, Prompt::Tokens(_)));
    let out = model.prompt(&req, now_ms())?;
    let salt = args.tenant.clone().filter(|t| !t.is_empty()).or_else(|| {
        req.nvext
            .as_ref()
            .and_then(|n| n.get("cache_salt"))
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let hashes = BlockHasher::new(block_size).hash(
        &out.token_ids,
        None,
        salt.as_deref(),
        cfg.gateway.max_match_blocks,
    );

    let mut index = PrefixIndex::new();
    SyncState::default().apply(&frame, &mut index)?;
    let overlaps = index.overlap(&hashes.sequence);
    let loads = Loads(
        frame
            .loads
            .iter()
            .flatten()
            .map(|l| (l.worker, *l))
            .collect(),
    );
    let isl = if out.complete || from_ids {
        out.token_ids.len() as u64
    } else {
        (out.token_ids.len() as u64).max(1)
    };
    let rreq = RouteRequest {
        isl_tokens: isl,
        block_size,
        sequence: &hashes.sequence,
        overlaps: &overlaps,
    };
    let decision = route::route(
        &cfg.router,
        &workers,
        &rreq,
        &loads,
        &mut fastrand::Rng::with_seed(0),
    );

    let rows: Vec<WorkerRow> = workers
        .iter()
        .flat_map(|w| w.keys().map(move |k| (w, k)))
        .map(|(w, k)| {
            let l = loads.0.get(&k);
            WorkerRow {
                worker_id: k.worker_id,
                dp_rank: k.dp_rank,
                endpoint: w.endpoint.clone(),
                role: w.role,
                overlap_blocks: overlaps.of(&k),
                cached_blocks: overlaps.tree_size(&k),
                replica_load: l.map(|r| r.replicas),
                kv_used_blocks: l.and_then(|r| r.kv_used_blocks),
                active_decode_blocks: l.and_then(|r| r.active_decode_blocks),
                active_prefill_tokens: l.and_then(|r| r.active_prefill_tokens),
            }
        })
        .collect();
    let (decision, error, explain) = match &decision {
        Ok(d) => (
            Some(DecisionRow {
                mode: d.mode.as_str(),
                decode: PickRow::of(&d.decode),
                prefill: d.prefill.as_ref().map(PickRow::of),
                decode_candidates: CandidateRow::all(&d.explain.decode, d.explain.decode_chosen),
                prefill_candidates: CandidateRow::all(&d.explain.prefill, d.explain.prefill_chosen),
                busy: d.explain.busy.clone(),
            }),
            None,
            d.explain.to_string(),
        ),
        Err(e) => (None, Some(e.to_string()), format!("no decision: {e}")),
    };
    let report = Report {
        model: args.model.clone(),
        block_size,
        prompt_tokens: out.token_ids.len(),
        complete: out.complete,
        cache_salt: salt,
        block_hashes: hashes.local,
        sequence_hashes: hashes.sequence,
        index_version: frame.to_version,
        source_age_ms: frame.source_age_ms,
        workers: rows,
        decision,
        error,
        explain,
    };
    if args.json {
        return Ok(serde_json::to_string_pretty(&report)?);
    }
    Ok(report.human())
}
