//! A trivial upstream for the overhead and sidecar phases: it reads the whole request
//! body and answers a fixed, small chat completion at once, so what is measured is the
//! gateway, not an engine. It runs on its own thread and runtime (stopped on drop) and
//! listens on several loopback ports, one per pretend worker. The overhead phase runs it
//! in a process of its own (`kvgate-echo`, release-built by `make bench`); the sidecar
//! phase and the tests start it in-process.

use axum::body::Bytes;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use tokio::sync::oneshot;

const ANSWER: &str = r#"{"id":"cmpl-echo","object":"chat.completion","created":0,"model":"Qwen/Qwen3-0.6B","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

async fn answer(body: Bytes) -> impl IntoResponse {
    let _ = body.len();
    ([("content-type", "application/json")], ANSWER)
}

/// The running echo server.
pub struct Echo {
    /// `127.0.0.1:<port>` of each listener.
    pub endpoints: Vec<String>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    /// Starts `listeners` listeners on free loopback ports.
    pub fn start(listeners: usize) -> std::io::Result<Echo> {
        let any = vec!["127.0.0.1:0".to_string(); listeners.max(1)];
        Echo::start_on(&any)
    }

    /// Starts one listener on each of `addrs` (`ip:port`, port 0 = any free one).
    pub fn start_on(addrs: &[String]) -> std::io::Result<Echo> {
        let mut std_listeners = Vec::new();
        for a in addrs {
            let l = std::net::TcpListener::bind(a.as_str())?;
            l.set_nonblocking(true)?;
            std_listeners.push(l);
        }
        let endpoints = std_listeners
            .iter()
            .map(|l| l.local_addr().map(|a: SocketAddr| a.to_string()))
            .collect::<std::io::Result<Vec<_>>>()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("bench-echo".into())
            .spawn(move || {
                rt.block_on(async move {
                    let app = Router::new()
                        .route("/health", get(|| async { "ok" }))
                        .fallback(post(answer))
                        .layer(axum::extract::DefaultBodyLimit::max(
                            kvgate_mock::http::MAX_BODY_BYTES,
                        ));
                    for l in std_listeners {
                        if let Ok(l) = tokio::net::TcpListener::from_std(l) {
                            let app = app.clone();
                            tokio::spawn(async move {
                                let _ = axum::serve(l, app).await;
                            });
                        }
                    }
                    let _ = rx.await;
                });
            })?;
        Ok(Echo {
            endpoints,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
