//! Ordering of one vLLM publisher's batches by their ZMQ sequence number: live batches,
//! replayed batches and the replay buffer merge into one gap-free stream, or a gap is
//! reported when the missing batches cannot be had. Pure logic, no sockets.
//!
//! ```text
//! live seq == next          → apply
//! live seq <  next          → duplicate (seq 0 after more: the publisher restarted)
//! live seq >  next          → replay from next (buffer live batches meanwhile), or a gap
//! replay first seq > asked  → the publisher no longer has them: gap
//! replay end / timeout      → drain the buffer in order
//! ```

use kvgate_core::events::vllm::VllmBatch;
use std::collections::BTreeMap;

/// Live batches buffered while a replay runs; the oldest is dropped beyond this.
pub const MAX_BUFFER: usize = 4096;

/// What the caller must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Apply this batch.
    Apply(VllmBatch),
    /// Batches `expected..got` are lost: reset the worker's index entries.
    Gap {
        /// First missing sequence.
        expected: u64,
        /// The sequence that came instead.
        got: u64,
    },
    /// The publisher restarted (sequence back to 0): reset the worker, no loss counted.
    Restart,
    /// Ask the replay socket for every batch from this sequence on.
    RequestReplay(u64),
}

#[derive(Debug, Clone, Copy)]
struct Replay {
    from: u64,
    first: bool,
}

/// The sequencer of one publisher.
#[derive(Debug, Default)]
pub struct Sequencer {
    next: Option<u64>,
    replay: Option<Replay>,
    buffer: BTreeMap<u64, VllmBatch>,
}

impl Sequencer {
    /// A sequencer that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next sequence expected, if any batch was seen.
    pub fn next(&self) -> Option<u64> {
        self.next
    }

    /// Whether a replay is running.
    pub fn replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// Starts a replay from `from` (e.g. at connect); live batches are buffered until
    /// [`Sequencer::replay_end`].
    pub fn start_replay(&mut self, from: u64) {
        self.replay = Some(Replay { from, first: true });
    }

    fn buffer(&mut self, seq: u64, batch: VllmBatch) {
        self.buffer.insert(seq, batch);
        while self.buffer.len() > MAX_BUFFER {
            self.buffer.pop_first();
        }
    }

    /// A live batch. `can_replay`: whether a replay socket is available.
    pub fn live(&mut self, seq: u64, batch: VllmBatch, can_replay: bool) -> Vec<Action> {
        if self.replay.is_some() {
            self.buffer(seq, batch);
            return Vec::new();
        }
        match self.next {
            Some(n) if seq > n && can_replay => {
                self.start_replay(n);
                self.buffer(seq, batch);
                vec![Action::RequestReplay(n)]
            }
            _ => self.accept(seq, batch),
        }
    }

    fn accept(&mut self, seq: u64, batch: VllmBatch) -> Vec<Action> {
        match self.next {
            None => {
                self.next = Some(seq.saturating_add(1));
                vec![Action::Apply(batch)]
            }
            Some(n) if seq == n => {
                self.next = Some(seq.saturating_add(1));
                vec![Action::Apply(batch)]
            }
            Some(n) if seq < n => {
                if seq == 0 && n > 1 {
                    self.next = Some(1);
                    vec![Action::Restart, Action::Apply(batch)]
                } else {
                    Vec::new()
                }
            }
            Some(n) => {
                self.next = Some(seq.saturating_add(1));
                vec![
                    Action::Gap {
                        expected: n,
                        got: seq,
                    },
                    Action::Apply(batch),
                ]
            }
        }
    }

    /// A batch from the replay socket.
    pub fn replay_batch(&mut self, seq: u64, batch: VllmBatch) -> Vec<Action> {
        let Some(r) = self.replay.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if r.first {
            r.first = false;
            if seq > r.from && self.next.is_some() {
                out.push(Action::Gap {
                    expected: r.from,
                    got: seq,
                });
                self.next = Some(seq);
            }
        }
        if self.next.is_some_and(|n| seq < n) {
            return out;
        }
        out.extend(self.accept(seq, batch));
        out
    }

    /// The replay ended (end marker or timeout): the buffered live batches follow.
    pub fn replay_end(&mut self) -> Vec<Action> {
        self.replay = None;
        let buffered = std::mem::take(&mut self.buffer);
        let mut out = Vec::new();
        for (seq, batch) in buffered {
            out.extend(self.accept(seq, batch));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(ts: f64) -> VllmBatch {
        VllmBatch {
            ts,
            events: Vec::new(),
            data_parallel_rank: None,
        }
    }

    fn applied(actions: &[Action]) -> Vec<f64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Apply(x) => Some(x.ts),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn in_order_duplicates_and_gaps_without_replay() {
        let mut s = Sequencer::new();
        assert_eq!(applied(&s.live(5, b(5.0), false)), vec![5.0]);
        assert!(s.live(5, b(5.0), false).is_empty());
        let a = s.live(8, b(8.0), false);
        assert_eq!(
            a.first(),
            Some(&Action::Gap {
                expected: 6,
                got: 8
            })
        );
        let a = s.live(0, b(0.0), false);
        assert_eq!(a.first(), Some(&Action::Restart));
    }

    #[test]
    fn gap_is_filled_by_replay_then_buffer() {
        let mut s = Sequencer::new();
        s.live(0, b(0.0), true);
        assert_eq!(s.live(3, b(3.0), true), vec![Action::RequestReplay(1)]);
        assert!(s.live(4, b(4.0), true).is_empty());
        assert_eq!(applied(&s.replay_batch(1, b(1.0))), vec![1.0]);
        assert_eq!(applied(&s.replay_batch(2, b(2.0))), vec![2.0]);
        assert_eq!(applied(&s.replay_batch(3, b(3.0))), vec![3.0]);
        assert_eq!(applied(&s.replay_end()), vec![4.0]);
        assert_eq!(s.next(), Some(5));
    }

    #[test]
    fn replay_without_history_is_a_gap_but_not_at_first_contact() {
        let mut s = Sequencer::new();
        s.start_replay(0);
        let a = s.replay_batch(10, b(10.0));
        assert_eq!(applied(&a), vec![10.0]);
        assert_eq!(a.len(), 1);
        s.replay_end();
        s.live(13, b(13.0), true);
        let a = s.replay_batch(12, b(12.0));
        assert_eq!(
            a.first(),
            Some(&Action::Gap {
                expected: 11,
                got: 12
            })
        );
    }
}
