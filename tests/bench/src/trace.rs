//! Traces to replay, auto-detected by content:
//! * **Mooncake** JSONL (`{"timestamp", "input_length", "output_length", "hash_ids"}`,
//!   512-token prefix blocks): each line is one request at its timestamp. Its prompt is
//!   synthesised as Dynamo's and aiperf's replays do: every hash id stands for 512
//!   deterministic pseudo-random token ids ([`block_tokens`]), so equal ids give equal
//!   tokens and therefore equal KV blocks; the last block is cut to `input_length`. It is
//!   sent as a `/v1/completions` token-id prompt (the filter then skips templating and
//!   tokenizing, as it would for any token-id client).
//! * **ShareGPT** JSON (`[{"conversations": [{"from": "human", "value"}, …]}]`) and
//!   **MT-bench** JSONL (`{"turns": [t1, t2]}`): each entry is a chat session whose user
//!   turns are sent one after the other, each with the whole history (the previous
//!   answers as the engine streamed them), as `/v1/chat/completions` — through the real
//!   chat template and tokenizer. Sessions start at Poisson arrivals (`chat_rate`).

use super::{BenchError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Tokens per Mooncake hash block.
pub const MOONCAKE_BLOCK: usize = 512;
/// Synthesised token ids stay below this (ordinary Qwen3 vocabulary, no special tokens).
pub const SYNTH_VOCAB: u64 = 150_000;

/// A trace's file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceFormat {
    /// Mooncake JSONL with prefix-block hash ids.
    Mooncake,
    /// ShareGPT JSON (array) or JSONL.
    ShareGpt,
    /// MT-bench question JSONL.
    MtBench,
}

impl TraceFormat {
    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            TraceFormat::Mooncake => "mooncake",
            TraceFormat::ShareGpt => "sharegpt",
            TraceFormat::MtBench => "mt_bench",
        }
    }
}

/// What one turn sends.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnPrompt {
    /// A Mooncake request: hash ids of its 512-token blocks and its prompt length.
    Blocks {
        /// Prefix-block ids.
        hash_ids: Vec<u64>,
        /// Prompt tokens.
        input_length: usize,
    },
    /// A user message appended to the session's chat history.
    User(String),
}

/// One request of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct Turn {
    /// The prompt.
    pub prompt: TurnPrompt,
    /// Output tokens asked for.
    pub max_tokens: u32,
}

/// Requests sent one after the other (a conversation), starting at `start_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Arrival of the first turn, trace milliseconds from the trace's start.
    pub start_ms: f64,
    /// The turns.
    pub turns: Vec<Turn>,
}

/// A loaded trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// Its format.
    pub format: TraceFormat,
    /// The file.
    pub path: String,
    /// Sessions by arrival.
    pub sessions: Vec<Session>,
    /// Arrival of the last session, trace milliseconds.
    pub span_ms: f64,
    /// Pause between turns, trace milliseconds.
    pub think_ms: f64,
}

/// How to cut and pace a trace.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Mooncake traces: the replayed window starts this many trace seconds in (earlier
    /// requests are skipped, later timestamps shifted back by it).
    pub start_seconds: f64,
    /// Only sessions arriving before this many trace seconds (after the start).
    pub max_seconds: Option<f64>,
    /// At most this many requests.
    pub max_requests: Option<usize>,
    /// Cap on output tokens.
    pub max_output_tokens: u32,
    /// Chat sessions per trace second.
    pub chat_rate: f64,
    /// Pause between chat turns, trace milliseconds.
    pub think_ms: f64,
    /// Seed of the chat arrivals.
    pub seed: u64,
}

/// The report's description of the replayed slice.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TraceSummary {
    /// File.
    pub path: String,
    /// Format name.
    pub format: String,
    /// Requests replayed.
    pub requests: usize,
    /// Sessions replayed.
    pub sessions: usize,
    /// Trace seconds covered by the arrivals.
    pub span_s: f64,
    /// Mean prompt tokens (Mooncake; 0 for chats, known only after tokenizing).
    pub mean_input_tokens: f64,
    /// Share of prompt tokens an infinite cache shared by every worker would hit
    /// (Mooncake, 512-token granularity; the ceiling of any routing policy).
    pub infinite_cache_hit_ratio: f64,
}

impl Trace {
    /// Requests over all sessions.
    pub fn requests(&self) -> usize {
        self.sessions.iter().map(|s| s.turns.len()).sum()
    }

