//! The real prompt path: `kvgate-prompt` (the model's chat template rendered with
//! minijinja, then its Hugging Face `tokenizer.json`) behind the [`Tokenize`] hook, so a
//! mock worker sees exactly the token ids a vLLM engine would compute.

use super::tokenize::{Tokenize, TokenizeError};
use kvgate_prompt::{ApiError, Endpoint, ModelPrompt, PromptError, PromptOptions};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// A model's chat template and tokenizer (`kvgate_prompt::ModelPrompt`).
#[derive(Debug)]
pub struct HfTokenizer {
    prompt: Mutex<ModelPrompt>,
    model: String,
    dir: String,
}

fn classify(e: &PromptError) -> TokenizeError {
    if e.status() < 500 {
        TokenizeError::BadRequest(e.to_string())
    } else {
        TokenizeError::Failed(e.to_string())
    }
}

impl HfTokenizer {
    /// Loads `tokenizer.json` and `tokenizer_config.json` from `dir`; `model` fills in a
    /// request's missing `model` field.
    pub fn load(dir: &Path, model: &str) -> Result<Self, TokenizeError> {
        let read = |f: &str| {
            std::fs::read(dir.join(f))
                .map_err(|e| TokenizeError::Failed(format!("{}: {e}", dir.join(f).display())))
        };
        let mut options = PromptOptions {
            max_prompt_tokens: usize::MAX,
            ..PromptOptions::default()
        };
        options.limits.max_body_bytes = 256 << 20;
        let prompt = ModelPrompt::new(
            &read("tokenizer.json")?,
            &read("tokenizer_config.json")?,
            options,
        )
        .map_err(|e| TokenizeError::Failed(e.to_string()))?;
        Ok(Self {
            prompt: Mutex::new(prompt),
            model: model.to_string(),
            dir: dir.display().to_string(),
        })
    }

    fn process(&self, endpoint: Endpoint, mut body: Value) -> Result<Vec<u32>, TokenizeError> {
        if let Some(map) = body.as_object_mut() {
            if !map.get("model").is_some_and(Value::is_string) {
                map.insert("model".into(), Value::String(self.model.clone()));
            }
            // Token ids were handled by the caller; the prompt crate need not see nvext.
            map.remove("nvext");
        }
        let bytes = serde_json::to_vec(&body).map_err(|e| TokenizeError::Failed(e.to_string()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut p = self.prompt.lock().unwrap_or_else(PoisonError::into_inner);
        p.process(endpoint, &bytes, now)
            .map(|o| o.token_ids)
            .map_err(|e| classify(&e))
    }
}

impl Tokenize for HfTokenizer {
    fn chat(&self, body: &Value) -> Result<Vec<u32>, TokenizeError> {
        self.process(Endpoint::ChatCompletions, body.clone())
    }

    fn text(&self, text: &str) -> Result<Vec<u32>, TokenizeError> {
        self.process(Endpoint::Completions, json!({ "prompt": text }))
    }

    fn name(&self) -> String {
        format!("kvgate-prompt ({})", self.dir)
    }
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
    use std::path::PathBuf;

    /// The Qwen3 model files (`make setup` fetches them): `KVGATE_MODEL_DIR` or
    /// `target/models/Qwen3-0.6B` in the workspace. Missing is a failure, not a skip.
    fn model_dir() -> PathBuf {
        let dir = std::env::var_os("KVGATE_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/models/Qwen3-0.6B")
            });
        assert!(
            dir.join("tokenizer.json").is_file() && dir.join("tokenizer_config.json").is_file(),
            "no Qwen3 tokenizer files in {}: run `make setup`",
            dir.display()
        );
        dir
    }

    #[test]
    fn missing_files_are_an_error() {
        assert!(HfTokenizer::load(Path::new("/nonexistent"), "m").is_err());
    }

    #[test]
    fn chat_uses_the_qwen_template() {
        let dir = model_dir();
        let t = HfTokenizer::load(&dir, "Qwen/Qwen3-0.6B").unwrap();
        let ids = t
            .chat(&json!({"messages": [{"role": "user", "content": "hello"}]}))
            .unwrap();
        assert_eq!(ids.first(), Some(&151_644), "<|im_start|>");
        assert!(!t.text("hello world").unwrap().is_empty());
        assert!(matches!(
            t.chat(&json!({"messages": "x"})),
            Err(TokenizeError::BadRequest(_))
        ));
    }
}
