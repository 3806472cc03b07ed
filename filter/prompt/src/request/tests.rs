#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::error::{ApiError, Disposition};

fn chat(body: serde_json::Value) -> Result<Request, RequestError> {
    parse(
        Endpoint::ChatCompletions,
        body.to_string().as_bytes(),
        &Limits::default(),
    )
}

fn completion(body: serde_json::Value) -> Result<Request, RequestError> {
    parse(
        Endpoint::Completions,
        body.to_string().as_bytes(),
        &Limits::default(),
    )
}

fn chat_of(req: Request) -> ChatRequest {
    match req.payload {
        Payload::Chat(c) => c,
        Payload::Completion(_) => panic!("not a chat request"),
    }
}

#[test]
fn parses_a_full_chat_request() {
    let req = chat(json!({
        "model": "Qwen/Qwen3-8B",
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, "b", {"type": "input_text", "text": ""}, {"type": "text", "text": null}]},
            {"role": "assistant", "content": null, "reasoning_content": "think",
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "content": "r", "tool_call_id": "c1", "name": "f"}
        ],
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "chat_template_kwargs": {"enable_thinking": false},
        "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": 7, "max_completion_tokens": 9,
        "nvext": {"annotations": ["x"]},
        "temperature": 0.5
    }))
    .unwrap();
    assert_eq!(req.model, "Qwen/Qwen3-8B");
    assert!(req.stream);
    assert_eq!(req.max_tokens, Some(9));
    assert_eq!(req.nvext.as_ref().unwrap()["annotations"], json!(["x"]));
    assert!(req.stream_options.is_some());
    assert!(!req.effective_add_special_tokens());
    let c = chat_of(req);
    assert!(c.add_generation_prompt && !c.continue_final_message);
    assert_eq!(c.messages.len(), 4);
    assert_eq!(
        c.messages[1].content,
        Content::Parts(vec!["a".into(), "b".into(), String::new()])
    );
    assert_eq!(c.messages[2].content, Content::Null);
    assert_eq!(c.messages[2].reasoning.as_deref(), Some("think"));
    assert_eq!(c.messages[2].tool_calls.as_ref().unwrap().len(), 1);
    assert_eq!(c.messages[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(c.messages[3].name.as_deref(), Some("f"));
    assert_eq!(c.tools.unwrap().len(), 1);
    assert_eq!(
        c.chat_template_kwargs.unwrap()["enable_thinking"],
        json!(false)
    );
}

#[test]
fn parses_completion_prompts() {
    let p = |v| match completion(json!({"model": "m", "prompt": v}))
        .unwrap()
        .payload
    {
        Payload::Completion(c) => (c.prompt, c.batch_size),
        Payload::Chat(_) => panic!(),
    };
    assert_eq!(p(json!("hi")), (Prompt::Text("hi".into()), 1));
    assert_eq!(p(json!(["a", "b"])), (Prompt::Text("a".into()), 2));
    assert_eq!(p(json!([1, 2, 3])), (Prompt::Tokens(vec![1, 2, 3]), 1));
    assert_eq!(p(json!([[4, 5], [6]])), (Prompt::Tokens(vec![4, 5]), 2));
    let req = completion(json!({"model": "m", "prompt": "x"})).unwrap();
    assert!(req.effective_add_special_tokens());
}

#[test]
fn endpoints_from_paths() {
    assert_eq!(
        Endpoint::from_path("/v1/chat/completions"),
        Some(Endpoint::ChatCompletions)
    );
    assert_eq!(
        Endpoint::from_path("/v1/chat/completions/?x=1"),
        Some(Endpoint::ChatCompletions)
    );
    assert_eq!(
        Endpoint::from_path("/v1/completions?stream=1"),
        Some(Endpoint::Completions)
    );
    assert_eq!(Endpoint::from_path("/v1/embeddings"), None);
}

/// A request result and the status, code, param and disposition its error must have.
type ErrorCase = (
    Result<Request, RequestError>,
    u16,
    &'static str,
    Option<&'static str>,
    Disposition,
);

/// Every error kind, with its status, code, param, disposition and body.
#[test]
fn every_error_kind_maps_to_openai() {
    let small = Limits {
        max_body_bytes: 64,
        max_messages: 2,
        max_json_depth: 4,
        max_tools: 1,
    };
    let user = json!({"role": "user", "content": "x"});
    let cases: Vec<ErrorCase> = vec![
        (
            parse(Endpoint::ChatCompletions, &[b' '; 65], &small),
            413,
            "request_too_large",
            None,
            Disposition::Reject,
        ),
        (
            parse(
                Endpoint::ChatCompletions,
                b"{\"model\": ",
                &Limits::default(),
            ),
            400,
            "invalid_json",
            None,
            Disposition::Reject,
        ),
        (
            // Bad UTF-8 inside a string of an object: invalid JSON, not "not an object".
            parse(
                Endpoint::ChatCompletions,
                b"{\"model\": \"m\", \"messages\": [{\"role\": \"user\", \"content\": \"\xff\xfe\"}]}",
                &Limits::default(),
            ),
            400,
            "invalid_json",
            None,
            Disposition::Reject,
        ),
        (
            parse(Endpoint::ChatCompletions, b"[[[[[1]]]]]", &small),
            400,
            "json_too_deep",
            None,
            Disposition::Reject,
        ),
        (
            parse(Endpoint::ChatCompletions, b"[]", &Limits::default()),
            400,
            "invalid_type",
            None,
            Disposition::Reject,
        ),
        (
            chat(json!({"messages": [user]})),
            400,
            "missing_required_parameter",
            Some("model"),
            Disposition::Reject,
        ),
        (
            chat(json!({"model": 1, "messages": [user]})),
            400,
            "invalid_type",
            Some("model"),
            Disposition::Reject,
        ),
        (
            chat(json!({"model": "m"})),
            400,
            "missing_required_parameter",
            Some("messages"),
            Disposition::Reject,
        ),
        (
            chat(json!({"model": "m", "messages": []})),
            400,
            "empty_array",
            Some("messages"),
            Disposition::Reject,
        ),
        (
            chat(json!({"model": "m", "messages": [{"content": "x"}]})),
            400,
            "missing_required_parameter",
            Some("messages[0].role"),
            Disposition::Reject,
        ),
        (
            chat(json!({"model": "m", "messages": [{"role": "user", "content": 5}]})),
            400,
            "invalid_type",
            Some("messages[0].content"),
            Disposition::Reject,
        ),
        (
            chat(json!({"model": "m", "messages": [user], "stream": "yes"})),
            400,
            "invalid_type",
            Some("stream"),
            Disposition::Reject,
        ),
        (
            chat(json!({"model": "m", "messages": [user], "max_tokens": -1})),
            400,
            "invalid_value",
            Some("max_tokens"),
            Disposition::Reject,
        ),
        (
            chat(json!({"model": "m", "messages": [user], "continue_final_message": true})),
            400,
            "invalid_value",
            Some("continue_final_message"),
            Disposition::Reject,
        ),
        (
            parse(
                Endpoint::ChatCompletions,
                json!({"model": "m", "messages": [user, user, user]})
                    .to_string()
                    .as_bytes(),
                &Limits {
                    max_body_bytes: 1 << 20,
                    ..small.clone()
                },
            ),
            400,
            "array_above_max_length",
            Some("messages"),
            Disposition::Reject,
        ),
        (
            chat(
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:"}}]}]}),
            ),
            400,
            "unsupported_content_part",
            Some("messages[0].content[0]"),
            Disposition::Forward,
        ),
        (
            chat(json!({"model": "m", "messages": [user], "chat_template": "{{ x }}"})),
            400,
            "unsupported_parameter",
            Some("chat_template"),
            Disposition::Forward,
        ),
        (
            completion(json!({"model": "m", "prompt": []})),
            400,
            "empty_array",
            Some("prompt"),
            Disposition::Reject,
        ),
        (
            completion(json!({"model": "m", "prompt": [1, -2]})),
            400,
            "invalid_value",
            Some("prompt[1]"),
            Disposition::Reject,
        ),
        (
            completion(json!({"model": "m", "prompt": ["a", 1]})),
            400,
            "invalid_type",
            Some("prompt[1]"),
            Disposition::Reject,
        ),
    ];
    for (i, (result, status, code, param, disposition)) in cases.into_iter().enumerate() {
        let err = result.expect_err(&format!("case {i} should fail"));
        assert_eq!(err.status(), status, "case {i}: {err}");
        assert_eq!(err.code(), code, "case {i}: {err}");
        assert_eq!(err.param().as_deref(), param, "case {i}: {err}");
        assert_eq!(err.disposition(), disposition, "case {i}: {err}");
        let body: serde_json::Value = serde_json::from_slice(&err.openai_body()).unwrap();
        let e = &body["error"];
        assert_eq!(e["message"], json!(err.to_string()));
        assert_eq!(
            e["type"],
            json!(if status >= 500 {
                "server_error"
            } else {
                "invalid_request_error"
            })
        );
        assert_eq!(e["code"], json!(code));
        assert_eq!(
            e["param"],
            param.map_or(serde_json::Value::Null, |p| json!(p))
        );
    }
}

#[test]
fn limits_count_tools_and_depth_ignores_strings() {
    let tools: Vec<_> = (0..3)
        .map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}}))
        .collect();
    let limits = Limits {
        max_tools: 2,
        ..Limits::default()
    };
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools})
            .to_string();
    let err = parse(Endpoint::ChatCompletions, body.as_bytes(), &limits).unwrap_err();
    assert_eq!(err.code(), "array_above_max_length");
    assert_eq!(err.param().as_deref(), Some("tools"));
    // Brackets inside strings (and escaped quotes) do not count as nesting.
    let tricky =
        json!({"model": "m", "messages": [{"role": "user", "content": "[[[[[[\\\"{{{{{{"}]})
            .to_string();
    let shallow = Limits {
        max_json_depth: 3,
        ..Limits::default()
    };
    assert!(parse(Endpoint::ChatCompletions, tricky.as_bytes(), &shallow).is_ok());
    let two = Limits {
        max_json_depth: 2,
        ..Limits::default()
    };
    assert!(prescan(b"[[[]]]", &two).is_err());
    assert!(prescan(b"[[]][[]]", &two).is_ok());
}

