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
        Ok(Splitter { by_first_byte })
    }

    /// Splits `text` into text pieces and added tokens (leftmost-longest, non-overlapping).
    pub(crate) fn split<'a>(&self, text: &'a str) -> Vec<Segment<'a>> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut piece_start = 0;
        let mut i = 0;
        while i < bytes.len() {
            let Some(rest) = text.get(i..) else {
                // Not a char boundary: no token can start here (tokens are whole UTF-8 strings).
                i += 1;
                continue;
            };
            let first = usize::from(bytes.get(i).copied().unwrap_or(0));
            let found = self
                .by_first_byte
                .get(first)
                .and_then(|list| list.iter().find(|(t, _)| rest.starts_with(&**t)));
            match found {
                Some((token, id)) => {
                    if let Some(piece) = text.get(piece_start..i).filter(|p| !p.is_empty()) {
                        out.push(Segment::Text(piece));
                    }
                    out.push(Segment::Token(*id));
                    i += token.len();
                    piece_start = i;
                }
                None => i += 1,
            }
        }
        if let Some(piece) = text.get(piece_start..).filter(|p| !p.is_empty()) {
            out.push(Segment::Text(piece));
        }
        out
    }
}
