//! Tokenizes a rendered prompt with `tokenizers`, capped at a token budget, through a per-instance segment cache.
//!
//! The prompt is cut at the tokenizer's added tokens (see `split`), each text segment is
//! looked up in a bounded LRU keyed by its text and encoded only on a miss, and the ids are
//! concatenated — equal to one full encode. In a multi-turn or agentic conversation every
//! earlier message is a segment seen before, so only the new messages are encoded.
//!
//! The cap: the router can use only complete KV blocks up to a configured number of tokens,
//! so encoding stops after `max_tokens` ids. A huge segment is encoded through a growing
//! prefix window: BPE pre-tokenization is local, so only the last words of a cut window can
//! differ from the full encode; the tokens of the last two words are dropped and the window
//! is doubled until enough stable tokens remain (tested against full encodes).

mod cache;
mod split;

pub use cache::{CacheConfig, CacheStats};
pub use split::SegmentationOff;

use cache::SegmentCache;
use split::{Segment, Splitter};
use tokenizers::Tokenizer;

use crate::error::{ApiError, Disposition};

/// Why a tokenizer could not be loaded or could not encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    /// `tokenizer.json` could not be loaded.
    #[error("cannot load tokenizer.json: {0}")]
    Load(String),
    /// Encoding failed inside `tokenizers`.
    #[error("tokenizer failed: {0}")]
    Encode(String),
}

impl ApiError for TokenizeError {
    fn status(&self) -> u16 {
        500
    }
    fn code(&self) -> &'static str {
        match self {
            TokenizeError::Load(_) => "tokenizer_unavailable",
            TokenizeError::Encode(_) => "tokenizer_error",
        }
    }
    fn disposition(&self) -> Disposition {
        Disposition::Forward
    }
}

/// How to encode one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Produce at most this many ids.
    pub max_tokens: usize,
    /// Add the tokenizer's special tokens (BOS/EOS of its post-processor), as HF's
    /// `add_special_tokens=True`. Chat prompts use false: the template already has them.
    pub add_special_tokens: bool,
}

/// The ids of one prompt and how they were obtained.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Encoded {
    /// Token ids, at most `max_tokens`.
    pub ids: Vec<u32>,
    /// True if `ids` is the whole prompt (the cap was not reached).
    pub complete: bool,
    /// Text segments answered by the cache.
    pub segments_hit: u32,
    /// Text segments that were encoded.
    pub segments_miss: u32,
    /// Ids that came from the cache.
    pub tokens_from_cache: usize,
}

