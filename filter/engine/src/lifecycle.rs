//! After the decision: the first response byte ends the prefill, streamed SSE chunks
//! count output tokens (when output tracking is on), and the end of the stream — however
//! it ended — frees the booking. Every step is idempotent.

use crate::engine::Engine;
use kvgate_core::sync::BookKind;

/// Counts SSE events carrying data (each OpenAI stream chunk is one event), excluding the
/// final `[DONE]`.
pub fn sse_events(chunk: &[u8]) -> u64 {
    let mut n = 0u64;
    let mut rest = chunk;
    while let Some(pos) = find(rest, b"data:") {
        let after = rest.get(pos + 5..).unwrap_or_default();
        let trimmed = after.strip_prefix(b" ").unwrap_or(after);
        if !trimmed.starts_with(b"[DONE]") {
            n += 1;
        }
        rest = after;
    }
    n
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Engine {
    /// A decode worker's `x-kvgate-prefill-unreachable` value: each listed id that is a
    /// known prefill worker is kept out of prefill picks until `now_ms +
    /// prefill_quarantine_ms` (0: off). Returns how many were.
    pub fn prefill_unreachable(&mut self, value: &str, now_ms: u64) -> usize {
        let ms = self.cfg.router.prefill_quarantine_ms;
        if ms == 0 {
            return 0;
        }
        let n = self
            .quarantine
            .report(value, self.fleet.all(), now_ms.saturating_add(ms));
        self.counters.prefill_quarantined += n as u64;
        n
    }

    /// The response started (headers or first body byte) at `now_ms`: the prefill is
    /// done, and its worker's prefill rate learns from it. Returns whether the booked
    /// load changed.
    pub fn response_started(&mut self, ctx: u32, now_ms: u64) -> bool {
        if let Some((worker, prefill)) = self.book.prefilling(&ctx) {
            self.prefill_rates.observe(worker, prefill, now_ms);
        }
        let changed = self.book.prefill_done(&ctx);
        if changed {
            self.note(ctx, BookKind::PrefillDone);
        }
        changed
    }

    /// A response body chunk of a streamed response. Returns whether the load changed.
    pub fn response_chunk(&mut self, ctx: u32, chunk: &[u8], now_ms: u64) -> bool {
        let mut changed = self.response_started(ctx, now_ms);
        if self.cfg.router.track_output_blocks {
            let n = sse_events(chunk);
            changed |= self.book.output_tokens(&ctx, n) > 0;
            if n > 0 && self.book.contains(&ctx) {
                self.note(ctx, BookKind::OutputTokens(n));
            }
        }
        changed
    }

    /// The stream ended (completed, aborted, reset, or answered locally). Idempotent.
    pub fn request_done(&mut self, ctx: u32) -> bool {
        let freed = self.book.free(&ctx);
        if freed {
            self.note(ctx, BookKind::Free);
        }
        freed
    }

    /// Expires bookings older than the configured TTL (lost `on_log` calls).
    pub fn expire(&mut self, now_ms: u64) -> bool {
        // Expired predictions are ignored by queries; the sweep that drops them runs here,
        // on the tick, never in a request's path.
        self.approx.expire_when_worth_it(now_ms);
        !self
            .book
            .expire(now_ms, self.cfg.router.active_request_ttl_ms)
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_sse_data_events() {
        let chunk = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        assert_eq!(sse_events(chunk), 2);
        assert_eq!(sse_events(b""), 0);
        assert_eq!(sse_events(b"data:{}\n\n"), 1);
    }
}
