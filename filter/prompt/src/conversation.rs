//! Turns a parsed chat request into the chat template's variables, as vLLM (default) or plain HF would pass them.
//!
//! vLLM (`Compat::Vllm`), what the workers actually render:
//! - `content`: null → `""`; text parts joined with `"\n"`, empty ones skipped (string
//!   format); or a list of `{"type": "text", "text": …}` parts (openai format), tool
//!   messages always joined to a string;
//! - per role: `tool_calls` and `reasoning`/`reasoning_content` for assistant messages (an
//!   empty `tool_calls` is dropped), `tool_call_id` for tool messages, `name` for any;
//! - tool-call `arguments` JSON strings parsed into objects (invalid or non-object → `{}`);
//! - `tools` dumped through vLLM's model: `{type, function: {name, description, parameters,
//!   …extra}, …extra}` with missing fields as null;
//! - variables `add_generation_prompt`, `tools`, `documents`, then the server's default
//!   `chat_template_kwargs`, then the request's, each overriding the previous
//!   (`continue_final_message` there is honoured; `messages`, `chat_template` and `tokenize`
//!   are ignored).
//!
//! `Compat::HuggingFace` is `apply_chat_template` on the messages as sent: the same content
//! rules, but every known field kept for every role, arguments and tools untouched. The golden
//! vectors were made that way.
//!
//! [`render_input_cached`] is the same conversion with the `tools` variable taken from the
//! template's tools cache, keyed by the conversion and the tools' exact JSON text: an unchanged
//! tools list is neither parsed nor converted again (see `template::tools_cache`).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::request::{ChatRequest, Content, Message, RequestError, Tools};
use crate::template::{ChatTemplate, ContentFormat, RenderInput, ToolsEntry};

/// Whose request → template conversion to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compat {
    /// vLLM's OpenAI server (what the workers render).
    #[default]
    Vllm,
    /// transformers' `apply_chat_template` on the request's messages and tools as sent.
    HuggingFace,
}

/// Builds the template input for `chat`.
pub fn render_input(
    chat: &ChatRequest,
    compat: Compat,
    format: ContentFormat,
    default_kwargs: &Map<String, Value>,
    now_unix_secs: i64,
) -> Result<RenderInput, RequestError> {
    let messages = messages_value(chat, compat, format)?;
    let tools = match &chat.tools {
        None => Value::Null,
        Some(tools) => tools_value(tools, compat)?,
    };
    build(chat, default_kwargs, now_unix_secs, messages, tools, None)
}

/// [`render_input`] with the tools from `template`'s tools cache (the rendered text is the
/// same; unless a `chat_template_kwargs` entry replaces `tools`, then nothing is cached).
pub fn render_input_cached(
    chat: &ChatRequest,
    compat: Compat,
    template: &ChatTemplate,
    default_kwargs: &Map<String, Value>,
    now_unix_secs: i64,
) -> Result<RenderInput, RequestError> {
    let format = template.content_format();
    let overridden = default_kwargs.contains_key("tools")
        || chat
            .chat_template_kwargs
            .as_ref()
            .is_some_and(|k| k.contains_key("tools"));
    let Some(tools) = chat.tools.as_ref().filter(|_| !overridden) else {
        return render_input(chat, compat, format, default_kwargs, now_unix_secs);
    };
    let messages = messages_value(chat, compat, format)?;
    let tag = match compat {
        Compat::Vllm => 'v',
        Compat::HuggingFace => 'h',
    };
    let mut key = String::with_capacity(tools.json().len() + 1);
    key.push(tag);
    key.push_str(tools.json());
    let entry = template.tools_entry(&key, || tools_value(tools, compat))?;
    // `Null` keeps the variable's place; the render uses the entry instead.
    build(
        chat,
        default_kwargs,
        now_unix_secs,
        messages,
        Value::Null,
        Some(entry),
    )
}

fn messages_value(
    chat: &ChatRequest,
    compat: Compat,
    format: ContentFormat,
) -> Result<Vec<Value>, RequestError> {
    chat.messages
        .iter()
        .enumerate()
        .map(|(i, m)| message_value(i, m, compat, format))
        .collect()
}

