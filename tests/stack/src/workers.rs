//! Mock workers (the `mock-worker` binary) and the kvgate-sync sidecar as processes on
//! free loopback ports, started and waited for until healthy.

use super::proc::{free_port, wait_for, Proc, StackError};
use super::tools::Tools;
use std::path::Path;
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
    args: Vec<String>,
}

impl Sidecar {
    /// Starts `kvgate-sync serve` on a free port with `args`.
    pub fn start(tools: &Tools, dir: &Path, args: &[String]) -> Result<Sidecar, StackError> {
        Self::start_on(tools, dir, free_port(), args)
    }

    fn start_on(
        tools: &Tools,
        dir: &Path,
        port: u16,
        args: &[String],
    ) -> Result<Sidecar, StackError> {
        let mut cmd = Command::new(tools.sidecar_bin()?);
        cmd.arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(args);
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
            args: args.to_vec(),
        })
    }

    /// Restarts it on the same port.
    pub fn restart(&mut self, tools: &Tools, dir: &Path) -> Result<(), StackError> {
        self.proc.kill();
        *self = Self::start_on(tools, dir, self.port, &self.args.clone())?;
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
