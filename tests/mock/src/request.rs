//! Parsing of incoming requests: OpenAI chat / completions bodies (with Dynamo's
//! `nvext.token_data` token ids) and the routing headers a gateway sets.

use axum::http::HeaderMap;
use kvgate_core::{DpRank, WorkerId};
use serde_json::Value;
use std::collections::BTreeMap;

/// Which OpenAI API a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completion,
}

/// The prompt of a request, before tokenization.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    /// Token ids given directly (`nvext.token_data`, or a completions token array).
    Tokens(Vec<u32>),
    /// Chat messages (the whole body, for the chat template: messages, tools, …).
    Chat(Value),
    /// A completions text prompt.
    Text(String),
}

/// A parsed request body.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRequest {
    /// Chat or completions.
    pub kind: ApiKind,
    /// The `model` field.
    pub model: Option<String>,
    /// `stream: true`.
    pub stream: bool,
    /// `stream_options.include_usage: true`.
    pub include_usage: bool,
    /// `max_completion_tokens` or `max_tokens`.
    pub max_tokens: Option<usize>,
    /// What to tokenize (or the tokens).
    pub prompt: PromptInput,
}

/// Why a body was refused (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not JSON, or not an object.
    #[error("request body is not a JSON object: {0}")]
    NotJson(String),
    /// A required field is missing.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field has the wrong type or value.
    #[error("invalid field `{field}`: {detail}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
}

fn invalid(field: &'static str, detail: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// Parses a token-id array (`u32` each).
pub fn token_array(v: &Value, field: &'static str) -> Result<Vec<u32>, RequestError> {
    let arr = v
        .as_array()
        .ok_or_else(|| invalid(field, "expected an array of token ids"))?;
    arr.iter()
        .map(|t| {
            t.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid(field, format!("bad token id {t}")))
        })
        .collect()
}

/// Parses a body of `kind`.
pub fn parse_body(kind: ApiKind, bytes: &[u8]) -> Result<ParsedRequest, RequestError> {
    let body: Value =
        serde_json::from_slice(bytes).map_err(|e| RequestError::NotJson(e.to_string()))?;
    if !body.is_object() {
        return Err(RequestError::NotJson("not an object".into()));
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(invalid(
                "stream",
                format!("expected a boolean, got {other}"),
            ))
        }
    };
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens = max_tokens(&body)?;
    let token_data = match body.pointer("/nvext/token_data") {
        None | Some(Value::Null) => None,
        Some(v) => Some(token_array(v, "nvext.token_data")?),
    };
    let prompt = match (token_data, kind) {
        (Some(t), _) => PromptInput::Tokens(t),
        (None, ApiKind::Chat) => {
            if !body.get("messages").is_some_and(Value::is_array) {
                return Err(RequestError::Missing("messages"));
            }
            PromptInput::Chat(body.clone())
        }
        (None, ApiKind::Completion) => completion_prompt(body.get("prompt"))?,
    };
    Ok(ParsedRequest {
        kind,
        model,
        stream,
        include_usage,
        max_tokens,
        prompt,
    })
}

fn max_tokens(body: &Value) -> Result<Option<usize>, RequestError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    invalid(
                        "max_tokens",
                        format!("expected a positive integer, got {v}"),
                    )
                })?;
                if n == 0 {
                    return Err(invalid("max_tokens", "must be at least 1"));
                }
                return Ok(Some(usize::try_from(n).unwrap_or(usize::MAX)));
            }
        }
    }
    Ok(None)
}

fn completion_prompt(p: Option<&Value>) -> Result<PromptInput, RequestError> {
    match p {
        None | Some(Value::Null) => Err(RequestError::Missing("prompt")),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(a)) => match a.first() {
            Some(Value::String(s)) if a.len() == 1 => Ok(PromptInput::Text(s.clone())),
            Some(Value::Array(inner)) if a.len() == 1 => Ok(PromptInput::Tokens(token_array(
                &Value::Array(inner.clone()),
                "prompt",
            )?)),
            Some(Value::Number(_)) => Ok(PromptInput::Tokens(token_array(
                &Value::Array(a.clone()),
                "prompt",
            )?)),
            _ => Err(invalid(
                "prompt",
                "expected a string, one string, or token ids (batches are not supported)",
            )),
        },
        Some(other) => Err(invalid("prompt", format!("unsupported prompt {other}"))),
    }
}

