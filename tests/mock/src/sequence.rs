//! One request inside the mock scheduler: its tokens (prompt, then generated filler),
//! how many of them have KV computed, the physical blocks it holds and the block hashes
//! of its full blocks.

use super::cache::{BlockHash, BlockId};
use kvgate_core::hash::{chain, local_block_hash};

/// Identifies a request inside one engine.
pub type SeqId = u64;

/// A request as the scheduler receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRequest {
    /// Engine-wide id (the engine assigns it).
    pub id: SeqId,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Tokens to generate (at least 1).
    pub max_tokens: usize,
    /// Seed of the local block hashes (`kvgate_core::hash::block_seed`: LoRA / salt).
    pub hash_seed: u64,
    /// The prompt's KV was computed by a prefill worker and transferred: no prefill
    /// compute time here (disaggregated decode).
    pub prefilled: bool,
    /// Simulated arrival time in milliseconds.
    pub arrival_ms: f64,
}

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// In the waiting queue (new or preempted).
    Waiting,
    /// Computing its prompt (possibly in chunks) up to `prefill_target` tokens.
    Prefill,
    /// Generating one token per step.
    Decode,
}

/// Scheduler state of one request.
#[derive(Debug, Clone)]
pub struct Sequence {
    /// The request.
    pub req: NewRequest,
    /// Prompt followed by the tokens generated so far.
    pub tokens: Vec<u32>,
    /// Tokens generated so far (streamed to the client).
    pub generated: usize,
    /// Tokens whose KV is computed.
    pub computed: usize,
    /// Tokens to compute before sampling (set at admission: all tokens).
    pub prefill_target: usize,
    /// Physical blocks held, in sequence order.
    pub blocks: Vec<BlockId>,
    /// Leading blocks already committed to the prefix cache.
    pub committed: usize,
    /// Hashes of full blocks, computed lazily and kept across preemptions.
    pub hashes: Vec<BlockHash>,
    /// Prompt tokens found cached at the first admission.
    pub hit_tokens: Option<usize>,
    /// Simulated time of the first generated token.
    pub first_token_ms: Option<f64>,
    /// Current phase.
    pub phase: Phase,
}

impl Sequence {
    /// A waiting sequence for `req`.
    pub fn new(req: NewRequest) -> Self {
        let tokens = req.prompt.clone();
        Self {
            req,
            tokens,
            generated: 0,
            computed: 0,
            prefill_target: 0,
            blocks: Vec::new(),
            committed: 0,
            hashes: Vec::new(),
            hit_tokens: None,
            first_token_ms: None,
            phase: Phase::Waiting,
        }
    }

    /// Engine-wide id.
    pub fn id(&self) -> SeqId {
        self.req.id
    }

    /// Hashes of the first `n` full blocks (fewer if the sequence has fewer full blocks).
    pub fn block_hashes(&mut self, n: usize, block_size: usize) -> &[BlockHash] {
        let bs = block_size.max(1);
        let full = (self.tokens.len() / bs).min(n);
        while self.hashes.len() < full {
            let i = self.hashes.len();
            let Some(block) = self.tokens.get(i * bs..(i + 1) * bs) else {
                break;
            };
            let local = local_block_hash(block, self.req.hash_seed);
            let sequence = match self.hashes.last() {
                None => local,
                Some(prev) => chain(prev.sequence, local),
            };
            self.hashes.push(BlockHash { sequence, local });
        }
        self.hashes.get(..full).unwrap_or(&[])
    }

    /// Sequence hashes of the first `n` full blocks.
    pub fn sequence_hashes(&mut self, n: usize, block_size: usize) -> Vec<u64> {
        self.block_hashes(n, block_size)
            .iter()
            .map(|h| h.sequence)
            .collect()
    }

    /// Uncached prompt tokens still to compute (for load reports).
    pub fn pending_prefill_tokens(&self) -> usize {
        match self.phase {
            Phase::Waiting => self.tokens.len(),
            Phase::Prefill => self.prefill_target.saturating_sub(self.computed),
            Phase::Decode => 0,
        }
    }

    /// Whether every requested token has been generated.
    pub fn is_finished(&self) -> bool {
        self.generated >= self.req.max_tokens.max(1)
    }
}

/// The deterministic filler text the mock "generates": token ids and their text, in a
/// cycle. Built from a tokenizer so that a later turn that quotes the reply re-tokenizes
/// to (nearly) the same ids, as with a real model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filler {
    pieces: Vec<(u32, String)>,
}

impl Filler {
    /// A filler cycling through `pieces` (token id, text); an empty list becomes one piece.
    pub fn new(pieces: Vec<(u32, String)>) -> Self {
        if pieces.is_empty() {
            return Self {
                pieces: vec![(0, " ".to_string())],
            };
        }
        Self { pieces }
    }

    /// Token id and text of the `k`-th generated token.
    pub fn piece(&self, k: usize) -> (u32, &str) {
        let n = self.pieces.len().max(1);
        match self.pieces.get(k % n) {
            Some((id, text)) => (*id, text.as_str()),
            None => (0, " "),
        }
    }
}

/// The text the mock generates, word by word.
pub const FILLER_TEXT: &str =
    " The quick brown fox jumps over the lazy dog while the mock engine streams \
deterministic tokens so that tests can predict every reply and measure time to first token.";

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use kvgate_core::hash::BlockHasher;

    fn req(prompt: Vec<u32>) -> NewRequest {
        NewRequest {
            id: 1,
            prompt,
            max_tokens: 4,
            hash_seed: 1337,
            prefilled: false,
            arrival_ms: 0.0,
        }
    }

    #[test]
    fn lazy_hashes_match_the_core_hasher() {
        let prompt: Vec<u32> = (0..40).collect();
        let mut s = Sequence::new(req(prompt.clone()));
        let want = BlockHasher::new(16).hash(&prompt, None, None, usize::MAX);
        let got = s.block_hashes(usize::MAX, 16).to_vec();
        assert_eq!(got.len(), 2);
        assert_eq!(got.iter().map(|h| h.local).collect::<Vec<_>>(), want.local);
        assert_eq!(s.sequence_hashes(1, 16), want.sequence[..1].to_vec());
        // Growing the sequence extends the chain.
        s.tokens.extend(40..48);
        let all: Vec<u32> = (0..48).collect();
        let want = BlockHasher::new(16).hash(&all, None, None, usize::MAX);
        assert_eq!(s.sequence_hashes(usize::MAX, 16), want.sequence);
    }

    #[test]
    fn filler_cycles_and_never_is_empty() {
        let f = Filler::new(vec![(5, " a".into()), (6, " b".into())]);
        assert_eq!(f.piece(0), (5, " a"));
        assert_eq!(f.piece(3), (6, " b"));
        assert_eq!(Filler::new(Vec::new()).piece(7), (0, " "));
    }

    #[test]
    fn pending_prefill_depends_on_phase() {
        let mut s = Sequence::new(req(vec![1; 30]));
        assert_eq!(s.pending_prefill_tokens(), 30);
        s.phase = Phase::Prefill;
        s.prefill_target = 30;
        s.computed = 16;
        assert_eq!(s.pending_prefill_tokens(), 14);
        s.phase = Phase::Decode;
        assert_eq!(s.pending_prefill_tokens(), 0);
        assert!(!s.is_finished());
    }
}
