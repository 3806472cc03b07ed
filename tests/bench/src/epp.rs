//! The endpoint-picker gateway the overhead and quality phases start: Envoy with ext_proc
//! (`envoy-config/envoy-epp.yaml`) calling a `kvgate-sync serve --epp` of its own, as a
//! gateway that speaks the Gateway API Inference Extension's `endpointPickerRef` runs
//! kvgate.

use super::{BenchError, Result};
use kvgate_stack::{
    free_port, start_epp_envoy, wait_for, Envoy, EppEnvoyOptions, Sidecar, Tools, MODEL,
};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Envoy with ext_proc in front of the workers, and the picker it calls. Dropping it stops
/// Envoy first.
pub struct EppGateway {
    /// Envoy (`envoy-epp.yaml`).
    pub envoy: Envoy,
    /// `kvgate-sync serve --epp` (its HTTP side: `/metrics`, `/readyz`).
    pub picker: Sidecar,
    /// The picker's process id (for its CPU time and pinning).
    pub picker_pid: u32,
}

impl EppGateway {
    /// Starts the picker with `picker_args` plus `--epp` on a free loopback port and its
    /// Envoy (FailClose, so a picker failure shows as a failed request) in front of
    /// `workers` with `concurrency` worker threads, then sends a small chat through them
    /// until the picker has routed one (its engine's `kvgate.decisions.routed`), for at
    /// most two minutes. (The picker's own readiness, `kvgate_sync_epp_ready`, waits for
    /// a loaded tokenizer, which it loads for its first request.)
    pub fn start(
        tools: &Tools,
        workers: &[String],
        picker_args: &[String],
        concurrency: u32,
        exact_balance: bool,
        dir: &Path,
    ) -> Result<EppGateway> {
        std::fs::create_dir_all(dir)?;
        let epp_port = free_port();
        let mut args = picker_args.to_vec();
        args.extend(["--epp".into(), format!("127.0.0.1:{epp_port}")]);
        let picker = Sidecar::start(tools, dir, &args)?;
        let picker_pid = picker
            .proc
            .pid()
            .map(|p| super::sys::find_process(p, "kvgate-sync"))
            .unwrap_or(0);
        let envoy = start_epp_envoy(
            tools,
            &EppEnvoyOptions {
                workers: workers.to_vec(),
                epp_port,
                fail_open: false,
                concurrency,
                name: "envoy-epp".into(),
                exact_balance,
                ..EppEnvoyOptions::default()
            },
            dir,
        )?;
        let g = EppGateway {
            envoy,
            picker,
            picker_pid,
        };
        let body = json!({"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "ping"}]})
            .to_string();
        let url = g.envoy.url("/v1/chat/completions");
        let routed = wait_for(Duration::from_secs(120), || {
            let r = kvgate_http::post(&url, &[], body.as_bytes()).ok()?;
            (r.status == 200 && g.routed() >= 1.0).then_some(())
        });
        if routed.is_none() {
            return Err(BenchError::Failed(format!(
                "the endpoint picker routed no request within 120 s (logs in {})",
                dir.display()
            )));
        }
        Ok(g)
    }

    /// Requests the picker has routed so far (its engine's `kvgate.decisions.routed`).
    pub fn routed(&self) -> f64 {
        prom_value(
            &self.metrics(),
            "kvgate_sync_epp_engine_total",
            "\"kvgate.decisions.routed\"",
        )
    }

    /// The picker's `/metrics` text (empty when it does not answer).
    pub fn metrics(&self) -> String {
        kvgate_http::get(&self.picker.url("/metrics"))
            .map(|r| r.text())
            .unwrap_or_default()
    }
}

/// The sum of the samples of Prometheus metric `name` whose labels contain `label` in a
/// `/metrics` text (0 when absent).
pub fn prom_value(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, v) = l.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            (metric == name && key.contains(label)).then(|| v.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_samples() {
        let text = "# HELP kvgate_sync_epp_ready Whether ready\n\
                    # TYPE kvgate_sync_epp_ready gauge\n\
                    kvgate_sync_epp_ready 1\n\
                    kvgate_sync_epp_streams_total 12\n\
                    kvgate_sync_epp_engine_total{name=\"kvgate.decisions.routed\"} 10\n\
                    kvgate_sync_epp_engine_total{name=\"kvgate.decisions.fail_open\"} 2\n\
                    kvgate_sync_epp_ready_other 7\n";
        assert_eq!(prom_value(text, "kvgate_sync_epp_ready", ""), 1.0);
        assert_eq!(prom_value(text, "kvgate_sync_epp_streams_total", ""), 12.0);
        assert_eq!(
            prom_value(
                text,
                "kvgate_sync_epp_engine_total",
                "\"kvgate.decisions.routed\""
            ),
            10.0
        );
        assert_eq!(prom_value(text, "kvgate_sync_epp_engine_total", ""), 12.0);
        assert_eq!(prom_value(text, "absent", ""), 0.0);
    }
}