/// What the routing headers ask of this worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routing {
    /// `x-dynamo-dp-rank` / `x-dp-rank`.
    pub dp_rank: Option<DpRank>,
    /// `x-dynamo-prefill-instance-id` / `x-prefill-instance-id`.
    pub prefill_instance: Option<WorkerId>,
    /// `x-dynamo-prefill-dp-rank` / `x-prefill-dp-rank`.
    pub prefill_dp_rank: Option<DpRank>,
    /// `x-kvgate-prefill-fallbacks` (`id/rank,…`): prefill workers to try, in order, when
    /// the named one cannot be reached.
    pub prefill_fallbacks: Vec<(WorkerId, DpRank)>,
    /// `x-kvgate-prefill-required: true`: never prefill locally instead.
    pub prefill_required: bool,
    /// `x-request-id`.
    pub request_id: Option<String>,
    /// `x-tenant-id`: the cache salt that shifts the block hash seed (Dynamo's
    /// `cache_salt`), so tenants never share cache entries.
    pub cache_salt: Option<String>,
    /// Every routing header received (for the request log), lower-case names.
    pub logged: BTreeMap<String, String>,
}

/// Whether a header belongs in the request log.
pub fn is_routing_header(name: &str) -> bool {
    matches!(
        name,
        "x-worker-instance-id"
            | "x-prefill-instance-id"
            | "x-dp-rank"
            | "x-prefill-dp-rank"
            | "x-gateway-destination-endpoint"
            | "x-request-id"
    ) || name.starts_with("x-dynamo-")
        || name.starts_with("x-kvgate-prefill-")
}

