//! A real nats-server with JetStream on a free loopback port. Each start begins with an
//! empty store (`dir/nats`): a stack never sees KV events or claims of an earlier run.
//! [`Nats::restart`] (the fault tests' crash) keeps the store, as a real restart would.

use super::proc::{free_port, wait_for, Proc, StackError};
use super::tools::Tools;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A running nats-server.
pub struct Nats {
    /// The process.
    pub proc: Proc,
    /// Client port.
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

impl Nats {
    /// Starts nats-server with JetStream and a fresh store under `dir/nats`.
    pub fn start(tools: &Tools, dir: &Path) -> Result<Nats, StackError> {
        match std::fs::remove_dir_all(dir.join("nats")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        Self::start_on(&tools.nats_bin()?, dir, free_port())
    }

    /// Starts the nats-server binary `bin` with JetStream on `port`, store under `dir/nats`.
    pub fn start_on(bin: &Path, dir: &Path, port: u16) -> Result<Nats, StackError> {
        let store = dir.join("nats");
        std::fs::create_dir_all(&store)?;
        let mut cmd = Command::new(bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(&store);
        let mut proc = Proc::spawn("nats-server", cmd, &dir.join("nats.log"))?;
        let up = wait_for(Duration::from_secs(20), || {
            if !proc.alive() {
                return Some(false);
            }
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| true)
        });
        if up != Some(true) {
            return Err(proc.error("did not accept connections"));
        }
        Ok(Nats {
            proc,
            port,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would).
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) -> Result<(), StackError> {
        self.proc.kill();
        let fresh = Self::start_on(&self.bin.clone(), &self.dir.clone(), self.port)?;
        *self = fresh;
        Ok(())
    }
}
