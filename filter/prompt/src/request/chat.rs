//! Parses the chat-specific fields: messages and their content parts, tools, template switches.
//!
//! Content parts: text-like parts (`text`, `input_text`, `output_text` → `text`, `refusal` →
//! `refusal`, `thinking` → `thinking`, and bare strings) are kept, as vLLM does; a part whose
//! text is null is skipped. Every other part (`image_url`, `input_audio`, `video_url`, `file`,
//! embeddings, …) is refused with [`RequestError::UnsupportedContentPart`], disposition
//! *forward*: the backend may be multimodal, but the router cannot know how many placeholder
//! tokens the model's processor expands a picture into, so it cannot produce the true token
//! ids. Forwarding without a routing hint is safe; guessing would poison the prefix index.

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::top::RawTools;
use super::{invalid_type, missing, take_bool, take_object, Limits, RequestError};

/// A `/v1/chat/completions` request's prompt-relevant fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatRequest {
    /// The conversation (at least one message).
    pub messages: Vec<Message>,
    /// `tools`: an array of objects, kept as its exact JSON text.
    pub tools: Option<Tools>,
    /// `documents` (RAG templates), kept as sent.
    pub documents: Option<Vec<Value>>,
    /// `chat_template_kwargs`, merged into the template's top-level variables.
    pub chat_template_kwargs: Option<Map<String, Value>>,
    /// `add_generation_prompt` (default true).
    pub add_generation_prompt: bool,
    /// `continue_final_message` (default false).
    pub continue_final_message: bool,
}

/// One chat message, with the fields chat templates read.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    /// `role` (any string; the template decides what it means).
    pub role: String,
    /// `content`.
    pub content: Content,
    /// `tool_calls` (assistant), each an object, kept as sent.
    pub tool_calls: Option<Vec<Value>>,
    /// `name`.
    pub name: Option<String>,
    /// `tool_call_id` (tool).
    pub tool_call_id: Option<String>,
    /// `reasoning`, or the older `reasoning_content` (assistant).
    pub reasoning: Option<String>,
}

/// A request's `tools`: a JSON array of objects, kept as the exact text of each object as
/// sent (so that an unchanged tools list is recognised byte for byte) and parsed only when
/// needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    json: String,
    len: usize,
}

impl Tools {
    /// Checks the items are objects; keeps them as one JSON array.
    fn from_items(items: &[&RawValue]) -> Result<Tools, RequestError> {
        if let Some(i) = items.iter().position(|t| !t.get().starts_with('{')) {
            return Err(invalid_type(&format!("tools[{i}]"), "an object"));
        }
        let mut json =
            String::with_capacity(items.iter().map(|t| t.get().len() + 1).sum::<usize>() + 2);
        json.push('[');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            json.push_str(item.get());
        }
        json.push(']');
        Ok(Tools {
            json,
            len: items.len(),
        })
    }

    /// Tools from JSON values (each must be an object).
    pub fn from_values(tools: &[Value]) -> Result<Tools, RequestError> {
        let raw = tools
            .iter()
            .map(serde_json::value::to_raw_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RequestError::InvalidJson {
                reason: e.to_string(),
            })?;
        Tools::from_items(&raw.iter().map(|r| &**r).collect::<Vec<_>>())
    }

    /// The array's JSON text: the objects as sent, joined by `,` in `[…]`.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// How many tools there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the array is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tools as JSON objects (key order preserved).
    pub fn values(&self) -> Result<Vec<Value>, RequestError> {
        serde_json::from_str(&self.json).map_err(|e| RequestError::InvalidJson {
            reason: e.to_string(),
        })
    }
}

/// A message's `content`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Content {
    /// Null or absent. Rendered as `""` (vLLM does the same; the original Qwen3 template fails
    /// on a null content).
    #[default]
    Null,
    /// A plain string.
    Text(String),
    /// An array of text parts, in order (empty strings kept; the renderer decides).
    Parts(Vec<String>),
}

pub(super) fn parse_chat(
    map: &mut Map<String, Value>,
    tools: RawTools<'_>,
    limits: &Limits,
) -> Result<ChatRequest, RequestError> {
    if map.get("chat_template").is_some_and(|v| !v.is_null()) {
        return Err(RequestError::UnsupportedParameter {
            param: "chat_template".into(),
        });
    }
    let messages = match map.remove("messages") {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => return Err(missing("messages")),
        Some(_) => return Err(invalid_type("messages", "an array")),
    };
    if messages.is_empty() {
        return Err(RequestError::EmptyArray {
            param: "messages".into(),
        });
    }
    if messages.len() > limits.max_messages {
        return Err(RequestError::TooManyItems {
            param: "messages",
            count: messages.len(),
            limit: limits.max_messages,
        });
    }
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| parse_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;

    let tools = match tools {
        RawTools::Absent => None,
        RawTools::Items(items) => Some(Tools::from_items(&items)?),
        RawTools::NotAnArray => return Err(invalid_type("tools", "an array")),
    };
    if let Some(tools) = &tools {
        if tools.len() > limits.max_tools {
            return Err(RequestError::TooManyItems {
                param: "tools",
                count: tools.len(),
                limit: limits.max_tools,
            });
        }
    }
    let documents = take_object_array(map, "documents")?;
    let chat_template_kwargs = take_object(map, "chat_template_kwargs")?;
    let add_generation_prompt = take_bool(map, "add_generation_prompt")?.unwrap_or(true);
    let continue_final_message = take_bool(map, "continue_final_message")?.unwrap_or(false);
    if add_generation_prompt && continue_final_message {
        return Err(RequestError::InvalidValue {
            param: "continue_final_message".into(),
            reason: "cannot be true together with add_generation_prompt".into(),
        });
    }
    Ok(ChatRequest {
        messages,
        tools,
        documents,
        chat_template_kwargs,
        add_generation_prompt,
        continue_final_message,
    })
}

