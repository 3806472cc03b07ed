//! The request log: one JSON line per received request, appended to a file that several
//! worker processes share. Each line is written with a single `write` on a file opened
//! with `O_APPEND`, so lines from different processes never interleave.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// One line of the request log.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLine {
    /// Instance id of the worker that served the request.
    pub worker_id: u64,
    /// `x-request-id`, or an id the worker made up.
    pub request_id: String,
    /// The `model` field.
    pub model: Option<String>,
    /// Prompt token ids.
    pub token_ids: Vec<u32>,
    /// Routing headers received (lower-case names).
    pub routing_headers: BTreeMap<String, String>,
    /// Prompt tokens served from this worker's prefix cache (None: never admitted).
    pub prefix_hit_tokens: Option<usize>,
    /// Wall-clock milliseconds from receipt to the first token (None: no token).
    pub ttft_ms: Option<f64>,
    /// Simulated milliseconds from admission queue entry to the first token
    /// (`ttft_ms` without HTTP overhead, multiplied by the speedup).
    pub sim_ttft_ms: Option<f64>,
    /// Data-parallel rank that served it.
    pub dp_rank: u32,
    /// The worker's role.
    pub role: &'static str,
    /// Prefill worker used (disaggregated decode), if any.
    pub prefill_worker_id: Option<u64>,
    /// Prompt tokens the prefill worker found cached, if a prefill worker was used.
    pub prefill_hit_tokens: Option<usize>,
    /// Unix time of receipt, milliseconds.
    pub received_at_ms: u64,
    /// Why the request failed, if it did.
    pub error: Option<String>,
}

/// An append-only JSON-lines file.
#[derive(Debug)]
pub struct RequestLog {
    file: Mutex<File>,
}

impl RequestLog {
    /// Opens (creating if needed) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Appends one line (best effort: errors are logged, not returned).
    pub fn write(&self, line: &LogLine) {
        let mut buf = match serde_json::to_vec(line) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("request log: {e}");
                return;
            }
        };
        buf.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = f.write_all(&buf) {
            tracing::warn!("request log: {e}");
        }
    }
}

/// A log line written exactly once: when [`Self::finish`] is called, or when dropped
/// (client gone, error) with whatever is known by then.
#[derive(Debug)]
pub struct PendingLine {
    log: Option<Arc<RequestLog>>,
    line: Option<LogLine>,
}

impl PendingLine {
    /// A pending line for `log` (None: nothing will be written).
    pub fn new(log: Option<Arc<RequestLog>>, line: LogLine) -> Self {
        Self {
            log,
            line: Some(line),
        }
    }

    /// Edits the line before it is written.
    pub fn update(&mut self, f: impl FnOnce(&mut LogLine)) {
        if let Some(l) = self.line.as_mut() {
            f(l);
        }
    }

    /// Writes the line now.
    pub fn finish(&mut self) {
        if let (Some(log), Some(line)) = (&self.log, self.line.take()) {
            log.write(&line);
        }
    }
}

impl Drop for PendingLine {
    fn drop(&mut self) {
        self.finish();
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

    fn line(id: &str) -> LogLine {
        LogLine {
            worker_id: 1,
            request_id: id.into(),
            model: None,
            token_ids: vec![1, 2],
            routing_headers: BTreeMap::new(),
            prefix_hit_tokens: None,
            ttft_ms: None,
            sim_ttft_ms: None,
            dp_rank: 0,
            role: "aggregated",
            prefill_worker_id: None,
            prefill_hit_tokens: None,
            received_at_ms: 0,
            error: None,
        }
    }

    #[test]
    fn lines_are_written_once_and_appended() {
        let path =
            std::env::temp_dir().join(format!("kvgate-mock-log-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let log = Arc::new(RequestLog::open(&path).unwrap());
        let other = Arc::new(RequestLog::open(&path).unwrap());
        let mut p = PendingLine::new(Some(log.clone()), line("a"));
        p.update(|l| l.prefix_hit_tokens = Some(16));
        p.finish();
        p.finish();
        drop(p);
        drop(PendingLine::new(Some(other), line("b")));
        drop(PendingLine::new(None, line("c")));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["request_id"], "a");
        assert_eq!(lines[0]["prefix_hit_tokens"], 16);
        assert_eq!(lines[1]["request_id"], "b");
        let _ = std::fs::remove_file(&path);
    }
}
