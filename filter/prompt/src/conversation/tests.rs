#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Value};

use super::*;
use crate::request::{parse, Endpoint, Limits, Payload};

fn chat(body: Value) -> ChatRequest {
    match parse(
        Endpoint::ChatCompletions,
        body.to_string().as_bytes(),
        &Limits::default(),
    )
    .unwrap()
    .payload
    {
        Payload::Chat(c) => c,
        Payload::Completion(_) => panic!(),
    }
}

fn vars(body: Value, compat: Compat, format: ContentFormat) -> Map<String, Value> {
    render_input(&chat(body), compat, format, &Map::new(), 0)
        .unwrap()
        .vars
}

#[test]
fn content_follows_vllm_string_and_openai_formats() {
    let body = json!({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": ""}, "b"]},
        {"role": "assistant", "content": null},
        {"role": "tool", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
        {"role": "user", "content": "plain"}
    ]});
    let s = vars(body.clone(), Compat::Vllm, ContentFormat::String);
    let contents: Vec<&Value> = s["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["content"])
        .collect();
    assert_eq!(
        contents,
        [&json!("a\nb"), &json!(""), &json!("x\ny"), &json!("plain")]
    );

    let o = vars(body, Compat::Vllm, ContentFormat::OpenAi);
    let contents: Vec<&Value> = o["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["content"])
        .collect();
    assert_eq!(
        contents,
        [
            &json!([{"type": "text", "text": "a"}, {"type": "text", "text": ""}, {"type": "text", "text": "b"}]),
            &json!([]),
            &json!("x\ny"),
            &json!([{"type": "text", "text": "plain"}]),
        ]
    );
}

#[test]
fn vllm_parses_tool_call_arguments_and_normalises_tools() {
    let body = json!({"model": "m",
        "messages": [
            {"role": "user", "content": "q", "tool_call_id": "ignored-for-user"},
            {"role": "assistant", "content": null, "reasoning": "r", "tool_calls": [
                {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{\"b\":1,\"a\":[true]}"}},
                {"id": "2", "function": {"name": "g", "arguments": "not json"}},
                {"id": "3", "function": {"name": "h", "arguments": "[1]"}},
                {"id": "4", "function": {"name": "k", "arguments": {"x": 1}}}
            ]},
            {"role": "assistant", "content": "done", "tool_calls": []}
        ],
        "tools": [{"function": {"name": "f", "strict": true}, "x-extra": 1}]
    });
    let v = vars(body.clone(), Compat::Vllm, ContentFormat::String);
    let msgs = v["messages"].as_array().unwrap();
    assert!(msgs[0].get("tool_call_id").is_none());
    let args: Vec<&Value> = msgs[1]["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["function"]["arguments"])
        .collect();
    assert_eq!(
        args,
        [
            &json!({"b": 1, "a": [true]}),
            &json!({}),
            &json!({}),
            &json!({"x": 1})
        ]
    );
    assert_eq!(msgs[1]["reasoning_content"], json!("r"));
    assert!(
        msgs[2].get("tool_calls").is_none(),
        "empty tool_calls are dropped"
    );
    assert_eq!(
        serde_json::to_string(&v["tools"]).unwrap(),
        r#"[{"type":"function","function":{"name":"f","description":null,"parameters":null,"strict":true},"x-extra":1}]"#
    );

    let hf = vars(body, Compat::HuggingFace, ContentFormat::String);
    let msgs = hf["messages"].as_array().unwrap();
    assert_eq!(msgs[0]["tool_call_id"], json!("ignored-for-user"));
    assert_eq!(
        msgs[1]["tool_calls"][0]["function"]["arguments"],
        json!("{\"b\":1,\"a\":[true]}")
    );
    assert_eq!(
        hf["tools"],
        json!([{"function": {"name": "f", "strict": true}, "x-extra": 1}])
    );
}

#[test]
fn bad_tool_calls_and_tools_are_rejected_in_vllm_mode() {
    let call = |c: Value| {
        let body = json!({"model": "m", "messages": [{"role": "assistant", "tool_calls": [c]}]});
        render_input(
            &chat(body),
            Compat::Vllm,
            ContentFormat::String,
            &Map::new(),
            0,
        )
    };
    assert!(call(json!({"type": "custom", "function": {"name": "f"}})).is_err());
    assert!(call(json!({"id": "x"})).is_err());
    let tool = |t: Value| {
        let body =
            json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [t]});
        render_input(
            &chat(body),
            Compat::Vllm,
            ContentFormat::String,
            &Map::new(),
            0,
        )
    };
    assert_eq!(
        tool(json!({"type": "function"})).unwrap_err().to_string(),
        "missing required parameter 'tools[0].function'"
    );
    assert!(tool(json!({"function": {"description": "no name"}})).is_err());
    assert!(tool(json!({"type": "custom", "custom": {}})).is_ok());
}

#[test]
fn kwargs_override_in_vllm_order() {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
        "chat_template_kwargs": {"enable_thinking": false, "add_generation_prompt": false, "messages": "no", "tools": [1]}});
    let mut defaults = Map::new();
    defaults.insert("enable_thinking".into(), json!(true));
    defaults.insert("reasoning_effort".into(), json!("low"));
    let input = render_input(
        &chat(body),
        Compat::Vllm,
        ContentFormat::String,
        &defaults,
        0,
    )
    .unwrap();
    assert_eq!(input.vars["enable_thinking"], json!(false));
    assert_eq!(input.vars["reasoning_effort"], json!("low"));
    assert_eq!(input.vars["add_generation_prompt"], json!(false));
    assert_eq!(input.vars["tools"], json!([1]));
    assert!(input.vars["messages"].is_array());
    assert!(input.vars.get("continue_final_message").is_none());
    assert!(!input.continue_final_message);
    assert_eq!(input.vars["documents"], Value::Null);
}