fn parse_message(index: usize, value: Value) -> Result<Message, RequestError> {
    let at = |field: &str| format!("messages[{index}].{field}");
    let Value::Object(mut m) = value else {
        return Err(RequestError::InvalidType {
            param: format!("messages[{index}]"),
            expected: "an object",
        });
    };
    let role = match m.remove("role") {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err(missing(&at("role"))),
        Some(_) => return Err(invalid_type(&at("role"), "a string")),
    };
    let content = match m.remove("content") {
        None | Some(Value::Null) => Content::Null,
        Some(Value::String(s)) => Content::Text(s),
        Some(Value::Array(parts)) => Content::Parts(parse_parts(index, parts)?),
        Some(_) => {
            return Err(invalid_type(
                &at("content"),
                "a string, an array of parts or null",
            ))
        }
    };
    let tool_calls = match m.remove("tool_calls") {
        None | Some(Value::Null) => None,
        Some(Value::Array(calls)) => {
            if let Some(j) = calls.iter().position(|c| !c.is_object()) {
                return Err(invalid_type(
                    &format!("messages[{index}].tool_calls[{j}]"),
                    "an object",
                ));
            }
            Some(calls)
        }
        Some(_) => return Err(invalid_type(&at("tool_calls"), "an array")),
    };
    let name = take_string(&mut m, "name", &at)?;
    let tool_call_id = take_string(&mut m, "tool_call_id", &at)?;
    let reasoning = take_string(&mut m, "reasoning", &at)?;
    let reasoning_content = take_string(&mut m, "reasoning_content", &at)?;
    Ok(Message {
        role,
        content,
        tool_calls,
        name,
        tool_call_id,
        reasoning: reasoning.or(reasoning_content),
    })
}

/// Part types whose payload is text, and the field holding it (vLLM's text part types).
fn text_field(part_type: &str) -> Option<&'static str> {
    match part_type {
        "text" | "input_text" | "output_text" => Some("text"),
        "refusal" => Some("refusal"),
        "thinking" => Some("thinking"),
        _ => None,
    }
}

fn parse_parts(index: usize, parts: Vec<Value>) -> Result<Vec<String>, RequestError> {
    let mut texts = Vec::with_capacity(parts.len());
    for (j, part) in parts.into_iter().enumerate() {
        let param = || format!("messages[{index}].content[{j}]");
        let mut obj = match part {
            Value::String(s) => {
                texts.push(s);
                continue;
            }
            Value::Object(obj) => obj,
            _ => return Err(invalid_type(&param(), "a string or an object")),
        };
        let part_type = match obj.remove("type") {
            Some(Value::String(t)) => t,
            None | Some(Value::Null) => {
                // vLLM infers a missing type from a media key; anything else is an error.
                return match obj.keys().next() {
                    Some(key) if key != "text" => Err(RequestError::UnsupportedContentPart {
                        param: param(),
                        part_type: key.clone(),
                    }),
                    _ => Err(missing(&format!("{}.type", param()))),
                };
            }
            Some(_) => return Err(invalid_type(&format!("{}.type", param()), "a string")),
        };
        let Some(field) = text_field(&part_type) else {
            return Err(RequestError::UnsupportedContentPart {
                param: param(),
                part_type,
            });
        };
        match obj.remove(field) {
            Some(Value::String(s)) => texts.push(s),
            None | Some(Value::Null) => {} // skipped, as vLLM does
            Some(_) => return Err(invalid_type(&format!("{}.{field}", param()), "a string")),
        }
    }
    Ok(texts)
}

fn take_string(
    m: &mut Map<String, Value>,
    key: &str,
    at: &dyn Fn(&str) -> String,
) -> Result<Option<String>, RequestError> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid_type(&at(key), "a string")),
    }
}

fn take_object_array(
    map: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<Value>>, RequestError> {
    match map.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => {
            if let Some(i) = items.iter().position(|t| !t.is_object()) {
                return Err(invalid_type(&format!("{key}[{i}]"), "an object"));
            }
            Ok(Some(items))
        }
        Some(_) => Err(invalid_type(key, "an array")),
    }
}
