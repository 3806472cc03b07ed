//! kvgate-prompt: OpenAI request body → chat template (minijinja, Hugging Face semantics) → token ids (tokenizers).
//!
//! One [`ModelPrompt`] holds a model's chat template and tokenizer. [`ModelPrompt::process`]
//! takes a request body and returns the prompt token ids the worker will see (capped at the
//! number of tokens the router can use), with no I/O, threads or clocks: the caller passes
//! the time and measures durations itself. It builds natively and for `wasm32-wasip1`.
//!
//! ```text
//! body ──request::parse──▶ Request ──conversation──▶ template vars ──template──▶ prompt text
//!                                                                                   │
//!                 token ids ◀── segment cache ◀── split at added tokens ◀──tokenize──┘
//! ```

pub mod conversation;
pub mod error;
pub mod request;
pub mod template;
pub mod tokenize;

pub use conversation::Compat;
pub use error::{ApiError, Disposition};
pub use request::{Endpoint, Limits, Request, RequestError};
pub use template::{ChatTemplate, ContentFormat, TemplateError, TemplateOptions, ToolsCacheStats};
pub use tokenize::{
    canonical_json, is_packed, pack_tokenizer, CacheConfig, CacheStats, EncodeOptions,
    PromptTokenizer, TokenizeError, TokenizerFile, Unpacked,
};

use serde_json::{Map, Value};

use request::{ChatRequest, Payload, Prompt};

/// Settings of a [`ModelPrompt`].
#[derive(Debug, Clone, PartialEq)]
pub struct PromptOptions {
    /// Request limits.
    pub limits: Limits,
    /// Produce at most this many prompt tokens (default 32 768). The router only matches whole
    /// KV blocks of a bounded prefix, and tokenizing runs on the Envoy worker thread, so there
    /// is no point encoding further.
    pub max_prompt_tokens: usize,
    /// Read at most this many bytes of a prompt's text (default unlimited); a longer
    /// prompt's ids are a certain prefix and incomplete.
    pub max_tokenize_bytes: usize,
    /// Whose message/tool conversion to reproduce (default vLLM).
    pub compat: Compat,
    /// Template settings (fuel, recursion, content format).
    pub template: TemplateOptions,
    /// Segment cache bounds.
    pub cache: CacheConfig,
    /// Server-side `chat_template_kwargs` defaults (vLLM `--default-chat-template-kwargs`),
    /// overridden by the request's.
    pub default_chat_template_kwargs: Map<String, Value>,
}

impl Default for PromptOptions {
    fn default() -> Self {
        PromptOptions {
            limits: Limits::default(),
            max_prompt_tokens: 32_768,
            max_tokenize_bytes: usize::MAX,
            compat: Compat::Vllm,
            template: TemplateOptions::default(),
            cache: CacheConfig::default(),
            default_chat_template_kwargs: Map::new(),
        }
    }
}

/// Where the prompt ids came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptSource {
    /// A chat request, rendered through the template and tokenized.
    Chat,
    /// A completions request with a text prompt, tokenized.
    CompletionText,
    /// A completions request with token ids, used as sent.
    CompletionTokens,
}

/// The prompt token ids of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptOutput {
    /// Prompt token ids, at most [`PromptOptions::max_prompt_tokens`].
    pub token_ids: Vec<u32>,
    /// True if `token_ids` is the whole prompt.
    pub complete: bool,
    /// Where the ids came from.
    pub source: PromptSource,
    /// Text segments answered by the segment cache.
    pub segments_hit: u32,
    /// Text segments that had to be encoded.
    pub segments_miss: u32,
    /// Ids that came from the cache.
    pub tokens_from_cache: usize,
    /// Length of the rendered (or given) prompt text in bytes; 0 for token prompts.
    pub prompt_bytes: usize,
    /// Prompts in the request (completions batches; the first one is routed on).
    pub batch_size: usize,
    /// The whole prompt's length in ids: `token_ids.len()` when complete, else estimated
    /// from the bytes the ids cover (for the cost of a prompt cut by the bounds).
    pub estimated_tokens: usize,
}

/// A request's prompt before tokenizing ([`ModelPrompt::text`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PromptText {
    /// Text to tokenize.
    Text {
        /// The rendered chat prompt or the completion's text.
        text: String,
        /// Where it came from.
        source: PromptSource,
        /// Prompts in the request.
        batch_size: usize,
        /// Whether the tokenizer adds its special tokens (HF `add_special_tokens`).
        add_special_tokens: bool,
    },
    /// Token ids the client sent (a completions request).
    Tokens {
        /// The ids, uncapped.
        ids: Vec<u32>,
        /// Prompts in the request.
        batch_size: usize,
    },
}

/// Anything that can go wrong between body and token ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    /// The body was not accepted.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The chat template failed.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
}

impl PromptError {
    fn inner(&self) -> &dyn ApiError {
        match self {
            PromptError::Request(e) => e,
            PromptError::Template(e) => e,
            PromptError::Tokenize(e) => e,
        }
    }
}

impl ApiError for PromptError {
    fn status(&self) -> u16 {
        self.inner().status()
    }
    fn error_type(&self) -> &'static str {
        self.inner().error_type()
    }
    fn code(&self) -> &'static str {
        self.inner().code()
    }
    fn param(&self) -> Option<String> {
        self.inner().param()
    }
    fn disposition(&self) -> Disposition {
        self.inner().disposition()
    }
}

/// A model's chat template and tokenizer, with a segment cache. One per Envoy VM and model.
#[derive(Debug)]
pub struct ModelPrompt {
    template: ChatTemplate,
    tokenizer: PromptTokenizer,
    options: PromptOptions,
}

