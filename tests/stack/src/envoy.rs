//! Envoy from the repository's config templates (`envoy-config/`): renders a template
//! with ports, the filter and the worker endpoints, starts Envoy and waits until its
//! admin endpoint reports LIVE.

use super::proc::{free_port, wait_for, Proc, StackError};
use super::tools::Tools;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Which Envoy configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvoyKind {
    /// `envoy-config/envoy.yaml`: with the kvgate filter.
    Kvgate,
    /// `envoy-config/envoy-baseline.yaml`: the same without the filter.
    Baseline,
}

/// What to render into the template.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    /// Which template.
    pub kind: EnvoyKind,
    /// Filter configuration (JSON object).
    pub plugin_config: serde_json::Value,
    /// VM configuration (JSON object or empty string).
    pub vm_config: String,
    /// Worker endpoints (`ip:port`).
    pub workers: Vec<String>,
    /// Sidecar port (any port when there is no sidecar).
    pub sidecar_port: u16,
    /// Envoy worker threads.
    pub concurrency: u32,
    /// Per-connection buffer limit.
    pub buffer_limit: usize,
    /// Log level.
    pub log_level: String,
    /// Listener port (None = a free one).
    pub port: Option<u16>,
    /// Admin port (None = a free one).
    pub admin_port: Option<u16>,
    /// The Wasm filter's `allow_on_headers_stop_iteration` (off: what Istio's WasmPlugin
    /// and Envoy Gateway give, tested to show the watchdog).
    pub allow_on_headers_stop_iteration: bool,
    /// The sidecar's API token, given to Envoy as `KVGATE_SIDECAR_TOKEN` (the template
    /// hands it to the Wasm VM through `environment_variables.host_env_keys`).
    pub sidecar_token: Option<String>,
    /// File stem of the rendered config and the log (None: `envoy`, or `envoy-baseline`
    /// for the baseline), so several gateways can share a directory.
    pub name: Option<String>,
    /// The listener's `connection_balance_config: exact_balance` (the overhead bench: each
    /// new connection goes to the worker thread with the fewest, not wherever the kernel
    /// woke a thread), in either template.
    pub exact_balance: bool,
    /// Bootstrap `stats_flush_interval` in milliseconds (None: Envoy's 5 s). Histogram
    /// quantiles in `/stats` are computed at each flush; the bench reads them sooner.
    pub stats_flush_ms: Option<u64>,
}

impl Default for EnvoyOptions {
    fn default() -> Self {
        EnvoyOptions {
            kind: EnvoyKind::Kvgate,
            plugin_config: serde_json::json!({}),
            vm_config: String::new(),
            workers: Vec::new(),
            sidecar_port: 1,
            concurrency: 2,
            buffer_limit: 9 << 20,
            log_level: "warn".into(),
            port: None,
            admin_port: None,
            allow_on_headers_stop_iteration: true,
            sidecar_token: None,
            name: None,
            exact_balance: false,
            stats_flush_ms: None,
        }
    }
}

/// A running Envoy.
pub struct Envoy {
    /// The process.
    pub proc: Proc,
    /// Listener port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
}

/// What [`Envoy::launch`] starts: a rendered configuration, its name and ports.
pub(crate) struct Launch<'a> {
    /// Files `<name>.yaml` and `<name>.log`, and the process name.
    pub name: &'a str,
    /// The rendered configuration.
    pub config: &'a str,
    /// `--concurrency`.
    pub concurrency: u32,
    /// `-l`.
    pub log_level: &'a str,
    /// Listener port.
    pub port: u16,
    /// Admin port.
    pub admin_port: u16,
}

fn yaml_quote(s: &str) -> String {
    // A JSON string literal is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Renders the template for `opts` on the given ports.
pub fn render(
    tools: &Tools,
    opts: &EnvoyOptions,
    port: u16,
    admin: u16,
) -> Result<String, StackError> {
    let file = match opts.kind {
        EnvoyKind::Kvgate => "envoy.yaml",
        EnvoyKind::Baseline => "envoy-baseline.yaml",
    };
    let mut t = std::fs::read_to_string(tools.repo.join("envoy-config").join(file))?;
    let endpoints: String = opts
        .workers
        .iter()
        .filter_map(|e| e.rsplit_once(':'))
        .map(|(ip, p)| format!("        - endpoint: {{address: {{socket_address: {{address: {ip}, port_value: {p}}}}}}}\n"))
        .collect();
    let subs = [
        ("ADMIN_PORT", admin.to_string()),
        ("LISTEN_PORT", port.to_string()),
        ("WASM", yaml_quote(&tools.wasm.display().to_string())),
        ("PLUGIN_CONFIG", yaml_quote(&opts.plugin_config.to_string())),
        ("VM_CONFIG", yaml_quote(&opts.vm_config)),
        ("WORKER_ENDPOINTS", endpoints.trim_end().to_string()),
        ("SIDECAR_PORT", opts.sidecar_port.to_string()),
        ("BUFFER_LIMIT", opts.buffer_limit.to_string()),
    ];
    for (k, v) in subs {
        t = t.replace(&format!("{{{{{k}}}}}"), &v);
    }
    if !opts.allow_on_headers_stop_iteration {
        t = t.replace(
            "allow_on_headers_stop_iteration: true",
            "allow_on_headers_stop_iteration: false",
        );
    }
    if opts.exact_balance {
        t = insert_after_line(
            &t,
            "per_connection_buffer_limit_bytes:",
            "    connection_balance_config: {exact_balance: {}}",
        )?;
    }
    if let Some(ms) = opts.stats_flush_ms {
        t = format!("stats_flush_interval: {}s\n{t}", ms.max(1) as f64 / 1000.0);
    }
    Ok(t)
}

/// `t` with `line` inserted after the one line containing `anchor`.
pub(crate) fn insert_after_line(t: &str, anchor: &str, line: &str) -> Result<String, StackError> {
    let mut out = String::with_capacity(t.len() + line.len() + 1);
    let mut found = 0;
    for l in t.lines() {
        out.push_str(l);
        out.push('\n');
        if l.contains(anchor) {
            out.push_str(line);
            out.push('\n');
            found += 1;
        }
    }
    if found == 1 {
        Ok(out)
    } else {
        Err(StackError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the Envoy template has {found} lines with `{anchor}`, not one"),
        )))
    }
}

