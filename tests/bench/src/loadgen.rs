//! The overhead phase's load generator, run as its own process (`kvgate-loadgen`, built
//! in release by `make bench`): a fixed set of keep-alive HTTP/1.1 connections, each one
//! request at a time, sending bodies made from a [`Plan`] either back to back (closed
//! loop, for capacity) or on a fixed schedule (open loop at `rate_rps`), and timing every
//! request in microseconds.
//!
//! Open loop: request `k` is due at `start + k / rate`; the first free connection takes
//! the next due request, waiting until it is due. A request that had to wait for a free
//! connection is timed from when it was due, not from when it was sent, so a slow gateway
//! cannot hide its queueing (no coordinated omission). Latencies are exact (every sample
//! kept and sorted), not bucketed.
//!
//! The Envoy's CPU time (`/proc/<pid>/stat`, utime + stime) is read at the start and the
//! end of the measured window, by this process, so the window is the one the requests
//! were counted in; likewise a second process's when the gateway has one on the request
//! path (the endpoint picker).

use super::stats::round;
use super::sys;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// In a template, replaced by the request's sequence number (unique per request).
pub const SEQ: &str = "{{SEQ}}";
/// In a template, replaced by how many times the plan's list was gone through before
/// (so each pass through a list of multi-turn sessions starts new sessions).
pub const CYCLE: &str = "{{CYCLE}}";

/// Bodies to send, as the bench writes them for the load generator: request `i` uses
/// template `i % templates.len()` with [`SEQ`] and [`CYCLE`] filled in.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PlanFile {
    /// Request bodies (JSON text) with markers.
    pub templates: Vec<String>,
}

#[derive(Debug, Clone)]
enum Piece {
    Lit(Vec<u8>),
    Seq,
    Cycle,
}

/// A [`PlanFile`] split at its markers, ready to make bodies fast.
#[derive(Debug, Clone)]
pub struct Plan {
    templates: Vec<Vec<Piece>>,
}

impl Plan {
    /// Splits every template at its markers.
    pub fn new(file: &PlanFile) -> Plan {
        let templates = file
            .templates
            .iter()
            .map(|t| {
                let mut pieces = Vec::new();
                let mut rest = t.as_str();
                loop {
                    let next = [(SEQ, Piece::Seq), (CYCLE, Piece::Cycle)]
                        .into_iter()
                        .filter_map(|(m, p)| rest.find(m).map(|i| (i, m.len(), p)))
                        .min_by_key(|(i, _, _)| *i);
                    let Some((i, len, piece)) = next else {
                        if !rest.is_empty() {
                            pieces.push(Piece::Lit(rest.as_bytes().to_vec()));
                        }
                        break;
                    };
                    if i > 0 {
                        pieces.push(Piece::Lit(rest.as_bytes()[..i].to_vec()));
                    }
                    pieces.push(piece);
                    rest = &rest[i + len..];
                }
                pieces
            })
            .collect();
        Plan { templates }
    }

    /// Templates in the plan.
    pub fn len(&self) -> usize {
        self.templates.len()
    }

