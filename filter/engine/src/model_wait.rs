//! Requests parked until their VM has the model's tokenizer: in sidecar mode a VM fetches
//! a model's files only once it handles streams, so its first requests wait (held, body
//! complete) until the files are loaded or `model_wait_ms` passes, and are then decided —
//! with the tokenizer, or without it past the limit (counted). A stream waits at most once.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
struct Wait {
    model: String,
    since_ms: u64,
}

/// The parked streams of one VM.
#[derive(Debug, Default)]
pub struct ModelWaits {
    waiting: BTreeMap<u32, Wait>,
    /// Streams to decide now (their model loaded, failed, or their time ran out).
    ready: Vec<u32>,
    /// Streams that have waited once (until they end): they are decided, never parked again.
    waited: BTreeSet<u32>,
}

impl ModelWaits {
    /// Whether stream `ctx` may still be parked (it never was).
    pub fn may_wait(&self, ctx: u32) -> bool {
        !self.waited.contains(&ctx)
    }

    /// Stream `ctx` waits for `model` since `now_ms`.
    pub fn park(&mut self, ctx: u32, model: &str, now_ms: u64) {
        self.waited.insert(ctx);
        self.waiting.insert(
            ctx,
            Wait {
                model: model.to_string(),
                since_ms: now_ms,
            },
        );
    }

    /// The models streams wait for.
    pub fn models(&self) -> BTreeSet<String> {
        self.waiting.values().map(|w| w.model.clone()).collect()
    }

    /// `model` is loaded (or failed to load): its streams are to be decided now.
    pub fn model_done(&mut self, model: &str) {
        let done: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.model == model)
            .map(|(&c, _)| c)
            .collect();
        for c in done {
            self.waiting.remove(&c);
            self.ready.push(c);
        }
    }

    /// Streams that waited `limit_ms` or longer at `now_ms` are to be decided now; returns
    /// how many timed out.
    pub fn expire(&mut self, now_ms: u64, limit_ms: u64) -> usize {
        let due: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(_, w)| now_ms.saturating_sub(w.since_ms) >= limit_ms)
            .map(|(&c, _)| c)
            .collect();
        for c in &due {
            self.waiting.remove(c);
            self.ready.push(*c);
        }
        due.len()
    }

    /// The streams to decide now (each returned once).
    pub fn take_ready(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.ready)
    }

    /// Streams parked now.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no stream is parked.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Stream `ctx` ended: forget it.
    pub fn end(&mut self, ctx: u32) {
        self.waiting.remove(&ctx);
        self.waited.remove(&ctx);
        self.ready.retain(|&c| c != ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parked_streams_leave_once_on_load_or_timeout_and_never_park_twice() {
        let mut w = ModelWaits::default();
        assert!(w.may_wait(1));
        w.park(1, "a", 100);
        w.park(2, "b", 150);
        w.park(3, "a", 200);
        assert!(!w.may_wait(1));
        assert_eq!(w.len(), 3);
        assert_eq!(w.expire(1_099, 1_000), 0);
        w.model_done("a");
        assert_eq!(w.take_ready(), vec![1, 3]);
        assert!(w.take_ready().is_empty());
        assert_eq!(w.expire(1_150, 1_000), 1);
        assert_eq!(w.take_ready(), vec![2]);
        assert!(w.is_empty());
        assert!(!w.may_wait(2), "a stream waits once");
        w.end(2);
        assert!(w.may_wait(2), "its id may be reused after it ended");
        w.park(4, "c", 0);
        w.end(4);
        assert_eq!(w.expire(10_000, 1), 0);
        assert!(w.take_ready().is_empty());
    }
}
