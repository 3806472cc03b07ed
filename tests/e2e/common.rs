//! Shared helpers: golden chats, model files, request bodies, a per-test directory, a
//! routable stack.

use kvgate_stack::{Stack, StackOptions, MODEL};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// The Hugging Face golden cases (rendered prompt + token ids), with the stack's model.
pub fn golden() -> Vec<Value> {
    let text = include_str!("../fixtures/qwen3/qwen3_chat_template_golden.jsonl");
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("_meta").is_none())
        .collect()
}

/// A golden case's request body as a client would send it.
pub fn golden_body(case: &Value) -> Vec<u8> {
    let mut req = case["request"].clone();
    req["model"] = json!(MODEL);
    if let Some(k) = case["chat_template_kwargs"]
        .as_object()
        .filter(|o| !o.is_empty())
    {
        req["chat_template_kwargs"] = Value::Object(k.clone());
    }
    req["add_generation_prompt"] = case["add_generation_prompt"].clone();
    serde_json::to_vec(&req).unwrap()
}

/// Token ids of a golden case.
pub fn golden_ids(case: &Value) -> Vec<u64> {
    case["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// A chat with a long shared system prompt (~700 tokens) and a short question.
pub fn long_chat(question: &str) -> Vec<u8> {
    let system = "You are a careful assistant for a logistics company. Answer precisely, cite the policy section, and never invent numbers. ".repeat(30);
    serde_json::to_vec(&json!({
        "model": MODEL,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        "max_tokens": 4
    }))
    .unwrap()
}

/// Starts the stack and waits (up to 90 s) until every gateway routes with the tokenizer
/// and knows every worker (the plugin needs `decision_header: true`); panics otherwise.
pub fn routable_stack(opts: &StackOptions) -> Stack {
    let stack = Stack::start(opts).unwrap_or_else(|e| panic!("{e}"));
    stack
        .wait_routable(Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    stack
}

/// A fresh directory for one test's logs under the target dir.
pub fn test_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base
        .join("kvgate-e2e")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Lines of the mock workers' request log.
pub fn request_log(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
