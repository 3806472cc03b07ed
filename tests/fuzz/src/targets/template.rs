//! Fuzz target `template`: arbitrary chat-template sources rendered against fixed requests.
//!
//! The input is the `chat_template` of the model's real `tokenizer_config.json` (its special
//! tokens kept), loaded with `ChatTemplate::from_tokenizer_config` and the production
//! `TemplateOptions` (fuel and recursion limits), then rendered for one of two fixed chat
//! requests (a tool-calling conversation, or one that continues its final assistant
//! message) in vLLM or Hugging Face conversion, picked by the input's length. Nothing may
//! panic, and a template that loops or builds huge strings must stop on its fuel
//! (libFuzzer's `-timeout` and `-rss_limit_mb` turn a hang or a memory blow-up into a
//! failure).

use std::sync::OnceLock;

use kvgate_prompt::conversation::{self, Compat};
use kvgate_prompt::request::{self, ChatRequest, Payload};
use kvgate_prompt::{ChatTemplate, Endpoint, Limits, TemplateOptions};
use serde_json::{Map, Value};

const NOW_SECS: i64 = 1_700_000_000;

const TOOLS_BODY: &str = r#"{"model":"Qwen/Qwen3-0.6B","messages":[
 {"role":"system","content":"You are a helpful assistant."},
 {"role":"user","content":[{"type":"text","text":"Weather in Paris?"},{"type":"text","text":"And in Rome."}]},
 {"role":"assistant","content":null,"reasoning_content":"Two cities.","tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}}]},
 {"role":"tool","tool_call_id":"c1","content":"18C, sunny"},
 {"role":"user","content":"Thanks!"}],
 "tools":[{"type":"function","function":{"name":"get_weather","description":"Current weather","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}}],
 "chat_template_kwargs":{"enable_thinking":false}}"#;

const CONTINUE_BODY: &str = r#"{"model":"Qwen/Qwen3-0.6B","messages":[
 {"role":"user","content":"Write a haiku."},
 {"role":"assistant","content":"Autumn moonlight"}],
 "add_generation_prompt":false,"continue_final_message":true}"#;

struct Fixture {
    /// `tokenizer_config.json` without `chat_template` (and the bulky added-token table).
    config: Map<String, Value>,
    chats: Vec<ChatRequest>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (_, config) = crate::model_files();
        let Ok(Value::Object(mut config)) = serde_json::from_slice::<Value>(&config) else {
            panic!("tokenizer_config.json is not a JSON object");
        };
        config.remove("chat_template");
        config.remove("added_tokens_decoder");
        let chats = [TOOLS_BODY, CONTINUE_BODY]
            .iter()
            .map(|body| {
                match request::parse(
                    Endpoint::ChatCompletions,
                    body.as_bytes(),
                    &Limits::default(),
                ) {
                    Ok(request::Request {
                        payload: Payload::Chat(chat),
                        ..
                    }) => chat,
                    other => panic!("fixed request does not parse: {other:?}"),
                }
            })
            .collect();
        Fixture { config, chats }
    })
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let fixture = fixture();
    let mut config = fixture.config.clone();
    config.insert("chat_template".into(), Value::String(source.to_owned()));
    let Ok(config) = serde_json::to_vec(&config) else {
        return;
    };
    let Ok(template) = ChatTemplate::from_tokenizer_config(&config, &TemplateOptions::default())
    else {
        return;
    };
    // One render per input (the chat and the conversion picked by the input's length), to
    // keep the throughput up: runaway templates use their whole fuel.
    let chat = &fixture.chats[data.len() % fixture.chats.len()];
    let compat = if (data.len() / 2).is_multiple_of(2) {
        Compat::Vllm
    } else {
        Compat::HuggingFace
    };
    if let Ok(input) = conversation::render_input(
        chat,
        compat,
        template.content_format(),
        &Map::new(),
        NOW_SECS,
    ) {
        let _ = template.render(input);
    }
}
