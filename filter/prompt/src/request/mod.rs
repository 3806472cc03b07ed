//! Parses an OpenAI `/v1/chat/completions` or `/v1/completions` request body into typed fields, within limits.
//!
//! Only what the prompt depends on is interpreted (messages, tools, template switches, the
//! completion prompt) plus the few fields a router uses (`model`, `stream`, `max_tokens`,
//! `nvext`). Everything else in the body is skipped in the one parsing pass, without building
//! a tree for it; `tools` is validated and kept as its exact JSON text (see [`Tools`]).
//! Parsing never panics, whatever the bytes.

mod chat;
mod error;
mod top;

pub use chat::{ChatRequest, Content, Message, Tools};
pub use error::RequestError;

use serde_json::{Map, Value};

/// Bounds on what a request may contain, checked before and while parsing.
///
/// The defaults are sized for prompts of up to 128k tokens: such a prompt is about 0.5 MiB of
/// English text (≈4 bytes/token), JSON escaping of code and tool output can double that, and
/// tool schemas add tens of KiB. 4 MiB leaves ~4× headroom while bounding parse time
/// (a few ms natively) and memory (the parsed tree is 2–3× the body), and stays below the
/// 8 MiB Envoy listener buffer the deployment uses. Bodies beyond that are rejected with 413.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted body, in bytes (default 4 MiB).
    pub max_body_bytes: usize,
    /// Most messages in a chat request (default 10 000: long agent loops stay well below).
    pub max_messages: usize,
    /// Deepest nesting of JSON arrays/objects, the top-level object being depth 1 (default 64).
    /// Real requests stay under ~20 even with nested tool schemas; serde_json's own recursion
    /// limit (128) is a backstop, so values above 127 have no further effect.
    pub max_json_depth: usize,
    /// Most entries in `tools` (default 1024; OpenAI allows 128).
    pub max_tools: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 4 * 1024 * 1024,
            max_messages: 10_000,
            max_json_depth: 64,
            max_tools: 1024,
        }
    }
}

/// Which OpenAI endpoint a body was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/chat/completions`: `messages`, rendered through the chat template.
    ChatCompletions,
    /// `/v1/completions`: `prompt`, tokenized as is.
    Completions,
}

impl Endpoint {
    /// Maps a request `:path` (query string allowed) to an endpoint, `None` for other paths.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        let path = path.split(['?', '#']).next().unwrap_or(path);
        let path = path.strip_suffix('/').unwrap_or(path);
        match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            _ => None,
        }
    }
}

/// A parsed request: the routing-relevant fields plus the chat or completion payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The requested model name (required).
    pub model: String,
    /// `stream` (default false).
    pub stream: bool,
    /// `stream_options`, kept as sent.
    pub stream_options: Option<Map<String, Value>>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// `nvext` (Dynamo extension object), kept as sent.
    pub nvext: Option<Map<String, Value>>,
    /// `add_special_tokens` as sent; vLLM's default is false for chat and true for completions.
    pub add_special_tokens: Option<bool>,
    /// The prompt-bearing part of the request.
    pub payload: Payload,
}

/// The prompt-bearing part of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A chat request, to be rendered through the chat template.
    Chat(ChatRequest),
    /// A completions request.
    Completion(CompletionRequest),
}

/// A `/v1/completions` request's prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionRequest {
    /// The first prompt of the request (the one routed on).
    pub prompt: Prompt,
    /// How many prompts the request carries (`prompt` may be a batch); 1 for a single prompt.
    pub batch_size: usize,
}

/// One completion prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Text, to be tokenized (no chat template).
    Text(String),
    /// Token ids given by the client: used as they are, no templating or tokenizing.
    Tokens(Vec<u32>),
}

impl Request {
    /// Whether special tokens (e.g. BOS) are added when tokenizing, with vLLM's defaults.
    pub fn effective_add_special_tokens(&self) -> bool {
        self.add_special_tokens
            .unwrap_or(matches!(self.payload, Payload::Completion(_)))
    }
}

