//! Renders a Hugging Face chat template on minijinja with `apply_chat_template` semantics.
//!
//! The environment mirrors transformers': `trim_blocks` and `lstrip_blocks` on,
//! `keep_trailing_newline` off (Jinja2's default, so one final newline of the template is
//! dropped), loop controls, no auto-escaping, `raise_exception`, `strftime_now`, Python string
//! methods (minijinja-contrib pycompat), a `tojson` that is `json.dumps(ensure_ascii=False)`,
//! and Python's `str()` for printed values (`None`, `True`, `[1, 'a']`). The special tokens of
//! `tokenizer_config.json` (`bos_token`, `eos_token`, …) are top-level variables, as are the
//! request's `chat_template_kwargs`. `{% generation %}` blocks (HF's assistant-mask extension)
//! render their body. Fuel bounds the work of one render, so a template cannot loop forever.

mod dump;
mod pyjson;
mod source;
mod strftime;
mod tools_cache;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use minijinja::value::Value;
use minijinja::{AutoEscape, Environment, ErrorKind, State, UndefinedBehavior};
use serde_json::{Map, Value as Json};

use crate::error::{ApiError, Disposition};
use source::{detect_content_format, rewrite_generation_tags};
use tools_cache::{EntryRef, ToolsCache};
pub use tools_cache::{
    ToolsCacheStats, ToolsEntry, MAX_BYTES as TOOLS_CACHE_MAX_BYTES,
    MAX_ENTRIES as TOOLS_CACHE_MAX_ENTRIES,
};

/// Variable under which the caller's clock reading reaches `strftime_now`.
const NOW_VAR: &str = "__kvgate_now_unix_secs";
/// Variable under which a render's cached tools entry reaches the `tojson` filter.
const TOOLS_VAR: &str = "__kvgate_tools_entry";
/// Appended to the final message for `continue_final_message`, as transformers does.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// How a template expects `message.content`: vLLM's "string" and "openai" content formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentFormat {
    /// `content` is a string; text parts are joined with `"\n"`.
    String,
    /// `content` is a list of `{"type": "text", "text": …}` parts (templates that loop over it).
    OpenAi,
}

/// Settings of a [`ChatTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateOptions {
    /// minijinja fuel per render (≈ instructions plus bytes/64 built). Default 2 000 000: the
    /// 24-message τ-bench request with 14 tools uses ~3 000, a 10 000-message request ~600 000,
    /// a 4 MB message ~310 000. Fuel is also the only bound on memory: a template may build
    /// strings of up to ~64 bytes per unit of fuel (`'{:>N}'.format(x)`, `replace`, doubling
    /// concatenations), so 2 000 000 caps that at ~128 MB (20 000 000 let a template allocate
    /// over 1 GB, shown with the `template` fuzz target); a runaway loop stops within ~0.05 s.
    pub fuel: Option<u64>,
    /// Deepest macro/include recursion (default 64; minijinja's own cap is 500, too deep for
    /// the 1 MiB wasm stack).
    pub recursion_limit: usize,
    /// Content format; `None` detects it from the template source like vLLM's "auto".
    pub content_format: Option<ContentFormat>,
}

impl Default for TemplateOptions {
    fn default() -> Self {
        TemplateOptions {
            fuel: Some(2_000_000),
            recursion_limit: 64,
            content_format: None,
        }
    }
}

