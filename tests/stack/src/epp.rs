//! Envoy as a Gateway API Inference Extension gateway (`envoy-config/envoy-epp.yaml`): no
//! Wasm filter, the ext_proc filter calling kvgate-sync's endpoint picker (`serve --epp`),
//! override_host on the worker cluster. The template has its own placeholders (the picker's
//! port, the failure mode), so it has its own small renderer beside [`crate::Envoy`]'s.

use super::envoy::{insert_after_line, Envoy, Launch};
use super::proc::{free_port, StackError};
use super::tools::Tools;
use std::path::Path;

/// What to render into `envoy-epp.yaml`.
#[derive(Debug, Clone)]
pub struct EppEnvoyOptions {
    /// Worker endpoints (`ip:port`).
    pub workers: Vec<String>,
    /// The picker's gRPC port.
    pub epp_port: u16,
    /// GAIE `FailOpen` (true) or `FailClose` (false): ext_proc's `failure_mode_allow`.
    pub fail_open: bool,
    /// Envoy worker threads.
    pub concurrency: u32,
    /// Per-connection buffer limit.
    pub buffer_limit: usize,
    /// File stem of the rendered config and the log.
    pub name: String,
    /// The listener's `connection_balance_config: exact_balance` (the overhead bench, as
    /// [`crate::EnvoyOptions::exact_balance`]).
    pub exact_balance: bool,
}

impl Default for EppEnvoyOptions {
    fn default() -> Self {
        EppEnvoyOptions {
            workers: Vec::new(),
            epp_port: 1,
            fail_open: false,
            concurrency: 2,
            buffer_limit: 9 << 20,
            name: "envoy-epp".into(),
            exact_balance: false,
        }
    }
}

/// Renders `envoy-config/envoy-epp.yaml` for `opts` on the given ports.
pub fn render_epp(
    tools: &Tools,
    opts: &EppEnvoyOptions,
    port: u16,
    admin: u16,
) -> Result<String, StackError> {
    let mut t = std::fs::read_to_string(tools.repo.join("envoy-config/envoy-epp.yaml"))?;
    let endpoints: String = opts
        .workers
        .iter()
        .filter_map(|e| e.rsplit_once(':'))
        .map(|(ip, p)| format!("        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {p}}}}}}}\n"))
        .collect();
    let subs = [
        ("ADMIN_PORT", admin.to_string()),
        ("LISTEN_PORT", port.to_string()),
        ("WORKER_ENDPOINTS", endpoints.trim_end().to_string()),
        ("EPP_PORT", opts.epp_port.to_string()),
        ("FAILURE_MODE_ALLOW", opts.fail_open.to_string()),
        ("BUFFER_LIMIT", opts.buffer_limit.to_string()),
    ];
    for (k, v) in subs {
        t = t.replace(&format!("{{{{{k}}}}}"), &v);
    }
    if opts.exact_balance {
        t = insert_after_line(
            &t,
            "per_connection_buffer_limit_bytes:",
            "    connection_balance_config: {exact_balance: {}}",
        )?;
    }
    Ok(t)
}

/// Starts the EPP gateway with its files in `dir` and waits up to two minutes for LIVE.
pub fn start_epp_envoy(
    tools: &Tools,
    opts: &EppEnvoyOptions,
    dir: &Path,
) -> Result<Envoy, StackError> {
    let port = free_port();
    let admin_port = free_port();
    let config = render_epp(tools, opts, port, admin_port)?;
    Envoy::launch(
        tools,
        Launch {
            name: &opts.name,
            config: &config,
            concurrency: opts.concurrency,
            log_level: "warn",
            port,
            admin_port,
        },
        dir,
        |_| {},
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    /// `exact_balance` puts the listener's connection balancing beside its buffer limit;
    /// without it the template is left as it is. Every placeholder is filled either way.
    #[test]
    fn renders_exact_balance_into_the_listener() {
        let tools = Tools {
            repo: crate::repo_root(),
            envoy: Vec::new(),
            nats_server: Default::default(),
            wasm: Default::default(),
            sidecar: Default::default(),
            mock_worker: Default::default(),
            model_dir: Default::default(),
        };
        let mut opts = EppEnvoyOptions {
            workers: vec!["127.0.0.1:7001".into()],
            epp_port: 7100,
            ..EppEnvoyOptions::default()
        };
        let plain = render_epp(&tools, &opts, 1, 2).unwrap();
        assert!(!plain.contains("connection_balance_config"));
        assert!(
            plain
                .lines()
                .all(|l| l.trim_start().starts_with('#') || !l.contains("{{")),
            "{plain}"
        );
        opts.exact_balance = true;
        let t = render_epp(&tools, &opts, 1, 2).unwrap();
        let lines: Vec<&str> = t.lines().collect();
        let i = lines
            .iter()
            .position(|l| l.contains("connection_balance_config"))
            .unwrap();
        assert!(lines[i - 1].contains("per_connection_buffer_limit_bytes"));
        assert_eq!(
            lines[i],
            "    connection_balance_config: {exact_balance: {}}"
        );
        assert!(t.contains("port_value: 7100"));
    }
}
