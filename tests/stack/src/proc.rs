//! Child processes for tests and the local stack: spawned with their output in a log
//! file, stopped (SIGTERM, then SIGKILL) when dropped, so a failing test leaves nothing
//! running. Also free loopback ports and "wait until" polling.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Errors of the launchers.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// A required tool is missing.
    #[error("{what} not found at {path}: run `make setup` (or set {env})")]
    Missing {
        /// What.
        what: &'static str,
        /// Where it was looked for.
        path: String,
        /// The environment variable that overrides the path.
        env: &'static str,
    },
    /// A process could not be started or died early.
    #[error("{name}: {detail} (log: {log})")]
    Process {
        /// Process name.
        name: String,
        /// What happened.
        detail: String,
        /// Its log file.
        log: String,
    },
    /// An I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A running child process, stopped on drop.
pub struct Proc {
    /// Name for messages.
    pub name: String,
    child: Option<Child>,
    /// Its stdout+stderr log.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc, StackError> {
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().map_err(|e| StackError::Process {
            name: name.into(),
            detail: format!("cannot start {cmd:?}: {e}"),
            log: log.display().to_string(),
        })?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// An error naming this process and the tail of its log.
    pub fn error(&self, detail: &str) -> StackError {
        let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: String = tail
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        StackError::Process {
            name: self.name.clone(),
            detail: format!("{detail}\n{tail}"),
            log: self.log.display().to_string(),
        }
    }

    /// Sends a signal (e.g. `libc` SIGSTOP/SIGCONT via `kill -STOP`).
    pub fn signal(&self, sig: &str) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stops it: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Kills it at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Lowest port handed out by [`free_port`].
const PORT_FLOOR: u32 = 10_000;

/// A free TCP port on 127.0.0.1 for a child process to listen on, never handed out twice
/// by this process. The port lies below the kernel's ephemeral range, so between this
/// check and the child's `bind` it cannot become another connection's source port or
/// another `bind(0)`'s pick: with many tests in parallel that race made Envoy fail with
/// "Address already in use". Falls back to an ephemeral port when the range leaves no
/// room below it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ceiling = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(u32::from(u16::MAX));
    let span = ceiling.saturating_sub(PORT_FLOOR);
    if span >= 1_000 {
        // Each process starts at its own place, so concurrent test binaries rarely meet.
        let start = std::process::id().wrapping_mul(2_654_435_761) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let Ok(port) = u16::try_from(PORT_FLOOR + (start + n) % span) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// `n` consecutive free ports (one per dp rank: vLLM's rank r publishes on the first + r),
/// none of them handed out again by [`free_port`]; returns the first.
pub fn free_ports(n: u32) -> u16 {
    loop {
        let first = free_port();
        let consecutive = (1..n).all(|r| u32::from(free_port()) == u32::from(first) + r);
        if consecutive {
            return first;
        }
    }
}

/// Polls `f` every 25 ms until it returns `Some`, or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