    /// Whether the plan has no template.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Body of request `seq`.
    pub fn body(&self, seq: u64) -> Vec<u8> {
        let n = self.templates.len().max(1) as u64;
        let Some(pieces) = self.templates.get((seq % n) as usize) else {
            return Vec::new();
        };
        let cycle = seq / n;
        let mut out = Vec::with_capacity(
            pieces
                .iter()
                .map(|p| match p {
                    Piece::Lit(b) => b.len(),
                    _ => 20,
                })
                .sum(),
        );
        for p in pieces {
            match p {
                Piece::Lit(b) => out.extend_from_slice(b),
                Piece::Seq => out.extend_from_slice(seq.to_string().as_bytes()),
                Piece::Cycle => out.extend_from_slice(cycle.to_string().as_bytes()),
            }
        }
        out
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSpec {
    /// `ip:port` of the gateway.
    pub addr: String,
    /// Request path.
    pub path: String,
    /// Keep-alive connections (each one request at a time).
    pub connections: usize,
    /// Requests per second (open loop); None: closed loop, back to back.
    pub rate_rps: Option<f64>,
    /// Unmeasured seconds before the window (same connections, same rate).
    pub warmup_s: f64,
    /// Measured seconds.
    pub seconds: f64,
    /// The process whose CPU time is read over the window (the Envoy).
    pub cpu_pid: Option<u32>,
    /// A second process on the request path whose CPU time is read over the same window
    /// (the endpoint picker behind an ext_proc Envoy).
    #[serde(default)]
    pub extra_cpu_pid: Option<u32>,
    /// First request sequence number (so bodies stay unique across runs on one Envoy).
    pub first_seq: u64,
}

/// Latency distribution, µs (exact sample quantiles).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct LoadResult {
    /// Target rate (open loop), requests/s; None for closed loop.
    pub target_rps: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// Requests due (open) or sent (closed) in the measured window.
    pub requests: u64,
    /// Of which failed (no 200 with a complete body).
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Successful requests completed per second of the window.
    pub rps: f64,
    /// `rps` / `target_rps` < 0.97: the gateway could not keep up (open loop only).
    pub overloaded: bool,
    /// Latency of the window's successful requests, µs.
    pub latency_us: Latency,
    /// CPU seconds the watched process used over the window.
    pub cpu_s: Option<f64>,
    /// Its CPU time per request completed in the window, µs.
    pub cpu_us_per_request: Option<f64>,
    /// Its average CPU use over the window, cores.
    pub cpu_cores: Option<f64>,
    /// CPU seconds the second watched process ([`LoadSpec::extra_cpu_pid`]) used over
    /// the window.
    #[serde(default)]
    pub extra_cpu_s: Option<f64>,
    /// Its CPU time per request completed in the window, µs.
    #[serde(default)]
    pub extra_cpu_us_per_request: Option<f64>,
    /// Window seconds.
    pub wall_s: f64,
    /// The next free sequence number.
    pub next_seq: u64,
    /// Whether this load generator was a debug build.
    pub debug_build: bool,
}

/// Why one request failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// Socket I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A response this client does not understand.
    #[error("bad response: {0}")]
    Protocol(String),
    /// A response other than 200.
    #[error("HTTP {0}")]
    Status(u16),
}

/// One keep-alive HTTP/1.1 connection, reconnected after an error or `connection: close`.
struct Conn {
    addr: String,
    head: Vec<u8>,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    async fn request(&mut self, body: &[u8]) -> Result<(), RequestError> {
        let r = self.exchange(body).await;
        if r.is_err() {
            self.stream = None;
        }
        r
    }

    async fn exchange(&mut self, body: &[u8]) -> Result<(), RequestError> {
        if self.stream.is_none() {
            let s = TcpStream::connect(&self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::with_capacity(64 << 10, s));
        }
        let Some(stream) = self.stream.as_mut() else {
            return Err(RequestError::Protocol("no connection".into()));
        };
        let mut req = Vec::with_capacity(self.head.len() + 32 + body.len());
        req.extend_from_slice(&self.head);
        req.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        req.extend_from_slice(body);
        stream.get_mut().write_all(&req).await?;
        let mut line = String::new();
        let mut status = 0u16;
        let mut length: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        let mut first = true;
        loop {
            line.clear();
            if stream.read_line(&mut line).await? == 0 {
                return Err(RequestError::Protocol("connection closed".into()));
            }
            let l = line.trim_end();
            if first {
                first = false;
                status = l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| RequestError::Protocol(format!("status line `{l}`")))?;
                continue;
            }
            if l.is_empty() {
                break;
            }
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v.contains("close"),
                _ => {}
            }
        }
        if chunked {
            loop {
                line.clear();
                stream.read_line(&mut line).await?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| {
                    RequestError::Protocol(format!("chunk size `{}`", line.trim()))
                })?;
                let mut skip = vec![0u8; size + 2];
                stream.read_exact(&mut skip).await?;
                if size == 0 {
                    break;
                }
            }
        } else if let Some(n) = length {
            let mut skip = vec![0u8; n];
            stream.read_exact(&mut skip).await?;
        } else {
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await?;
            close = true;
        }
        if close {
            self.stream = None;
        }
        if status == 200 {
            Ok(())
        } else {
            Err(RequestError::Status(status))
        }
    }
}

