//! A steady-load driver: background threads send OpenAI chat requests to the gateway at
//! a fixed rate (request `i` is due at `i / rate` seconds; a pool of threads keeps the
//! schedule while requests overlap) and record each one as a [`Sample`]: when it was
//! sent, how long it took, its status, whether the body was complete, which worker
//! served it and the filter's decision.
//!
//! Requests share long system prompts (`prefixes` of them, ~600 tokens each, distinct
//! from the first block on), so once warm most requests have a cached prefix somewhere
//! and a KV-aware decision shows overlap on the worker holding it. A fraction streams,
//! and a fraction of those can close the socket after the first chunk (aborts).

use super::observe::Decision;
use kvgate_http::raw::{self as client, Request, Stop};
use kvgate_stack::MODEL;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What load to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The gateway, `ip:port`.
    pub addr: String,
    /// Requests per second.
    pub rate: f64,
    /// Sending threads (the most requests in flight at once).
    pub threads: usize,
    /// Distinct shared system prompts.
    pub prefixes: usize,
    /// Distinct questions (None: every request asks something new).
    pub questions: Option<u64>,
    /// Fraction of requests that stream.
    pub stream_fraction: f64,
    /// Fraction of streaming requests that close the socket after the first chunk.
    pub abort_fraction: f64,
    /// Fraction of requests that close the socket 30 ms after sending, before any answer.
    pub early_abort_fraction: f64,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Random seed.
    pub seed: u64,
}

impl LoadConfig {
    /// Defaults: 10 requests/s, 8 threads, 6 prefixes, half streaming, no aborts.
    pub fn new(addr: &str) -> Self {
        LoadConfig {
            addr: addr.to_string(),
            rate: 10.0,
            threads: 8,
            prefixes: 6,
            questions: None,
            stream_fraction: 0.5,
            abort_fraction: 0.0,
            early_abort_fraction: 0.0,
            max_tokens: 24,
            timeout: Duration::from_secs(30),
            seed: 7,
        }
    }
}

/// One request of the load.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Sequence number.
    pub seq: u64,
    /// When it was sent, since the load started.
    pub start: Duration,
    /// How long it took.
    pub latency: Duration,
    /// Status (None: no response).
    pub status: Option<u16>,
    /// The whole body arrived.
    pub complete: bool,
    /// It streamed.
    pub stream: bool,
    /// The client closed the connection on purpose.
    pub aborted: bool,
    /// `x-kvgate-worker` of the response (the worker that answered).
    pub worker: Option<u64>,
    /// The decision line, parsed.
    pub decision: Option<Decision>,
    /// Client-side error.
    pub error: Option<String>,
    /// Which shared prefix it used.
    pub prefix: usize,
}

impl Sample {
    /// Failed: not aborted on purpose, and not a complete 200.
    pub fn failed(&self) -> bool {
        !(self.aborted || (self.status == Some(200) && self.complete))
    }

    /// When it ended, since the load started.
    pub fn end(&self) -> Duration {
        self.start + self.latency
    }

    /// The worker the filter chose (from the decision), else the one that answered.
    pub fn chosen(&self) -> Option<u64> {
        self.decision
            .as_ref()
            .and_then(|d| d.chosen().map(|c| c.worker))
            .or(self.worker)
    }

    /// A short description of the failure (status, or error, or "truncated").
    pub fn failure(&self) -> String {
        match (self.status, self.complete, &self.error) {
            (Some(s), true, _) => s.to_string(),
            (Some(s), false, _) => format!("{s} truncated"),
            (None, _, Some(e)) => {
                let short: String = e.chars().take(40).collect();
                format!("no response ({short})")
            }
            (None, _, None) => "no response".into(),
        }
    }
}

/// The ~600-token system prompt of prefix `p` (distinct from its first block on).
pub fn system_prompt(p: usize) -> String {
    let words = [
        "parcel",
        "invoice",
        "refund",
        "warehouse",
        "carrier",
        "customs",
        "pallet",
        "route",
        "depot",
        "manifest",
    ];
    let mut s = format!("[policy book {p}] ");
    for i in 0..60 {
        let w = words
            .get((p * 7 + i) % words.len())
            .copied()
            .unwrap_or("item");
        s.push_str(&format!("Section {p}.{i}: handle every {w} carefully. "));
    }
    s
}

/// A chat request body with prefix `p` and question text `q`.
pub fn chat_body(p: usize, q: &str, stream: bool, max_tokens: u32) -> Vec<u8> {
    let mut body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": system_prompt(p)},
            {"role": "user", "content": q}
        ],
        "max_tokens": max_tokens,
    });
    if stream {
        body["stream"] = json!(true);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// A running load.
pub struct Load {
    start: Instant,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    handles: Vec<JoinHandle<()>>,
}

impl Load {
    /// Starts sending.
    pub fn start(cfg: LoadConfig) -> Load {
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let cfg = Arc::new(cfg);
        let handles = (0..cfg.threads.max(1))
            .map(|t| {
                let (stop, samples, next, cfg) =
                    (stop.clone(), samples.clone(), next.clone(), cfg.clone());
                std::thread::spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(cfg.seed ^ (t as u64 * 0x9e37));
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let due = start + Duration::from_secs_f64(i as f64 / cfg.rate.max(0.01));
                        while Instant::now() < due {
                            if stop.load(Ordering::SeqCst) {
                                return;
                            }
                            std::thread::sleep(
                                due.saturating_duration_since(Instant::now())
                                    .min(Duration::from_millis(20)),
                            );
                        }
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        let s = one(&cfg, i, start, &mut rng);
                        samples
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(s);
                    }
                })
            })
            .collect();
        Load {
            start,
            stop,
            samples,
            handles,
        }
    }

    /// Time since the load started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The samples so far (finished requests).
    pub fn samples(&self) -> Vec<Sample> {
        let mut v = self
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        v.sort_by_key(|s| s.seq);
        v
    }

    /// Stops sending, waits for requests in flight, returns every sample.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
        self.samples()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn one(cfg: &LoadConfig, seq: u64, origin: Instant, rng: &mut fastrand::Rng) -> Sample {
    let prefix = rng.usize(..cfg.prefixes.max(1));
    let stream = rng.f64() < cfg.stream_fraction;
    let q = match cfg.questions {
        Some(n) => rng.u64(..n.max(1)),
        None => seq,
    };
    let question = format!(
        "Question {q}: what happens to shipment {} today?",
        q * 31 % 997
    );
    let stop = if rng.f64() < cfg.early_abort_fraction {
        Stop::AfterSend(Duration::from_millis(30))
    } else if stream && rng.f64() < cfg.abort_fraction {
        Stop::AfterFirstBodyBytes
    } else {
        Stop::Never
    };
    let req = Request::post_json(
        "/v1/chat/completions",
        chat_body(prefix, &question, stream, cfg.max_tokens),
    );
    let start = origin.elapsed();
    let r = client::send(&cfg.addr, &req, stop, cfg.timeout);
    Sample {
        seq,
        start,
        latency: r.elapsed,
        status: r.status,
        complete: r.complete,
        stream,
        aborted: r.aborted,
        worker: r.header("x-kvgate-worker").and_then(|v| v.parse().ok()),
        decision: r.header("x-kvgate-decision").and_then(Decision::parse),
        error: r.error.clone(),
        prefix,
    }
}
