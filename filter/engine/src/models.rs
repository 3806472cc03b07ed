//! Per-model tokenizer and chat template of this VM: which model files are wanted (by
//! digest) and the loaded [`ModelPrompt`]s.

use crate::engine::Engine;
pub use crate::engine::ModelState;
pub use kvgate_core::sync::ModelFiles;
use kvgate_prompt::{
    Limits, ModelPrompt, PromptError, PromptOptions, TokenizeError, TokenizerFile,
};
use std::ops::Range;

/// A model's tokenizer or chat template could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model {model}: {source}")]
pub struct ModelLoadError {
    /// The model name.
    pub model: String,
    /// What failed.
    #[source]
    pub source: PromptError,
}

impl Engine {
    /// The prompt pipeline settings for a model with `block_size`-token blocks.
    pub fn prompt_options(&self, block_size: u32) -> PromptOptions {
        let g = &self.cfg.gateway;
        let mut o = PromptOptions {
            limits: Limits {
                max_body_bytes: g.max_body_bytes,
                max_messages: g.max_messages,
                max_json_depth: g.max_json_depth,
                ..Limits::default()
            },
            max_prompt_tokens: g.max_match_blocks.saturating_mul(block_size as usize),
            // Without token_data only the matchable prefix is needed: the tokenizer's own
            // bound (bytes that can hold max_prompt_tokens ids) applies.
            max_tokenize_bytes: if g.inject_token_data {
                g.max_tokenize_bytes
            } else {
                usize::MAX
            },
            ..PromptOptions::default()
        };
        o.cache.max_entries = g.segment_cache_entries;
        o.compat = match g.template_compat {
            kvgate_core::config::TemplateCompat::HuggingFace => kvgate_prompt::Compat::HuggingFace,
            kvgate_core::config::TemplateCompat::Vllm => kvgate_prompt::Compat::Vllm,
        };
        o
    }

    /// Notes that `name` is served with files `digest`; returns true if they must be loaded.
    pub fn want_model(&mut self, name: &str, digest: &str, block_size: u32) -> bool {
        match self.models.get_mut(name) {
            Some(m) if m.digest == digest => {
                m.block_size = block_size;
                m.prompt.is_none()
            }
            _ => {
                self.models.insert(
                    name.to_string(),
                    ModelState {
                        digest: digest.to_string(),
                        block_size,
                        prompt: None,
                    },
                );
                true
            }
        }
    }

    /// Models whose files are wanted but not loaded: (name, digest).
    pub fn missing_models(&self) -> Vec<(String, String)> {
        self.models
            .iter()
            .filter(|(_, m)| m.prompt.is_none())
            .map(|(n, m)| (n.clone(), m.digest.clone()))
            .collect()
    }

    /// Loads model files (from the sidecar via shared data, or the VM configuration).
    pub fn load_model(&mut self, digest: &str, files: &ModelFiles) -> Result<(), ModelLoadError> {
        self.load_model_in(
            digest,
            &files.name,
            files.block_size,
            &files.tokenizer_json,
            0..files.tokenizer_json.len(),
            &files.tokenizer_config_json,
        )
    }

    /// Loads a model whose tokenizer file is `source[tokenizer]`. A packed tokenizer is
    /// unpacked, then `source` is dropped before the model's tables are built (the peak of
    /// a load: Wasm memory keeps it), so a caller that hands over its buffer frees it there.
    pub fn load_model_in(
        &mut self,
        digest: &str,
        name: &str,
        block_size: u32,
        source: impl AsRef<[u8]>,
        tokenizer: Range<usize>,
        tokenizer_config_json: &[u8],
    ) -> Result<(), ModelLoadError> {
        // The old pipeline is dropped first, so the new one can reuse its memory.
        self.models.remove(name);
        let fail = |source: PromptError| ModelLoadError {
            model: name.to_string(),
            source,
        };
        let bytes = source.as_ref().get(tokenizer).ok_or_else(|| {
            fail(PromptError::Tokenize(TokenizeError::Load(
                "the tokenizer lies outside its files".into(),
            )))
        })?;
        let file = TokenizerFile::read(bytes).map_err(|e| fail(e.into()))?;
        let prompt = match file {
            TokenizerFile::Packed(unpacked) => {
                drop(source);
                self.build_prompt(
                    TokenizerFile::Packed(unpacked),
                    tokenizer_config_json,
                    block_size,
                )
            }
            json => self.build_prompt(json, tokenizer_config_json, block_size),
        }
        .map_err(fail)?;
        self.models.insert(
            name.to_string(),
            ModelState {
                digest: digest.to_string(),
                block_size,
                prompt: Some(prompt),
            },
        );
        Ok(())
    }

    fn build_prompt(
        &self,
        tokenizer: TokenizerFile<'_>,
        tokenizer_config_json: &[u8],
        block_size: u32,
    ) -> Result<ModelPrompt, PromptError> {
        ModelPrompt::from_file(
            tokenizer,
            tokenizer_config_json,
            self.prompt_options(block_size),
        )
    }

    /// Moves this VM's models out, to hand them to another VM with [`Engine::adopt_models`]
    /// (the virtual-time bench starts hundreds of VMs on the same tokenizer files, and
    /// loading one takes seconds).
    pub fn take_models(&mut self) -> Vec<(String, ModelState)> {
        self.models.drain().collect()
    }

    /// Installs models another VM loaded ([`Engine::take_models`]), replacing any of the
    /// same name.
    pub fn adopt_models(&mut self, models: Vec<(String, ModelState)>) {
        self.models.extend(models);
    }
}