fn header<'a>(h: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| h.get(*n).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Reads the routing headers. Unparsable numbers are errors (a gateway bug to surface).
pub fn parse_routing(h: &HeaderMap) -> Result<Routing, RequestError> {
    let num = |names: &[&str], field: &'static str| -> Result<Option<u64>, RequestError> {
        header(h, names)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|e| invalid(field, format!("`{v}`: {e}")))
            })
            .transpose()
    };
    let rank = |names: &[&str], field: &'static str| -> Result<Option<DpRank>, RequestError> {
        num(names, field)?
            .map(|v| DpRank::try_from(v).map_err(|e| invalid(field, e.to_string())))
            .transpose()
    };
    let mut logged = BTreeMap::new();
    for (name, value) in h {
        let n = name.as_str();
        if is_routing_header(n) {
            let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
            logged
                .entry(n.to_string())
                .and_modify(|e: &mut String| {
                    e.push(',');
                    e.push_str(&v);
                })
                .or_insert(v);
        }
    }
    Ok(Routing {
        dp_rank: rank(&["x-dynamo-dp-rank", "x-dp-rank"], "x-dp-rank")?,
        prefill_instance: num(
            &["x-dynamo-prefill-instance-id", "x-prefill-instance-id"],
            "x-prefill-instance-id",
        )?,
        prefill_dp_rank: rank(
            &["x-dynamo-prefill-dp-rank", "x-prefill-dp-rank"],
            "x-prefill-dp-rank",
        )?,
        prefill_fallbacks: match header(h, &["x-kvgate-prefill-fallbacks"]) {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(|item| {
                    let bad = || invalid("x-kvgate-prefill-fallbacks", format!("`{item}`"));
                    let (id, rank) = item.trim().split_once('/').ok_or_else(bad)?;
                    Ok((
                        id.parse().map_err(|_| bad())?,
                        rank.parse().map_err(|_| bad())?,
                    ))
                })
                .collect::<Result<_, RequestError>>()?,
        },
        prefill_required: header(h, &["x-kvgate-prefill-required"])
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        request_id: header(h, &["x-request-id"]).map(str::to_string),
        cache_salt: header(h, &["x-tenant-id"]).map(str::to_string),
        logged,
    })
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
    use axum::http::HeaderValue;
    use serde_json::json;

    fn parse(kind: ApiKind, v: Value) -> Result<ParsedRequest, RequestError> {
        parse_body(kind, v.to_string().as_bytes())
    }

    #[test]
    fn chat_with_token_data_uses_the_tokens() {
        let r = parse(
            ApiKind::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true,
                   "stream_options": {"include_usage": true}, "max_completion_tokens": 7, "max_tokens": 3,
                   "nvext": {"token_data": [1, 2, 3]}}),
        )
        .unwrap();
        assert_eq!(r.prompt, PromptInput::Tokens(vec![1, 2, 3]));
        assert!(r.stream && r.include_usage);
        assert_eq!(r.max_tokens, Some(7));
        assert_eq!(r.model.as_deref(), Some("m"));
    }

    #[test]
    fn chat_without_tokens_keeps_the_messages() {
        let r = parse(
            ApiKind::Chat,
            json!({"messages": [{"role": "user", "content": "hi"}]}),
        )
        .unwrap();
        assert!(matches!(r.prompt, PromptInput::Chat(_)));
        assert!(!r.stream);
        assert_eq!(r.max_tokens, None);
        assert_eq!(
            parse(ApiKind::Chat, json!({"model": "m"})),
            Err(RequestError::Missing("messages"))
        );
    }

    #[test]
    fn completion_prompts() {
        let t = |p: Value| parse(ApiKind::Completion, json!({"prompt": p})).map(|r| r.prompt);
        assert_eq!(t(json!("abc")), Ok(PromptInput::Text("abc".into())));
        assert_eq!(t(json!(["abc"])), Ok(PromptInput::Text("abc".into())));
        assert_eq!(t(json!([5, 6])), Ok(PromptInput::Tokens(vec![5, 6])));
        assert_eq!(t(json!([[5, 6]])), Ok(PromptInput::Tokens(vec![5, 6])));
        assert!(t(json!(["a", "b"])).is_err());
        assert!(t(json!([1, -2])).is_err());
        assert!(t(json!([1, 5_000_000_000u64])).is_err());
        assert_eq!(
            parse(ApiKind::Completion, json!({})),
            Err(RequestError::Missing("prompt"))
        );
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        assert!(matches!(
            parse_body(ApiKind::Chat, b"{"),
            Err(RequestError::NotJson(_))
        ));
        assert!(matches!(
            parse_body(ApiKind::Chat, b"[1]"),
            Err(RequestError::NotJson(_))
        ));
        let bad = [
            json!({"prompt": "x", "stream": "yes"}),
            json!({"prompt": "x", "max_tokens": 0}),
            json!({"prompt": "x", "max_tokens": -1}),
            json!({"prompt": "x", "nvext": {"token_data": "1"}}),
        ];
        for b in bad {
            assert!(parse(ApiKind::Completion, b).is_err());
        }
    }

    #[test]
    fn routing_headers_prefer_the_dynamo_names_and_are_logged() {
        let mut h = HeaderMap::new();
        h.insert("x-dp-rank", HeaderValue::from_static("1"));
        h.insert("x-dynamo-dp-rank", HeaderValue::from_static("2"));
        h.insert("x-prefill-instance-id", HeaderValue::from_static("77"));
        h.insert("x-request-id", HeaderValue::from_static("abc"));
        h.insert(
            "x-gateway-destination-endpoint",
            HeaderValue::from_static("10.0.0.1:8000"),
        );
        h.insert("x-dynamo-routing-mode", HeaderValue::from_static("kv"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        let r = parse_routing(&h).unwrap();
        assert_eq!(r.dp_rank, Some(2));
        assert_eq!(r.prefill_instance, Some(77));
        assert_eq!(r.prefill_dp_rank, None);
        assert_eq!(r.request_id.as_deref(), Some("abc"));
        assert_eq!(r.cache_salt, None);
        assert_eq!(r.logged.len(), 6);
        assert!(!r.logged.contains_key("content-type"));
        h.insert("x-dp-rank", HeaderValue::from_static("x"));
        h.remove("x-dynamo-dp-rank");
        assert!(parse_routing(&h).is_err());
    }
}
