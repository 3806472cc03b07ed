//! The virtual-time sweep in the report: its Markdown tables and the smoke run's
//! completeness check of its JSON.

use crate::quality::QualityReport;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

/// Problems with the virtual-time sweep of a report (`quality.sweep`, `quality.capacity`,
/// `quality.targets`): every point has every policy of `policies` with finite figures in
/// range. Empty when complete.
pub fn validate(v: &Value, policies: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    let points = v
        .pointer("/quality/sweep")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if points.is_empty() {
        bad.push("quality.sweep is missing or empty".to_string());
    }
    let in_range = |x: &Value, key: &str, lo: f64, hi: f64| {
        x.get(key)
            .and_then(Value::as_f64)
            .is_some_and(|f| f.is_finite() && f >= lo && f <= hi)
    };
    let check_policy = |p: &Value, at: &str, bad: &mut Vec<String>| {
        for (key, lo, hi) in [
            ("ttft_p50_ms", 0.0, f64::MAX),
            ("ttft_p50_ci95_ms", 0.0, f64::MAX),
            ("ttft_p99_ms", 0.0, f64::MAX),
            ("hit_ratio", 0.0, 1.0),
        ] {
            if !in_range(p, key, lo, hi) {
                bad.push(format!("{at}: {key} missing or out of range"));
            }
        }
        let p50 = p["ttft_p50_ms"].as_f64().unwrap_or(0.0);
        if p["ttft_p99_ms"].as_f64().unwrap_or(0.0) < p50 || p50 <= 0.0 {
            bad.push(format!("{at}: TTFT p50 not positive or above p99"));
        }
    };
    for (i, pt) in points.iter().enumerate() {
        let at = format!("quality.sweep[{i}]");
        for (key, lo, hi) in [
            ("workers", 1.0, f64::MAX),
            ("load", 1e-9, f64::MAX),
            ("utilization", 1e-9, 1.0),
            ("seeds", 1.0, f64::MAX),
        ] {
            if !in_range(pt, key, lo, hi) {
                bad.push(format!("{at}: {key} missing or out of range"));
            }
        }
        let list = pt["policies"].as_array().cloned().unwrap_or_default();
        for name in policies {
            match list.iter().find(|p| p["name"] == *name) {
                Some(p) => check_policy(p, &format!("{at} {name}"), &mut bad),
                None => bad.push(format!("{at} has no `{name}`")),
            }
        }
    }
    let capacity = v
        .pointer("/quality/capacity")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if capacity.len() < 2 {
        bad.push("quality.capacity has fewer than two pool sizes".to_string());
    }
    for (i, c) in capacity.iter().enumerate() {
        for p in c["policies"].as_array().cloned().unwrap_or_default() {
            check_policy(&p, &format!("quality.capacity[{i}]"), &mut bad);
        }
    }
    if v.pointer("/quality/targets")
        .and_then(Value::as_array)
        .is_none_or(|t| t.is_empty())
    {
        bad.push("quality.targets is missing or empty".to_string());
    }
    bad
}

