//! The load generator's requests, on the shared async client (`kvgate_http::Client`,
//! keep-alive): one POST, timed from the send to the response headers, to the first body
//! chunk (the first SSE event: TTFT) and to the end of the body; the answering worker
//! (`x-kvgate-worker`), the filter's `x-kvgate-decision`, and, when asked, the streamed
//! text. Also the readers of the engines' stats and the sidecar's metrics.

use super::{BenchError, Result};
use kvgate_http::{Client, Method};
use std::time::{Duration, Instant};

/// What one request gave.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// HTTP status (0 when no response).
    pub status: u16,
    /// `x-kvgate-worker`: the engine that answered.
    pub worker: Option<u64>,
    /// `x-kvgate-decision`, if present.
    pub decision: Option<String>,
    /// Send → first body chunk.
    pub ttft: Option<Duration>,
    /// Send → end of the body.
    pub latency: Duration,
    /// The generated text (SSE `content` / `text` deltas), when collected.
    pub text: String,
    /// Body bytes received.
    pub bytes: usize,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl Outcome {
    /// A 200 with a complete body.
    pub fn ok(&self) -> bool {
        self.status == 200 && self.error.is_none()
    }
}

/// A client for the bench: `pool` keeps connections alive, no proxy, generous timeouts.
pub fn client(pool: bool) -> Result<Client> {
    Client::new(pool, Duration::from_secs(300)).map_err(|e| BenchError::Http(e.to_string()))
}

/// The generated text in an SSE buffer's complete events (`data: {json}` lines).
fn sse_text(events: &str, out: &mut String) {
    for line in events.lines() {
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
            continue;
        };
        let choice = v.pointer("/choices/0");
        let piece = choice
            .and_then(|c| c.pointer("/delta/content").or_else(|| c.get("text")))
            .and_then(serde_json::Value::as_str);
        if let Some(p) = piece {
            out.push_str(p);
        }
    }
}

/// POSTs `body` to `url` with `headers`; reads the whole response, calling `on_first`
/// when the first body chunk arrives.
pub async fn post(
    client: &Client,
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    collect_text: bool,
    on_first: impl FnOnce(),
) -> Outcome {
    let mut on_first = Some(on_first);
    let start = Instant::now();
    let mut out = Outcome::default();
    let mut headers = headers.to_vec();
    headers.push(("content-type", "application/json"));
    let mut resp = match client.send(Method::POST, url, &headers, body).await {
        Ok(r) => r,
        Err(e) => {
            out.latency = start.elapsed();
            out.error = Some(e.to_string());
            return out;
        }
    };
    out.status = resp.status;
    out.worker = resp.header("x-kvgate-worker").and_then(|v| v.parse().ok());
    out.decision = resp.header("x-kvgate-decision").map(str::to_string);
    let mut pending = String::new();
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if out.ttft.is_none() {
                    out.ttft = Some(start.elapsed());
                    if let Some(f) = on_first.take() {
                        f();
                    }
                }
                out.bytes += chunk.len();
                if collect_text {
                    pending.push_str(&String::from_utf8_lossy(&chunk));
                    if let Some(end) = pending.rfind("\n\n") {
                        let (done, rest) = pending.split_at(end + 2);
                        sse_text(done, &mut out.text);
                        pending = rest.to_string();
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        }
    }
    if collect_text && !pending.is_empty() {
        sse_text(&pending, &mut out.text);
    }
    out.latency = start.elapsed();
    if out.status != 200 && out.error.is_none() {
        out.error = Some(format!("HTTP {}", out.status));
    }
    out
}

/// POSTs with an empty body and expects 2xx (`/kvgate/clear`).
pub async fn post_empty(client: &Client, url: &str) -> std::result::Result<(), String> {
    let r = client
        .send(Method::POST, url, &[], Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    if (200..300).contains(&r.status) {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {}", r.status))
    }
}

/// GETs `url` as JSON.
pub async fn get_json(
    client: &Client,
    url: &str,
) -> std::result::Result<serde_json::Value, String> {
    let r = client.get(url).await.map_err(|e| e.to_string())?;
    if !(200..300).contains(&r.status) {
        return Err(format!("{url}: HTTP {}", r.status));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("{url}: {e}"))
}

/// GETs `url` as text.
pub async fn get_text(client: &Client, url: &str) -> std::result::Result<String, String> {
    let r = client.get(url).await.map_err(|e| e.to_string())?;
    Ok(r.text())
}

/// The overlap (`ov=`) the decision header reports for `worker` (dp rank 0).
pub fn decision_overlap(decision: &str, worker: u64) -> Option<u32> {
    let key = format!("{worker}/0 ");
    decision
        .split('|')
        .map(str::trim)
        .find(|seg| seg.starts_with(&key))?
        .split_whitespace()
        .find_map(|f| f.strip_prefix("ov="))?
        .parse()
        .ok()
}

/// The sum of every sample of Prometheus metric `name` in `text`.
pub fn prom_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn parses_decisions_metrics_and_sse() {
        let d = "mode=aggregated isl=34 bs=16 | 1/0 ov=0 pf=0 dc=2 logit=4.12 | 12/0 ov=2 pf=0 dc=2 logit=2.12*";
        assert_eq!(decision_overlap(d, 12), Some(2));
        assert_eq!(decision_overlap(d, 1), Some(0));
        assert_eq!(decision_overlap(d, 2), None);
        let m = "# TYPE x counter\nkvgate_sync_events_applied_total{source=\"a\",kind=\"stored\"} 3\nkvgate_sync_events_applied_total{source=\"b\",kind=\"removed\"} 4\nkvgate_sync_events_applied_totalx 9\nkvgate_sync_index_entries 7\n";
        assert_eq!(prom_sum(m, "kvgate_sync_events_applied_total"), 7.0);
        assert_eq!(prom_sum(m, "kvgate_sync_index_entries"), 7.0);
        let mut s = String::new();
        sse_text(
            "data: {\"choices\":[{\"delta\":{\"content\":\" a\"}}]}\n\ndata: {\"choices\":[{\"text\":\" b\"}]}\n\ndata: [DONE]\n\n",
            &mut s,
        );
        assert_eq!(s, " a b");
    }
}
