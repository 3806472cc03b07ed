//! OpenAI response shapes: streaming chunks (`chat.completion.chunk`, `text_completion`),
//! whole responses, usage blocks, SSE framing and error bodies.

use super::request::ApiKind;
use serde_json::{json, Value};

/// What every response of one request shares.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseMeta {
    /// Chat or completions.
    pub kind: ApiKind,
    /// Response id (`chatcmpl-…` / `cmpl-…`).
    pub id: String,
    /// Model name echoed back.
    pub model: String,
    /// Unix seconds.
    pub created: u64,
}

impl ResponseMeta {
    /// Metadata for request `request_id`.
    pub fn new(kind: ApiKind, request_id: &str, model: String, created: u64) -> Self {
        let prefix = match kind {
            ApiKind::Chat => "chatcmpl",
            ApiKind::Completion => "cmpl",
        };
        Self {
            kind,
            id: format!("{prefix}-{request_id}"),
            model,
            created,
        }
    }

    fn object(&self, streaming: bool) -> &'static str {
        match (self.kind, streaming) {
            (ApiKind::Chat, true) => "chat.completion.chunk",
            (ApiKind::Chat, false) => "chat.completion",
            (ApiKind::Completion, _) => "text_completion",
        }
    }

    /// One streamed token: `first` adds the assistant role (chat), `finish` the reason.
    pub fn chunk(&self, text: &str, first: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            ApiKind::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": text})
                } else {
                    json!({"content": text})
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            ApiKind::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model, "choices": [choice]})
    }

    /// The final usage-only chunk (`stream_options.include_usage`).
    pub fn usage_chunk(&self, usage: &Usage) -> Value {
        json!({"id": self.id, "object": self.object(true), "created": self.created, "model": self.model,
               "choices": [], "usage": usage.to_json()})
    }

    /// A whole (non-streaming) response.
    pub fn full(&self, text: &str, finish: &str, usage: &Usage) -> Value {
        let choice = match self.kind {
            ApiKind::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                     "logprobs": null, "finish_reason": finish}),
            ApiKind::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
        };
        json!({"id": self.id, "object": self.object(false), "created": self.created, "model": self.model,
               "choices": [choice], "usage": usage.to_json()})
    }
}

/// Token counts of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl Usage {
    /// The OpenAI `usage` object (with `prompt_tokens_details.cached_tokens`).
    pub fn to_json(&self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
               "total_tokens": self.prompt_tokens + self.completion_tokens,
               "prompt_tokens_details": {"cached_tokens": self.cached_tokens}})
    }
}

/// One SSE event: `data: <json>\n\n`.
pub fn sse(v: &Value) -> Vec<u8> {
    let mut out = b"data: ".to_vec();
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

/// The SSE terminator `data: [DONE]\n\n`.
pub const SSE_DONE: &[u8] = b"data: [DONE]\n\n";

/// An OpenAI error body.
pub fn error_body(message: &str, error_type: &str, code: u16) -> Value {
    json!({"error": {"message": message, "type": error_type, "param": null, "code": code}})
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

    #[test]
    fn chat_chunks_follow_the_openai_shape() {
        let m = ResponseMeta::new(ApiKind::Chat, "r1", "qwen".into(), 5);
        let c = m.chunk(" hi", true, None);
        assert_eq!(c["id"], "chatcmpl-r1");
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(
            c["choices"][0]["delta"],
            json!({"role": "assistant", "content": " hi"})
        );
        assert_eq!(c["choices"][0]["finish_reason"], Value::Null);
        let last = m.chunk(" x", false, Some("length"));
        assert_eq!(last["choices"][0]["delta"], json!({"content": " x"}));
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        let u = Usage {
            prompt_tokens: 10,
            completion_tokens: 2,
            cached_tokens: 8,
        };
        let uc = m.usage_chunk(&u);
        assert_eq!(uc["choices"], json!([]));
        assert_eq!(uc["usage"]["total_tokens"], 12);
        assert_eq!(uc["usage"]["prompt_tokens_details"]["cached_tokens"], 8);
    }

    #[test]
    fn completions_and_whole_responses() {
        let m = ResponseMeta::new(ApiKind::Completion, "r2", "qwen".into(), 5);
        assert_eq!(m.chunk("a", true, None)["choices"][0]["text"], "a");
        assert_eq!(m.chunk("a", true, None)["object"], "text_completion");
        let full = ResponseMeta::new(ApiKind::Chat, "r3", "qwen".into(), 5).full(
            "abc",
            "length",
            &Usage::default(),
        );
        assert_eq!(full["object"], "chat.completion");
        assert_eq!(full["choices"][0]["message"]["content"], "abc");
        assert_eq!(sse(&json!({"a": 1})), b"data: {\"a\":1}\n\n".to_vec());
        assert_eq!(
            error_body("bad", "invalid_request_error", 400)["error"]["code"],
            400
        );
    }
}
