//! Command-line flags and the shared kvgate configuration → the validated settings of
//! one sidecar. Every rejection names the flag or key at fault (exit code 2).

use crate::cli::ServeArgs;
use kvgate_core::config::{Config, ConfigError, ConfigSources, Secret};
use kvgate_core::workers::WorkerRole;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the settings were rejected.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The kvgate configuration (file or environment) is invalid.
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    /// A configuration file could not be read.
    #[error("cannot read {key} file {path}: {source}")]
    Read {
        /// The flag naming the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A flag has an invalid value.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The flag.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(key: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Where the HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (loopback by default).
    Tcp(SocketAddr),
    /// A unix socket path.
    Unix(PathBuf),
}

impl Listen {
    /// Parses `IP:PORT`, `unix:/path` or `/path`.
    pub fn parse(s: &str) -> Result<Listen, SettingsError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(invalid("--listen", "empty unix socket path"));
            }
            return Ok(Listen::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(Listen::Unix(PathBuf::from(s)));
        }
        s.parse()
            .map(Listen::Tcp)
            .map_err(|_| invalid("--listen", format!("`{s}` is not IP:PORT or unix:/path")))
    }
}

/// NATS connection settings.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Use NATS at all.
    pub enabled: bool,
    /// Server URLs.
    pub urls: Vec<String>,
    /// Credentials file.
    pub creds: Option<PathBuf>,
    /// CA certificate.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Require TLS.
    pub tls_required: bool,
}

/// JetStream settings of the KV-event stream.
#[derive(Debug, Clone)]
pub struct JetStreamSettings {
    /// Use JetStream at all.
    pub enabled: bool,
    /// Stream name.
    pub stream: String,
    /// Durable consumer name.
    pub durable: String,
    /// Retention by age.
    pub max_age: Duration,
    /// Retention by size.
    pub max_bytes: i64,
    /// Also read Dynamo's legacy stream if it exists.
    pub legacy: bool,
}

/// A model whose tokenizer files the sidecar serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Served model name.
    pub name: String,
    /// Directory with tokenizer.json and tokenizer_config.json.
    pub dir: PathBuf,
    /// Block size, if given.
    pub block_size: Option<u32>,
}

impl ModelSpec {
    /// Parses `NAME=DIR` or `NAME=DIR,block_size=N`.
    pub fn parse(s: &str) -> Result<ModelSpec, SettingsError> {
        let (name, rest) = s
            .split_once('=')
            .ok_or_else(|| invalid("--model", format!("`{s}` is not NAME=DIR[,block_size=N]")))?;
        if name.is_empty() {
            return Err(invalid("--model", format!("`{s}` has an empty model name")));
        }
        let mut parts = rest.split(',');
        let dir = parts.next().unwrap_or_default();
        if dir.is_empty() {
            return Err(invalid("--model", format!("`{s}` has an empty directory")));
        }
        let mut block_size = None;
        for p in parts {
            match p.split_once('=') {
                Some(("block_size", v)) => match v.parse::<u32>() {
                    Ok(n) if n > 0 => block_size = Some(n),
                    _ => {
                        return Err(invalid(
                            "--model",
                            format!("block_size `{v}` is not a positive integer"),
                        ))
                    }
                },
                _ => return Err(invalid("--model", format!("unknown option `{p}`"))),
            }
        }
        Ok(ModelSpec {
            name: name.to_string(),
            dir: PathBuf::from(dir),
            block_size,
        })
    }
}

/// Kubernetes discovery (`--k8s-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K8sSettings {
    /// Namespace of the pool and its pods.
    pub namespace: String,
    /// InferencePool name.
    pub pool: String,
    /// API server URL used without credentials.
    pub api_url: Option<String>,
    /// Model of pods without annotation.
    pub default_model: Option<String>,
    /// Role of pods without annotation.
    pub default_role: WorkerRole,
    /// Block size of pods without annotation.
    pub default_block_size: Option<u32>,
}