/// Why a template could not be loaded or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `tokenizer_config.json` is not valid JSON or has an unexpected shape.
    #[error("invalid tokenizer_config.json: {0}")]
    InvalidConfig(String),
    /// The configuration has no `chat_template`.
    #[error("tokenizer_config.json has no chat_template")]
    NoTemplate,
    /// Named templates exist but none is called "default" (or "tool_use" for tool requests).
    #[error("no default chat template among the named templates {0:?}")]
    NoDefaultTemplate(Vec<String>),
    /// The template source does not compile.
    #[error("chat template '{name}' does not compile: {message}")]
    Syntax {
        /// The template's name.
        name: String,
        /// minijinja's message.
        message: String,
    },
    /// The template called `raise_exception(message)` (it rejects this conversation).
    #[error("chat template error: {0}")]
    Raised(String),
    /// Rendering failed (undefined attribute, wrong type, …).
    #[error("chat template failed to render: {0}")]
    Render(String),
    /// The render used up its fuel (a very large request, or a template that loops).
    #[error("chat template exceeded its work limit")]
    OutOfFuel,
    /// `continue_final_message` could not be applied.
    #[error("continue_final_message: {0}")]
    ContinueFinalMessage(String),
}

impl ApiError for TemplateError {
    fn status(&self) -> u16 {
        match self {
            TemplateError::Raised(_)
            | TemplateError::Render(_)
            | TemplateError::ContinueFinalMessage(_) => 400,
            _ => 500,
        }
    }
    fn code(&self) -> &'static str {
        match self {
            TemplateError::InvalidConfig(_)
            | TemplateError::NoTemplate
            | TemplateError::NoDefaultTemplate(_) => "chat_template_missing",
            TemplateError::Syntax { .. } => "chat_template_invalid",
            TemplateError::Raised(_) | TemplateError::Render(_) => "chat_template_error",
            TemplateError::OutOfFuel => "chat_template_limit",
            TemplateError::ContinueFinalMessage(_) => "invalid_value",
        }
    }
    fn param(&self) -> Option<String> {
        match self {
            TemplateError::ContinueFinalMessage(_) => Some("continue_final_message".into()),
            TemplateError::Raised(_) | TemplateError::Render(_) => Some("messages".into()),
            _ => None,
        }
    }
    /// Template errors are forwarded: the backend renders its own template and answers with
    /// its own error if the conversation really is invalid.
    fn disposition(&self) -> Disposition {
        Disposition::Forward
    }
}

/// What a render needs beyond the template: the top-level variables and the clock.
#[derive(Debug, Clone, Default)]
pub struct RenderInput {
    /// Top-level variables: `messages`, `tools`, `documents`, `add_generation_prompt` and the
    /// chat_template_kwargs, already merged (see `conversation`).
    pub vars: Map<String, Json>,
    /// The `tools` variable from the template's tools cache ([`ChatTemplate::tools_entry`]);
    /// when set it replaces `vars["tools"]` (which then only keeps the variables' order).
    pub tools: Option<Arc<ToolsEntry>>,
    /// Render the final message open-ended (no end-of-turn), as HF's `continue_final_message`.
    pub continue_final_message: bool,
    /// The caller's wall clock, for `strftime_now` (UTC).
    pub now_unix_secs: i64,
}

/// A compiled chat template (one, or HF's list of named templates) with its special tokens.
pub struct ChatTemplate {
    env: Environment<'static>,
    names: Vec<String>,
    special_tokens: Map<String, Json>,
    content_format: ContentFormat,
    sources: Vec<Arc<str>>,
    tools_cache: Mutex<ToolsCache>,
    dump_hits: Arc<AtomicU64>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("names", &self.names)
            .field("special_tokens", &self.special_tokens)
            .field("content_format", &self.content_format)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Loads `chat_template` (a string, or a list of `{name, template}`) and the special tokens
    /// from a `tokenizer_config.json`.
    pub fn from_tokenizer_config(
        config_json: &[u8],
        options: &TemplateOptions,
    ) -> Result<Self, TemplateError> {
        let config: Json = serde_json::from_slice(config_json)
            .map_err(|e| TemplateError::InvalidConfig(e.to_string()))?;
        let Json::Object(config) = config else {
            return Err(TemplateError::InvalidConfig("not a JSON object".into()));
        };
        let templates: Vec<(String, String)> = match config.get("chat_template") {
            Some(Json::String(s)) => vec![("default".to_owned(), s.clone())],
            Some(Json::Array(list)) => list
                .iter()
                .map(|entry| match (entry.get("name"), entry.get("template")) {
                    (Some(Json::String(n)), Some(Json::String(t))) => Ok((n.clone(), t.clone())),
                    _ => Err(TemplateError::InvalidConfig(
                        "chat_template list entries need string 'name' and 'template'".into(),
                    )),
                })
                .collect::<Result<_, _>>()?,
            None | Some(Json::Null) => return Err(TemplateError::NoTemplate),
            Some(_) => {
                return Err(TemplateError::InvalidConfig(
                    "chat_template must be a string or a list".into(),
                ))
            }
        };
        Self::build(templates, special_tokens_of(&config), options)
    }

