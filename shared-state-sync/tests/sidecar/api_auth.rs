//! (8) The filter API needs the deployment's token: without it `/v1/sync`,
//! `/v1/models/files` and `/v1/bookkeeping` answer 401 with a JSON error and book
//! nothing; an oversized bookkeeping body or batch answers 413; health, readiness and
//! metrics stay open for probes.

use super::common::Sidecar;
use hyper::Method;
use kvgate_core::sync::{BookBatch, BookEvent, BookKind};
use kvgate_sync::client::{self, Target};
use serde_json::Value;

const TOKEN: &str = "test-token-0123456789abcdef";

async fn call(
    t: &Target,
    m: Method,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> (u16, Value) {
    let (s, b) = client::request_with_token(t, m, path, body, token)
        .await
        .unwrap();
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn frees(n: u64) -> Vec<u8> {
    postcard::to_allocvec(&BookBatch {
        events: (0..n)
            .map(|request_id| BookEvent {
                request_id,
                kind: BookKind::Free,
            })
            .collect(),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_api_needs_the_token_and_caps_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let sc = Sidecar::start(&[
        "--no-nats",
        "--api-token-file",
        file.to_str().unwrap(),
        "--max-bookkeeping-events",
        "100",
        "--max-bookkeeping-bytes",
        "4096",
    ])
    .await;
    let t = &sc.target;
    for (m, path, body) in [
        (
            Method::GET,
            "/v1/sync?epoch=0&since=0&wait_ms=0",
            Vec::new(),
        ),
        (Method::GET, "/v1/models/files?name=m&digest=d", Vec::new()),
        (Method::POST, "/v1/bookkeeping", frees(1)),
    ] {
        for token in [None, Some("test-token-0123456789abcdeX"), Some("")] {
            let (s, v) = call(t, m.clone(), path, body.clone(), token).await;
            assert_eq!(s, 401, "{m} {path} with {token:?}");
            assert_eq!(v["error"]["code"], "unauthorized", "{v}");
        }
    }
    let (s, _) = call(
        t,
        Method::GET,
        "/v1/sync?epoch=0&since=0&wait_ms=0",
        Vec::new(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(t, Method::POST, "/v1/bookkeeping", frees(100), Some(TOKEN)).await;
    assert_eq!(s, 204);
    let (s, v) = call(t, Method::POST, "/v1/bookkeeping", frees(101), Some(TOKEN)).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "bookkeeping_too_large", "{v}");
    let (s, v) = call(
        t,
        Method::POST,
        "/v1/bookkeeping",
        vec![0; 5000],
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["error"]["code"], "bookkeeping_too_large", "{v}");
    let (s, v) = call(
        t,
        Method::POST,
        "/v1/bookkeeping",
        vec![0xff; 40],
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["code"], "bad_bookkeeping", "{v}");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (s, _) = client::get(t, path).await.unwrap();
        assert_eq!(s, 200, "{path}");
    }
    // Only the 100 steps of the accepted batch were booked.
    let (_, metrics) = client::get(t, "/metrics").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    assert!(
        metrics
            .lines()
            .any(|l| l == "kvgate_sync_bookkeeping_events_total 100"),
        "{metrics}"
    );
}