fn arb_json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        prop_oneof![
            Just("user"),
            Just("assistant"),
            Just("tool"),
            Just("text"),
            Just("image_url"),
            Just("")
        ]
        .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("role".to_owned()),
                        Just("content".to_owned()),
                        Just("type".to_owned()),
                        Just("text".to_owned()),
                        Just("tool_calls".to_owned()),
                        Just("function".to_owned()),
                        Just("name".to_owned()),
                        "[a-z]{1,6}"
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(Endpoint::ChatCompletions, &body, &Limits::default());
        let _ = parse(Endpoint::Completions, &body, &Limits::default());
    }

    #[test]
    fn arbitrary_json_requests_never_panic(messages in arb_json(), prompt in arb_json(), tools in arb_json()) {
        let body = json!({"model": "m", "messages": messages, "prompt": prompt, "tools": tools}).to_string();
        let _ = parse(Endpoint::ChatCompletions, body.as_bytes(), &Limits::default());
        let _ = parse(Endpoint::Completions, body.as_bytes(), &Limits::default());
    }
}

#[test]
fn too_many_messages_are_refused_before_the_body_is_parsed() {
    // 100 000 tiny messages: counted by the raw prescan, stopped at the limit + 1.
    let mut body = String::from(r#"{"model": "m", "messages": ["#);
    for i in 0..100_000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r#"{"role":"user","content":"x"}"#);
    }
    body.push_str("]}");
    let err = parse(
        Endpoint::ChatCompletions,
        body.as_bytes(),
        &Limits::default(),
    )
    .unwrap_err();
    assert_eq!(
        err,
        RequestError::TooManyItems {
            param: "messages",
            count: 10_001,
            limit: 10_000
        }
    );
    // Objects nested inside a message, a `messages` key deeper down, and a string that
    // reads "messages" as a value do not count.
    let limits = Limits {
        max_messages: 2,
        ..Limits::default()
    };
    let ok = json!({
        "model": "messages",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "text", "text": "c"}]},
            {"role": "assistant", "content": "x", "messages": [{}, {}, {}]}
        ],
        "nvext": {"messages": [{}, {}, {}]}
    });
    assert!(parse(
        Endpoint::ChatCompletions,
        ok.to_string().as_bytes(),
        &limits
    )
    .is_ok());
    let three = json!({"model": "m", "messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}
    ]});
    assert_eq!(
        parse(
            Endpoint::ChatCompletions,
            three.to_string().as_bytes(),
            &limits
        )
        .unwrap_err()
        .code(),
        "array_above_max_length"
    );
}

