//! Tokenizes a rendered prompt with `tokenizers`, capped at a token budget, through a per-instance segment cache.
//!
//! The prompt is cut at the tokenizer's added tokens (see `split`), each text segment is
//! looked up in a bounded cache keyed by its text and encoded only on a miss, and the ids are
//! concatenated — equal to one full encode. In a multi-turn or agentic conversation every
//! earlier message is a segment seen before, so only the new messages are encoded. The
//! cache (`cache`) keeps segments seen once apart from those seen again, so one-off prompts
//! do not flush the ones that recur.
//!
//! The cap: the router can use only complete KV blocks up to a configured number of tokens,
//! so encoding stops after `max_tokens` ids. A huge segment is encoded through a growing
//! prefix window: BPE pre-tokenization is local, so only the last words of a cut window can
//! differ from the full encode; the tokens of the last two pre-tokens are dropped and the
//! window is doubled until enough stable tokens remain (tested against full encodes).
//!
//! Bounded work: a prompt costs at most the bytes that can hold the ids the router uses.
//! A segment is encoded no further than `need × MAX_BYTES_PER_ID` bytes (plus a margin) and
//! no further than the caller's byte budget (`max_tokenize_bytes`), and the ids stop before
//! any pre-token ("word") longer than [`MAX_WORD_BYTES`] — BPE on one huge word costs time
//! and memory superlinear in its length. A prompt cut this way is marked incomplete and its
//! whole length in ids is estimated from the bytes covered.
//!
//! `tokenizers` 1.0 reads only the canonical (`"version": "2.0"`) `tokenizer.json`; an older
//! file is converted on load, and [`canonical_json`] does that conversion ahead of time.

mod cache;
mod pack;
mod split;

pub use cache::{CacheConfig, CacheStats};
pub use pack::{is_packed, pack as pack_tokenizer, Unpacked};
pub use split::SegmentationOff;

use cache::SegmentCache;
use split::{Segment, Splitter};
use tokenizers::pipeline::{
    normalize_all, EncodeOptions as TkOptions, Model, Override, PipelineToken, PipelineTokenizer,
    PreTokenizer, PreTokenizerScratch,
};

use crate::error::{ApiError, Disposition};

/// Why a tokenizer could not be loaded or could not encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    /// `tokenizer.json` could not be loaded (or converted to the canonical form).
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

/// The longest pre-token ("word") encoded: a prompt's ids stop before a longer one (a
/// 4 MB run of letters would otherwise be one BPE word taking seconds).
pub const MAX_WORD_BYTES: usize = 4096;

/// Bytes of text that can hold one id, for the window that covers `need` ids (ids of real
/// text average 3–5 bytes; a text denser than this is routed on fewer ids).
pub const MAX_BYTES_PER_ID: usize = 16;

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
    /// Bytes of the text whose ids are in `ids` (all of it when complete).
    pub bytes_covered: usize,
}

impl Encoded {
    /// The whole prompt's length in ids: exact when complete, else extrapolated from the
    /// bytes covered (at least the ids produced).
    pub fn estimated_tokens(&self, text_bytes: usize) -> usize {
        if self.complete || self.bytes_covered == 0 {
            return self
                .ids
                .len()
                .max(if self.complete { 0 } else { text_bytes / 4 });
        }
        let est = (self.ids.len() as u128 * text_bytes as u128) / self.bytes_covered as u128;
        usize::try_from(est)
            .unwrap_or(usize::MAX)
            .max(self.ids.len())
    }
}

/// A tokenizer file as far as it can be read without building the model: a packed one
/// into owned tables (its bytes can be freed before the build, the peak of a load), a
/// `tokenizer.json` not at all.
#[derive(Debug)]
pub enum TokenizerFile<'a> {
    /// A packed tokenizer ([`pack_tokenizer`]), unpacked.
    Packed(Unpacked),
    /// A `tokenizer.json`.
    Json(&'a [u8]),
}

impl<'a> TokenizerFile<'a> {
    /// Reads `bytes`: unpacks a packed tokenizer, keeps a `tokenizer.json` as it is.
    pub fn read(bytes: &'a [u8]) -> Result<Self, TokenizeError> {
        if is_packed(bytes) {
            pack::unpack(bytes).map(Self::Packed)
        } else {
            Ok(Self::Json(bytes))
        }
    }
}

