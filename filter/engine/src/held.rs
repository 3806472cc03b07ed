//! Streams the filter holds while their request body arrives, and the tick's watchdog over
//! them: a stream held at its headers that never gets a body callback (Envoy without
//! `allow_on_headers_stop_iteration` turns the pause into "stop everything") is resumed
//! unrouted; a body still incomplete after `request_timeout_ms` is answered 408. No stream
//! is ever left paused.

use crate::outcome::Reply;
use kvgate_prompt::error::openai_error_body;
use std::collections::{BTreeMap, BTreeSet};

/// What the tick asks the glue to do to a held stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamAction {
    /// Resume the stream without a decision (fail-open).
    Resume(u32),
    /// Answer the stream locally.
    Reply(u32, Reply),
    /// Decide the stream now: it waited for its model (loaded, failed, or out of time;
    /// see `model_wait`). The glue calls `Stream::decide` with the body it kept.
    Decide(u32),
}

#[derive(Debug, Clone, Copy)]
struct Hold {
    since_ms: u64,
    body_seen: bool,
}

/// The held streams of one VM.
#[derive(Debug, Default)]
pub struct Holds {
    held: BTreeMap<u32, Hold>,
    /// Streams the watchdog resumed or answered: their later callbacks pass untouched.
    closed: BTreeSet<u32>,
    /// A body callback arrived while a stream was held at its headers: this Envoy honours
    /// the pause (the flag is set), so a stream without body callbacks is a slow client.
    pause_honoured: bool,
}

impl Holds {
    /// Stream `ctx` is held at its headers since `now_ms`.
    pub fn hold(&mut self, ctx: u32, now_ms: u64) {
        self.held.insert(
            ctx,
            Hold {
                since_ms: now_ms,
                body_seen: false,
            },
        );
    }

    /// A request body callback arrived for `ctx`.
    pub fn body(&mut self, ctx: u32) {
        if let Some(h) = self.held.get_mut(&ctx) {
            h.body_seen = true;
            self.pause_honoured = true;
        }
    }

    /// `ctx` is no longer held (decided, answered, passed, or ended).
    pub fn release(&mut self, ctx: u32) {
        self.held.remove(&ctx);
    }

    /// `ctx` ended: forget it.
    pub fn end(&mut self, ctx: u32) {
        self.held.remove(&ctx);
        self.closed.remove(&ctx);
    }

    /// Whether the watchdog already resumed or answered `ctx`.
    pub fn is_closed(&self, ctx: u32) -> bool {
        self.closed.contains(&ctx)
    }

    /// Whether this Envoy is known to honour a pause at the headers.
    pub fn pause_honoured(&self) -> bool {
        self.pause_honoured
    }

    /// Streams held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no stream is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// What to do at `now_ms` with streams held too long.
    pub fn due(&mut self, now_ms: u64, watchdog_ms: u64, timeout_ms: u64) -> Vec<StreamAction> {
        let mut out = Vec::new();
        for (&ctx, h) in &self.held {
            let waited = now_ms.saturating_sub(h.since_ms);
            if !h.body_seen && !self.pause_honoured && waited >= watchdog_ms {
                out.push(StreamAction::Resume(ctx));
            } else if waited >= timeout_ms {
                out.push(StreamAction::Reply(ctx, timeout_reply(timeout_ms)));
            }
        }
        for a in &out {
            let ctx = match a {
                StreamAction::Resume(c) | StreamAction::Reply(c, _) | StreamAction::Decide(c) => *c,
            };
            self.held.remove(&ctx);
            self.closed.insert(ctx);
        }
        out
    }
}

/// The 408 answer to a request whose body did not arrive in time.
pub fn timeout_reply(timeout_ms: u64) -> Reply {
    let code = "request_timeout";
    let msg = format!("the request body did not arrive within {timeout_ms} ms");
    Reply {
        status: 408,
        body: openai_error_body(&msg, "invalid_request_error", code, None),
        code,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn without_body_callbacks_streams_are_resumed_until_the_pause_is_seen_to_work() {
        let mut h = Holds::default();
        h.hold(1, 0);
        h.hold(2, 100);
        assert!(h.due(499, 500, 30_000).is_empty());
        assert_eq!(h.due(500, 500, 30_000), vec![StreamAction::Resume(1)]);
        assert!(h.is_closed(1));
        // A body callback on a held stream proves Envoy honours the pause.
        h.hold(3, 500);
        h.body(3);
        assert!(h.pause_honoured());
        assert!(
            h.due(10_000, 500, 30_000).is_empty(),
            "stream 2 is a slow client now"
        );
        let due = h.due(30_100, 500, 30_000);
        assert_eq!(due.len(), 1);
        let StreamAction::Reply(2, r) = &due[0] else {
            panic!("{due:?}")
        };
        assert_eq!((r.status, r.code), (408, "request_timeout"));
        assert_eq!(
            h.due(30_500, 500, 30_000).len(),
            1,
            "stream 3 times out too"
        );
        assert!(h.is_empty());
        h.end(1);
        assert!(!h.is_closed(1));
    }

    #[test]
    fn a_body_that_is_still_arriving_is_cut_at_the_timeout() {
        let mut h = Holds::default();
        h.hold(7, 1_000);
        h.body(7);
        assert!(h.due(1_999, 500, 1_000).is_empty());
        assert!(matches!(
            h.due(2_000, 500, 1_000).as_slice(),
            [StreamAction::Reply(7, _)]
        ));
        h.hold(8, 0);
        h.release(8);
        assert!(
            h.due(1_000_000, 500, 1_000).is_empty(),
            "released streams are not watched"
        );
    }
}
