//! The OpenAI error envelope every error of this crate can be turned into, and what a gateway should do with it.

use serde_json::{json, Value};

/// What a gateway should do with a request that produced an error here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The request is malformed or breaks a configured gateway limit: answer it with
    /// [`ApiError::status`] and [`ApiError::openai_body`] without bothering a worker.
    Reject,
    /// The request may well be valid for the backend; only this crate cannot derive its prompt
    /// tokens (a multimodal part, a per-request chat template, a template limit, …). Forward it
    /// without a cache-aware routing decision (fail open).
    Forward,
}

/// The OpenAI-compatible view of an error: HTTP status, error `type`, `code` and `param`.
///
/// Implemented by every error enum of this crate, so the filter can turn any of them into the
/// `{"error":{"message","type","code","param"}}` body OpenAI and vLLM clients understand.
pub trait ApiError: std::fmt::Display {
    /// The HTTP status code to answer with (400, 413 or 500).
    fn status(&self) -> u16;
    /// The OpenAI error `type`: `invalid_request_error` (4xx) or `server_error` (5xx).
    fn error_type(&self) -> &'static str {
        if self.status() >= 500 {
            "server_error"
        } else {
            "invalid_request_error"
        }
    }
    /// The machine-readable OpenAI error `code`, e.g. `missing_required_parameter`.
    fn code(&self) -> &'static str;
    /// The request parameter at fault, in OpenAI's dotted/indexed notation (`messages[2].content`).
    fn param(&self) -> Option<String> {
        None
    }
    /// Whether the gateway should reject the request or forward it without a routing hint.
    fn disposition(&self) -> Disposition;
    /// The OpenAI-style JSON error body: `{"error":{"message","type","code","param"}}`.
    fn openai_body(&self) -> Vec<u8> {
        openai_error_body(
            &self.to_string(),
            self.error_type(),
            self.code(),
            self.param().as_deref(),
        )
    }
}

/// Builds the OpenAI error envelope `{"error":{"message","type","code","param"}}` as JSON bytes.
pub fn openai_error_body(
    message: &str,
    error_type: &str,
    code: &str,
    param: Option<&str>,
) -> Vec<u8> {
    let body = json!({
        "error": {
            "message": message,
            "type": error_type,
            "code": code,
            "param": param.map_or(Value::Null, |p| Value::String(p.to_owned())),
        }
    });
    // Serialising a `Value` built from strings cannot fail; fall back to a fixed body anyway.
    serde_json::to_vec(&body).unwrap_or_else(|_| {
        br#"{"error":{"message":"internal error","type":"server_error","code":"internal_error","param":null}}"#
            .to_vec()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn body_has_openai_shape_and_field_order() {
        let body = openai_error_body(
            "bad \"x\"",
            "invalid_request_error",
            "invalid_type",
            Some("messages[0]"),
        );
        let text = String::from_utf8(body).unwrap();
        assert_eq!(
            text,
            r#"{"error":{"message":"bad \"x\"","type":"invalid_request_error","code":"invalid_type","param":"messages[0]"}}"#
        );
        let none = String::from_utf8(openai_error_body("m", "server_error", "c", None)).unwrap();
        assert!(none.ends_with(r#""param":null}}"#));
    }
}
