//! The report: `report.json` (every figure, the machine, the commit, the parameters) and
//! `report.md` (the tables printed at the end of a run, ready for the README).

use super::overhead::{OverheadReport, STAGES};
use super::quality::QualityReport;
use super::sidecar::SidecarReport;
use super::sys::MachineInfo;
use super::trace::TraceSummary;
use super::{BenchConfig, Result};
use serde::Serialize;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Report layout version.
    pub schema: u32,
    /// Unix seconds when the run started.
    pub generated_at_unix: u64,
    /// The command line.
    pub command: String,
    /// Wall seconds of the whole run.
    pub elapsed_s: f64,
    /// Wall seconds per phase (start, quality, overhead, sidecar).
    pub phase_seconds: std::collections::BTreeMap<String, f64>,
    /// The machine.
    pub machine: MachineInfo,
    /// Every parameter of the run.
    pub parameters: Value,
    /// The replayed slice of the trace.
    pub trace: TraceSummary,
    /// Routing quality per policy.
    pub quality: Option<QualityReport>,
    /// Gateway overhead per body size.
    pub overhead: Option<OverheadReport>,
    /// Event ingest and visibility lag.
    pub sidecar: Option<SidecarReport>,
}

impl Report {
    /// An empty report for `cfg` on `machine`.
    pub fn new(cfg: &BenchConfig, machine: MachineInfo) -> Self {
        let policies: Vec<&str> = cfg.policies.iter().map(|p| p.name()).collect();
        Report {
            schema: 1,
            generated_at_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            command: cfg.command.clone(),
            elapsed_s: 0.0,
            phase_seconds: Default::default(),
            machine,
            parameters: json!({
                "trace": cfg.trace.display().to_string(),
                "workers": cfg.workers,
                "speedup": cfg.speedup,
                "load": cfg.load,
                "trace_seconds": cfg.trace_seconds,
                "max_requests": cfg.max_requests,
                "max_output_tokens": cfg.max_output_tokens,
                "num_gpu_blocks": cfg.num_gpu_blocks,
                "block_size": 16,
                "chat_rate": cfg.chat_rate,
                "think_ms": cfg.think_ms,
                "policies": policies,
                "seed": cfg.seed,
                "envoy_concurrency": cfg.envoy_concurrency,
                "overhead": {
                    "seconds": cfg.overhead.seconds,
                    "warmup_s": cfg.overhead.warmup_s,
                    "concurrency": cfg.overhead.concurrency,
                    "body_tokens": cfg.overhead.body_tokens,
                    "upstreams": cfg.overhead.upstreams,
                    "warm": cfg.overhead.warm,
                },
                "sidecar": {
                    "events": cfg.sidecar.events,
                    "blocks_per_event": cfg.sidecar.blocks_per_event,
                    "lag_samples": cfg.sidecar.lag_samples,
                    "lag_timeout_ms": cfg.sidecar.lag_timeout_ms,
                },
            }),
            trace: TraceSummary::default(),
            quality: None,
            overhead: None,
            sidecar: None,
        }
    }

