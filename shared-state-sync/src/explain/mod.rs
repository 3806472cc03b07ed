//! `explain`: how the filter would route one request right now. It runs the filter's own
//! engine (`kvgate-engine`) natively — the same parse, template, tokenizer, block
//! hashes, overlaps and cost formula as in Envoy — on a snapshot fetched from the sidecar
//! (`/v1/sync?epoch=0&since=0`), with the sidecar's loads (other replicas and worker
//! reports). It books nothing.

mod report;

pub use report::Report;
use report::{CandidateRow, DecisionRow, PickRow, WorkerRow};

use crate::cli::ExplainArgs;
use crate::client::{self, query_escape, Target};
use crate::models::read_model;
use crate::settings::{load_config, process_env};
use crate::time::now_ms;
use anyhow::{anyhow, bail, Context};
use kvgate_core::sync::{self, ModelFiles, SyncFrame};
use kvgate_engine::headers::RoutedPath;
use kvgate_engine::ledger::Others;
use kvgate_engine::{DecideInput, Early, Engine};
use serde_json::Value;

/// Largest snapshot accepted.
const MAX_FRAME: usize = 512 << 20;

/// The sidecar API token: `--api-token-file`, else `KVGATE_SIDECAR_TOKEN`.
fn api_token(args: &ExplainArgs) -> anyhow::Result<Option<String>> {
    let raw = match &args.api_token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading --api-token-file {}", p.display()))?,
        ),
        None => std::env::var("KVGATE_SIDECAR_TOKEN").ok(),
    };
    Ok(raw.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()))
}

async fn get(target: &Target, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Vec<u8>)> {
    let (status, body) =
        client::request_with_token(target, hyper::Method::GET, path, Vec::new(), token).await?;
    if status == 401 {
        bail!("the sidecar wants its API token: --api-token-file or KVGATE_SIDECAR_TOKEN");
    }
    Ok((status, body.to_vec()))
}

async fn snapshot(target: &Target, token: Option<&str>) -> anyhow::Result<SyncFrame> {
    let (status, body) = get(
        target,
        "/v1/sync?epoch=0&since=0&wait_ms=0&client=explain",
        token,
    )
    .await?;
    if status != 200 {
        bail!("sidecar answered {status} to /v1/sync");
    }
    Ok(sync::decode(&body, MAX_FRAME)?)
}

async fn model_files(
    args: &ExplainArgs,
    frame: &SyncFrame,
    target: &Target,
    token: Option<&str>,
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
    let (status, body) = get(target, &path, token).await?;
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
    let path = match args.endpoint.as_deref() {
        Some("chat") => RoutedPath::Chat,
        Some("completions") => RoutedPath::Completions,
        Some(other) => {
            bail!("invalid value for `--endpoint`: `{other}` is not chat or completions")
        }
        None => {
            let v: Value = serde_json::from_slice(&body).context("the request is not JSON")?;
            if v.get("messages").is_some() {
                RoutedPath::Chat
            } else {
                RoutedPath::Completions
            }
        }
    };
    let target = Target::parse(&args.sidecar)?;
    let token = api_token(args)?;
    let mut frame = snapshot(&target, token.as_deref()).await?;
    if let Some(bs) = args.block_size {
        for m in frame.models.iter_mut().flatten() {
            if m.name == args.model {
                m.block_size = bs;
            }
        }
    }
    let now = now_ms();
    let mut engine = Engine::new(cfg, 0, 0);
    engine.apply_frame(&frame, now)?;
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
        .or_else(|| {
            engine
                .fleet()
                .for_model(&args.model)
                .iter()
                .find_map(|w| w.block_size)
        })
        .unwrap_or(engine.cfg.router.block_size);
    let files = model_files(args, &frame, &target, token.as_deref(), block_size).await?;
    engine
        .load_model("explain", &files)
        .map_err(|e| anyhow!(e))?;

    let input = DecideInput {
        ctx: 1,
        path,
        body: &body,
        tenant: args.tenant.as_deref(),
        session: None,
        now_ms: now,
    };
    let mut prepared = match engine.prepare(&input) {
        Ok(p) => p,
        Err(Early::Reply(r)) => {
            bail!(
                "the filter would answer {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
        }
        Err(Early::Forward(reason)) => {
            bail!(
                "the filter would forward this request unrouted ({})",
                reason.as_str()
            )
        }
    };
    let decision = engine.choose(&mut prepared, &Others::default());

    let rows: Vec<WorkerRow> = prepared
        .workers
        .iter()
        .flat_map(|w| w.keys().map(move |k| (w, k)))
        .map(|(w, k)| {
            let l = engine.remote_load(&k);
            WorkerRow {
                worker_id: k.worker_id,
                dp_rank: k.dp_rank,
                endpoint: w.endpoint.clone(),
                role: w.role,
                overlap_blocks: prepared.overlaps.of(&k),
                cached_blocks: prepared.overlaps.tree_size(&k),
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
            match prepared.degraded {
                Some(why) => format!("{} | degraded={}", d.explain, why.as_str()),
                None => d.explain.to_string(),
            },
        ),
        Err(e) => (None, Some(e.to_string()), format!("no decision: {e}")),
    };
    let salt = args.tenant.clone().filter(|t| !t.is_empty());
    let report = Report {
        model: args.model.clone(),
        block_size: prepared.block_size,
        prompt_tokens: prepared.tokens.len(),
        complete: prepared.complete,
        cache_salt: salt,
        block_hashes: prepared.hashes.local,
        sequence_hashes: prepared.hashes.sequence,
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
