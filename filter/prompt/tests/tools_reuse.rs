//! The tools cache changes nothing: rendering with the tools list reused
//! (`conversation::render_input_cached`) gives the same text as the plain conversion, over
//! every golden chat, a multi-turn agent sequence whose tools and system message change, and
//! templates that dump tools with other `tojson` options. Needs the model files (`make setup`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use kvgate_prompt::request::{self, ChatRequest, Payload, Tools};
use kvgate_prompt::{conversation, ChatTemplate, Compat, Endpoint, Limits, TemplateOptions};
use serde_json::{json, Map, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Qwen3 `tokenizer_config.json` (`KVGATE_MODEL_DIR`, else `target/models/Qwen3-0.6B`).
fn qwen3_template() -> ChatTemplate {
    let dir = std::env::var_os("KVGATE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/models/Qwen3-0.6B"));
    let path = dir.join("tokenizer_config.json");
    let cfg = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (run `make setup` or set KVGATE_MODEL_DIR)",
            path.display()
        )
    });
    ChatTemplate::from_tokenizer_config(&cfg, &TemplateOptions::default()).unwrap()
}

/// The golden requests (with their kwargs), in file order, and transformers' text.
fn golden() -> Vec<(String, Value, String)> {
    let path = workspace().join("tests/fixtures/qwen3/qwen3_chat_template_golden.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("_meta").is_none())
        .map(|v| {
            let mut body = v["request"].clone();
            body["chat_template_kwargs"] = v["chat_template_kwargs"].clone();
            body["add_generation_prompt"] = v["add_generation_prompt"].clone();
            (
                v["id"].as_str().unwrap().to_owned(),
                body,
                v["prompt_text"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn chat_of(body: &Value) -> ChatRequest {
    let body = serde_json::to_vec(body).unwrap();
    match request::parse(Endpoint::ChatCompletions, &body, &Limits::default())
        .unwrap()
        .payload
    {
        Payload::Chat(c) => c,
        Payload::Completion(_) => panic!("not chat"),
    }
}

/// Plain and reused renders of `chat`; asserts they are equal and returns the text.
fn both(template: &ChatTemplate, chat: &ChatRequest, compat: Compat, what: &str) -> String {
    let kwargs = Map::new();
    let plain =
        conversation::render_input(chat, compat, template.content_format(), &kwargs, 0).unwrap();
    let plain = template.render(plain);
    let reused = conversation::render_input_cached(chat, compat, template, &kwargs, 0).unwrap();
    let reused = template.render(reused);
    assert_eq!(plain, reused, "{what} ({compat:?})");
    plain.unwrap()
}

#[test]
fn reuse_equals_plain_over_every_golden_chat() {
    let template = qwen3_template();
    for compat in [Compat::HuggingFace, Compat::Vllm] {
        // Twice: the second pass finds every tools list in the cache.
        for _ in 0..2 {
            for (id, body, want) in golden() {
                let text = both(&template, &chat_of(&body), compat, &id);
                if compat == Compat::HuggingFace {
                    assert!(text == want, "{id}: differs from transformers'");
                }
            }
        }
    }
    let stats = template.tools_cache_stats();
    // Two tools lists in the fixture (the two τ-bench tasks send the same 14 tools, or not):
    // at most one miss per distinct list and conversion; everything else hits.
    assert!(stats.misses <= 4, "{stats:?}");
    assert!(stats.hits >= 20, "{stats:?}");
    // Every tool's `tojson` after the first render of a list came from the cache (so the
    // cache recognises minijinja's objects; a minijinja change that breaks this fails here).
    assert!(stats.dump_hits >= 14 * 18, "{stats:?}");
}

/// A change made to every body of a variant of the sequence.
type Change = Box<dyn Fn(&mut Value)>;

/// The τ-bench trajectories turn by turn, two sessions interleaved, then the same turns with
/// one tool's description changed, a tool dropped, the system message changed, and `tools`
/// replaced through `chat_template_kwargs`: every render equal to the plain one, and the
/// changed lists miss the cache.
#[test]
fn reuse_equals_plain_over_an_agent_sequence_with_changes() {
    let template = qwen3_template();
    let longest: Vec<Value> = {
        let mut by_task: Vec<(String, Value)> = Vec::new();
        for (id, body, _) in golden() {
            if body["tools"].as_array().is_none_or(|t| t.len() < 10) {
                continue;
            }
            let task = id.rsplit_once(":upto").unwrap().0.to_owned();
            let len = body["messages"].as_array().unwrap().len();
            match by_task.iter_mut().find(|(t, _)| *t == task) {
                Some((_, b)) if b["messages"].as_array().unwrap().len() >= len => {}
                Some((_, b)) => *b = body,
                None => by_task.push((task, body)),
            }
        }
        by_task.into_iter().map(|(_, b)| b).collect()
    };
    assert_eq!(longest.len(), 2);
    let turns = |body: &Value| -> Vec<Value> {
        let msgs = body["messages"].as_array().unwrap();
        (1..=msgs.len())
            .map(|n| {
                let mut b = body.clone();
                b["messages"] = Value::Array(msgs[..n].to_vec());
                b
            })
            .collect()
    };
    let sessions: Vec<Vec<Value>> = longest.iter().map(turns).collect();
    let max_turns = sessions.iter().map(Vec::len).max().unwrap();

    let mut variants: Vec<(&str, Change)> = vec![
        ("as sent", Box::new(|_| {})),
        (
            "one description changed",
            Box::new(|b| {
                let d = &mut b["tools"][3]["function"]["description"];
                *d = json!(format!("{} ", d.as_str().unwrap()));
            }),
        ),
        (
            "a tool dropped",
            Box::new(|b| {
                b["tools"].as_array_mut().unwrap().remove(0);
            }),
        ),
        (
            "system changed",
            Box::new(|b| {
                b["messages"][0]["content"] = json!("You are a terse airline agent.");
            }),
        ),
        (
            "tools replaced by a kwarg",
            Box::new(|b| {
                b["chat_template_kwargs"] = json!({"tools": [{"name": "only_this"}]});
            }),
        ),
    ];
    // And back to the original list (a hit again, after the changes).
    variants.push(("as sent again", Box::new(|_| {})));

    for compat in [Compat::HuggingFace, Compat::Vllm] {
        for (label, change) in &variants {
            let before = template.tools_cache_stats();
            let mut texts = Vec::new();
            for t in 0..max_turns {
                for (s, session) in sessions.iter().enumerate() {
                    let Some(body) = session.get(t) else { continue };
                    let mut body = body.clone();
                    change(&mut body);
                    let text = both(
                        &template,
                        &chat_of(&body),
                        compat,
                        &format!("{label}, session {s}, turn {t}"),
                    );
                    texts.push(text);
                }
            }
            let after = template.tools_cache_stats();
            let misses = after.misses - before.misses;
            match *label {
                "one description changed" | "a tool dropped" => {
                    assert!(misses >= 1, "{label}: {before:?} → {after:?}");
                    assert!(texts.iter().all(|t| !t.is_empty()));
                }
                "as sent again" | "system changed" => {
                    assert_eq!(misses, 0, "{label}: {before:?} → {after:?}")
                }
                "tools replaced by a kwarg" => {
                    assert_eq!(after.hits, before.hits, "{label}: nothing cached");
                    assert_eq!(misses, 0, "{label}");
                    assert!(texts.iter().all(|t| t.contains("only_this")));
                }
                _ => {}
            }
        }
    }
}

/// Templates that dump the tools other ways (whole list, nested objects, indent, ASCII,
/// sorted keys, separators) and print or inspect them: reused equals plain, twice.
#[test]
fn reuse_equals_plain_for_other_tojson_uses() {
    let sources = [
        "{{ tools | tojson }}|{{ tools | tojson(indent=4) }}|{% for t in tools %}{{ t | tojson }}{{ t | tojson(indent=2) }}{% endfor %}",
        "{% for t in tools %}{{ t.function | tojson(ensure_ascii=True) }}{{ t.function.parameters | tojson(sort_keys=True) }}{{ t | tojson(separators=(',', ':')) }}{% endfor %}",
        "{% for t in tools %}{{ t }}{{ t.function.name }}{{ t | length }}{{ t is mapping }}{{ t.items() | list | length }}{{ t == tools[0] }}{% endfor %}{{ tools | length }}",
        // A template-built object next to the cached ones: never served from the cache.
        "{% for t in tools %}{{ {'wrapped': t} | tojson }}{{ [t.function.name] | tojson }}{{ t | tojson }}{% endfor %}",
    ];
    let chat = chat_of(&json!({
        "model": "m",
        "messages": [{"role": "user", "content": "Book a flight"}],
        "tools": [
            {"type": "function", "function": {"name": "book", "description": "Réserve un vol ✈", "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "n": {"type": "integer", "minimum": 1.5e-7}}, "required": ["to"]}}},
            {"type": "function", "function": {"name": "cancel", "description": null, "parameters": {"z": [], "a": {}}}, "x-extra": [1, 2.0, true]}
        ]
    }));
    for src in sources {
        let template =
            ChatTemplate::from_source(src, Map::new(), &TemplateOptions::default()).unwrap();
        for compat in [Compat::HuggingFace, Compat::Vllm] {
            for round in 0..3 {
                both(&template, &chat, compat, &format!("{src} round {round}"));
            }
        }
        assert!(template.tools_cache_stats().hits >= 4, "{src}");
    }
}

/// `Tools` keeps the exact text sent, and values parse back from it.
#[test]
fn tools_text_is_kept_as_sent() {
    let body = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"tools" : [ {"b":1,"a":[ 2 ]} ] }"#;
    let chat = match request::parse(Endpoint::ChatCompletions, body, &Limits::default())
        .unwrap()
        .payload
    {
        Payload::Chat(c) => c,
        Payload::Completion(_) => panic!("not chat"),
    };
    let tools = chat.tools.unwrap();
    assert_eq!(tools.json(), r#"[{"b":1,"a":[ 2 ]}]"#);
    assert_eq!(tools.len(), 1);
    assert_eq!(tools.values().unwrap(), vec![json!({"b": 1, "a": [2]})]);
    let again = Tools::from_values(&tools.values().unwrap()).unwrap();
    assert_eq!(again.values().unwrap(), tools.values().unwrap());
}