impl ModelPrompt {
    /// Loads a model from its `tokenizer.json` and `tokenizer_config.json` (with `chat_template`).
    pub fn new(
        tokenizer_json: &[u8],
        tokenizer_config_json: &[u8],
        options: PromptOptions,
    ) -> Result<Self, PromptError> {
        Self::from_file(
            TokenizerFile::read(tokenizer_json)?,
            tokenizer_config_json,
            options,
        )
    }

    /// [`ModelPrompt::new`] from a tokenizer file already read (whose bytes may be gone).
    pub fn from_file(
        tokenizer: TokenizerFile<'_>,
        tokenizer_config_json: &[u8],
        options: PromptOptions,
    ) -> Result<Self, PromptError> {
        let template =
            ChatTemplate::from_tokenizer_config(tokenizer_config_json, &options.template)?;
        let tokenizer = PromptTokenizer::from_staged(tokenizer, options.cache)?;
        Ok(Self::from_parts(template, tokenizer, options))
    }

    /// Assembles a model from an already loaded template and tokenizer.
    pub fn from_parts(
        template: ChatTemplate,
        tokenizer: PromptTokenizer,
        options: PromptOptions,
    ) -> Self {
        ModelPrompt {
            template,
            tokenizer,
            options,
        }
    }

    /// The options in use.
    pub fn options(&self) -> &PromptOptions {
        &self.options
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The tokenizer (with its cache).
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// The tokenizer, mutably (to encode through its cache directly).
    pub fn tokenizer_mut(&mut self) -> &mut PromptTokenizer {
        &mut self.tokenizer
    }

    /// Cumulative segment-cache counters.
    pub fn cache_stats(&self) -> CacheStats {
        self.tokenizer.cache_stats()
    }

    /// Parses `body` (sent to `endpoint`) and returns its prompt ids. `now_unix_ms` is the wall
    /// clock, used only by templates that print the date (`strftime_now`).
    pub fn process(
        &mut self,
        endpoint: Endpoint,
        body: &[u8],
        now_unix_ms: u64,
    ) -> Result<PromptOutput, PromptError> {
        let request = request::parse(endpoint, body, &self.options.limits)?;
        self.prompt(&request, now_unix_ms)
    }

    /// The prompt ids of an already parsed request (parse first to pick the model by name),
    /// capped at [`PromptOptions::max_prompt_tokens`]: [`Self::text`] then [`Self::encode`].
    pub fn prompt(
        &mut self,
        request: &Request,
        now_unix_ms: u64,
    ) -> Result<PromptOutput, PromptError> {
        let text = self.text(request, now_unix_ms)?;
        self.encode(text, self.options.max_prompt_tokens)
    }

    /// The first half of [`Self::prompt`]: the request's prompt text (the chat template
    /// rendered, or a completion's text), or the token ids a completion sent.
    pub fn text(&self, request: &Request, now_unix_ms: u64) -> Result<PromptText, PromptError> {
        let add_special_tokens = request.effective_add_special_tokens();
        Ok(match &request.payload {
            Payload::Chat(chat) => PromptText::Text {
                text: self.render(chat, now_unix_ms)?,
                source: PromptSource::Chat,
                batch_size: 1,
                add_special_tokens,
            },
            Payload::Completion(c) => match &c.prompt {
                Prompt::Text(t) => PromptText::Text {
                    text: t.clone(),
                    source: PromptSource::CompletionText,
                    batch_size: c.batch_size,
                    add_special_tokens,
                },
                Prompt::Tokens(ids) => PromptText::Tokens {
                    ids: ids.clone(),
                    batch_size: c.batch_size,
                },
            },
        })
    }

    /// The second half of [`Self::prompt`]: token ids of `text`, at most `max_tokens`.
    pub fn encode(
        &mut self,
        text: PromptText,
        max_tokens: usize,
    ) -> Result<PromptOutput, PromptError> {
        match text {
            PromptText::Tokens {
                mut ids,
                batch_size,
            } => {
                let complete = ids.len() <= max_tokens;
                let estimated_tokens = ids.len();
                ids.truncate(max_tokens);
                Ok(PromptOutput {
                    estimated_tokens,
                    token_ids: ids,
                    complete,
                    source: PromptSource::CompletionTokens,
                    segments_hit: 0,
                    segments_miss: 0,
                    tokens_from_cache: 0,
                    prompt_bytes: 0,
                    batch_size,
                })
            }
            PromptText::Text {
                text,
                source,
                batch_size,
                add_special_tokens,
            } => {
                let encoded = self.tokenizer.encode_bounded(
                    &text,
                    EncodeOptions {
                        max_tokens,
                        add_special_tokens,
                    },
                    self.options.max_tokenize_bytes,
                )?;
                Ok(PromptOutput {
                    estimated_tokens: encoded.estimated_tokens(text.len()),
                    token_ids: encoded.ids,
                    complete: encoded.complete,
                    source,
                    segments_hit: encoded.segments_hit,
                    segments_miss: encoded.segments_miss,
                    tokens_from_cache: encoded.tokens_from_cache,
                    prompt_bytes: text.len(),
                    batch_size,
                })
            }
        }
    }

    /// Renders a chat request to its prompt text.
    pub fn render(&self, chat: &ChatRequest, now_unix_ms: u64) -> Result<String, PromptError> {
        let now_unix_secs = i64::try_from(now_unix_ms / 1000).unwrap_or(i64::MAX);
        let input = conversation::render_input_cached(
            chat,
            self.options.compat,
            &self.template,
            &self.options.default_chat_template_kwargs,
            now_unix_secs,
        )?;
        Ok(self.template.render(input)?)
    }
}