/// The `tools` variable: as sent (HF) or through vLLM's model.
fn tools_value(tools: &Tools, compat: Compat) -> Result<Value, RequestError> {
    let tools = tools.values()?;
    Ok(match compat {
        Compat::HuggingFace => Value::Array(tools),
        Compat::Vllm => Value::Array(
            tools
                .iter()
                .enumerate()
                .map(|(i, t)| vllm_tool(i, t))
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn build(
    chat: &ChatRequest,
    default_kwargs: &Map<String, Value>,
    now_unix_secs: i64,
    messages: Vec<Value>,
    tools: Value,
    tools_entry: Option<Arc<ToolsEntry>>,
) -> Result<RenderInput, RequestError> {
    let mut vars = Map::new();
    vars.insert(
        "add_generation_prompt".into(),
        Value::Bool(chat.add_generation_prompt),
    );
    vars.insert(
        "continue_final_message".into(),
        Value::Bool(chat.continue_final_message),
    );
    vars.insert("tools".into(), tools);
    vars.insert(
        "documents".into(),
        chat.documents.clone().map_or(Value::Null, Value::Array),
    );
    for (k, v) in default_kwargs
        .iter()
        .chain(chat.chat_template_kwargs.iter().flatten())
    {
        if !matches!(k.as_str(), "messages" | "chat_template" | "tokenize") {
            vars.insert(k.clone(), v.clone());
        }
    }
    let continue_final_message = vars
        .remove("continue_final_message")
        .is_some_and(|v| truthy(&v));
    vars.insert("messages".into(), Value::Array(messages));
    Ok(RenderInput {
        vars,
        tools: tools_entry,
        continue_final_message,
        now_unix_secs,
    })
}

fn message_value(
    index: usize,
    m: &Message,
    compat: Compat,
    format: ContentFormat,
) -> Result<Value, RequestError> {
    let vllm = compat == Compat::Vllm;
    let mut obj = Map::new();
    obj.insert("role".into(), Value::String(m.role.clone()));
    obj.insert(
        "content".into(),
        content_value(&m.content, format, m.role == "tool"),
    );
    if !vllm || m.role == "assistant" {
        if let Some(calls) = &m.tool_calls {
            if !vllm {
                obj.insert("tool_calls".into(), Value::Array(calls.clone()));
            } else if !calls.is_empty() {
                let calls = calls
                    .iter()
                    .enumerate()
                    .map(|(j, c)| vllm_tool_call(index, j, c))
                    .collect::<Result<_, _>>()?;
                obj.insert("tool_calls".into(), Value::Array(calls));
            }
        }
        if let Some(r) = &m.reasoning {
            if vllm {
                obj.insert("reasoning".into(), Value::String(r.clone()));
            }
            obj.insert("reasoning_content".into(), Value::String(r.clone()));
        }
    }
    if !vllm || m.role == "tool" {
        if let Some(id) = &m.tool_call_id {
            obj.insert("tool_call_id".into(), Value::String(id.clone()));
        }
    }
    if let Some(name) = &m.name {
        obj.insert("name".into(), Value::String(name.clone()));
    }
    Ok(Value::Object(obj))
}

fn content_value(content: &Content, format: ContentFormat, is_tool: bool) -> Value {
    let part = |t: &str| {
        let mut p = Map::new();
        p.insert("type".into(), Value::String("text".into()));
        p.insert("text".into(), Value::String(t.to_owned()));
        Value::Object(p)
    };
    match (format, content) {
        (ContentFormat::String, Content::Null) => Value::String(String::new()),
        (ContentFormat::String, Content::Text(s)) => Value::String(s.clone()),
        (ContentFormat::String, Content::Parts(parts)) => {
            let texts: Vec<&str> = parts
                .iter()
                .map(String::as_str)
                .filter(|t| !t.is_empty())
                .collect();
            Value::String(texts.join("\n"))
        }
        (ContentFormat::OpenAi, Content::Null) if is_tool => Value::String(String::new()),
        (ContentFormat::OpenAi, Content::Null) => Value::Array(Vec::new()),
        (ContentFormat::OpenAi, Content::Text(s)) if is_tool => Value::String(s.clone()),
        (ContentFormat::OpenAi, Content::Text(s)) => Value::Array(vec![part(s)]),
        (ContentFormat::OpenAi, Content::Parts(parts)) if is_tool => {
            Value::String(parts.join("\n"))
        }
        (ContentFormat::OpenAi, Content::Parts(parts)) => {
            Value::Array(parts.iter().map(|t| part(t)).collect())
        }
    }
}

/// vLLM's tool-call post-processing: `arguments` becomes an object.
fn vllm_tool_call(index: usize, j: usize, call: &Value) -> Result<Value, RequestError> {
    let param = || format!("messages[{index}].tool_calls[{j}]");
    let mut call = call.clone();
    let kind_ok = call
        .get("type")
        .is_none_or(|t| t.as_str() == Some("function"));
    let Some(function) = call
        .get_mut("function")
        .and_then(Value::as_object_mut)
        .filter(|_| kind_ok)
    else {
        return Err(RequestError::InvalidValue {
            param: param(),
            reason: "only tool calls of type 'function' with a 'function' object are supported"
                .into(),
        });
    };
    let parsed = match function.get("arguments") {
        Some(Value::Object(o)) if !o.is_empty() => Value::Object(o.clone()),
        Some(Value::String(s)) if !s.is_empty() => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(o)) => Value::Object(o),
            _ => Value::Object(Map::new()),
        },
        _ => Value::Object(Map::new()),
    };
    function.insert("arguments".into(), parsed);
    Ok(call)
}

/// `ChatCompletionToolsParam.model_dump()`: declared fields first (missing ones null), then
/// extra fields in the order sent.
fn vllm_tool(i: usize, tool: &Value) -> Result<Value, RequestError> {
    let Value::Object(tool) = tool else {
        return Ok(tool.clone());
    };
    if tool
        .get("type")
        .is_some_and(|t| t.as_str() != Some("function"))
    {
        return Ok(Value::Object(tool.clone())); // other tool kinds: as sent
    }
    let function = match tool.get("function") {
        Some(Value::Object(f)) => f,
        None | Some(Value::Null) => {
            return Err(RequestError::MissingParameter {
                param: format!("tools[{i}].function"),
            })
        }
        Some(_) => {
            return Err(RequestError::InvalidType {
                param: format!("tools[{i}].function"),
                expected: "an object",
            })
        }
    };
    let Some(name) = function.get("name").filter(|n| n.is_string()) else {
        return Err(RequestError::MissingParameter {
            param: format!("tools[{i}].function.name"),
        });
    };
    let mut f = Map::new();
    f.insert("name".into(), name.clone());
    for key in ["description", "parameters"] {
        f.insert(
            key.into(),
            function.get(key).cloned().unwrap_or(Value::Null),
        );
    }
    for (k, v) in function {
        if !f.contains_key(k) {
            f.insert(k.clone(), v.clone());
        }
    }
    let mut out = Map::new();
    out.insert("type".into(), Value::String("function".into()));
    out.insert("function".into(), Value::Object(f));
    for (k, v) in tool {
        if !out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(Value::Object(out))
}

/// Python truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests;