/// Where the service account's namespace is mounted in a pod.
const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

fn k8s_settings(
    args: &ServeArgs,
    env: &[(String, String)],
) -> Result<Option<K8sSettings>, SettingsError> {
    let Some(pool) = args.k8s_inference_pool.clone() else {
        for (key, given) in [
            ("--k8s-namespace", args.k8s_namespace.is_some()),
            ("--k8s-api-url", args.k8s_api_url.is_some()),
            ("--k8s-default-model", args.k8s_default_model.is_some()),
            (
                "--k8s-default-block-size",
                args.k8s_default_block_size.is_some(),
            ),
        ] {
            if given {
                return Err(invalid(key, "needs --k8s-inference-pool"));
            }
        }
        return Ok(None);
    };
    if !cfg!(feature = "kubernetes") {
        return Err(invalid(
            "--k8s-inference-pool",
            "this kvgate-sync was built without the `kubernetes` feature",
        ));
    }
    if pool.is_empty() {
        return Err(invalid("--k8s-inference-pool", "must not be empty"));
    }
    let namespace = args
        .k8s_namespace
        .clone()
        .or_else(|| {
            env.iter()
                .find(|(k, _)| k == "POD_NAMESPACE")
                .map(|(_, v)| v.clone())
        })
        .or_else(|| {
            std::fs::read_to_string(SA_NAMESPACE)
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".into());
    if let Some(url) = &args.k8s_api_url {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(invalid(
                "--k8s-api-url",
                "must be an http:// or https:// URL",
            ));
        }
    }
    let default_role = match args.k8s_default_role.as_str() {
        "aggregated" => WorkerRole::Aggregated,
        "prefill" => WorkerRole::Prefill,
        "decode" => WorkerRole::Decode,
        other => {
            return Err(invalid(
                "--k8s-default-role",
                format!("`{other}` is not aggregated, prefill or decode"),
            ))
        }
    };
    if args.k8s_default_block_size == Some(0) {
        return Err(invalid("--k8s-default-block-size", "must be positive"));
    }
    Ok(Some(K8sSettings {
        namespace,
        pool,
        api_url: args.k8s_api_url.clone(),
        default_model: args.k8s_default_model.clone().filter(|m| !m.is_empty()),
        default_role,
        default_block_size: args.k8s_default_block_size,
    }))
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// HTTP listen address.
    pub listen: Listen,
    /// Health/readiness/metrics-only listen address.
    pub admin_listen: Option<Listen>,
    /// The endpoint picker's gRPC address (`--epp`).
    pub epp: Option<SocketAddr>,
    /// Dynamo namespace.
    pub namespace: String,
    /// Dynamo component.
    pub component: String,
    /// NATS connection.
    pub nats: NatsSettings,
    /// JetStream.
    pub jetstream: JetStreamSettings,
    /// Static worker file.
    pub workers_file: Option<PathBuf>,
    /// Follow NATS worker announcements.
    pub announce: bool,
    /// Follow a Kubernetes InferencePool.
    pub k8s: Option<K8sSettings>,
    /// Models with tokenizer files.
    pub models: Vec<ModelSpec>,
    /// The shared kvgate configuration.
    pub config: Config,
    /// Replica sync on.
    pub replica_sync: bool,
    /// Deltas kept.
    pub sync_log_size: usize,
    /// Meta refresh period.
    pub meta_refresh_ms: u64,
    /// Minimum period of load-only answers.
    pub loads_interval_ms: u64,
    /// Largest event payload.
    pub max_payload: usize,
    /// Who may call the filter API, and how much one bookkeeping call may carry.
    pub api: ApiSettings,
}

/// Access to the filter API.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// The bearer token (None: `--allow-unauthenticated`).
    pub token: Option<Secret>,
    /// Largest bookkeeping body in bytes.
    pub max_bookkeeping_bytes: usize,
    /// Most steps per bookkeeping batch.
    pub max_bookkeeping_events: usize,
}