struct Sample {
    /// When it was due (open) or sent (closed), since the start.
    due: Duration,
    /// When it completed, since the start.
    done: Duration,
    latency_us: f64,
    error: Option<String>,
}

/// Exact quantile `q` (0–100) of sorted `v` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // Less a hair, so that 99.9 % of 1000 is rank 999, not 1000 by rounding.
    let rank = (q * sorted.len() as f64 / 100.0 - 1e-9).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// The latency distribution of `samples` (µs).
pub fn latency(mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().sum::<f64>() / samples.len() as f64
    };
    Latency {
        p50: round(quantile(&samples, 50.0), 1),
        p90: round(quantile(&samples, 90.0), 1),
        p99: round(quantile(&samples, 99.0), 1),
        p999: round(quantile(&samples, 99.9), 1),
        max: round(samples.last().copied().unwrap_or(0.0), 1),
        mean: round(mean, 1),
    }
}

/// Runs `spec` with bodies from `plan` (on the calling thread's Tokio runtime).
pub async fn run(spec: &LoadSpec, plan: Arc<Plan>) -> LoadResult {
    let ticks = sys::clock_ticks();
    let start = Instant::now();
    let window_start = Duration::from_secs_f64(spec.warmup_s.max(0.0));
    let window_end = window_start + Duration::from_secs_f64(spec.seconds.max(0.0));
    let next = Arc::new(AtomicU64::new(0));
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n",
        spec.path, spec.addr
    )
    .into_bytes();
    let rate = spec.rate_rps.filter(|r| *r > 0.0);
    // CPU at the window's edges, read by a timer task of its own.
    let pids = [spec.cpu_pid, spec.extra_cpu_pid];
    let cpu = tokio::spawn(async move {
        let read = || pids.map(|pid| pid.and_then(|p| sys::cpu_seconds(p, ticks)));
        tokio::time::sleep_until((start + window_start).into()).await;
        let c0 = read();
        tokio::time::sleep_until((start + window_end).into()).await;
        let c1 = read();
        [0, 1].map(|i| c0[i].zip(c1[i]).map(|(a, b)| b - a))
    });
    let mut tasks = Vec::new();
    for _ in 0..spec.connections.max(1) {
        let plan = Arc::clone(&plan);
        let next = Arc::clone(&next);
        let mut conn = Conn {
            addr: spec.addr.clone(),
            head: head.clone(),
            stream: None,
        };
        let first_seq = spec.first_seq;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let (due, seq) = match rate {
                    Some(r) => {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let due = Duration::from_secs_f64(k as f64 / r);
                        if due >= window_end {
                            break;
                        }
                        tokio::time::sleep_until((start + due).into()).await;
                        (due, first_seq + k)
                    }
                    None => {
                        let now = start.elapsed();
                        if now >= window_end {
                            break;
                        }
                        (now, first_seq + next.fetch_add(1, Ordering::Relaxed))
                    }
                };
                let body = plan.body(seq);
                let r = conn.request(&body).await;
                let done = start.elapsed();
                out.push(Sample {
                    due,
                    done,
                    latency_us: done.saturating_sub(due).as_secs_f64() * 1e6,
                    error: r.err().map(|e| e.to_string()),
                });
            }
            out
        }));
    }
    let mut samples = Vec::new();
    for t in tasks {
        if let Ok(s) = t.await {
            samples.extend(s);
        }
    }
    let [cpu_s, extra_cpu_s] = cpu.await.unwrap_or_default();
    let in_window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.due >= window_start && s.due < window_end)
        .collect();
    let completed_in_window = samples
        .iter()
        .filter(|s| s.error.is_none() && s.done >= window_start && s.done < window_end)
        .count() as u64;
    let wall = (window_end - window_start).as_secs_f64();
    let ok: Vec<f64> = in_window
        .iter()
        .filter(|s| s.error.is_none())
        .map(|s| s.latency_us)
        .collect();
    let rps = if wall > 0.0 {
        completed_in_window as f64 / wall
    } else {
        0.0
    };
    LoadResult {
        target_rps: rate.map(|r| round(r, 1)),
        connections: spec.connections.max(1),
        requests: in_window.len() as u64,
        errors: in_window.iter().filter(|s| s.error.is_some()).count() as u64,
        first_error: samples.iter().find_map(|s| s.error.clone()),
        rps: round(rps, 1),
        overloaded: rate.is_some_and(|r| rps < 0.97 * r),
        latency_us: latency(ok),
        cpu_s: cpu_s.map(|c| round(c, 4)),
        cpu_us_per_request: cpu_s
            .filter(|_| completed_in_window > 0)
            .map(|c| round(c * 1e6 / completed_in_window as f64, 1)),
        cpu_cores: cpu_s.filter(|_| wall > 0.0).map(|c| round(c / wall, 3)),
        extra_cpu_s: extra_cpu_s.map(|c| round(c, 4)),
        extra_cpu_us_per_request: extra_cpu_s
            .filter(|_| completed_in_window > 0)
            .map(|c| round(c * 1e6 / completed_in_window as f64, 1)),
        wall_s: round(wall, 3),
        next_seq: spec.first_seq + next.load(Ordering::Relaxed) + 1,
        debug_build: cfg!(debug_assertions),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn plan_fills_markers_per_request_and_cycle() {
        let plan = Plan::new(&PlanFile {
            templates: vec![
                format!("{{\"a\":\"[{SEQ}] x {CYCLE}\"}}"),
                format!("{CYCLE}-{SEQ}{SEQ}"),
            ],
        });
        assert_eq!(plan.len(), 2);
        assert_eq!(plan.body(0), b"{\"a\":\"[0] x 0\"}");
        assert_eq!(plan.body(1), b"0-11");
        assert_eq!(plan.body(4), b"{\"a\":\"[4] x 2\"}");
        assert_eq!(plan.body(7), b"3-77");
        assert!(Plan::new(&PlanFile::default()).body(3).is_empty());
    }

    #[test]
    fn exact_quantiles() {
        let l = latency((1..=1000).rev().map(f64::from).collect());
        assert_eq!(l.p50, 500.0);
        assert_eq!(l.p99, 990.0);
        assert_eq!(l.p999, 999.0);
        assert_eq!(l.max, 1000.0);
        assert_eq!(l.mean, 500.5);
        assert_eq!(latency(Vec::new()).p50, 0.0);
    }

    /// A real exchange with the echo upstream: open loop at a low rate, every request
    /// answered, timed, and counted in its window.
    #[test]
    fn open_and_closed_loop_against_the_echo() {
        let echo = crate::echo::Echo::start(1).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let plan = Arc::new(Plan::new(&PlanFile {
            templates: vec![format!("{{\"n\":\"{SEQ}\"}}")],
        }));
        let spec = LoadSpec {
            addr: echo.endpoints[0].clone(),
            path: "/v1/chat/completions".into(),
            connections: 2,
            rate_rps: Some(200.0),
            warmup_s: 0.1,
            seconds: 0.5,
            cpu_pid: Some(std::process::id()),
            extra_cpu_pid: Some(std::process::id()),
            first_seq: 0,
        };
        let open = rt.block_on(run(&spec, Arc::clone(&plan)));
        assert_eq!(open.errors, 0, "{:?}", open.first_error);
        // 100 requests are due in the window (±1 at its edges).
        assert!((99..=101).contains(&open.requests), "{open:?}");
        assert!(open.latency_us.p50 > 0.0 && open.latency_us.p99 >= open.latency_us.p50);
        assert!(open.cpu_us_per_request.is_some());
        assert!(open.extra_cpu_us_per_request.is_some());
        let closed = rt.block_on(run(
            &LoadSpec {
                rate_rps: None,
                ..spec
            },
            plan,
        ));
        assert_eq!(closed.errors, 0, "{:?}", closed.first_error);
        assert!(closed.requests > 0 && closed.rps > 0.0 && !closed.overloaded);
    }
}