    /// Writes `report.json` and `report.md` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(self)? + "\n",
        )?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        Ok(())
    }

    /// The tables, as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "Machine: {} × {}, {} MiB; load average {:.2} → {:.2}; commit {}{}; {:.0} s.\n",
            m.nproc,
            if m.cpu_model.is_empty() {
                "CPU"
            } else {
                &m.cpu_model
            },
            m.memory_mib,
            m.loadavg_start,
            m.loadavg_end,
            m.git_commit.get(..12).unwrap_or(&m.git_commit),
            if m.git_dirty { " (dirty)" } else { "" },
            self.elapsed_s,
        );
        if let Some(q) = &self.quality {
            let t = &self.trace;
            let _ = writeln!(
                s,
                "**Routing quality** — {} `{}`: {} requests over {:.0} trace-seconds (mean prompt {:.0} tokens, infinite-cache hit ceiling {:.1}%), {} mock engines × {} KV blocks, time scale ×{} (load ×{}), output ≤ {} tokens. TTFT is engine-side (admission queue + prefill, from the engines' request logs) in trace ms; e2e is the client's wall ms.\n",
                t.format,
                Path::new(&t.path).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
                t.requests,
                t.span_s,
                t.mean_input_tokens,
                t.infinite_cache_hit_ratio * 100.0,
                q.workers,
                q.num_gpu_blocks,
                q.speedup,
                q.load,
                q.max_output_tokens,
            );
            s.push_str("| policy | hit ratio | TTFT p50 | TTFT p99 | e2e p50 (wall) | e2e p99 (wall) | req/s | load max/min | errors |\n");
            s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for p in &q.policies {
                let _ = writeln!(
                    s,
                    "| {} | {:.1}% | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
                    p.name,
                    p.hit_ratio * 100.0,
                    p.ttft_p50_ms,
                    p.ttft_p99_ms,
                    p.e2e_p50_ms,
                    p.e2e_p99_ms,
                    p.throughput_rps,
                    p.load_spread_max_min,
                    p.errors
                );
            }
            s.push('\n');
        }
        if let Some(o) = &self.overhead {
            let _ = writeln!(
            crate::sweep::tables::markdown(&mut s, q);
                s,
                "**Gateway overhead** — Envoy + kvgate vs plain Envoy, same upstream, closed loop with {} in flight, {} s measured after {} s warm-up, {} Envoy worker threads ({} Wasm VMs). Every request's messages are new (no segment-cache hit).\n",
                o.concurrency, o.seconds, o.warmup_s, o.envoy_concurrency, o.vms
            );
            s.push_str("| body | plain Envoy req/s | + kvgate req/s (ratio) | added latency p50 / p99 | Envoy CPU per request | multi-turn (warm) req/s (ratio) | warm added p50 / p99 | memory per VM |\n");
            s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
            for b in &o.bodies {
                let warm = match &b.kvgate_warm {
                    Some(w) => format!(
                        "{:.0} ({:.2}) | {:.0} / {:.0} µs",
                        w.rps,
                        b.rps_ratio_warm.unwrap_or(0.0),
                        b.added_latency_p50_us_warm.unwrap_or(0.0),
                        b.added_latency_p99_us_warm.unwrap_or(0.0)
                    ),
                    None => "– | –".to_string(),
                };
                let _ = writeln!(
                    s,
                    "| {} ({} tokens, {} KiB) | {:.0} | {:.0} ({:.2}) | {:.0} / {:.0} µs | {:.0} → {:.0} µs | {} | {:.1} MiB |",
                    b.label,
                    b.body_tokens,
                    b.body_bytes / 1024,
                    b.baseline.rps,
                    b.kvgate.rps,
                    b.rps_ratio,
                    b.added_latency_p50_us,
                    b.added_latency_p99_us,
                    b.baseline.cpu_us_per_request,
                    b.kvgate.cpu_us_per_request,
                    warm,
                    b.memory_per_vm_mib
                );
            }
            s.push_str("\n**In-VM breakdown** (µs, p50 / p99, the filter's own histograms)\n\n");
            s.push_str("| body | parse | template | tokenize | hash | score | whole decision |\n");
            s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
            for b in &o.bodies {
                let rows = [("", &b.breakdown), (" warm", &b.breakdown_warm)];
                for (suffix, br) in rows {
                    if br.is_empty() {
                        continue;
                    }
                    let _ = write!(s, "| {}{suffix} ", b.label);
                    for stage in STAGES {
                        let q = br.get(stage).copied().unwrap_or_default();
                        let _ = write!(s, "| {:.0} / {:.0} ", q.p50, q.p99);
                    }
                    s.push_str("|\n");
                }
            }
            if let Some(q) = o
                .bodies
                .iter()
                .find_map(|b| b.breakdown.get(super::overhead::MODEL_LOAD))
            {
                let _ = write!(
                    s,
                    "\nVM start: loading the model (tokenizer.json + chat template) takes \
                     {:.0} ms p50, {:.0} ms p99 per VM (`kvgate.model_load_ms`).\n",
                    q.p50, q.p99
                );
            }
            s.push('\n');
        }
        if let Some(c) = &self.sidecar {
            let _ = writeln!(
                s,
                "**Sidecar** — {} KV events ({} blocks each) ingested: {:.0} events/s wall, {:.0} events/s per core of the sidecar. Event → decision visibility lag over {} samples: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} timeouts; target p99 ≤ {:.0} ms), of which NATS + JetStream + the sidecar applying it: p50 {:.1} ms, p99 {:.1} ms.\n",
                c.events,
                c.blocks_per_event,
                c.events_per_s,
                c.events_per_s_per_core,
                c.lag_samples,
                c.lag_p50_ms,
                c.lag_p99_ms,
                c.lag_max_ms,
                c.lag_timeouts,
                c.lag_target_p99_ms,
                c.apply_lag_p50_ms,
                c.apply_lag_p99_ms
            );
        }
        if !self.command.is_empty() {
            let _ = writeln!(s, "Made by `{}`.", self.command);
        }
        s
    }
}

