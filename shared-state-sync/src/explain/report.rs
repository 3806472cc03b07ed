//! What `explain` reports — hashes, per-worker overlaps and loads, every candidate's
//! cost terms and the choice — as JSON (serde) or text.

use kvgate_core::load::WorkerLoad;
use kvgate_core::route;
use kvgate_core::score::Scored;
use kvgate_core::workers::WorkerRole;
use kvgate_core::WorkerKey;
use serde::Serialize;

/// One (worker, dp rank) of the model.
#[derive(Debug, Serialize)]
pub struct WorkerRow {
    pub(super) worker_id: u64,
    pub(super) dp_rank: u32,
    pub(super) endpoint: String,
    pub(super) role: WorkerRole,
    pub(super) overlap_blocks: u32,
    pub(super) cached_blocks: u64,
    pub(super) replica_load: Option<WorkerLoad>,
    pub(super) kv_used_blocks: Option<u64>,
    pub(super) active_decode_blocks: Option<u64>,
    pub(super) active_prefill_tokens: Option<u64>,
}

/// A chosen worker.
#[derive(Debug, Serialize)]
pub struct PickRow {
    pub(super) worker_id: u64,
    pub(super) dp_rank: u32,
    pub(super) endpoint: String,
    pub(super) overlap_blocks: u32,
}

impl PickRow {
    pub(super) fn of(p: &route::Pick) -> PickRow {
        PickRow {
            worker_id: p.worker.worker_id,
            dp_rank: p.worker.dp_rank,
            endpoint: p.endpoint.clone(),
            overlap_blocks: p.overlap_blocks,
        }
    }
}

/// One scored candidate: the formula with its numbers.
#[derive(Debug, Serialize)]
pub struct CandidateRow {
    pub(super) worker_id: u64,
    pub(super) dp_rank: u32,
    pub(super) overlap_blocks: u32,
    pub(super) prefill_blocks: f64,
    pub(super) credit_blocks: f64,
    pub(super) decode_blocks: f64,
    pub(super) logit: f64,
    pub(super) chosen: bool,
}

impl CandidateRow {
    pub(super) fn all(scored: &[Scored], chosen: Option<usize>) -> Vec<CandidateRow> {
        scored
            .iter()
            .enumerate()
            .map(|(i, s)| CandidateRow {
                worker_id: s.candidate.worker.worker_id,
                dp_rank: s.candidate.worker.dp_rank,
                overlap_blocks: s.candidate.overlap_blocks,
                prefill_blocks: s.prefill_blocks,
                credit_blocks: s.credit_blocks,
                decode_blocks: s.decode_blocks,
                logit: s.logit,
                chosen: Some(i) == chosen,
            })
            .collect()
    }
}

/// The decision.
#[derive(Debug, Serialize)]
pub struct DecisionRow {
    pub(super) mode: &'static str,
    pub(super) decode: PickRow,
    pub(super) prefill: Option<PickRow>,
    pub(super) decode_candidates: Vec<CandidateRow>,
    pub(super) prefill_candidates: Vec<CandidateRow>,
    pub(super) busy: Vec<WorkerKey>,
}

/// Everything `explain` reports.
#[derive(Debug, Serialize)]
pub struct Report {
    pub(super) model: String,
    pub(super) block_size: u32,
    pub(super) prompt_tokens: usize,
    pub(super) complete: bool,
    pub(super) cache_salt: Option<String>,
    pub(super) block_hashes: Vec<u64>,
    pub(super) sequence_hashes: Vec<u64>,
    pub(super) index_version: u64,
    pub(super) source_age_ms: u64,
    pub(super) workers: Vec<WorkerRow>,
    pub(super) decision: Option<DecisionRow>,
    pub(super) error: Option<String>,
    pub(super) explain: String,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

impl Report {
    /// The human-readable form.
    pub fn human(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let capped = if self.complete { "" } else { " (capped)" };
        let _ = writeln!(
            s,
            "model {}  block size {}  prompt tokens {}{capped}",
            self.model, self.block_size, self.prompt_tokens
        );
        if let Some(salt) = &self.cache_salt {
            let _ = writeln!(s, "cache salt {salt}");
        }
        let hashes: Vec<String> = self.block_hashes.iter().map(u64::to_string).collect();
        let _ = writeln!(s, "block hashes ({}): {}", hashes.len(), hashes.join(" "));
        let _ = writeln!(
            s,
            "index version {}, source age {} ms",
            self.index_version, self.source_age_ms
        );
        let _ = writeln!(s, "workers:");
        for w in &self.workers {
            let replica = w
                .replica_load
                .map(|l| {
                    format!(
                        "prefill {} decode {} requests {}",
                        l.prefill_tokens, l.decode_blocks, l.requests
                    )
                })
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "  {}/{} {} {:?}: overlap {} of {} blocks (holds {}); other replicas: {replica}; reported kv_used {} decode {} prefill {}",
                w.worker_id, w.dp_rank, w.endpoint, w.role, w.overlap_blocks, hashes.len(), w.cached_blocks,
                opt(w.kv_used_blocks), opt(w.active_decode_blocks), opt(w.active_prefill_tokens)
            );
        }
        if let Some(d) = &self.decision {
            for (title, rows) in [
                ("prefill candidates", &d.prefill_candidates),
                ("candidates", &d.decode_candidates),
            ] {
                if rows.is_empty() {
                    continue;
                }
                let _ = writeln!(s, "{title}:");
                for c in rows {
                    let _ = writeln!(
                        s,
                        "  {} {}/{}: overlap {}  max(0, prefill {:.2} - credit {:.2}) + decode {:.2} = logit {:.3}",
                        if c.chosen { "*" } else { " " },
                        c.worker_id, c.dp_rank, c.overlap_blocks, c.prefill_blocks, c.credit_blocks, c.decode_blocks, c.logit
                    );
                }
            }
            let _ = writeln!(
                s,
                "chosen: {}/{} at {} ({})",
                d.decode.worker_id, d.decode.dp_rank, d.decode.endpoint, d.mode
            );
            if let Some(p) = &d.prefill {
                let _ = writeln!(
                    s,
                    "prefill: {}/{} at {}",
                    p.worker_id, p.dp_rank, p.endpoint
                );
            }
        }
        if let Some(e) = &self.error {
            let _ = writeln!(s, "no decision: {e}");
        }
        let _ = write!(s, "explain: {}", self.explain);
        s
    }
}
