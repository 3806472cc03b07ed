//! The API on a unix socket.

use super::common::{command, eventually};
use kvgate_sync::client::{self, Target};
use std::process::Stdio;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.sock");
    let mut child = command()
        .args([
            "serve",
            "--no-nats",
            "--allow-unauthenticated",
            "--listen",
            &format!("unix:{}", path.display()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let target = Target::Unix(path.clone());
    eventually("readyz over the unix socket", || async {
        matches!(client::get(&target, "/readyz").await, Ok((200, _)))
    })
    .await;
    let (status, body) = client::get(&target, "/v1/sync?epoch=0&since=0")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(kvgate_core::sync::decode(&body, 1 << 20).unwrap().snapshot);
    let _ = child.kill();
    let _ = child.wait();
}