/// Parses a request body sent to `endpoint`, enforcing `limits`.
pub fn parse(endpoint: Endpoint, body: &[u8], limits: &Limits) -> Result<Request, RequestError> {
    if body.len() > limits.max_body_bytes {
        return Err(RequestError::BodyTooLarge {
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    prescan(body, limits)?;
    let top::TopLevel {
        fields: mut map,
        tools,
    } = top::parse(body)?;

    let model = match map.remove("model") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err(missing("model")),
        Some(_) => return Err(invalid_type("model", "a string")),
    };
    let stream = take_bool(&mut map, "stream")?.unwrap_or(false);
    let stream_options = take_object(&mut map, "stream_options")?;
    let max_completion_tokens = take_u64(&mut map, "max_completion_tokens")?;
    let max_tokens = take_u64(&mut map, "max_tokens")?;
    let nvext = take_object(&mut map, "nvext")?;
    let add_special_tokens = take_bool(&mut map, "add_special_tokens")?;

    let payload = match endpoint {
        Endpoint::ChatCompletions => Payload::Chat(chat::parse_chat(&mut map, tools, limits)?),
        Endpoint::Completions => Payload::Completion(parse_completion(&mut map)?),
    };
    Ok(Request {
        model,
        stream,
        stream_options,
        max_tokens: max_completion_tokens.or(max_tokens),
        nvext,
        add_special_tokens,
        payload,
    })
}

fn parse_completion(map: &mut Map<String, Value>) -> Result<CompletionRequest, RequestError> {
    let prompt = match map.remove("prompt") {
        Some(Value::String(s)) => return Ok(single(Prompt::Text(s))),
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            if map.get("prompt_embeds").is_some_and(|v| !v.is_null()) {
                return Err(RequestError::UnsupportedParameter {
                    param: "prompt_embeds".into(),
                });
            }
            return Err(missing("prompt"));
        }
        Some(_) => return Err(invalid_type("prompt", "a string or an array")),
    };
    if prompt.first().is_some_and(Value::is_number) {
        // An array of token ids is one prompt.
        return Ok(single(Prompt::Tokens(token_ids(&prompt, "prompt")?)));
    }
    let batch_size = prompt.len();
    let same_kind = |v: &Value| match prompt.first() {
        Some(Value::String(_)) => v.is_string(),
        Some(Value::Array(_)) => v.is_array(),
        _ => true,
    };
    if let Some(i) = prompt.iter().position(|v| !same_kind(v)) {
        return Err(RequestError::InvalidType {
            param: format!("prompt[{i}]"),
            expected: "the same type as prompt[0]",
        });
    }
    let Some(first) = prompt.into_iter().next() else {
        return Err(RequestError::EmptyArray {
            param: "prompt".into(),
        });
    };
    match first {
        Value::String(s) => Ok(CompletionRequest {
            prompt: Prompt::Text(s),
            batch_size,
        }),
        Value::Array(ids) => Ok(CompletionRequest {
            prompt: Prompt::Tokens(token_ids(&ids, "prompt[0]")?),
            batch_size,
        }),
        _ => Err(invalid_type(
            "prompt[0]",
            "a string, an array of token ids or an array of those",
        )),
    }
}

fn single(prompt: Prompt) -> CompletionRequest {
    CompletionRequest {
        prompt,
        batch_size: 1,
    }
}

fn token_ids(items: &[Value], param: &str) -> Result<Vec<u32>, RequestError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| RequestError::InvalidValue {
                    param: format!("{param}[{i}]"),
                    reason: "token ids are integers from 0 to 4294967295".into(),
                }),
            _ => Err(RequestError::InvalidType {
                param: format!("{param}[{i}]"),
                expected: "an integer token id",
            }),
        })
        .collect()
}

