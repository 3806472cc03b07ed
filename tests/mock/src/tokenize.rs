//! Tokenization hook: the [`Tokenize`] trait the engine uses when a request carries no
//! `nvext.token_data`, a deterministic word-level stand-in ([`WordTokenizer`]) used when
//! no real tokenizer is available, and the filler ("generated") text built from either.

use super::sequence::{Filler, FILLER_TEXT};
use serde_json::Value;

/// Why a prompt could not be tokenized (HTTP 400 or 500).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizeError {
    /// The request cannot be rendered (bad messages, template error).
    #[error("cannot render prompt: {0}")]
    BadRequest(String),
    /// The tokenizer failed.
    #[error("tokenizer failed: {0}")]
    Failed(String),
}

/// Turns prompts into token ids, as the model's serving engine would.
pub trait Tokenize: Send + Sync {
    /// Token ids of a chat request (`body` is the whole request: messages, tools, …),
    /// with the chat template applied and the generation prompt added.
    fn chat(&self, body: &Value) -> Result<Vec<u32>, TokenizeError>;
    /// Token ids of a text prompt (no special tokens added).
    fn text(&self, text: &str) -> Result<Vec<u32>, TokenizeError>;
    /// A short name for logs.
    fn name(&self) -> String;
}

/// Qwen's `<|im_start|>` id (ChatML).
pub const IM_START: u32 = 151_644;
/// Qwen's `<|im_end|>` id (ChatML).
pub const IM_END: u32 = 151_645;
const NEWLINE: u32 = 198;

/// A deterministic stand-in tokenizer: ChatML framing with Qwen's special-token ids, and
/// one id per whitespace-led word (`" word"`), hashed into `1000..151000`. Not the real
/// vocabulary, but stable: equal texts give equal ids, shared prefixes share ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct WordTokenizer;

impl WordTokenizer {
    fn word_id(piece: &str) -> u32 {
        // FNV-1a, folded into the ordinary-token range.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in piece.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        1000 + (h % 150_000) as u32
    }

    fn push_text(out: &mut Vec<u32>, text: &str) {
        let mut start = 0;
        let bytes = text.as_bytes();
        for (i, c) in text.char_indices() {
            // A piece ends before whitespace that follows a non-whitespace character.
            if i > start
                && c.is_whitespace()
                && bytes.get(i - 1).is_some_and(|b| !b.is_ascii_whitespace())
            {
                if let Some(p) = text.get(start..i) {
                    out.push(Self::word_id(p));
                }
                start = i;
            }
        }
        if let Some(p) = text.get(start..).filter(|p| !p.is_empty()) {
            out.push(Self::word_id(p));
        }
    }
}

/// The text of a message's `content` (a string, or text parts).
pub fn content_text(content: Option<&Value>) -> Result<String, TokenizeError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("")),
        Some(other) => Err(TokenizeError::BadRequest(format!(
            "unsupported content {other}"
        ))),
    }
}

impl Tokenize for WordTokenizer {
    fn chat(&self, body: &Value) -> Result<Vec<u32>, TokenizeError> {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .ok_or_else(|| TokenizeError::BadRequest("`messages` must be an array".into()))?;
        let mut out = Vec::new();
        for m in messages {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| TokenizeError::BadRequest("message without role".into()))?;
            out.push(IM_START);
            Self::push_text(&mut out, role);
            out.push(NEWLINE);
            Self::push_text(&mut out, &content_text(m.get("content"))?);
            out.push(IM_END);
            out.push(NEWLINE);
        }
        out.push(IM_START);
        Self::push_text(&mut out, "assistant");
        out.push(NEWLINE);
        Ok(out)
    }

    fn text(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        let mut out = Vec::new();
        Self::push_text(&mut out, text);
        Ok(out)
    }

    fn name(&self) -> String {
        "word-level stand-in".into()
    }
}

/// The filler the engine generates, tokenized word by word (`" word"`) with `tok` so
/// that each streamed token carries its own text. Words that take several tokens give their text
/// to the first and empty strings to the rest.
pub fn build_filler(tok: &dyn Tokenize) -> Filler {
    let mut pieces = Vec::new();
    for word in FILLER_TEXT.split_whitespace().map(|w| format!(" {w}")) {
        let Ok(ids) = tok.text(&word) else { continue };
        for (i, id) in ids.into_iter().enumerate() {
            pieces.push((id, if i == 0 { word.clone() } else { String::new() }));
        }
    }
    Filler::new(pieces)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;
    use serde_json::json;

    #[test]
    fn word_tokenizer_is_deterministic_and_prefix_stable() {
        let t = WordTokenizer;
        let a = t.text("hello big world").unwrap();
        let b = t.text("hello big world and more").unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(&b[..3], a.as_slice());
        assert_eq!(t.text("").unwrap(), Vec::<u32>::new());
        assert!(a.iter().all(|&id| (1000..151_000).contains(&id)));
    }

    #[test]
    fn chat_is_chatml_framed_and_multi_turn_extends_the_prefix() {
        let t = WordTokenizer;
        let one = t
            .chat(&json!({"messages": [{"role": "user", "content": "hi there"}]}))
            .unwrap();
        assert_eq!(one.first(), Some(&IM_START));
        let two = t
            .chat(&json!({"messages": [
                {"role": "user", "content": "hi there"},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                {"role": "user", "content": "more"}]}))
            .unwrap();
        // Everything before the generation prompt is shared.
        assert_eq!(&two[..one.len() - 3], &one[..one.len() - 3]);
        assert!(t.chat(&json!({"messages": [{"content": "x"}]})).is_err());
        assert!(t.chat(&json!({"messages": "x"})).is_err());
    }

    #[test]
    fn filler_words_carry_their_text() {
        let f = build_filler(&WordTokenizer);
        let (id, text) = f.piece(0);
        assert_eq!(text, " The");
        assert_eq!(WordTokenizer.text(text).unwrap(), vec![id]);
    }
}