/// A loaded tokenizer with its added-token splitter and segment cache (one per Envoy VM).
pub struct PromptTokenizer {
    tokenizer: PipelineTokenizer,
    splitter: Result<Splitter, SegmentationOff>,
    /// Ids the post-processor puts before and after a single sequence, if it does so
    /// independently of the content (probed at load).
    affixes: Option<(Vec<u32>, Vec<u32>)>,
    /// Whether some added token is matched in normalized text: the prefix window then
    /// cannot count tokens per pre-token, and huge segments are encoded whole.
    normalized_added_tokens: bool,
    cache: SegmentCache,
    /// Reused output buffer of `encode`.
    buf: Vec<PipelineToken>,
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
    /// Loads a `tokenizer.json`, canonical (`"version": "2.0"`, see [`canonical_json`]) or
    /// older, or its packed form ([`pack_tokenizer`]). Truncation and padding configured in the file are ignored: the cap is applied
    /// here, and padding would add ids the worker never sees.
    pub fn from_bytes(tokenizer_json: &[u8], cache: CacheConfig) -> Result<Self, TokenizeError> {
        Self::from_staged(TokenizerFile::read(tokenizer_json)?, cache)
    }

    /// Loads a tokenizer file read with [`TokenizerFile::read`].
    pub fn from_staged(file: TokenizerFile<'_>, cache: CacheConfig) -> Result<Self, TokenizeError> {
        let tokenizer = match file {
            TokenizerFile::Packed(p) => p.build()?,
            TokenizerFile::Json(json) => Self::read_json(json)?,
        };
        Self::from_pipeline(tokenizer, cache)
    }

    fn read_json(tokenizer_json: &[u8]) -> Result<PipelineTokenizer, TokenizeError> {
        let text =
            std::str::from_utf8(tokenizer_json).map_err(|e| TokenizeError::Load(e.to_string()))?;
        // Reading a non-canonical file would fail only after parsing all of it: look first.
        let canonical;
        let text = if is_canonical(text) {
            text
        } else {
            canonical = canonical_json(tokenizer_json)?;
            canonical.as_str()
        };
        tokenizers::from_json(text).map_err(|e| TokenizeError::Load(e.to_string()))
    }

    fn from_pipeline(
        tokenizer: PipelineTokenizer,
        cache: CacheConfig,
    ) -> Result<Self, TokenizeError> {
        // Some pipelines load but cannot run in this build (a `Split` regex that is not one of
        // the GPT-family patterns the tokenizer runs natively): refuse them here, with the
        // reason, rather than on every request.
        let mut probe = Vec::new();
        encode_into(&tokenizer, "Hello world, 1 2 3.", false, &mut probe)
            .map_err(|e| TokenizeError::Load(format!("this tokenizer cannot run here: {e}")))?;
        let splitter = Splitter::new(&tokenizer);
        let affixes = probe_affixes(&tokenizer);
        let normalized_added_tokens = tokenizer
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .values()
            .any(|t| t.normalized);
        Ok(PromptTokenizer {
            tokenizer,
            splitter,
            affixes,
            normalized_added_tokens,
            cache: SegmentCache::new(cache),
            buf: Vec::new(),
        })
    }

    /// The underlying `tokenizers` pipeline.
    pub fn inner(&self) -> &PipelineTokenizer {
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
        let mut out = Vec::new();
        encode_into(&self.tokenizer, text, add_special_tokens, &mut out)?;
        Ok(PipelineToken::cast_slice(&out).to_vec())
    }

    /// Encodes `text` through the segment cache, stopping at `opts.max_tokens` ids.
    pub fn encode(&mut self, text: &str, opts: EncodeOptions) -> Result<Encoded, TokenizeError> {
        self.encode_bounded(text, opts, usize::MAX)
    }