/// One linear pass over the raw body before it is parsed, so hostile bodies are refused
/// before they cost a JSON tree: nesting deeper than `max_json_depth`, and a top-level
/// `messages` array with more than `max_messages` objects (each would be parsed first).
/// Strings are skipped (escapes honoured) eight bytes at a time.
fn prescan(body: &[u8], limits: &Limits) -> Result<(), RequestError> {
    let mut depth = 0usize;
    // Whether the last string at depth 1 (a candidate key) was `"messages"`; then whether
    // the array now open at depth 2 is that key's value.
    let mut key_is_messages = false;
    let mut in_messages = false;
    let mut messages = 0usize;
    let mut i = 0usize;
    while let Some(&b) = body.get(i) {
        i += 1;
        if b == b'"' {
            // Skip the string: to its closing quote, stepping over escapes.
            let string_start = i;
            loop {
                let Some(at) = next_quote_or_backslash(body, i) else {
                    return Ok(()); // unterminated: the parser will say so
                };
                if body.get(at) == Some(&b'\\') {
                    i = at + 2;
                    continue;
                }
                if depth == 1 {
                    key_is_messages = body.get(string_start..at) == Some(b"messages".as_slice());
                }
                i = at + 1;
                break;
            }
            continue;
        }
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > limits.max_json_depth {
                    return Err(RequestError::TooDeep {
                        limit: limits.max_json_depth,
                    });
                }
                if depth == 2 && b == b'[' && key_is_messages {
                    in_messages = true;
                } else if depth == 3 && in_messages && b == b'{' {
                    messages += 1;
                    if messages > limits.max_messages {
                        return Err(RequestError::TooManyItems {
                            param: "messages",
                            count: messages,
                            limit: limits.max_messages,
                        });
                    }
                }
                key_is_messages = false;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth < 2 {
                    in_messages = false;
                }
            }
            b',' if depth == 1 => key_is_messages = false,
            _ => {}
        }
    }
    Ok(())
}

/// Index of the first `"` or `\` in `bytes` from `from` on, eight bytes at a time (string
/// contents are most of a body).
fn next_quote_or_backslash(bytes: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Nonzero iff some byte of `w` equals `b` (the classic exact "has zero byte" test).
    let has = |w: u64, b: u8| {
        let x = w ^ ONES.wrapping_mul(u64::from(b));
        x.wrapping_sub(ONES) & !x & HIGHS
    };
    let mut i = from;
    while let Some(chunk) = bytes
        .get(i..i + 8)
        .and_then(|c| <[u8; 8]>::try_from(c).ok())
    {
        let w = u64::from_le_bytes(chunk);
        if has(w, b'"') | has(w, b'\\') != 0 {
            break;
        }
        i += 8;
    }
    bytes
        .get(i..)?
        .iter()
        .position(|&b| b == b'"' || b == b'\\')
        .map(|p| i + p)
}

pub(crate) fn missing(param: &str) -> RequestError {
    RequestError::MissingParameter {
        param: param.to_owned(),
    }
}

pub(crate) fn invalid_type(param: &str, expected: &'static str) -> RequestError {
    RequestError::InvalidType {
        param: param.to_owned(),
        expected,
    }
}

/// Removes `key`; null counts as absent (pydantic `Optional`).
pub(crate) fn take_bool(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<bool>, RequestError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(_) => Err(invalid_type(key, "a boolean")),
    }
}

pub(crate) fn take_object(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<Map<String, Value>>, RequestError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(invalid_type(key, "an object")),
    }
}

fn take_u64(map: &mut Map<String, Value>, key: &str) -> Result<Option<u64>, RequestError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) => Ok(Some(v)),
            None if n.is_i64() => Err(RequestError::InvalidValue {
                param: key.to_owned(),
                reason: "must be non-negative".into(),
            }),
            None => Err(invalid_type(key, "an integer")),
        },
        Some(_) => Err(invalid_type(key, "an integer")),
    }
}

#[cfg(test)]
mod tests;