    /// What the report says about it.
    pub fn summary(&self) -> TraceSummary {
        let mut input = 0usize;
        let mut hit = 0usize;
        let mut seen = std::collections::HashSet::new();
        for t in self.sessions.iter().flat_map(|s| &s.turns) {
            if let TurnPrompt::Blocks {
                hash_ids,
                input_length,
            } = &t.prompt
            {
                input += input_length;
                let mut prefix = Vec::new();
                let mut hits = 0;
                let mut run = true;
                for id in hash_ids {
                    prefix.push(*id);
                    let fresh = seen.insert(prefix.clone());
                    if run && !fresh {
                        hits += 1;
                    } else {
                        run = false;
                    }
                }
                hit += (hits * MOONCAKE_BLOCK).min(*input_length);
            }
        }
        let n = self.requests();
        TraceSummary {
            path: self.path.clone(),
            format: self.format.name().to_string(),
            requests: n,
            sessions: self.sessions.len(),
            span_s: self.span_ms / 1000.0,
            mean_input_tokens: if n > 0 { input as f64 / n as f64 } else { 0.0 },
            infinite_cache_hit_ratio: if input > 0 {
                hit as f64 / input as f64
            } else {
                0.0
            },
        }
    }
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The 512 token ids hash id `id` stands for: deterministic, pseudo-random, the same
/// for every request that carries the id.
pub fn block_tokens(id: u64) -> impl Iterator<Item = u32> {
    let base = splitmix64(id ^ 0x6b76_6761_7465_0001);
    (0..MOONCAKE_BLOCK as u64).map(move |i| (splitmix64(base ^ i) % SYNTH_VOCAB) as u32)
}

/// The prompt of a Mooncake request: its blocks' tokens, cut to `input_length`.
pub fn synth_tokens(hash_ids: &[u64], input_length: usize) -> Vec<u32> {
    let mut out = Vec::with_capacity(input_length);
    for id in hash_ids {
        out.extend(block_tokens(*id));
        if out.len() >= input_length {
            break;
        }
    }
    out.truncate(input_length);
    out
}

#[derive(Deserialize)]
struct MooncakeLine {
    timestamp: f64,
    input_length: usize,
    output_length: u32,
    hash_ids: Vec<u64>,
}

#[derive(Deserialize)]
struct ShareGptEntry {
    #[serde(default)]
    conversations: Vec<ShareGptTurn>,
}

#[derive(Deserialize)]
struct ShareGptTurn {
    from: String,
    value: String,
}

#[derive(Deserialize)]
struct MtBenchLine {
    turns: Vec<String>,
}

/// Which format `text` is in.
pub fn detect(text: &str) -> Option<TraceFormat> {
    let t = text.trim_start();
    if t.starts_with('[') {
        return Some(TraceFormat::ShareGpt);
    }
    let first = t.lines().next()?;
    let v: serde_json::Value = serde_json::from_str(first).ok()?;
    if v.get("hash_ids").is_some() {
        Some(TraceFormat::Mooncake)
    } else if v.get("turns").is_some() {
        Some(TraceFormat::MtBench)
    } else if v.get("conversations").is_some() {
        Some(TraceFormat::ShareGpt)
    } else {
        None
    }
}

/// Loads `path` (format auto-detected) and cuts it to `opts`.
pub fn load(path: &Path, opts: &TraceOptions) -> Result<Trace> {
    let name = path.display().to_string();
    let err = |detail: String| BenchError::Trace {
        path: name.clone(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let format = detect(&text).ok_or_else(|| {
        err("unknown format: expected Mooncake JSONL (hash_ids), ShareGPT JSON (conversations) or MT-bench JSONL (turns)".into())
    })?;
    let max_ms = opts.max_seconds.map(|s| s * 1000.0);
    let max_requests = opts.max_requests.unwrap_or(usize::MAX);
    let mut sessions = Vec::new();
    let mut requests = 0usize;
    match format {
        TraceFormat::Mooncake => {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let l: MooncakeLine =
                    serde_json::from_str(line).map_err(|e| err(format!("line {}: {e}", i + 1)))?;
                let start_ms = opts.start_seconds.max(0.0) * 1000.0;
                if l.timestamp < start_ms {
                    continue;
                }
                let timestamp = l.timestamp - start_ms;
                if max_ms.is_some_and(|m| timestamp >= m) || requests >= max_requests {
                    break;
                }
                if l.input_length == 0 || l.hash_ids.is_empty() {
                    continue;
                }
                requests += 1;
                sessions.push(Session {
                    start_ms: timestamp,
                    turns: vec![Turn {
                        prompt: TurnPrompt::Blocks {
                            input_length: l.input_length.min(l.hash_ids.len() * MOONCAKE_BLOCK),
                            hash_ids: l.hash_ids,
                        },
                        max_tokens: l.output_length.clamp(1, opts.max_output_tokens.max(1)),
                    }],
                });
            }
        }
        TraceFormat::ShareGpt | TraceFormat::MtBench => {
            let chats = chat_turns(format, &text).map_err(err)?;
            let mut rng = fastrand::Rng::with_seed(opts.seed);
            let rate = opts.chat_rate.max(1e-6);
            let mut at = 0.0f64;
            for turns in chats {
                if turns.is_empty() {
                    continue;
                }
                if max_ms.is_some_and(|m| at >= m) || requests + turns.len() > max_requests {
                    break;
                }
                requests += turns.len();
                sessions.push(Session {
                    start_ms: at,
                    turns: turns
                        .into_iter()
                        .map(|u| Turn {
                            prompt: TurnPrompt::User(u),
                            max_tokens: opts.max_output_tokens.max(1),
                        })
                        .collect(),
                });
                // Exponential inter-arrival times: a Poisson process of `rate` per second.
                at += -(1.0 - rng.f64()).ln() / rate * 1000.0;
            }
        }
    }
    if sessions.is_empty() {
        return Err(err("no request in the selected slice".into()));
    }
    let span_ms = sessions.iter().map(|s| s.start_ms).fold(0.0, f64::max);
    Ok(Trace {
        format,
        path: name,
        sessions,
        span_ms,
        think_ms: opts.think_ms.max(0.0),
    })
}

/// The user turns of every chat in `text`.
/// Converts a ShareGPT conversation file into a Mooncake-format trace (JSONL lines), so
/// the virtual-time sweep can replay it: conversation `c` starts at a Poisson arrival of
/// `rate` conversations per second (seeded); its user turn `k` arrives `think_ms` after
/// turn `k − 1` and sends the whole history so far (every earlier user message and the
/// recorded assistant answer, through the model's chat template and tokenizer); the
/// prompt's tokens are cut into 512-token blocks and each block gets the id of its
/// (previous block's id, block tokens) pair — so equal prefixes share ids, as in
/// Mooncake's traces; `output_length` is the recorded answer's token count. Returns the
/// lines, sorted by timestamp.
pub fn chat_to_mooncake(
    text: &str,
    tokenizer: &dyn kvgate_mock::tokenize::Tokenize,
    model: &str,
    rate: f64,
    think_ms: f64,
    seed: u64,
) -> std::result::Result<Vec<String>, String> {
    let entries: Vec<ShareGptEntry> = if text.trim_start().starts_with('[') {
        serde_json::from_str(text).map_err(|e| e.to_string())?
    } else {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(serde_json::from_str)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| e.to_string())?
    };
    let mut ids: std::collections::HashMap<(u64, Vec<u32>), u64> = Default::default();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut start = 0.0f64;
    let mut lines: Vec<(u64, String)> = Vec::new();
    for e in entries {
        let mut history: Vec<serde_json::Value> = Vec::new();
        let mut at = start;
        let mut turns = e.conversations.into_iter().peekable();
        let mut any = false;
        while let Some(t) = turns.next() {
            if !matches!(t.from.as_str(), "human" | "user") || t.value.trim().is_empty() {
                continue;
            }
            history.push(serde_json::json!({"role": "user", "content": t.value}));
            let answer = match turns.peek() {
                Some(n) if matches!(n.from.as_str(), "gpt" | "assistant" | "chatgpt") => {
                    turns.next().map(|n| n.value).unwrap_or_default()
                }
                _ => String::new(),
            };
            let body = serde_json::json!({"model": model, "messages": history});
            let tokens = tokenizer.chat(&body).map_err(|e| e.to_string())?;
            let output = tokenizer.text(&answer).map_or(1, |t| t.len().max(1));
            let mut parent = u64::MAX;
            let hash_ids: Vec<u64> = tokens
                .chunks(MOONCAKE_BLOCK)
                .map(|block| {
                    let next = ids.len() as u64;
                    let id = *ids.entry((parent, block.to_vec())).or_insert(next);
                    parent = id;
                    id
                })
                .collect();
            if !hash_ids.is_empty() {
                let ts = at.round() as u64;
                lines.push((
                    ts,
                    serde_json::json!({
                        "timestamp": ts,
                        "input_length": tokens.len(),
                        "output_length": output,
                        "hash_ids": hash_ids,
                    })
                    .to_string(),
                ));
                any = true;
            }
            history.push(serde_json::json!({"role": "assistant", "content": answer}));
            at += think_ms.max(0.0);
        }
        if any {
            start += -(1.0 - rng.f64()).ln() / rate.max(1e-9) * 1000.0;
        }
    }
    lines.sort_by_key(|(t, _)| *t);
    Ok(lines.into_iter().map(|(_, l)| l).collect())
}

fn chat_turns(format: TraceFormat, text: &str) -> std::result::Result<Vec<Vec<String>>, String> {
    let user = |c: Vec<ShareGptTurn>| -> Vec<String> {
        c.into_iter()
            .filter(|t| matches!(t.from.as_str(), "human" | "user"))
            .map(|t| t.value)
            .filter(|v| !v.trim().is_empty())
            .collect()
    };
    match format {
        TraceFormat::ShareGpt if text.trim_start().starts_with('[') => {
            let entries: Vec<ShareGptEntry> =
                serde_json::from_str(text).map_err(|e| e.to_string())?;
            Ok(entries.into_iter().map(|e| user(e.conversations)).collect())
        }
        TraceFormat::ShareGpt => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str::<ShareGptEntry>(l)
                    .map(|e| user(e.conversations))
                    .map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect(),
        TraceFormat::MtBench => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str::<MtBenchLine>(l)
                    .map(|q| q.turns)
                    .map_err(|e| format!("line {}: {e}", i + 1))
            })
            .collect(),
        TraceFormat::Mooncake => Err("not a chat trace".into()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    fn opts() -> TraceOptions {
        TraceOptions {
            start_seconds: 0.0,
            max_seconds: None,
            max_requests: None,
            max_output_tokens: 32,
            chat_rate: 1.0,
            think_ms: 0.0,
            seed: 1,
        }
    }

    fn write(name: &str, text: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("kvgate-trace-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn equal_hash_ids_give_equal_tokens_and_the_last_block_is_cut() {
        let a = synth_tokens(&[0, 1, 2], 1100);
        let b = synth_tokens(&[0, 1, 3], 1500);
        assert_eq!(a.len(), 1100);
        assert_eq!(b.len(), 1500);
        assert_eq!(a[..1024], b[..1024]);
        assert_ne!(a[1024..1100], b[1024..1100]);
        assert!(a.iter().all(|t| u64::from(*t) < SYNTH_VOCAB));
        assert_eq!(synth_tokens(&[5], 600).len(), 512);
    }

    #[test]
    fn detects_and_loads_each_format() {
        let moon = write(
            "m.jsonl",
            "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 500, \"hash_ids\": [0, 1]}\n\
             {\"timestamp\": 1500, \"input_length\": 700, \"output_length\": 5, \"hash_ids\": [0, 1]}\n\
             {\"timestamp\": 9000, \"input_length\": 10, \"output_length\": 5, \"hash_ids\": [2]}\n",
        );
        let mut o = opts();
        o.max_seconds = Some(5.0);
        let t = load(&moon, &o).unwrap();
        assert_eq!(t.format, TraceFormat::Mooncake);
        assert_eq!(t.requests(), 2);
        assert_eq!(t.sessions[0].turns[0].max_tokens, 32);
        assert_eq!(t.span_ms, 1500.0);
        let s = t.summary();
        assert!((s.infinite_cache_hit_ratio - 700.0 / 1300.0).abs() < 1e-9);
        // A window starting 1 s in: the second and third requests, shifted back by 1 s.
        o.start_seconds = 1.0;
        o.max_seconds = Some(10.0);
        let t = load(&moon, &o).unwrap();
        assert_eq!(t.requests(), 2);
        assert_eq!(t.sessions[0].start_ms, 500.0);
        assert_eq!(t.sessions[1].start_ms, 8000.0);

        let share = write(
            "s.json",
            r#"[{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}, {"from": "human", "value": "more"}]}, {"id": "b", "conversations": []}]"#,
        );
        let t = load(&share, &opts()).unwrap();
        assert_eq!(t.format, TraceFormat::ShareGpt);
        assert_eq!(t.sessions.len(), 1);
        assert_eq!(
            t.sessions[0].turns[1].prompt,
            TurnPrompt::User("more".into())
        );

        let mt = write(
            "q.jsonl",
            "{\"question_id\": 1, \"turns\": [\"a\", \"b\"]}\n{\"question_id\": 2, \"turns\": [\"c\", \"d\"]}\n",
        );
        let mut o = opts();
        o.max_requests = Some(3);
        let t = load(&mt, &o).unwrap();
        assert_eq!(t.format, TraceFormat::MtBench);
        assert_eq!(t.requests(), 2);
        let bad = write("x.jsonl", "{\"foo\": 1}\n");
        assert!(load(&bad, &opts()).is_err());
        for p in [moon, share, mt, bad] {
            let _ = std::fs::remove_file(p);
        }
    }
}
