//! Test harness: a real `nats-server` per test (JetStream on, store in a temp dir, free
//! loopback port), the `kvgate-sync` binary as a child process, and polling helpers.

use kvgate_core::index::PrefixIndex;
use kvgate_core::sync::{decode, SyncFrame, SyncState};
use kvgate_sync::client::{self, Target};
use serde_json::Value;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a condition may take to come true.
pub const WAIT: Duration = Duration::from_secs(10);

/// A free loopback port below the ephemeral range (see `kvgate_stack::free_port`).
pub use kvgate_stack::free_port;

fn nats_binary() -> PathBuf {
    if let Ok(p) = std::env::var("KVGATE_NATS_SERVER") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "KVGATE_NATS_SERVER={} is not a file: run `make setup`",
            p.display()
        );
        return p;
    }
    let candidates = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join("nats-server"))
        .chain([
            PathBuf::from("/usr/sbin/nats-server"),
            PathBuf::from("/usr/bin/nats-server"),
        ])
        .collect::<Vec<_>>();
    match candidates.into_iter().find(|p| p.is_file()) {
        Some(p) => p,
        None => panic!("nats-server not found (PATH, /usr/sbin): run `make setup` (installs Debian's nats-server)"),
    }
}

/// Polls `cond` every 50 ms until it is true or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < WAIT {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {WAIT:?} waiting for: {what}");
}

/// A nats-server child process.
pub struct Nats {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    store: tempfile::TempDir,
}

impl Nats {
    /// Starts a server with JetStream.
    pub async fn start() -> Nats {
        let store = tempfile::tempdir().expect("tempdir");
        let mut n = Nats {
            child: None,
            port: free_port(),
            store,
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let child = Command::new(nats_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let port = self.port;
        eventually("nats-server to accept connections", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
    }

    /// Stops the server (its JetStream store is kept).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A client.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connect to nats-server")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `kvgate-sync serve` child process.
pub struct Sidecar {
    child: Option<Child>,
    /// Where it listens.
    pub target: Target,
    /// Its `--listen` value.
    pub listen: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_kvgate-sync")
}

/// A command for the binary with a clean kvgate environment.
pub fn command() -> Command {
    let mut c = Command::new(binary());
    for (k, _) in std::env::vars() {
        if k.starts_with("DYN_") || k.starts_with("KVGATE_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "info,async_nats=warn");
    c
}

impl Sidecar {
    /// Starts `serve` with `args` (plus `--listen`), waits for `/healthz`.
    pub async fn start(args: &[&str]) -> Sidecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("sidecar.log");
        let listen = format!("127.0.0.1:{}", free_port());
        let child = command()
            .arg("serve")
            .args(["--listen", &listen])
            .args(if args.contains(&"--api-token-file") {
                &[][..]
            } else {
                &["--allow-unauthenticated"][..]
            })
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start kvgate-sync");
        let target = Target::Tcp(listen.clone());
        let s = Sidecar {
            child: Some(child),
            target,
            listen,
            log,
            _dir: dir,
        };
        let t = s.target.clone();
        let started = Instant::now();
        loop {
            if matches!(client::get(&t, "/healthz").await, Ok((200, _))) {
                break;
            }
            assert!(
                started.elapsed() < WAIT,
                "sidecar did not come up:\n{}",
                s.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        s
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` → (status, body).
    pub async fn get(&self, path: &str) -> (u16, Vec<u8>) {
        let (s, b) = client::get(&self.target, path).await.expect("GET");
        (s, b.to_vec())
    }

    /// `/v1/state`.
    pub async fn state(&self) -> Value {
        let (s, b) = self.get("/v1/state").await;
        assert_eq!(s, 200);
        serde_json::from_slice(&b).expect("state JSON")
    }

    /// Waits for `/readyz` to answer 200.
    pub async fn ready(&self) {
        let t = self.target.clone();
        let start = Instant::now();
        while start.elapsed() < WAIT {
            if matches!(client::get(&t, "/readyz").await, Ok((200, _))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sidecar not ready:\n{}", self.log());
    }

    /// One sync frame.
    pub async fn frame(&self, epoch: u64, since: u64, wait_ms: u64) -> SyncFrame {
        let (s, b) = self
            .get(&format!(
                "/v1/sync?epoch={epoch}&since={since}&wait_ms={wait_ms}"
            ))
            .await;
        assert_eq!(s, 200);
        decode(&b, 64 << 20).expect("frame")
    }

    /// The index as the filter would rebuild it from a snapshot.
    pub async fn filter_index(&self) -> PrefixIndex {
        let f = self.frame(0, 0, 0).await;
        let mut index = PrefixIndex::new();
        SyncState::default()
            .apply(&f, &mut index)
            .expect("apply snapshot");
        index
    }

    /// Blocks of `worker_id` (dp rank 0) in `/v1/state`.
    pub async fn blocks(&self, worker_id: u64) -> u64 {
        blocks_in(&self.state().await, worker_id)
    }

    /// Stops the process (SIGKILL: a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Blocks of `worker_id` (dp rank 0) in a state document.
pub fn blocks_in(state: &Value, worker_id: u64) -> u64 {
    state["index"]["by_worker"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|w| w["worker_id"].as_u64() == Some(worker_id) && w["dp_rank"].as_u64() == Some(0))
        .filter_map(|w| w["blocks"].as_u64())
        .sum()
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("---- sidecar log ----\n{}", self.log());
        }
    }
}