/// A loaded tokenizer with its added-token splitter and segment cache (one per Envoy VM).
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    splitter: Result<Splitter, SegmentationOff>,
    /// Ids the post-processor puts before and after a single sequence, if it does so
    /// independently of the content (probed at load).
    affixes: Option<(Vec<u32>, Vec<u32>)>,
    cache: SegmentCache,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("segmentation", &self.splitter.as_ref().err())
            .field("affixes", &self.affixes)
            .field("cache", &self.cache.stats())
            .finish_non_exhaustive()
    }
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json`. Truncation and padding configured in the file are switched
    /// off: the cap is applied here, and padding would add ids the worker never sees.
    pub fn from_bytes(tokenizer_json: &[u8], cache: CacheConfig) -> Result<Self, TokenizeError> {
        let mut tokenizer = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| TokenizeError::Load(e.to_string()))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| TokenizeError::Load(e.to_string()))?;
        tokenizer.with_padding(None);
        let splitter = Splitter::new(&tokenizer);
        let affixes = probe_affixes(&tokenizer);
        Ok(PromptTokenizer {
            tokenizer,
            splitter,
            affixes,
            cache: SegmentCache::new(cache),
        })
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Why prompts are not split at added tokens for this tokenizer (`None`: they are).
    pub fn segmentation_off(&self) -> Option<&SegmentationOff> {
        self.splitter.as_ref().err()
    }

    /// Cumulative cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The reference: one uncached, uncapped encode of the whole text.
    pub fn encode_full(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Vec<u32>, TokenizeError> {
        let enc = self
            .tokenizer
            .encode_fast(text, add_special_tokens)
            .map_err(|e| TokenizeError::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes `text` through the segment cache, stopping at `opts.max_tokens` ids.
    pub fn encode(&mut self, text: &str, opts: EncodeOptions) -> Result<Encoded, TokenizeError> {
        let cap = opts.max_tokens;
        let (prefix, suffix) = match (&self.affixes, opts.add_special_tokens) {
            (_, false) => (Vec::new(), Vec::new()),
            (Some((p, s)), true) => (p.clone(), s.clone()),
            (None, true) => {
                // The post-processor depends on the content: no segmenting, no cache.
                let mut ids = self.encode_full(text, true)?;
                let complete = ids.len() <= cap;
                ids.truncate(cap);
                return Ok(Encoded {
                    ids,
                    complete,
                    segments_miss: 1,
                    ..Encoded::default()
                });
            }
        };
        let segments = match &self.splitter {
            Ok(splitter) => splitter.split(text),
            Err(_) if text.is_empty() => Vec::new(),
            Err(_) => vec![Segment::Text(text)],
        };
        let mut out = Encoded {
            ids: prefix,
            complete: true,
            ..Encoded::default()
        };
        for segment in segments {
            if out.ids.len() >= cap {
                out.complete = false;
                break;
            }
            match segment {
                Segment::Token(id) => out.ids.push(id),
                Segment::Text(s) => {
                    if let Some(ids) = self.cache.get(s) {
                        out.segments_hit += 1;
                        out.tokens_from_cache += ids.len();
                        out.ids.extend_from_slice(ids);
                        continue;
                    }
                    out.segments_miss += 1;
                    let need = cap - out.ids.len();
                    if s.len() > need.saturating_mul(8).saturating_add(4096) {
                        if let Some(ids) = self.encode_prefix(s, need)? {
                            out.ids.extend(ids);
                            out.complete = false;
                            break;
                        }
                    }
                    let ids = self.encode_full(s, false)?;
                    self.cache.put(s, &ids);
                    out.ids.extend(ids);
                }
            }
        }
        if out.complete {
            out.ids.extend(suffix);
        }
        if out.ids.len() > cap {
            out.ids.truncate(cap);
            out.complete = false;
        }
        Ok(out)
    }

    /// The first `need` ids of `s` from a growing prefix window, or `None` once the window
    /// would cover all of `s` (the caller then encodes it whole).
    fn encode_prefix(&self, s: &str, need: usize) -> Result<Option<Vec<u32>>, TokenizeError> {
        let mut window = need.saturating_mul(4).saturating_add(256);
        loop {
            if window >= s.len() {
                return Ok(None);
            }
            let cut = floor_char_boundary(s, window);
            let Some(head) = s.get(..cut) else {
                return Ok(None);
            };
            // `encode` (byte offsets) keeps word ids; `encode_fast` does not.
            let enc = self
                .tokenizer
                .encode(head, false)
                .map_err(|e| TokenizeError::Encode(e.to_string()))?;
            let stable = stable_prefix_len(enc.get_word_ids());
            if stable >= need {
                return Ok(Some(enc.get_ids().iter().take(need).copied().collect()));
            }
            window = window.saturating_mul(2);
        }
    }
}

/// Number of leading tokens not belonging to the last two words of a cut text: those are the
/// only ones the cut can change. 0 if word ids are missing.
fn stable_prefix_len(words: &[Option<u32>]) -> usize {
    let mut distinct = 0;
    let mut current = None;
    for (i, w) in words.iter().enumerate().rev() {
        let Some(w) = w else {
            return 0;
        };
        if current != Some(*w) {
            distinct += 1;
            current = Some(*w);
            if distinct == 3 {
                return i + 1;
            }
        }
    }
    0
}

fn floor_char_boundary(s: &str, mut at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    while at > 0 && !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Finds the ids the post-processor adds around a single sequence, by encoding a probe with
/// and without special tokens. `None` if the plain ids do not appear contiguously.
fn probe_affixes(tokenizer: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    let probe = "Hello world, 1 2 3.";
    let plain = tokenizer.encode_fast(probe, false).ok()?.get_ids().to_vec();
    let with = tokenizer.encode_fast(probe, true).ok()?.get_ids().to_vec();
    if plain.is_empty() || with.len() < plain.len() {
        return None;
    }
    let at = (0..=with.len() - plain.len())
        .find(|&i| with.get(i..i + plain.len()) == Some(plain.as_slice()))?;
    let prefix = with.get(..at)?.to_vec();
    let suffix = with.get(at + plain.len()..)?.to_vec();
    // The affixes must not depend on the content: check with a second probe.
    let plain2 = tokenizer.encode_fast("x", false).ok()?.get_ids().to_vec();
    let with2 = tokenizer.encode_fast("x", true).ok()?.get_ids().to_vec();
    let expected: Vec<u32> = prefix
        .iter()
        .chain(&plain2)
        .chain(&suffix)
        .copied()
        .collect();
    (with2 == expected).then_some((prefix, suffix))
}

#[cfg(test)]
mod tests;