/// The byte-at-a-time prescan the word-at-a-time one replaced: the reference it must equal.
fn prescan_reference(body: &[u8], limits: &Limits) -> Result<(), RequestError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut string_start, mut key_is_messages, mut in_messages, mut messages) =
        (0usize, false, false, 0usize);
    for (i, &b) in body.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
                if depth == 1 {
                    key_is_messages = body.get(string_start..i) == Some(b"messages".as_slice());
                }
            }
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                string_start = i + 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limits.max_json_depth {
                    return Err(RequestError::TooDeep {
                        limit: limits.max_json_depth,
                    });
                }
                if depth == 2 && b == b'[' && key_is_messages {
                    in_messages = true;
                } else if depth == 3 && in_messages && b == b'{' {
                    messages += 1;
                    if messages > limits.max_messages {
                        return Err(RequestError::TooManyItems {
                            param: "messages",
                            count: messages,
                            limit: limits.max_messages,
                        });
                    }
                }
                key_is_messages = false;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                if depth < 2 {
                    in_messages = false;
                }
            }
            b',' if depth == 1 => key_is_messages = false,
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Bodies made of JSON punctuation, quotes, backslashes, `messages` keys and text, so
    /// strings, escapes, nesting and keys land at every offset of the 8-byte words.
    #[test]
    fn prescan_equals_the_byte_reference(
        tokens in prop::collection::vec(prop::sample::select(vec![
            "[", "]", "{", "}", ",", ":", "\"", "\\", "\\\"", "\"messages\"",
            "\"messages\": [{", "abcdefgh", "é", " ", "\n",
        ]), 0..80),
        depth in 1usize..6,
        max_messages in 0usize..4,
    ) {
        let body = tokens.concat().into_bytes();
        let limits = Limits { max_json_depth: depth, max_messages, ..Limits::default() };
        prop_assert_eq!(prescan(&body, &limits), prescan_reference(&body, &limits));
    }
}