    /// Compiles a raw template (e.g. a `chat_template.jinja` file) with the given special tokens
    /// (`bos_token`, `eos_token`, … as top-level variables).
    pub fn from_source(
        source: &str,
        special_tokens: Map<String, Json>,
        options: &TemplateOptions,
    ) -> Result<Self, TemplateError> {
        Self::build(
            vec![("default".to_owned(), source.to_owned())],
            special_tokens,
            options,
        )
    }

    fn build(
        templates: Vec<(String, String)>,
        special_tokens: Map<String, Json>,
        options: &TemplateOptions,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(false);
        let syntax = syntax
            .build()
            .map_err(|e| TemplateError::InvalidConfig(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.set_undefined_behavior(UndefinedBehavior::Lenient);
        env.set_unknown_method_callback(|state, value, method, args| {
            if method == "format" {
                if let Some(spec) = value.as_str() {
                    check_format_widths(spec)?;
                }
            }
            minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
        });
        env.set_fuel(options.fuel);
        env.set_recursion_limit(options.recursion_limit);
        env.set_formatter(|out, _state, value| {
            let mut text = String::new();
            pyjson::py_str(value, &mut text);
            out.write_str(&text).map_err(minijinja::Error::from)
        });
        env.add_filter("tojson", pyjson::tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);

        let mut names = Vec::with_capacity(templates.len());
        let mut sources = Vec::with_capacity(templates.len());
        for (name, source) in templates {
            let source = rewrite_generation_tags(&source);
            env.add_template_owned(name.clone(), source.clone())
                .map_err(|e| TemplateError::Syntax {
                    name: name.clone(),
                    message: e.to_string(),
                })?;
            names.push(name);
            sources.push(Arc::from(source));
        }
        let content_format = options
            .content_format
            .unwrap_or_else(|| detect_content_format(sources.iter().map(|s| &**s)));
        Ok(ChatTemplate {
            env,
            names,
            special_tokens,
            content_format,
            sources,
            tools_cache: Mutex::new(ToolsCache::new()),
            dump_hits: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The tools list cached under `key`, else the one `make` returns, converted and kept for
    /// the next requests. The caller guarantees that equal keys mean equal JSON (e.g. the key
    /// is the exact text the JSON is derived from); keys are compared in full.
    pub fn tools_entry<E>(
        &self,
        key: &str,
        make: impl FnOnce() -> Result<Json, E>,
    ) -> Result<Arc<ToolsEntry>, E> {
        self.tools_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(key, make)
    }

    /// Cumulative counters of the tools cache.
    pub fn tools_cache_stats(&self) -> ToolsCacheStats {
        self.tools_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stats(self.dump_hits.load(Ordering::Relaxed))
    }

    /// The content format messages must be given in (configured, or detected).
    pub fn content_format(&self) -> ContentFormat {
        self.content_format
    }

    /// The template names (`["default"]` for a single template).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// HF's choice among named templates: "tool_use" when `tools` is not None and it exists,
    /// else "default"; a single template is always used.
    fn select(&self, has_tools: bool) -> Result<&str, TemplateError> {
        if let [only] = self.names.as_slice() {
            return Ok(only);
        }
        let find = |n: &str| {
            self.names
                .iter()
                .find(|x| x.as_str() == n)
                .map(String::as_str)
        };
        if has_tools {
            if let Some(name) = find("tool_use") {
                return Ok(name);
            }
        }
        find("default").ok_or_else(|| TemplateError::NoDefaultTemplate(self.names.clone()))
    }

    /// Renders the template. With `continue_final_message` the text ends right after the final
    /// message's content (HF's tag-and-cut method).
    pub fn render(&self, input: RenderInput) -> Result<String, TemplateError> {
        let RenderInput {
            mut vars,
            tools,
            continue_final_message,
            now_unix_secs,
        } = input;
        let has_tools = tools.is_some() || vars.get("tools").is_some_and(|t| !t.is_null());
        let name = self.select(has_tools)?;
        let final_text = if continue_final_message {
            Some(self.tag_final_message(name, &mut vars)?)
        } else {
            None
        };
        for (k, v) in &self.special_tokens {
            if !vars.contains_key(k) {
                vars.insert(k.clone(), v.clone());
            }
        }
        vars.insert(NOW_VAR.to_owned(), Json::from(now_unix_secs));

        let template = self
            .env
            .get_template(name)
            .map_err(|e| TemplateError::Render(e.to_string()))?;
        let context = match tools {
            None => Value::from(minijinja::value::Serde(&vars)),
            Some(entry) => {
                // The same map as above, but `tools` is the cached entry's value.
                let mut map: indexmap::IndexMap<Value, Value> =
                    indexmap::IndexMap::with_capacity(vars.len() + 2);
                if !vars.contains_key("tools") {
                    map.insert(Value::from("tools"), entry.value().clone());
                }
                for (k, v) in &vars {
                    let v = if k == "tools" {
                        entry.value().clone()
                    } else {
                        Value::from(minijinja::value::Serde(v))
                    };
                    map.insert(Value::from(k.as_str()), v);
                }
                map.insert(
                    Value::from(TOOLS_VAR),
                    Value::from_object(EntryRef {
                        entry,
                        dump_hits: self.dump_hits.clone(),
                    }),
                );
                Value::from_object(map)
            }
        };
        let rendered = template.render(context).map_err(map_render_error)?;
        match final_text {
            Some(final_text) => cut_at_tag(rendered, &final_text),
            None => Ok(rendered),
        }
    }

    /// Appends the tag to the final message (its string content, or its last text part) and
    /// returns the original text.
    fn tag_final_message(
        &self,
        name: &str,
        vars: &mut Map<String, Json>,
    ) -> Result<String, TemplateError> {
        let index = self.names.iter().position(|n| n == name).unwrap_or(0);
        if !self
            .sources
            .get(index)
            .is_some_and(|s| s.contains("content"))
        {
            return Err(TemplateError::ContinueFinalMessage(
                "the chat template does not use message content".into(),
            ));
        }
        let last = vars
            .get_mut("messages")
            .and_then(Json::as_array_mut)
            .and_then(|m| m.last_mut())
            .and_then(|m| m.get_mut("content"));
        let err = || {
            TemplateError::ContinueFinalMessage("the final message has no text to continue".into())
        };
        match last {
            Some(Json::String(s)) => {
                let original = s.clone();
                s.push_str(CONTINUE_TAG);
                Ok(original)
            }
            Some(Json::Array(parts)) => {
                let text = parts
                    .iter_mut()
                    .rev()
                    .find_map(|p| {
                        p.get_mut("text")
                            .and_then(|t| if t.is_string() { Some(t) } else { None })
                    })
                    .ok_or_else(err)?;
                let original = text.as_str().unwrap_or_default().to_owned();
                *text = Json::String(format!("{original}{CONTINUE_TAG}"));
                Ok(original)
            }
            _ => Err(err()),
        }
    }
}

/// HF's cut: drop everything from the tag on; if the template trimmed the space after it, also
/// trim trailing whitespace.
fn cut_at_tag(rendered: String, final_text: &str) -> Result<String, TemplateError> {
    let tag = CONTINUE_TAG.trim();
    if !rendered.contains(final_text.trim()) {
        return Err(TemplateError::ContinueFinalMessage(
            "the final message does not appear in the rendered chat".into(),
        ));
    }
    let Some(at) = rendered.rfind(tag) else {
        return Err(TemplateError::ContinueFinalMessage(
            "the chat template dropped the final message's text".into(),
        ));
    };
    let full_tag = rendered
        .get(at..)
        .is_some_and(|rest| rest.starts_with(CONTINUE_TAG));
    let head = rendered.get(..at).unwrap_or_default();
    Ok(if full_tag {
        head.to_owned()
    } else {
        head.trim_end().to_owned()
    })
}

/// Marks an error raised by the template itself through `raise_exception`.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

/// Widest padding a template may ask of `str.format` (`'{:>N}'`). The padded string is
/// built in one allocation, before fuel could stop it, so wider specs are refused.
pub const MAX_FORMAT_WIDTH: u64 = 1 << 20;

/// Refuses `str.format` specs that pad wider than [`MAX_FORMAT_WIDTH`] or take their width
/// from an argument (`'{:{}}'`), which cannot be bounded before formatting.
fn check_format_widths(fmt: &str) -> Result<(), minijinja::Error> {
    let refuse = |why: &str| {
        Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("str.format: {why} (limit {MAX_FORMAT_WIDTH})"),
        ))
    };
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '{' {
            continue;
        }
        if chars.peek() == Some(&'{') {
            chars.next();
            continue;
        }
        let mut in_spec = false;
        let mut number: u64 = 0;
        let mut digits = false;
        for c in chars.by_ref() {
            match c {
                '}' => break,
                ':' if !in_spec => in_spec = true,
                '{' if in_spec => return refuse("a width taken from an argument"),
                d if in_spec && d.is_ascii_digit() => {
                    number = number
                        .saturating_mul(10)
                        .saturating_add(u64::from(d as u8 - b'0'));
                    digits = true;
                }
                _ => {
                    if digits && number > MAX_FORMAT_WIDTH {
                        return refuse("a padding width too large");
                    }
                    number = 0;
                    digits = false;
                }
            }
        }
        if digits && number > MAX_FORMAT_WIDTH {
            return refuse("a padding width too large");
        }
    }
    Ok(())
}

fn strftime_now(state: &State, format: String) -> Result<String, minijinja::Error> {
    let now = state
        .lookup(NOW_VAR)
        .and_then(|v| i64::try_from(v).ok())
        .unwrap_or(0);
    Ok(strftime::strftime(&format, now))
}

fn map_render_error(e: minijinja::Error) -> TemplateError {
    if e.kind() == ErrorKind::OutOfFuel {
        return TemplateError::OutOfFuel;
    }
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        if let Some(raised) = s.downcast_ref::<Raised>() {
            return TemplateError::Raised(raised.0.clone());
        }
        source = s.source();
    }
    TemplateError::Render(e.to_string())
}

/// `bos_token`, `eos_token`, … (strings or `{"content": …}` objects; null ones omitted, as HF's
/// `special_tokens_map` omits unset tokens) and `additional_special_tokens`.
fn special_tokens_of(config: &Map<String, Json>) -> Map<String, Json> {
    let text = |v: &Json| match v {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_owned),
        _ => None,
    };
    let mut out = Map::new();
    for key in [
        "bos_token",
        "eos_token",
        "unk_token",
        "sep_token",
        "pad_token",
        "cls_token",
        "mask_token",
    ] {
        if let Some(t) = config.get(key).and_then(text) {
            out.insert(key.to_owned(), Json::String(t));
        }
    }
    if let Some(Json::Array(list)) = config.get("additional_special_tokens") {
        let list: Vec<Json> = list.iter().filter_map(text).map(Json::String).collect();
        out.insert("additional_special_tokens".to_owned(), Json::Array(list));
    }
    out
}

#[cfg(test)]
mod tests;
