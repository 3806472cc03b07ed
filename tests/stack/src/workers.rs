//! Mock workers (the `mock-worker` binary) and the kvgate-sync sidecar as processes on
//! free loopback ports, started and waited for until healthy.

use super::proc::{free_port, wait_for, Proc, StackError};
use super::tools::Tools;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running mock worker.
pub struct Worker {
    /// The process.
    pub proc: Proc,
    /// Instance id.
    pub instance_id: u64,
    /// `127.0.0.1:<port>`.
    pub endpoint: String,
    args: Vec<String>,
}

impl Worker {
    /// Starts `mock-worker` with `--instance-id id` on a free port, plus `extra` arguments.
    pub fn start(
        tools: &Tools,
        dir: &Path,
        instance_id: u64,
        extra: &[String],
    ) -> Result<Worker, StackError> {
        Self::start_on(tools, dir, instance_id, free_port(), extra)
    }

    /// Starts `mock-worker` with `--instance-id id` on `port` (e.g. a spare endpoint
    /// Envoy's cluster already lists), plus `extra` arguments.
    pub fn start_on_port(
        tools: &Tools,
        dir: &Path,
        instance_id: u64,
        port: u16,
        extra: &[String],
    ) -> Result<Worker, StackError> {
        Self::start_on(tools, dir, instance_id, port, extra)
    }

    fn start_on(
        tools: &Tools,
        dir: &Path,
        instance_id: u64,
        port: u16,
        extra: &[String],
    ) -> Result<Worker, StackError> {
        let mut cmd = Command::new(tools.mock_worker_bin()?);
        cmd.args([
            "--port",
            &port.to_string(),
            "--instance-id",
            &instance_id.to_string(),
            "--model-dir",
        ])
        .arg(&tools.model_dir)
        .args(extra);
        let mut proc = Proc::spawn(
            &format!("worker-{instance_id}"),
            cmd,
            &dir.join(format!("worker-{instance_id}.log")),
        )?;
        let endpoint = format!("127.0.0.1:{port}");
        wait_healthy(
            &mut proc,
            &format!("http://{endpoint}/health"),
            "did not become healthy",
        )?;
        Ok(Worker {
            proc,
            instance_id,
            endpoint,
            args: extra.to_vec(),
        })
    }

    /// Starts it again on the same port (after a kill).
    pub fn restart(&mut self, tools: &Tools, dir: &Path) -> Result<(), StackError> {
        self.proc.kill();
        let port = self
            .endpoint
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        *self = Self::start_on(tools, dir, self.instance_id, port, &self.args.clone())?;
        Ok(())
    }

    /// `http://<endpoint><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.endpoint)
    }
}

/// A running kvgate-sync sidecar.
pub struct Sidecar {
    /// The process.
    pub proc: Proc,
    /// Its HTTP port.
    pub port: u16,
    /// The API token the filter must send (None with `--allow-unauthenticated`).
    pub token: Option<String>,
    /// The file holding [`Sidecar::token`] when the launcher generated it.
    pub token_file: Option<PathBuf>,
    args: Vec<String>,
}

impl Sidecar {
    /// Starts `kvgate-sync serve` on a free port with `args`; unless they say
    /// `--allow-unauthenticated` or `--api-token-file`, with a new random API token
    /// (written to `dir/sidecar-<port>.token`, readable by the owner only).
    pub fn start(tools: &Tools, dir: &Path, args: &[String]) -> Result<Sidecar, StackError> {
        let port = free_port();
        let mut args = args.to_vec();
        let mut token = None;
        let mut token_file = None;
        if !args
            .iter()
            .any(|a| a == "--allow-unauthenticated" || a == "--api-token-file")
        {
            let t = new_token()?;
            let file = dir.join(format!("sidecar-{port}.token"));
            write_private(&file, &t)?;
            args.extend(["--api-token-file".to_string(), file.display().to_string()]);
            token = Some(t);
            token_file = Some(file);
        }
        let mut s = Self::start_on(tools, dir, port, &args, token)?;
        s.token_file = token_file;
        Ok(s)
    }

    fn start_on(
        tools: &Tools,
        dir: &Path,
        port: u16,
        args: &[String],
        token: Option<String>,
    ) -> Result<Sidecar, StackError> {
        let mut cmd = Command::new(tools.sidecar_bin()?);
        cmd.arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args)
            .env_remove("KVGATE_SIDECAR_TOKEN");
        // The sidecar rejects unknown KVGATE_* variables (typos in configuration); the
        // launchers' own path variables are not configuration.
        for (k, _) in std::env::vars() {
            if k.starts_with("KVGATE_") && kvgate_core::config::keys::by_env(&k).is_none() {
                cmd.env_remove(k);
            }
        }
        let mut proc = Proc::spawn("kvgate-sync", cmd, &dir.join(format!("sidecar-{port}.log")))?;
        wait_healthy(
            &mut proc,
            &format!("http://127.0.0.1:{port}/healthz"),
            "did not answer /healthz",
        )?;
        Ok(Sidecar {
            proc,
            port,
            token,
            token_file: None,
            args: args.to_vec(),
        })
    }

    /// Restarts it on the same port (same token).
    pub fn restart(&mut self, tools: &Tools, dir: &Path) -> Result<(), StackError> {
        self.proc.kill();
        let token_file = self.token_file.take();
        *self = Self::start_on(
            tools,
            dir,
            self.port,
            &self.args.clone(),
            self.token.clone(),
        )?;
        self.token_file = token_file;
        Ok(())
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        kvgate_http::get(&self.url("/readyz"))
            .map(|r| r.status == 200)
            .unwrap_or(false)
    }
}

/// Waits up to 60 s for `url` to answer 200 while `proc` runs; `failure` names what went
/// wrong otherwise.
fn wait_healthy(proc: &mut Proc, url: &str, failure: &str) -> Result<(), StackError> {
    let ok = wait_for(Duration::from_secs(60), || {
        if !proc.alive() {
            return Some(false);
        }
        kvgate_http::get(url)
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| true)
    });
    if ok == Some(true) {
        Ok(())
    } else {
        Err(proc.error(failure))
    }
}

/// A new API token: 32 random bytes as hex.
pub fn new_token() -> Result<String, StackError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| StackError::Process {
        name: "token".into(),
        detail: format!("no randomness: {e}"),
        log: String::new(),
    })?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Writes `text` to a new file readable by the owner only.
fn write_private(path: &Path, text: &str) -> Result<(), StackError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
