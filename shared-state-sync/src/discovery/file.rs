//! Static discovery: a JSON file listing workers (an array of `WorkerInfo`, or
//! `{"workers": [...]}`), polled every second and reloaded when its modification time
//! or size changes. A file that stops parsing keeps the last good list.

use super::{Discovery, Sink, Task, Update};
use crate::workers::Source;
use kvgate_core::workers::WorkerInfo;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a workers file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It could not be read.
    #[error("cannot read workers file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It is not a list of workers.
    #[error("workers file {path} is invalid: {detail}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileShape {
    List(Vec<WorkerInfo>),
    Object { workers: Vec<WorkerInfo> },
}

/// Reads and validates a workers file.
pub fn read_workers(path: &Path) -> Result<Vec<WorkerInfo>, FileError> {
    let bytes = std::fs::read(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |detail: String| FileError::Invalid {
        path: path.to_path_buf(),
        detail,
    };
    // Parse as a value first so the error names the worker that is wrong.
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    let workers = match serde_json::from_value::<FileShape>(value.clone()) {
        Ok(FileShape::List(w)) | Ok(FileShape::Object { workers: w }) => w,
        Err(_) => {
            let items = value
                .as_array()
                .or_else(|| value.get("workers").and_then(|w| w.as_array()))
                .ok_or_else(|| invalid("expected an array of workers".into()))?;
            for (i, item) in items.iter().enumerate() {
                if let Err(e) = serde_json::from_value::<WorkerInfo>(item.clone()) {
                    return Err(invalid(format!("worker #{i}: {e}")));
                }
            }
            return Err(invalid("expected an array of workers".into()));
        }
    };
    let mut ids: Vec<u64> = workers.iter().map(|w| w.instance_id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w.first() == w.get(1)) {
        return Err(invalid(format!(
            "instance_id {} listed twice",
            w.first().copied().unwrap_or_default()
        )));
    }
    Ok(workers)
}

/// Watches a workers file.
pub struct FileDiscovery {
    path: PathBuf,
    poll: Duration,
    seen: Option<(SystemTime, u64)>,
}

impl FileDiscovery {
    /// A watcher of `path`, polled every `poll`. `loaded` says whether the caller has
    /// already applied the current contents (then only changes are reported).
    pub fn new(path: PathBuf, poll: Duration, loaded: bool) -> Self {
        let seen = if loaded { stamp(&path) } else { None };
        FileDiscovery { path, poll, seen }
    }
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl Discovery for FileDiscovery {
    fn name(&self) -> &'static str {
        "workers-file"
    }

    fn run(mut self: Box<Self>, sink: Arc<dyn Sink>) -> Task {
        Box::pin(async move {
            let mut tick = tokio::time::interval(self.poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = stamp(&self.path);
                if now.is_none() || now == self.seen {
                    continue;
                }
                match read_workers(&self.path) {
                    Ok(workers) => {
                        tracing::info!(path = %self.path.display(), workers = workers.len(), "workers file loaded");
                        sink.update(Update::Replace(Source::File, workers));
                        self.seen = now;
                    }
                    Err(e) => {
                        tracing::warn!("{e}; keeping the previous list");
                        self.seen = now;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn both_shapes_and_named_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.json");
        std::fs::write(
            &p,
            r#"[{"instance_id": 1, "endpoint": "127.0.0.1:1", "model": "m"}]"#,
        )
        .unwrap();
        assert_eq!(read_workers(&p).unwrap().len(), 1);
        std::fs::write(&p, r#"{"workers": []}"#).unwrap();
        assert!(read_workers(&p).unwrap().is_empty());
        std::fs::write(
            &p,
            r#"[{"instance_id": 1, "endpoint": "x", "model": "m", "colour": 1}]"#,
        )
        .unwrap();
        let e = read_workers(&p).unwrap_err().to_string();
        assert!(e.contains("worker #0") && e.contains("colour"), "{e}");
    }
}