/// The virtual-time sweep's tables: TTFT p50 ± 95 % and p99 per policy and load (one
/// table per worker count), the capacity sweep, the real-vs-virtual agreement, targets.
pub fn markdown(s: &mut String, q: &QualityReport) {
    if let Some(st) = &q.sweep_setup {
        let _ = writeln!(
            s,
            "**Load sweep (virtual time)** — `{}`, {:.0} trace-seconds from {:.0} s in ({} requests per run), {} KV blocks per engine, output ≤ {} tokens, {} seeds per point, loads per 4 engines (×N/4 with N engines), kvgate as {} engine VMs with KV events {:.0} ms late and router keys `{}`; {} runs in {:.0} s on {} threads. Engine-side TTFT (queue + prefill) in trace ms: p50 ± 95 % interval / p99; utilisation = mean engine busy share under round_robin.\n",
            Path::new(&st.trace).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
            st.trace_seconds,
            st.trace_start_s,
            st.requests,
            st.num_gpu_blocks,
            st.max_output_tokens,
            q.sweep.first().map_or(0, |p| p.seeds),
            st.vms,
            st.event_delay_ms,
            st.router,
            st.runs,
            st.elapsed_s,
            st.threads,
        );
    }
    let mut workers: Vec<usize> = q.sweep.iter().map(|p| p.workers).collect();
    workers.sort_unstable();
    workers.dedup();
    for w in workers {
        let pts: Vec<&crate::sweep::SweepPoint> =
            q.sweep.iter().filter(|p| p.workers == w).collect();
        let _ = write!(s, "| {w} engines |");
        for p in &pts {
            let _ = write!(s, " ×{} ({:.0}% busy) |", p.load, p.utilization * 100.0);
        }
        s.push_str("\n|---|");
        for _ in &pts {
            s.push_str("---:|");
        }
        s.push('\n');
        let names: Vec<String> = pts
            .first()
            .map(|p| p.policies.iter().map(|x| x.name.clone()).collect())
            .unwrap_or_default();
        for name in names {
            let _ = write!(s, "| {name} |");
            for p in &pts {
                match p.policies.iter().find(|x| x.name == name) {
                    Some(x) => {
                        let _ = write!(
                            s,
                            " {:.0} ± {:.0} / {:.0} · {:.0}% |",
                            x.ttft_p50_ms,
                            x.ttft_p50_ci95_ms,
                            x.ttft_p99_ms,
                            x.hit_ratio * 100.0
                        );
                    }
                    None => s.push_str(" – |"),
                }
            }
            s.push('\n');
        }
        s.push('\n');
    }
    if !q.capacity.is_empty() {
        s.push_str("**Hit ratio vs KV capacity (virtual time)** — mean ± 95 %.\n\n| blocks per engine | engines | load |");
        let names: Vec<String> = q
            .capacity
            .first()
            .map(|c| c.policies.iter().map(|x| x.name.clone()).collect())
            .unwrap_or_default();
        for n in &names {
            let _ = write!(s, " {n} |");
        }
        s.push_str("\n|---:|---:|---:|");
        for _ in &names {
            s.push_str("---:|");
        }
        s.push('\n');
        for c in &q.capacity {
            let _ = write!(s, "| {} | {} | ×{} |", c.num_gpu_blocks, c.workers, c.load);
            for x in &c.policies {
                let _ = write!(
                    s,
                    " {:.1}% ± {:.1} |",
                    x.hit_ratio * 100.0,
                    x.hit_ratio_ci95 * 100.0
                );
            }
            s.push('\n');
        }
        s.push('\n');
    }
    if !q.agreement.is_empty() {
        s.push_str("**Real stack vs virtual time** — the same replay through Envoy + kvgate.wasm + kvgate-sync + NATS + mock-worker processes, against the virtual-time runs: their mean ± the 95 % prediction interval of one more run (t·s·√(1 + 1/n) over the seeds; the real run is one draw, so the mean's narrower interval would not fit it).\n\n| policy | engines | load | real TTFT p50 | virtual p50 ± 95 % PI | real hit | virtual hit ± 95 % PI | agree |\n|---|---:|---:|---:|---:|---:|---:|---|\n");
        for a in &q.agreement {
            let _ = writeln!(
                s,
                "| {} | {} | ×{} | {:.0} | {:.0} ± {:.0} | {:.1}% | {:.1}% ± {:.1} | {} |",
                a.policy,
                a.workers,
                a.load,
                a.real_ttft_p50_ms,
                a.virtual_ttft_p50_ms,
                a.virtual_ttft_p50_pi95_ms,
                a.real_hit_ratio * 100.0,
                a.virtual_hit_ratio * 100.0,
                a.virtual_hit_ratio_pi95 * 100.0,
                if a.agree { "yes" } else { "no" }
            );
        }
        s.push('\n');
    }
    if !q.targets.is_empty() {
        s.push_str("**Issue 13 targets (virtual time)**\n\n");
        for t in &q.targets {
            let _ = writeln!(
                s,
                "- {} {} — {}",
                if t.holds { "✔" } else { "✘" },
                t.target,
                t.detail
            );
        }
        s.push('\n');
    }
}