impl Envoy {
    /// Starts Envoy with its files in `dir` and waits up to two minutes for LIVE.
    pub fn start(tools: &Tools, opts: &EnvoyOptions, dir: &Path) -> Result<Envoy, StackError> {
        let port = opts.port.unwrap_or_else(free_port);
        let admin_port = opts.admin_port.unwrap_or_else(free_port);
        let name = opts.name.as_deref().unwrap_or(match opts.kind {
            EnvoyKind::Kvgate => "envoy",
            EnvoyKind::Baseline => "envoy-baseline",
        });
        let config = render(tools, opts, port, admin_port)?;
        let token = opts.sidecar_token.clone();
        Self::launch(
            tools,
            Launch {
                name,
                config: &config,
                concurrency: opts.concurrency,
                log_level: &opts.log_level,
                port,
                admin_port,
            },
            dir,
            move |cmd| {
                cmd.env_remove("KVGATE_SIDECAR_TOKEN");
                if let Some(t) = &token {
                    cmd.env("KVGATE_SIDECAR_TOKEN", t);
                }
            },
        )
    }

    /// Writes `l.config` to `dir/<name>.yaml`, starts Envoy on it (`configure` adds to the
    /// command) and waits up to two minutes for LIVE. Every Envoy of the stack starts here.
    pub(crate) fn launch(
        tools: &Tools,
        l: Launch<'_>,
        dir: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> Result<Envoy, StackError> {
        let cfg_path = dir.join(format!("{}.yaml", l.name));
        std::fs::write(&cfg_path, l.config)?;
        let envoy = tools.envoy_cmd()?;
        let (bin, pre) = envoy.split_first().ok_or(StackError::Missing {
            what: "Envoy",
            path: String::new(),
            env: "KVGATE_ENVOY",
        })?;
        let mut cmd = Command::new(bin);
        cmd.args(pre)
            .arg("-c")
            .arg(&cfg_path)
            .args([
                "--concurrency",
                &l.concurrency.to_string(),
                "--disable-hot-restart",
                "-l",
                l.log_level,
            ])
            .env("ENVOY_VERSION", "1.40.0");
        configure(&mut cmd);
        let mut proc = Proc::spawn(l.name, cmd, &dir.join(format!("{}.log", l.name)))?;
        let admin_port = l.admin_port;
        let ready = wait_for(Duration::from_secs(120), || {
            if !proc.alive() {
                return Some(false);
            }
            let r = kvgate_http::get(&format!("http://127.0.0.1:{admin_port}/ready")).ok()?;
            (r.text().trim() == "LIVE").then_some(true)
        });
        if ready != Some(true) {
            return Err(proc.error("did not become LIVE"));
        }
        Ok(Envoy {
            proc,
            port: l.port,
            admin_port,
        })
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// One counter or gauge from `/stats` (`name: value` lines), 0 when absent.
    pub fn stat(&self, name: &str) -> u64 {
        let Ok(r) = kvgate_http::get(&format!(
            "http://127.0.0.1:{}/stats?filter=^{}$",
            self.admin_port,
            name.replace('.', "\\.")
        )) else {
            return 0;
        };
        r.text()
            .lines()
            .filter_map(|l| l.split_once(": "))
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The Prometheus text of `/stats/prometheus`.
    pub fn prometheus(&self) -> String {
        kvgate_http::get(&format!(
            "http://127.0.0.1:{}/stats/prometheus",
            self.admin_port
        ))
        .map(|r| r.text())
        .unwrap_or_default()
    }
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

    #[test]
    fn bench_listener_options_render_into_both_templates() {
        let tools = Tools {
            repo: crate::tools::repo_root(),
            envoy: Vec::new(),
            nats_server: Default::default(),
            wasm: Default::default(),
            sidecar: Default::default(),
            mock_worker: Default::default(),
            model_dir: Default::default(),
        };
        for kind in [EnvoyKind::Kvgate, EnvoyKind::Baseline] {
            let plain = render(
                &tools,
                &EnvoyOptions {
                    kind,
                    ..Default::default()
                },
                1,
                2,
            )
            .unwrap();
            assert!(!plain.contains("connection_balance_config"));
            assert!(!plain.contains("stats_flush_interval"));
            let opts = EnvoyOptions {
                kind,
                exact_balance: true,
                stats_flush_ms: Some(1000),
                ..Default::default()
            };
            let t = render(&tools, &opts, 1, 2).unwrap();
            assert!(t.starts_with("stats_flush_interval: 1s\n"), "{kind:?}");
            let lines: Vec<&str> = t.lines().collect();
            let i = lines
                .iter()
                .position(|l| l.contains("connection_balance_config"))
                .unwrap();
            // Inside the listener, at the indentation of its other fields.
            assert!(lines[i - 1].contains("per_connection_buffer_limit_bytes"));
            assert_eq!(
                lines[i],
                "    connection_balance_config: {exact_balance: {}}"
            );
            assert!(lines[..i]
                .iter()
                .any(|l| l.trim_start().starts_with("- name: inference")));
        }
    }
}