/// Makes a name safe for a JetStream stream or consumer (`[A-Za-z0-9_-]`, others `_`).
pub fn js_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".into())
}

/// The API token: `--api-token-file`, else the configuration's `sidecar_token`; none
/// only with `--allow-unauthenticated`.
fn api_token(args: &ServeArgs, config: &Config) -> Result<Option<Secret>, SettingsError> {
    let token = match &args.api_token_file {
        Some(path) => {
            let raw = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                key: "--api-token-file",
                path: path.clone(),
                source,
            })?;
            Some(Secret::new("--api-token-file", &raw)?)
        }
        None => config.gateway.sidecar_token.clone(),
    };
    match (token, args.allow_unauthenticated) {
        (Some(_), true) => Err(invalid(
            "--allow-unauthenticated",
            "given together with a token: choose one",
        )),
        (None, false) => Err(invalid(
            "--api-token-file",
            "the filter API needs a token (--api-token-file, or sidecar_token / \
             KVGATE_SIDECAR_TOKEN), or --allow-unauthenticated",
        )),
        (token, _) => Ok(token),
    }
}

/// Reads the kvgate configuration: `DYN_*`/`KVGATE_*` variables of `env`, then the JSON
/// file (its keys win).
pub fn load_config<'a>(
    file: Option<&Path>,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Config, SettingsError> {
    let json = match file {
        None => Vec::new(),
        Some(p) => std::fs::read(p).map_err(|source| SettingsError::Read {
            key: "--config",
            path: p.to_path_buf(),
            source,
        })?,
    };
    Ok(ConfigSources::new().env(env, false)?.json(&json)?.build()?)
}

/// The process environment as owned pairs.
pub fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// `--epp IP:PORT`; refused when the binary was built without the `epp` feature, and
/// with `sidecar_cluster` empty (the picker's engine follows this sidecar like a filter
/// VM: static mode would leave it without index and tokenizers).
fn epp_listen(raw: Option<&str>, config: &Config) -> Result<Option<SocketAddr>, SettingsError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    if !cfg!(feature = "epp") {
        return Err(invalid("--epp", "built without the `epp` feature"));
    }
    if config.gateway.sidecar_cluster.is_none() {
        return Err(invalid(
            "--epp",
            "the picker follows this sidecar: sidecar_cluster must not be empty",
        ));
    }
    raw.parse()
        .map(Some)
        .map_err(|_| invalid("--epp", format!("`{raw}` is not IP:PORT")))
}