    /// [`Self::encode`] reading at most `max_bytes` bytes of `text` (the ids then stop at
    /// the last word boundary that is certain before that point, and are incomplete).
    pub fn encode_bounded(
        &mut self,
        text: &str,
        opts: EncodeOptions,
        max_bytes: usize,
    ) -> Result<Encoded, TokenizeError> {
        let cap = opts.max_tokens;
        let (prefix, suffix) = match (&self.affixes, opts.add_special_tokens) {
            (_, false) => (Vec::new(), Vec::new()),
            (Some((p, s)), true) => (p.clone(), s.clone()),
            (None, true) => {
                // The post-processor depends on the content: no segmenting, no cache.
                let window = window_for(cap, max_bytes);
                if text.len() > window || self.long_word_at(text, window)?.is_some() {
                    // Too long to encode whole: the ids of a certain prefix, no affixes.
                    let mut out = Encoded {
                        segments_miss: 1,
                        ..Encoded::default()
                    };
                    let (ids, covered) = self.prefix_ids(text, cap, window)?;
                    out.ids = ids;
                    out.bytes_covered = covered;
                    return Ok(out);
                }
                let mut ids = self.encode_full(text, true)?;
                let complete = ids.len() <= cap;
                ids.truncate(cap);
                return Ok(Encoded {
                    ids,
                    complete,
                    segments_miss: 1,
                    bytes_covered: if complete { text.len() } else { 0 },
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
        // Bytes of text read so far (text segments, and the added tokens between them).
        let mut read = 0usize;
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
                        read += s.len();
                        continue;
                    }
                    out.segments_miss += 1;
                    let need = cap - out.ids.len();
                    let window = window_for(need, max_bytes.saturating_sub(read));
                    let long_word = if s.len() > MAX_WORD_BYTES {
                        self.long_word_at(s, window)?
                    } else {
                        None
                    };
                    if s.len() > window || long_word.is_some() {
                        let head = long_word.and_then(|at| s.get(..at)).unwrap_or(s);
                        let (ids, covered) = self.prefix_ids(head, need, window)?;
                        out.ids.extend(ids);
                        out.bytes_covered = read + covered;
                        out.complete = false;
                        break;
                    }
                    self.buf.clear();
                    encode_into(&self.tokenizer, s, false, &mut self.buf)?;
                    let ids = PipelineToken::cast_slice(&self.buf);
                    self.cache.put(s, ids);
                    out.ids.extend_from_slice(ids);
                    read += s.len();
                }
            }
        }
        if out.complete {
            out.bytes_covered = text.len();
        } else if out.bytes_covered == 0 {
            out.bytes_covered = read;
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

    /// Ids of a prefix of `s` certain to equal the full encode's (`s` is a cut of the
    /// prompt): at most `need`, from prefix windows growing up to `max_window` bytes; the
    /// ids of each window's last two pre-tokens are left out (they may change with the text
    /// after the cut). Returns the ids and the bytes they cover (estimated).
    fn prefix_ids(
        &self,
        s: &str,
        need: usize,
        max_window: usize,
    ) -> Result<(Vec<u32>, usize), TokenizeError> {
        if self.normalized_added_tokens {
            // Cannot count ids per pre-token: nothing is certain short of the whole text.
            return Ok((Vec::new(), 0));
        }
        let mut window = need.saturating_mul(4).saturating_add(256).min(max_window);
        let mut ids = Vec::new();
        loop {
            let cut = floor_char_boundary(s, window);
            let Some(head) = s.get(..cut) else {
                return Ok((Vec::new(), 0));
            };
            ids.clear();
            encode_into(&self.tokenizer, head, false, &mut ids)?;
            let stable = ids.len().saturating_sub(self.last_pretokens_len(head, 2)?);
            if stable >= need || window >= max_window || cut >= s.len() {
                let take = stable.min(need);
                let covered = if ids.is_empty() {
                    0
                } else {
                    (head.len() as u128 * take as u128 / ids.len() as u128) as usize
                };
                let ids = PipelineToken::cast_slice(&ids)
                    .iter()
                    .take(take)
                    .copied()
                    .collect();
                return Ok((ids, covered));
            }
            window = window.saturating_mul(2).min(max_window);
        }
    }

    /// Where the first pre-token longer than [`MAX_WORD_BYTES`] starts within the first
    /// `limit` bytes of `s`, if any. Such a pre-token needs a long run of bytes of one kind
    /// (whitespace or not), so a cheap scan for one comes first; only then is the text up
    /// to that run pre-tokenized (unnormalized: the boundary found is only where the ids
    /// stop, and the ids of the pre-tokens just before it are left out anyway).
    fn long_word_at(&self, s: &str, limit: usize) -> Result<Option<usize>, TokenizeError> {
        let end = floor_char_boundary(s, limit.saturating_add(MAX_WORD_BYTES + 1));
        let mut from = 0usize;
        let mut spans = Vec::new();
        while from < end {
            let bytes = s.as_bytes().get(from..end).unwrap_or_default();
            let Some(run_end) = long_run_end(bytes, MAX_WORD_BYTES / 2) else {
                return Ok(None);
            };
            // Pre-tokenize from a little before the run to a little after it.
            let run_end = from + run_end;
            let start = floor_char_boundary(s, run_end.saturating_sub(MAX_WORD_BYTES + 64));
            let stop = floor_char_boundary(s, run_end.saturating_add(MAX_WORD_BYTES + 1));
            let Some(scan) = s.get(start..stop) else {
                return Ok(None);
            };
            spans.clear();
            self.tokenizer
                .get_pre_tokenizer()
                .pre_tokenize(scan, &mut PreTokenizerScratch::default(), &mut spans)
                .map_err(|e| TokenizeError::Encode(e.to_string()))?;
            if let Some(sp) = spans
                .iter()
                .find(|sp| sp.end.saturating_sub(sp.start) as usize > MAX_WORD_BYTES)
            {
                return Ok(Some(start + sp.start as usize));
            }
            from = stop.max(from + 1);
        }
        Ok(None)
    }

    /// How many ids the last `n` pre-tokens ("words") of `text` encode to: normalized,
    /// pre-tokenized and run through the model as the pipeline does (without added tokens
    /// matched in normalized text, which `encode_prefix` rules out first).
    fn last_pretokens_len(&self, text: &str, n: usize) -> Result<usize, TokenizeError> {
        let err = |e: tokenizers::Error| TokenizeError::Encode(e.to_string());
        let normalized = normalize_all(self.tokenizer.get_normalizers(), text, 0).map_err(err)?;
        let mut spans = Vec::new();
        self.tokenizer
            .get_pre_tokenizer()
            .pre_tokenize(&normalized, &mut PreTokenizerScratch::default(), &mut spans)
            .map_err(err)?;
        let last = spans.get(spans.len().saturating_sub(n)..).unwrap_or(&[]);
        let model = self.tokenizer.get_model();
        let mut out = Vec::new();
        model
            .tokenize_spans(&normalized, last, &mut model.init_scratch(), &mut out)
            .map_err(err)?;
        Ok(out.len())
    }
}

/// Converts a `tokenizer.json` of any version into the canonical `"version": "2.0"` form that
/// `tokenizers` 1.0 reads directly (compact JSON). Loading it skips the conversion, which
/// parses the whole file into a JSON tree first.
pub fn canonical_json(tokenizer_json: &[u8]) -> Result<String, TokenizeError> {
    let load = |e: String| TokenizeError::Load(e);
    let mut value: serde_json::Value =
        serde_json::from_slice(tokenizer_json).map_err(|e| load(e.to_string()))?;
    tokenizers::canonicalize_value(&mut value).map_err(|e| load(e.to_string()))?;
    serde_json::to_string(&value).map_err(|e| load(e.to_string()))
}

/// Whether a `tokenizer.json` opens with `"version": "2.0"`, as the canonical form does (else
/// it is converted; converting a canonical file is harmless, it is a fixed point).
fn is_canonical(text: &str) -> bool {
    let head: String = text
        .chars()
        .take(64)
        .filter(|c| !c.is_whitespace())
        .collect();
    head.starts_with(r#"{"version":"2.0""#)
}

/// One encode of `text` appended to `out`, with the file's truncation and padding off.
fn encode_into(
    tokenizer: &PipelineTokenizer,
    text: &str,
    add_special_tokens: bool,
    out: &mut Vec<PipelineToken>,
) -> Result<(), TokenizeError> {
    let options = TkOptions {
        add_special_tokens,
        encode_special_tokens: false,
        padding: Override::Off,
        truncation: Override::Off,
    };
    tokenizer
        .encode_into(text, &options, out)
        .map_err(|e| TokenizeError::Encode(e.to_string()))
}

/// The bytes of text read to find `need` ids, within `budget`.
fn window_for(need: usize, budget: usize) -> usize {
    need.saturating_mul(MAX_BYTES_PER_ID)
        .saturating_add(4096)
        .min(budget)
}

/// Where the first run of more than `longer_than` bytes of one kind (ASCII whitespace or
/// not) reaches that length: the first `e` with `bytes[e - longer_than ..= e]` all of one
/// kind. Tests the last byte of each candidate window and walks back from it; a byte of the
/// other kind at `j` rules out every window holding both `j` and the tested byte, so the next
/// candidate ends `longer_than + 1` bytes after `j`. Ordinary text costs a few bytes read per
/// window instead of every byte.
fn long_run_end(bytes: &[u8], longer_than: usize) -> Option<usize> {
    let ws = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_whitespace);
    let mut end = longer_than;
    while end < bytes.len() {
        let kind = ws(end);
        let start = end - longer_than;
        match (start..end).rev().find(|&j| ws(j) != kind) {
            None => return Some(end),
            Some(j) => end = j + longer_than + 1,
        }
    }
    None
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
fn probe_affixes(tokenizer: &PipelineTokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    let encode = |text: &str, special: bool| {
        let mut out = Vec::new();
        encode_into(tokenizer, text, special, &mut out).ok()?;
        Some(PipelineToken::cast_slice(&out).to_vec())
    };
    let probe = "Hello world, 1 2 3.";
    let plain = encode(probe, false)?;
    let with = encode(probe, true)?;
    if plain.is_empty() || with.len() < plain.len() {
        return None;
    }
    let at = (0..=with.len() - plain.len())
        .find(|&i| with.get(i..i + plain.len()) == Some(plain.as_slice()))?;
    let prefix = with.get(..at)?.to_vec();
    let suffix = with.get(at + plain.len()..)?.to_vec();
    // The affixes must not depend on the content: check with a second probe.
    let plain2 = encode("x", false)?;
    let with2 = encode("x", true)?;
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
