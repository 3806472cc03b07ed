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
                "workers": cfg.real_workers,
                "real_policies_extra": cfg
                    .real_policies_extra
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
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
                    "multi_turn": cfg.overhead.multi_turn,
                    "agentic": cfg.overhead.agentic,
                    "loads": cfg.overhead.loads,
                    "pin": cfg.overhead.pin,
                    "epp": cfg.overhead.epp,
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
            let runs: Vec<String> = q
                .runs
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let which = if i == 0 {
                        "every policy".to_string()
                    } else {
                        r.policies
                            .iter()
                            .map(|p| p.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    format!("{} mock engines at load ×{} ({which})", r.workers, r.load)
                })
                .collect();
            let _ = writeln!(
                s,
                "**Routing quality** — {} `{}`: {} requests over {:.0} trace-seconds (mean prompt {:.0} tokens, infinite-cache hit ceiling {:.1}%); {}, the same load per engine; {} KV blocks per engine, time scale ×{}, output ≤ {} tokens. TTFT is engine-side (admission queue + prefill, from the engines' request logs) in trace ms; e2e is the client's wall ms.\n",
                t.format,
                Path::new(&t.path).file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default(),
                t.requests,
                t.span_s,
                t.mean_input_tokens,
                t.infinite_cache_hit_ratio * 100.0,
                if runs.is_empty() {
                    "no replay".to_string()
                } else {
                    runs.join("; ")
                },
                q.num_gpu_blocks,
                q.speedup,
                q.max_output_tokens,
            );
            s.push_str("| policy | engines | load | hit ratio | TTFT p50 | TTFT p99 | e2e p50 (wall) | e2e p99 (wall) | req/s | load max/min | errors |\n");
            s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for p in &q.policies {
                let _ = writeln!(
                    s,
                    "| {} | {} | ×{} | {:.1}% | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
                    p.name,
                    p.workers,
                    p.load,
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
            crate::sweep::tables::markdown(&mut s, q);
        }
        if let Some(o) = &self.overhead {
            overhead_markdown(&mut s, o);
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
/// finite and in range). `policies` are the (engines, policy name) rows the real-stack
/// replays were asked for.
pub fn validate(v: &Value, policies: &[(usize, &str)]) -> Vec<String> {
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
        for &(workers, name) in policies {
            let Some(i) = list
                .iter()
                .position(|p| p["name"] == name && p["workers"] == workers)
            else {
                problems.push(format!(
                    "quality.policies has no `{name}` with {workers} engines"
                ));
                continue;
            };
            let p = format!("/quality/policies/{i}");
            num(v, &format!("{p}/load"), 1e-9, inf);
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
        problems.extend(validate_overhead(v));
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

/// What is wrong with `quality.agreement`: a row for every (engines, policy) of `rows`
/// (the real-stack replays the virtual time models: no endpoint picker), with both sides'
/// TTFT p50 positive, hit ratios in [0, 1], intervals non-negative, seeds ≥ 1 and the
/// verdicts present. Whether they agree is a measurement, not checked.
pub fn validate_agreement(v: &Value, rows: &[(usize, &str)]) -> Vec<String> {
    let mut bad = Vec::new();
    let list = v
        .pointer("/quality/agreement")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for &(workers, name) in rows {
        let Some(a) = list
            .iter()
            .find(|a| a["policy"] == name && a["workers"] == workers)
        else {
            bad.push(format!(
                "quality.agreement has no `{name}` with {workers} engines"
            ));
            continue;
        };
        for (key, lo, hi) in [
            ("load", 1e-9, f64::INFINITY),
            ("real_ttft_p50_ms", 1e-9, f64::INFINITY),
            ("virtual_ttft_p50_ms", 1e-9, f64::INFINITY),
            ("virtual_ttft_p50_ci95_ms", 0.0, f64::INFINITY),
            ("virtual_ttft_p50_pi95_ms", 0.0, f64::INFINITY),
            ("real_hit_ratio", 0.0, 1.0),
            ("virtual_hit_ratio", 0.0, 1.0),
            ("virtual_hit_ratio_ci95", 0.0, 1.0),
            ("virtual_hit_ratio_pi95", 0.0, f64::INFINITY),
            ("seeds", 1.0, f64::INFINITY),
        ] {
            match a[key].as_f64() {
                Some(x) if x.is_finite() && x >= lo && x <= hi => {}
                _ => bad.push(format!(
                    "quality.agreement `{name}` with {workers} engines: {key} missing or outside [{lo}, {hi}]"
                )),
            }
        }
        for key in ["agree_ttft", "agree_hit", "agree"] {
            if !a[key].is_boolean() {
                bad.push(format!(
                    "quality.agreement `{name}` with {workers} engines: {key} missing"
                ));
            }
        }
    }
    bad
}

/// `µs` with no decimals, or `–`.
fn us(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x:.0}"))
}

/// MiB with one decimal, or `–`.
fn mib(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_string(), |x| format!("{x:.1}"))
}

/// The overhead tables.
fn overhead_markdown(s: &mut String, o: &OverheadReport) {
    let loads: Vec<String> = o
        .loads
        .iter()
        .map(|l| format!("{:.0}%", l * 100.0))
        .collect();
    let _ = writeln!(
        s,
        "**Gateway overhead** — Envoy + kvgate vs plain Envoy side by side, same upstream, {} Envoy worker threads ({} Wasm VMs), listener `exact_balance`, {} load-generator connections; {} s windows after {} s warm-up; load generator and upstream: {} builds, own processes. {}. Capacity = closed loop; latency = open loop at {} of the slowest gateway's capacity, the same rate for each (exact µs quantiles, timed from when each request was due). Added = kvgate − plain.\n",
        o.envoy_concurrency,
        o.vms,
        o.concurrency,
        o.seconds,
        o.warmup_s,
        if o.debug_build { "debug" } else { "release" },
        o.pinning.note,
        loads.join(" / "),
    );
    s.push_str("| body | tokens | plain req/s | + kvgate req/s (ratio) | Envoy CPU per request plain → kvgate | added CPU per request (range) |");
    for l in &loads {
        let _ = write!(s, " added p50 / p99 at {l} |");
    }
    s.push_str(" VM memory tokenizing / main |\n|---|---:|---:|---:|---:|---:|");
    for _ in &loads {
        s.push_str("---:|");
    }
    s.push_str("---:|\n");
    for b in &o.bodies {
        let tokens = if b.body_tokens_min != b.body_tokens {
            format!("{}–{}", b.body_tokens_min, b.body_tokens)
        } else {
            b.body_tokens.to_string()
        };
        let range = b
            .added_cpu_us_per_req_range
            .map(|[lo, hi]| format!(" ({lo:.0} … {hi:.0})"))
            .unwrap_or_default();
        let _ = write!(
            s,
            "| {} | {} | {:.0} | {:.0} ({:.2}) | {} → {} µs | {} µs{} |",
            b.label,
            tokens,
            b.capacity_plain.rps,
            b.capacity_kvgate.rps,
            b.capacity_ratio,
            us(b.plain_cpu_us_per_req),
            us(b.kvgate_cpu_us_per_req),
            us(b.added_cpu_us_per_req),
            range,
        );
        for l in &loads {
            let _ = write!(
                s,
                " {} / {} µs |",
                us(b.added_p50_us.get(l).copied()),
                us(b.added_p99_us.get(l).copied())
            );
        }
        let _ = writeln!(
            s,
            " {} / {} MiB |",
            mib(b.vm_linear_memory_mib),
            mib(b.main_vm_linear_memory_mib)
        );
    }
    let overloaded: Vec<String> = o
        .bodies
        .iter()
        .flat_map(|b| {
            b.levels
                .iter()
                .filter(|l| {
                    l.kvgate.overloaded
                        || l.plain.overloaded
                        || l.epp.as_ref().is_some_and(|e| e.overloaded)
                })
                .map(move |l| format!("{} at {}", b.label, l.load))
        })
        .collect();
    if !overloaded.is_empty() {
        let _ = writeln!(
            s,
            "\nOverloaded (achieved < 97 % of the target rate, latency grows over the window): {}.",
            overloaded.join(", ")
        );
    }
    epp_markdown(s, o, &loads);
    s.push_str(
        "\n**Latency** (µs, p50 / p99, open loop; plain Envoy → + kvgate)\n\n| body | rate |",
    );
    s.push_str(" plain | + kvgate |");
    if o.epp {
        s.push_str(" + EPP |\n|---|---:|---:|---:|---:|\n");
    } else {
        s.push_str("\n|---|---:|---:|---:|\n");
    }
    for b in &o.bodies {
        for l in &b.levels {
            let _ = write!(
                s,
                "| {} | {} ({:.0} req/s) | {:.0} / {:.0} | {:.0} / {:.0} |",
                b.label,
                l.load,
                l.rate_rps,
                l.plain.latency_us.p50,
                l.plain.latency_us.p99,
                l.kvgate.latency_us.p50,
                l.kvgate.latency_us.p99
            );
            if let Some(e) = l.epp.as_ref().filter(|_| o.epp) {
                let _ = write!(s, " {:.0} / {:.0} |", e.latency_us.p50, e.latency_us.p99);
            } else if o.epp {
                s.push_str(" – |");
            }
            s.push('\n');
        }
    }
    s.push_str("\n**In-VM breakdown** (µs, p50 / p99, the filter's own histograms)\n\n");
    s.push_str("| body | parse | template | tokenize | hash | score | whole decision |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    for b in &o.bodies {
        if b.breakdown.is_empty() {
            continue;
        }
        let _ = write!(s, "| {} ", b.label);
        for stage in STAGES {
            let q = b.breakdown.get(stage).copied().unwrap_or_default();
            let _ = write!(s, "| {:.0} / {:.0} ", q.p50, q.p99);
        }
        s.push_str("|\n");
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
    let _ = writeln!(
        s,
        "\nEnvoy RSS after each body (MiB, plain / + kvgate{}): {}.\n",
        if o.epp {
            " / + EPP Envoy + picker process"
        } else {
            ""
        },
        o.bodies
            .iter()
            .map(|b| {
                let epp = match (b.epp_rss_mib, b.picker_rss_mib) {
                    (Some(e), Some(p)) => format!(" / {e:.0} + {p:.0}"),
                    _ => String::new(),
                };
                format!(
                    "{} {:.0} / {:.0}{epp}",
                    b.label, b.plain_rss_mib, b.kvgate_rss_mib
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    for b in &o.bodies {
        let _ = writeln!(s, "- `{}`: {}", b.label, b.description);
    }
    s.push('\n');
}

/// The endpoint picker against the in-gateway filter, measured in the same run: capacity,
/// CPU per request (the picker's Envoy + the picker process: both are paid) and added
/// latency, each next to the filter's.
fn epp_markdown(s: &mut String, o: &OverheadReport, loads: &[String]) {
    if !o.epp {
        return;
    }
    let _ = writeln!(
        s,
        "\n**Endpoint picker (EPP) vs in-gateway filter** — the same bodies, rates and windows: Envoy + ext_proc to `kvgate-sync serve --epp` (`{}`, no NATS, the upstreams from a workers file; pinned with Envoy) against Envoy + kvgate.wasm. EPP CPU per request = its Envoy's + the picker process's (`/proc`, same window). Ratios are EPP / filter.\n",
        o.picker_bin
    );
    s.push_str("| body | req/s plain / filter / EPP | EPP / filter capacity | CPU per request filter | CPU per request EPP: Envoy + picker = total | added CPU filter → EPP (ratio) |");
    for l in loads {
        let _ = write!(s, " added p50 / p99 at {l}: filter → EPP |");
    }
    s.push_str(" picker routed / streams |\n|---|---:|---:|---:|---:|---:|");
    for _ in loads {
        s.push_str("---:|");
    }
    s.push_str("---:|\n");
    let ratio = |v: Option<f64>| v.map_or_else(|| "–".to_string(), |x| format!("{x:.2}"));
    for b in &o.bodies {
        let _ = write!(
            s,
            "| {} | {:.0} / {:.0} / {} | {} | {} µs | {} + {} = {} µs | {} → {} µs ({}) |",
            b.label,
            b.capacity_plain.rps,
            b.capacity_kvgate.rps,
            b.capacity_epp
                .as_ref()
                .map_or_else(|| "–".to_string(), |c| format!("{:.0}", c.rps)),
            ratio(b.epp_vs_filter_capacity_ratio),
            us(b.kvgate_cpu_us_per_req),
            us(b.epp_envoy_cpu_us_per_req),
            us(b.epp_picker_cpu_us_per_req),
            us(b.epp_cpu_us_per_req),
            us(b.added_cpu_us_per_req),
            us(b.epp_added_cpu_us_per_req),
            ratio(b.epp_vs_filter_added_cpu_ratio),
        );
        for l in loads {
            let _ = write!(
                s,
                " {} / {} → {} / {} µs |",
                us(b.added_p50_us.get(l).copied()),
                us(b.added_p99_us.get(l).copied()),
                us(b.epp_added_p50_us.get(l).copied()),
                us(b.epp_added_p99_us.get(l).copied())
            );
        }
        let _ = writeln!(s, " {} / {} |", us(b.picker_routed), us(b.picker_streams));
    }
}

/// What is wrong with the `overhead` part of a written report: every body has its
/// capacities, ratio, added CPU and added latency at every load level, finite and in
/// range (not a timing assertion: any speed passes), no failed request, and the in-VM
/// decision histogram; `vm_linear_memory_mib` is present (null when the filter does not
/// report its memory, else positive). Unless the run says `overhead.epp: false`, every
/// body also has the endpoint picker's figures: capacity and its ratios, Envoy + picker
/// CPU per request, added latency at every load level, no failed request, and requests the
/// picker actually routed.
pub fn validate_overhead(v: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let bodies = v
        .pointer("/overhead/bodies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if bodies.is_empty() {
        bad.push("overhead.bodies is empty".into());
    }
    let loads: Vec<String> = v
        .pointer("/overhead/loads")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_f64)
        .map(|l| format!("{:.0}%", l * 100.0))
        .collect();
    if loads.is_empty() {
        bad.push("overhead.loads is empty".into());
    }
    let inf = f64::INFINITY;
    let epp = v.pointer("/overhead/epp").and_then(Value::as_bool) != Some(false);
    for (i, b) in bodies.iter().enumerate() {
        let label = b["label"].as_str().unwrap_or("?").to_string();
        let mut found = Vec::new();
        let mut num = |path: &str, lo: f64, hi: f64| match b.pointer(path).and_then(Value::as_f64) {
            Some(x) if x.is_finite() && x >= lo && x <= hi => {}
            Some(x) => found.push(format!("{path} = {x} is outside [{lo}, {hi}]")),
            None => found.push(format!("{path} is missing or not a number")),
        };
        num("/body_tokens", 1.0, inf);
        num("/capacity_plain/rps", 1e-9, inf);
        num("/capacity_kvgate/rps", 1e-9, inf);
        num("/capacity_ratio", 1e-9, inf);
        num("/added_cpu_us_per_req", -inf, inf);
        num("/plain_cpu_us_per_req", 1e-9, inf);
        num("/kvgate_cpu_us_per_req", 1e-9, inf);
        num("/capacity_plain/errors", 0.0, 0.0);
        num("/capacity_kvgate/errors", 0.0, 0.0);
        num("/breakdown/decision_us/p50", 1e-9, inf);
        num("/kvgate_rss_mib", 1e-9, inf);
        for l in &loads {
            num(&format!("/added_p50_us/{l}"), -inf, inf);
            num(&format!("/added_p99_us/{l}"), -inf, inf);
        }
        if epp {
            num("/capacity_epp/rps", 1e-9, inf);
            num("/capacity_epp/errors", 0.0, 0.0);
            num("/epp_capacity_ratio", 1e-9, inf);
            num("/epp_vs_filter_capacity_ratio", 1e-9, inf);
            num("/epp_envoy_cpu_us_per_req", 1e-9, inf);
            num("/epp_picker_cpu_us_per_req", 1e-9, inf);
            num("/epp_cpu_us_per_req", 1e-9, inf);
            num("/epp_added_cpu_us_per_req", -inf, inf);
            num("/picker_routed", 1.0, inf);
            num("/epp_rss_mib", 1e-9, inf);
            num("/picker_rss_mib", 1e-9, inf);
            for l in &loads {
                num(&format!("/epp_added_p50_us/{l}"), -inf, inf);
                num(&format!("/epp_added_p99_us/{l}"), -inf, inf);
            }
        }
        let sides: &[&str] = if epp {
            &["plain", "kvgate", "epp"]
        } else {
            &["plain", "kvgate"]
        };
        for (j, _) in b["levels"].as_array().into_iter().flatten().enumerate() {
            for side in sides {
                num(&format!("/levels/{j}/{side}/errors"), 0.0, 0.0);
                num(&format!("/levels/{j}/{side}/requests"), 1.0, inf);
                num(&format!("/levels/{j}/{side}/latency_us/p50"), 1e-9, inf);
            }
        }
        match b.get("vm_linear_memory_mib") {
            None | Some(Value::Null) => {}
            Some(_) => num("/vm_linear_memory_mib", 1e-9, inf),
        }
        if b.get("vm_linear_memory_mib").is_none() {
            found.push("vm_linear_memory_mib is missing".into());
        }
        if b["levels"].as_array().map_or(0, Vec::len) != loads.len() {
            found.push(format!(
                "has {} load levels, not {}",
                b["levels"].as_array().map_or(0, Vec::len),
                loads.len()
            ));
        }
        bad.extend(
            found
                .into_iter()
                .map(|f| format!("overhead.bodies[{i}] ({label}): {f}")),
        );
    }
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
        let row = |workers: usize, load: f64| PolicyResult {
            name: "round_robin".into(),
            workers,
            load,
            requests: 3,
            hit_ratio: 0.5,
            ttft_p50_ms: 1.0,
            ttft_p99_ms: 2.0,
            e2e_p99_ms: 3.0,
            throughput_rps: 1.0,
            ..PolicyResult::default()
        };
        r.quality = Some(QualityReport {
            runs: cfg.real_runs(),
            policies: vec![row(4, 1.0), row(8, 2.0)],
            ..QualityReport::default()
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            validate(&v, &[(4, "round_robin"), (8, "round_robin")]),
            Vec::<String>::new()
        );
        assert_eq!(validate(&v, &[(4, "round_robin"), (4, "oracle")]).len(), 1);
        // A row of another engine count does not stand in for the one asked for.
        assert_eq!(validate(&v, &[(2, "round_robin")]).len(), 1);
        let md = r.markdown();
        assert!(md.contains("| round_robin | 4 | ×1 | 50.0% |"), "{md}");
        assert!(md.contains("| round_robin | 8 | ×2 | 50.0% |"), "{md}");
        assert!(
            md.contains("4 mock engines at load ×1 (every policy); 8 mock engines at load ×2 (round_robin, kvgate_approx, kvgate_events)"),
            "{md}"
        );
        if let Some(q) = r.quality.as_mut() {
            q.policies[1].hit_ratio = 1.5;
            q.policies[1].errors = 1;
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(validate(&v, &[(4, "round_robin")]), Vec::<String>::new());
        assert_eq!(validate(&v, &[(8, "round_robin")]).len(), 2);
    }

    /// Agreement rows: one per (engines, policy) asked for, with both sides' figures.
    #[test]
    fn validate_agreement_needs_every_engine_count() {
        use crate::quality::Agreement;
        let cfg = BenchConfig::new(Path::new("t.jsonl"), Path::new("out"));
        let mut r = Report::new(&cfg, MachineInfo::default());
        let row = |workers: usize, load: f64| Agreement {
            policy: "kvgate_events".into(),
            workers,
            load,
            real_ttft_p50_ms: 160.0,
            virtual_ttft_p50_ms: 150.0,
            virtual_ttft_p50_ci95_ms: 12.0,
            virtual_ttft_p50_pi95_ms: 24.0,
            real_hit_ratio: 0.14,
            virtual_hit_ratio: 0.13,
            virtual_hit_ratio_ci95: 0.01,
            virtual_hit_ratio_pi95: 0.02,
            seeds: 3,
            agree_ttft: true,
            agree_hit: true,
            agree: true,
        };
        r.quality = Some(QualityReport {
            agreement: vec![row(4, 1.0), row(8, 2.0)],
            ..QualityReport::default()
        });
        let check = |r: &Report, rows: &[(usize, &str)]| {
            validate_agreement(&serde_json::to_value(r).unwrap(), rows)
        };
        let both = [(4, "kvgate_events"), (8, "kvgate_events")];
        assert_eq!(check(&r, &both), Vec::<String>::new());
        assert_eq!(check(&r, &[(8, "round_robin")]).len(), 1);
        let q = r.quality.as_mut().unwrap();
        q.agreement.truncate(1);
        assert_eq!(check(&r, &both).len(), 1);
        let q = r.quality.as_mut().unwrap();
        q.agreement[0].virtual_ttft_p50_ms = 0.0;
        q.agreement[0].real_hit_ratio = 1.2;
        assert_eq!(check(&r, &both[..1]).len(), 2);
        let md = r.markdown();
        assert!(md.contains("| kvgate_events | 4 | ×1 | 160 |"), "{md}");
    }

    /// The overhead part: a complete body passes; a missing load level, a failed request,
    /// a missing decision histogram and a non-positive memory figure are each flagged; a
    /// null memory figure (the filter does not report it) is accepted.
    #[test]
    fn validate_overhead_fields() {
        use crate::loadgen::{Latency, LoadResult};
        use crate::overhead::{BodyResult, Level, OverheadReport, Quantiles};
        let run = |rps: f64, cpu: f64, p50: f64| LoadResult {
            requests: 100,
            rps,
            cpu_us_per_request: Some(cpu),
            latency_us: Latency {
                p50,
                p99: p50 * 2.0,
                ..Latency::default()
            },
            ..LoadResult::default()
        };
        let level = Level {
            load: "50%".into(),
            rate_rps: 500.0,
            plain: run(500.0, 100.0, 300.0),
            kvgate: run(500.0, 250.0, 450.0),
            added_p50_us: 150.0,
            added_p99_us: 300.0,
            added_cpu_us_per_req: Some(150.0),
            ..Level::default()
        };
        let body = BodyResult {
            label: "agentic".into(),
            body_tokens: 7000,
            body_tokens_min: 3900,
            capacity_plain: run(1000.0, 100.0, 1000.0),
            capacity_kvgate: run(600.0, 260.0, 1500.0),
            capacity_ratio: 0.6,
            added_p50_us: [("50%".to_string(), 150.0)].into(),
            added_p99_us: [("50%".to_string(), 300.0)].into(),
            added_cpu_us_per_req: Some(155.0),
            added_cpu_us_per_req_range: Some([150.0, 160.0]),
            plain_cpu_us_per_req: Some(100.0),
            kvgate_cpu_us_per_req: Some(255.0),
            breakdown: [(
                "decision_us".to_string(),
                Quantiles {
                    p50: 180.0,
                    p99: 700.0,
                },
            )]
            .into(),
            vm_linear_memory_mib: Some(21.5),
            kvgate_rss_mib: 80.0,
            levels: vec![level],
            ..BodyResult::default()
        };
        let cfg = BenchConfig::new(Path::new("t.jsonl"), Path::new("out"));
        let mut r = Report::new(&cfg, MachineInfo::default());
        r.overhead = Some(OverheadReport {
            loads: vec![0.5],
            bodies: vec![body.clone()],
            ..OverheadReport::default()
        });
        let check = |r: &Report| validate_overhead(&serde_json::to_value(r).unwrap());
        assert_eq!(check(&r), Vec::<String>::new());
        let md = r.markdown();
        assert!(md.contains("| agentic | 3900–7000 | 1000 | 600 (0.60) | 100 → 255 µs | 155 µs (150 … 160) | 150 / 300 µs | 21.5 / – MiB |"), "{md}");
        let with = |f: &dyn Fn(&mut BodyResult)| {
            let mut b = body.clone();
            f(&mut b);
            let mut r = r.clone();
            r.overhead.as_mut().unwrap().bodies = vec![b];
            check(&r)
        };
        assert_eq!(
            with(&|b| b.vm_linear_memory_mib = None),
            Vec::<String>::new()
        );
        assert_eq!(with(&|b| b.vm_linear_memory_mib = Some(0.0)).len(), 1);
        assert_eq!(with(&|b| b.levels.clear()).len(), 1);
        assert_eq!(with(&|b| b.added_p99_us.clear()).len(), 1);
        assert_eq!(with(&|b| b.levels[0].kvgate.errors = 2).len(), 1);
        assert_eq!(with(&|b| b.breakdown.clear()).len(), 1);
        assert_eq!(with(&|b| b.added_cpu_us_per_req = None).len(), 1);

        // With the endpoint picker measured, its figures are required: the body above
        // (no epp figures) now fails; completed, it passes and the EPP table shows it.
        r.overhead.as_mut().unwrap().epp = true;
        r.overhead.as_mut().unwrap().picker_bin = "target/release/kvgate-sync".into();
        let missing = check(&r);
        assert!(
            missing.iter().any(|m| m.contains("capacity_epp"))
                && missing.iter().any(|m| m.contains("picker_routed"))
                && missing.iter().any(|m| m.contains("epp_added_p50_us/50%"))
                && missing.iter().any(|m| m.contains("levels/0/epp/errors")),
            "{missing:?}"
        );
        let mut level = body.levels[0].clone();
        let mut e = run(500.0, 140.0, 520.0);
        e.extra_cpu_us_per_request = Some(90.0);
        level.epp = Some(e);
        level.epp_added_p50_us = Some(220.0);
        level.epp_added_p99_us = Some(440.0);
        level.epp_added_cpu_us_per_req = Some(130.0);
        let mut cap = run(400.0, 150.0, 2000.0);
        cap.extra_cpu_us_per_request = Some(100.0);
        let full = BodyResult {
            levels: vec![level],
            capacity_epp: Some(cap),
            epp_capacity_ratio: Some(0.4),
            epp_vs_filter_capacity_ratio: Some(0.667),
            epp_added_p50_us: [("50%".to_string(), 220.0)].into(),
            epp_added_p99_us: [("50%".to_string(), 440.0)].into(),
            epp_envoy_cpu_us_per_req: Some(145.0),
            epp_picker_cpu_us_per_req: Some(95.0),
            epp_cpu_us_per_req: Some(240.0),
            epp_added_cpu_us_per_req: Some(140.0),
            epp_added_cpu_us_per_req_range: Some([130.0, 150.0]),
            epp_vs_filter_added_cpu_ratio: Some(0.903),
            picker_streams: Some(120.0),
            picker_routed: Some(118.0),
            epp_rss_mib: Some(40.0),
            picker_rss_mib: Some(90.0),
            ..body.clone()
        };
        r.overhead.as_mut().unwrap().bodies = vec![full.clone()];
        assert_eq!(check(&r), Vec::<String>::new());
        let md = r.markdown();
        assert!(md.contains("| agentic | 1000 / 600 / 400 | 0.67 | 255 µs | 145 + 95 = 240 µs | 155 → 140 µs (0.90) | 150 / 300 → 220 / 440 µs | 118 / 120 |"), "{md}");
        assert!(
            md.contains("| 300 / 600 | 450 / 900 | 520 / 1040 |"),
            "{md}"
        );
        let mut none_routed = full.clone();
        none_routed.picker_routed = Some(0.0);
        r.overhead.as_mut().unwrap().bodies = vec![none_routed];
        assert_eq!(check(&r).len(), 1);
        let mut failed = full;
        if let Some(e) = failed.levels[0].epp.as_mut() {
            e.errors = 3;
        }
        r.overhead.as_mut().unwrap().bodies = vec![failed];
        assert_eq!(check(&r).len(), 1);
    }
}