impl Settings {
    /// Validates `serve` flags against the environment `env`.
    pub fn from_args(
        args: &ServeArgs,
        env: &[(String, String)],
    ) -> Result<Settings, SettingsError> {
        let config = load_config(
            args.config.as_deref(),
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )?;
        if args.namespace.is_empty() {
            return Err(invalid("--namespace", "must not be empty"));
        }
        if args.component.is_empty() {
            return Err(invalid("--component", "must not be empty"));
        }
        let urls: Vec<String> = args
            .nats_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        if urls.is_empty() {
            return Err(invalid("--nats-url", "no URL given"));
        }
        for u in &urls {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| u.starts_with(s))
                || !u.contains("://");
            if !scheme_ok {
                return Err(invalid("--nats-url", "scheme must be nats, tls, ws or wss"));
            }
        }
        for (key, path) in [
            ("--nats-creds", &args.nats_creds),
            ("--nats-tls-ca", &args.nats_tls_ca),
            ("--nats-tls-cert", &args.nats_tls_cert),
            ("--nats-tls-key", &args.nats_tls_key),
        ] {
            if let Some(p) = path {
                if !p.is_file() {
                    return Err(invalid(
                        key,
                        format!("{} is not a readable file", p.display()),
                    ));
                }
            }
        }
        let stream = args.stream.clone().unwrap_or_else(|| {
            js_name(&format!(
                "kvgate-kv-events-{}-{}",
                args.namespace, args.component
            ))
        });
        if js_name(&stream) != stream {
            return Err(invalid(
                "--stream",
                format!("`{stream}` may only hold A-Z a-z 0-9 - _"),
            ));
        }
        let durable = args
            .durable
            .clone()
            .unwrap_or_else(|| js_name(&format!("kvgate-sync-{}", hostname())));
        if js_name(&durable) != durable {
            return Err(invalid(
                "--durable",
                format!("`{durable}` may only hold A-Z a-z 0-9 - _"),
            ));
        }
        if args.stream_max_age_secs == 0 {
            return Err(invalid("--stream-max-age-secs", "must be positive"));
        }
        if args.stream_max_bytes <= 0 {
            return Err(invalid("--stream-max-bytes", "must be positive"));
        }
        if args.sync_log_size == 0 {
            return Err(invalid("--sync-log-size", "must be positive"));
        }
        if args.max_payload_bytes < 1024 {
            return Err(invalid("--max-payload-bytes", "must be at least 1024"));
        }
        if args.max_bookkeeping_bytes < 1024 {
            return Err(invalid("--max-bookkeeping-bytes", "must be at least 1024"));
        }
        if args.max_bookkeeping_events == 0 {
            return Err(invalid("--max-bookkeeping-events", "must be positive"));
        }
        let models = args
            .models
            .iter()
            .map(|m| ModelSpec::parse(m))
            .collect::<Result<Vec<_>, _>>()?;
        let mut names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w.first() == w.get(1)) {
            return Err(invalid(
                "--model",
                format!(
                    "model `{}` given twice",
                    w.first().copied().unwrap_or_default()
                ),
            ));
        }
        Ok(Settings {
            listen: Listen::parse(&args.listen)?,
            admin_listen: args
                .admin_listen
                .as_deref()
                .map(Listen::parse)
                .transpose()?,
            epp: epp_listen(args.epp.as_deref(), &config)?,
            namespace: args.namespace.clone(),
            component: args.component.clone(),
            nats: NatsSettings {
                enabled: !args.no_nats,
                urls,
                creds: args.nats_creds.clone(),
                tls_ca: args.nats_tls_ca.clone(),
                tls_client: args.nats_tls_cert.clone().zip(args.nats_tls_key.clone()),
                tls_required: args.nats_tls_required,
            },
            jetstream: JetStreamSettings {
                enabled: !args.no_jetstream,
                stream,
                durable,
                max_age: Duration::from_secs(args.stream_max_age_secs),
                max_bytes: args.stream_max_bytes,
                legacy: !args.no_legacy_stream,
            },
            workers_file: args.workers_file.clone(),
            announce: !args.no_announce,
            k8s: k8s_settings(args, env)?,
            models,
            replica_sync: args.replica_sync || config.router.replica_sync,
            // Last: a missing token is reported only when everything else is right.
            api: ApiSettings {
                token: api_token(args, &config)?,
                max_bookkeeping_bytes: args.max_bookkeeping_bytes,
                max_bookkeeping_events: args.max_bookkeeping_events,
            },
            config,
            sync_log_size: args.sync_log_size,
            meta_refresh_ms: args.meta_refresh_ms.max(100),
            loads_interval_ms: args.loads_interval_ms,
            max_payload: args.max_payload_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn model_specs() {
        let m = ModelSpec::parse("Qwen/Qwen3-0.6B=/m/q,block_size=32").unwrap();
        assert_eq!(m.name, "Qwen/Qwen3-0.6B");
        assert_eq!(m.block_size, Some(32));
        assert!(ModelSpec::parse("nodir").is_err());
        assert!(ModelSpec::parse("a=/d,block_size=0").is_err());
        assert!(ModelSpec::parse("a=/d,colour=red").is_err());
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            Listen::parse("unix:/tmp/s").unwrap(),
            Listen::Unix("/tmp/s".into())
        );
        assert!(matches!(
            Listen::parse("127.0.0.1:1").unwrap(),
            Listen::Tcp(_)
        ));
        assert!(Listen::parse("localhost").is_err());
    }

    #[test]
    fn env_errors_name_the_variable() {
        let e = load_config(None, [("DYN_ROUTER_TEMPERATURE", "hot")]).unwrap_err();
        assert!(e.to_string().contains("DYN_ROUTER_TEMPERATURE"), "{e}");
    }

    fn serve(args: &[&str]) -> ServeArgs {
        let mut all = vec!["--allow-unauthenticated"];
        all.extend_from_slice(args);
        serve_exactly(&all)
    }

    fn serve_exactly(args: &[&str]) -> ServeArgs {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(
            ["kvgate-sync", "serve", "--no-nats"].iter().chain(args),
        )
        .unwrap();
        match cli.command {
            crate::cli::Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn k8s_flags() {
        let env = vec![("POD_NAMESPACE".to_string(), "llm".to_string())];
        let s = Settings::from_args(&serve(&[]), &env).unwrap();
        assert!(s.k8s.is_none());
        let e = Settings::from_args(&serve(&["--k8s-namespace", "x"]), &env).unwrap_err();
        assert!(e.to_string().contains("--k8s-namespace"), "{e}");
        if cfg!(feature = "kubernetes") {
            let s = Settings::from_args(&serve(&["--k8s-inference-pool", "p"]), &env).unwrap();
            let k = s.k8s.unwrap();
            assert_eq!((k.namespace.as_str(), k.pool.as_str()), ("llm", "p"));
            assert_eq!(k.default_role, WorkerRole::Aggregated);
            let e = Settings::from_args(
                &serve(&["--k8s-inference-pool", "p", "--k8s-default-role", "both"]),
                &env,
            )
            .unwrap_err();
            assert!(e.to_string().contains("--k8s-default-role"), "{e}");
            let e = Settings::from_args(
                &serve(&["--k8s-inference-pool", "p", "--k8s-api-url", "127.0.0.1:1"]),
                &env,
            )
            .unwrap_err();
            assert!(e.to_string().contains("--k8s-api-url"), "{e}");
        } else {
            let e = Settings::from_args(&serve(&["--k8s-inference-pool", "p"]), &env).unwrap_err();
            assert!(e.to_string().contains("kubernetes"), "{e}");
        }
    }

    #[test]
    fn the_api_needs_a_token_or_an_explicit_opt_out() {
        let none: Vec<(String, String)> = Vec::new();
        let e = Settings::from_args(&serve_exactly(&[]), &none).unwrap_err();
        assert!(e.to_string().contains("--allow-unauthenticated"), "{e}");
        let s = Settings::from_args(&serve_exactly(&["--allow-unauthenticated"]), &none).unwrap();
        assert!(s.api.token.is_none());
        let env = vec![(
            "KVGATE_SIDECAR_TOKEN".to_string(),
            "from-env-0123456789".to_string(),
        )];
        let s = Settings::from_args(&serve_exactly(&[]), &env).unwrap();
        assert_eq!(s.api.token.unwrap().expose(), "from-env-0123456789");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "from-file-0123456789\n").unwrap();
        let f = file.to_str().unwrap();
        let s = Settings::from_args(&serve_exactly(&["--api-token-file", f]), &env).unwrap();
        assert_eq!(s.api.token.unwrap().expose(), "from-file-0123456789");
        let e = Settings::from_args(
            &serve_exactly(&["--api-token-file", f, "--allow-unauthenticated"]),
            &none,
        )
        .unwrap_err();
        assert!(e.to_string().contains("choose one"), "{e}");
        std::fs::write(&file, "short").unwrap();
        let e = Settings::from_args(&serve_exactly(&["--api-token-file", f]), &none).unwrap_err();
        assert!(e.to_string().contains("16 to 512"), "{e}");
        assert!(!e.to_string().contains("short"), "{e}");
        let e = Settings::from_args(&serve(&["--max-bookkeeping-events", "0"]), &none).unwrap_err();
        assert!(e.to_string().contains("--max-bookkeeping-events"), "{e}");
    }
}
