//! Splits a prompt at the tokenizer's added tokens exactly where the tokenizer itself splits it.
//!
//! `tokenizers` first cuts the raw text at every *non-normalized* added token (special or
//! not), found by a leftmost-longest, non-overlapping scan; each piece between them is then
//! normalized, pre-tokenized and encoded on its own. So `encode(text)` equals the
//! concatenation of `encode(piece)` and the token ids, and each piece can be cached by its
//! text. That holds as long as no such token has `single_word`, `lstrip` or `rstrip` (they
//! look at, or swallow, text around the match); otherwise [`Splitter::new`] refuses and the
//! caller treats the prompt as one piece. Special tokens are always matched (kvgate never
//! encodes them as text). Normalized added tokens stay inside pieces, where the tokenizer
//! handles them unchanged.

use tokenizers::pipeline::PipelineTokenizer;

/// A piece of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Segment<'a> {
    /// Text between added tokens (never empty).
    Text(&'a str),
    /// An added token, with its id.
    Token(u32),
}

/// Finds the non-normalized added tokens in a text.
#[derive(Debug, Clone)]
pub(crate) struct Splitter {
    /// Candidate tokens per first byte, longest first.
    by_first_byte: Vec<Vec<(Box<str>, u32)>>,
    /// The bytes some token starts with (the scan jumps from one to the next).
    firsts: Vec<u8>,
}

/// Why segmenting is off for a tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentationOff {
    /// An added token matches with context (`single_word`, `lstrip` or `rstrip`).
    ContextualToken(String),
}

impl Splitter {
    /// Builds the splitter, or says why splitting would not be exact for this tokenizer.
    pub(crate) fn new(tokenizer: &PipelineTokenizer) -> Result<Splitter, SegmentationOff> {
        let mut tokens: Vec<_> = tokenizer
            .get_added_vocabulary()
            .get_added_tokens_decoder()
            .into_iter()
            .collect();
        tokens.sort_by_key(|(id, _)| *id);
        let mut by_first_byte: Vec<Vec<(Box<str>, u32)>> = vec![Vec::new(); 256];
        for (id, token) in tokens {
            if token.normalized || token.content.is_empty() {
                continue;
            }
            if token.single_word || token.lstrip || token.rstrip {
                return Err(SegmentationOff::ContextualToken(token.content));
            }
            let first = usize::from(token.content.as_bytes().first().copied().unwrap_or(0));
            if let Some(list) = by_first_byte.get_mut(first) {
                list.push((token.content.into_boxed_str(), id));
            }
        }
        for list in &mut by_first_byte {
            // Longest first; equal lengths cannot both match at one position unless identical.
            list.sort_by_key(|t| std::cmp::Reverse(t.0.len()));
        }
        let firsts = (0..=u8::MAX)
            .filter(|&b| {
                by_first_byte
                    .get(usize::from(b))
                    .is_some_and(|l| !l.is_empty())
            })
            .collect();
        Ok(Splitter {
            by_first_byte,
            firsts,
        })
    }

    /// The first position at or after `from` holding a byte some token starts with.
    fn next_candidate(&self, bytes: &[u8], from: usize) -> Option<usize> {
        let rest = bytes.get(from..)?;
        let at = match *self.firsts.as_slice() {
            [] => None,
            [a] => memchr::memchr(a, rest),
            [a, b] => memchr::memchr2(a, b, rest),
            [a, b, c] => memchr::memchr3(a, b, c, rest),
            _ => rest.iter().position(|b| self.firsts.contains(b)),
        };
        at.map(|i| from + i)
    }

    /// Splits `text` into text pieces and added tokens (leftmost-longest, non-overlapping).
    pub(crate) fn split<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut piece_start = 0;
        let mut i = 0;
        // A token is whole UTF-8, so its bytes can only match at a char boundary of the
        // (valid UTF-8) text, and end at one.
        while let Some(at) = self.next_candidate(bytes, i) {
            let rest = bytes.get(at..).unwrap_or_default();
            let found = self
                .by_first_byte
                .get(usize::from(rest.first().copied().unwrap_or(0)))
                .and_then(|list| list.iter().find(|(t, _)| rest.starts_with(t.as_bytes())));
            match found {
                Some((token, id)) => {
                    if let Some(piece) = text.get(piece_start..at).filter(|p| !p.is_empty()) {
                        out.push(Segment::Text(piece));
                    }
                    out.push(Segment::Token(*id));
                    i = at + token.len();
                    piece_start = i;
                }
                None => i = at + 1,
            }
        }
        if let Some(piece) = text.get(piece_start..).filter(|p| !p.is_empty()) {
            out.push(Segment::Text(piece));
        }
        out
    }
}
