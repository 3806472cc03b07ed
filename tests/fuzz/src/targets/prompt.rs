//! Fuzz target `prompt`: request body → chat template → token ids, with the real Qwen3
//! tokenizer and chat template (`KVGATE_MODEL_DIR`, else `target/models/Qwen3-0.6B`).
//!
//! Every input is sent as the body of both endpoints (`/v1/chat/completions` and
//! `/v1/completions`) through `ModelPrompt::process`, on a model with the default options or
//! (inputs of odd length) on one with a small token cap, so the capped and windowed encodes
//! run. Nothing may panic. When a prompt comes out, it is checked against the reference path: the same body
//! again (now answered by the segment cache) gives the same ids, and the ids are the first
//! `max_prompt_tokens` of one uncached `encode_full` of the rendered text, with `complete`
//! set exactly when nothing was cut.

use std::sync::{Mutex, OnceLock};

use kvgate_prompt::request::{self, Payload, Prompt};
use kvgate_prompt::{Endpoint, ModelPrompt, PromptOptions};

/// The wall clock handed to `strftime_now` (fixed, so runs are reproducible).
const NOW_MS: u64 = 1_700_000_000_000;

static MODELS: OnceLock<Mutex<Vec<ModelPrompt>>> = OnceLock::new();

fn models() -> &'static Mutex<Vec<ModelPrompt>> {
    MODELS.get_or_init(|| {
        let (tokenizer, config) = crate::model_files();
        let load = |options: PromptOptions| match ModelPrompt::new(&tokenizer, &config, options) {
            Ok(m) => m,
            Err(e) => panic!("the Qwen3 model does not load: {e}"),
        };
        let capped = PromptOptions {
            max_prompt_tokens: 40,
            ..PromptOptions::default()
        };
        Mutex::new(vec![load(PromptOptions::default()), load(capped)])
    })
}

fn check(model: &mut ModelPrompt, endpoint: Endpoint, body: &[u8]) {
    let Ok(out) = model.process(endpoint, body, NOW_MS) else {
        return;
    };
    let again = model
        .process(endpoint, body, NOW_MS)
        .expect("the same body fails the second time");
    assert_eq!(again.token_ids, out.token_ids, "cached ids differ");
    assert_eq!(again.complete, out.complete);

    let req = request::parse(endpoint, body, &model.options().limits)
        .expect("processed body does not parse");
    let cap = model.options().max_prompt_tokens;
    let text = match &req.payload {
        Payload::Chat(chat) => model
            .render(chat, NOW_MS)
            .expect("processed chat does not render"),
        Payload::Completion(c) => match &c.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Tokens(ids) => {
                assert_eq!(out.token_ids, ids[..ids.len().min(cap)]);
                assert_eq!(out.complete, ids.len() <= cap);
                return;
            }
        },
    };
    assert_eq!(out.prompt_bytes, text.len());
    let full = model
        .tokenizer()
        .encode_full(&text, req.effective_add_special_tokens())
        .expect("encode_full fails on a processed prompt");
    assert_eq!(
        out.token_ids,
        full[..full.len().min(cap)],
        "segmented/capped ids differ from the full encode (cap {cap})"
    );
    assert_eq!(out.complete, full.len() <= cap, "complete flag (cap {cap})");
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut models = models().lock().unwrap_or_else(|e| e.into_inner());
    // One model per input (picked by its length): tokenizing is the expensive part.
    let n = models.len();
    if let Some(model) = models.get_mut(data.len() % n) {
        for endpoint in [Endpoint::ChatCompletions, Endpoint::Completions] {
            check(model, endpoint, data);
        }
    }
}