/// What is wrong with a written report (empty when every expected field is present,
/// finite and in range). `policies` are the policy names the run was asked for.
pub fn validate(v: &Value, policies: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    let mut num =
        |v: &Value, path: &str, lo: f64, hi: f64| match v.pointer(path).and_then(Value::as_f64) {
            Some(x) if x.is_finite() && x >= lo && x <= hi => x,
            Some(x) => {
                bad.push(format!("{path} = {x} is outside [{lo}, {hi}]"));
                x
            }
            None => {
                bad.push(format!("{path} is missing or not a number"));
                f64::NAN
            }
        };
    let inf = f64::INFINITY;
    num(v, "/machine/nproc", 1.0, inf);
    num(v, "/elapsed_s", 0.0, inf);
    let mut problems = Vec::new();
    if v.pointer("/machine/git_commit")
        .and_then(Value::as_str)
        .is_none()
    {
        problems.push("/machine/git_commit is missing".to_string());
    }
    if !policies.is_empty() {
        let list = v
            .pointer("/quality/policies")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for name in policies {
            let Some(i) = list.iter().position(|p| p["name"] == *name) else {
                problems.push(format!("quality.policies has no `{name}`"));
                continue;
            };
            let p = format!("/quality/policies/{i}");
            num(v, &format!("{p}/hit_ratio"), 0.0, 1.0);
            let p50 = num(v, &format!("{p}/ttft_p50_ms"), 0.0, inf);
            let p99 = num(v, &format!("{p}/ttft_p99_ms"), 0.0, inf);
            if p99 < p50 {
                problems.push(format!("{p}: ttft_p99_ms < ttft_p50_ms"));
            }
            num(v, &format!("{p}/e2e_p99_ms"), 0.0, inf);
            num(v, &format!("{p}/throughput_rps"), 1e-9, inf);
            num(v, &format!("{p}/requests"), 1.0, inf);
            num(v, &format!("{p}/errors"), 0.0, 0.0);
            num(v, &format!("{p}/load_spread_cv"), 0.0, inf);
        }
    }
    if v.get("overhead").is_some_and(|o| !o.is_null()) {
        let bodies = v
            .pointer("/overhead/bodies")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        if bodies == 0 {
            problems.push("overhead.bodies is empty".into());
        }
        for i in 0..bodies {
            let b = format!("/overhead/bodies/{i}");
            num(v, &format!("{b}/rps_ratio"), 1e-9, inf);
            num(v, &format!("{b}/added_latency_p50_us"), -inf, inf);
            num(v, &format!("{b}/added_latency_p99_us"), -inf, inf);
            num(v, &format!("{b}/baseline/rps"), 1e-9, inf);
            num(v, &format!("{b}/kvgate/rps"), 1e-9, inf);
            num(v, &format!("{b}/kvgate/cpu_us_per_request"), 0.0, inf);
            num(v, &format!("{b}/memory_per_vm_mib"), -inf, inf);
            for stage in STAGES {
                num(v, &format!("{b}/breakdown/{stage}/p50"), 0.0, inf);
            }
        }
    }
    if v.get("sidecar").is_some_and(|s| !s.is_null()) {
        num(v, "/sidecar/events_per_s", 1e-9, inf);
        num(v, "/sidecar/events_per_s_per_core", 1e-9, inf);
        let samples = num(v, "/sidecar/lag_samples", 1.0, inf);
        num(v, "/sidecar/lag_timeouts", 0.0, (samples - 1.0).max(0.0));
        let p50 = num(v, "/sidecar/lag_p50_ms", 0.0, inf);
        let p99 = num(v, "/sidecar/lag_p99_ms", 0.0, inf);
        if p99 < p50 {
            problems.push("sidecar: lag_p99_ms < lag_p50_ms".into());
        }
    }
    bad.extend(problems);
    bad
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use crate::quality::PolicyResult;

    #[test]
    fn validate_flags_missing_and_out_of_range_fields() {
        let cfg = BenchConfig::new(Path::new("t.jsonl"), Path::new("out"));
        let machine = MachineInfo {
            nproc: 2,
            git_commit: "abc".into(),
            ..MachineInfo::default()
        };
        let mut r = Report::new(&cfg, machine);
        r.quality = Some(QualityReport {
            policies: vec![PolicyResult {
                name: "round_robin".into(),
                requests: 3,
                hit_ratio: 0.5,
                ttft_p50_ms: 1.0,
                ttft_p99_ms: 2.0,
                e2e_p99_ms: 3.0,
                throughput_rps: 1.0,
                ..PolicyResult::default()
            }],
            ..QualityReport::default()
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(validate(&v, &["round_robin"]), Vec::<String>::new());
        assert_eq!(validate(&v, &["round_robin", "oracle"]).len(), 1);
        assert!(r.markdown().contains("| round_robin | 50.0% |"));
        if let Some(q) = r.quality.as_mut() {
            q.policies[0].hit_ratio = 1.5;
            q.policies[0].errors = 1;
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(validate(&v, &["round_robin"]).len(), 2);
    }
}
