#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use serde_json::{json, Map, Value as Json};

use super::*;

fn tmpl(src: &str) -> ChatTemplate {
    ChatTemplate::from_source(src, Map::new(), &TemplateOptions::default()).unwrap()
}

fn vars(v: Json) -> Map<String, Json> {
    match v {
        Json::Object(m) => m,
        _ => panic!("not an object"),
    }
}

fn render(src: &str, ctx: Json) -> Result<String, TemplateError> {
    tmpl(src).render(RenderInput {
        vars: vars(ctx),
        tools: None,
        continue_final_message: false,
        now_unix_secs: 1_721_997_296, // 2024-07-26 12:34:56 UTC
    })
}

/// Every case rendered by Jinja2 3.1.6 set up like transformers (see testdata/jinja2_cases.py).
#[test]
fn matches_jinja2_configured_like_transformers() {
    let cases: Json = serde_json::from_str(include_str!("testdata/jinja2_cases.json")).unwrap();
    let mut failures = Vec::new();
    for (name, case) in cases.as_object().unwrap() {
        let src = case["src"].as_str().unwrap();
        let got = render(src, case["ctx"].clone());
        match (case.get("out").and_then(Json::as_str), got) {
            (Some(want), Ok(got)) if got == want => {}
            (want, got) => failures.push(format!("{name}: want {want:?}, got {got:?}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn raise_exception_is_typed() {
    let err = render("{{ raise_exception('roles must alternate') }}", json!({})).unwrap_err();
    assert_eq!(err, TemplateError::Raised("roles must alternate".into()));
    assert_eq!(err.status(), 400);
    assert_eq!(err.code(), "chat_template_error");
    assert_eq!(err.disposition(), Disposition::Forward);
}

#[test]
fn render_errors_are_typed() {
    let err = render(
        "{{ messages[0].content.startswith('x') }}",
        json!({"messages": [{"content": null}]}),
    )
    .unwrap_err();
    assert!(matches!(err, TemplateError::Render(_)), "{err:?}");
    let syntax =
        ChatTemplate::from_source("{% if %}", Map::new(), &TemplateOptions::default()).unwrap_err();
    assert!(matches!(syntax, TemplateError::Syntax { .. }), "{syntax:?}");
    assert_eq!(syntax.status(), 500);
}

#[test]
fn runaway_templates_run_out_of_fuel() {
    let opts = TemplateOptions {
        fuel: Some(200_000),
        ..TemplateOptions::default()
    };
    let t = ChatTemplate::from_source(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ j }}{% endfor %}{% endfor %}",
        Map::new(),
        &opts,
    )
    .unwrap();
    let err = t.render(RenderInput::default()).unwrap_err();
    assert_eq!(err, TemplateError::OutOfFuel);
    assert_eq!(err.status(), 500);

    // Unbounded recursion stops at the recursion limit instead of overflowing the stack.
    let rec = tmpl("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
    assert!(rec.render(RenderInput::default()).is_err());
}

/// Reproduced with the `template` fuzz target (tests/fuzz): with the former default fuel (20M) these
/// templates built strings of 200 MB to over 1 GB before running out of fuel. The default fuel
/// must stop each of them before it allocates ~128 MB.
#[test]
fn default_fuel_bounds_template_memory() {
    for src in [
        "{{ ('x' * 20000000) | replace('x', 'xxxxxxxxxx') }}",
        "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    ] {
        let t = ChatTemplate::from_source(src, Map::new(), &TemplateOptions::default()).unwrap();
        let err = t.render(RenderInput::default()).unwrap_err();
        assert_eq!(err, TemplateError::OutOfFuel, "{src}");
    }
}

/// Found by `make fuzz-smoke` (template target): `str.format` builds its padding in one
/// allocation (2 GB here), which fuel cannot stop; such widths are refused before formatting.
#[test]
fn str_format_widths_are_bounded() {
    for src in [
        "{{ '{:>2000000000}'.format(1) }}",
        "{{ '{:>200000000}'.format(1) }}",
        "{{ 'a{{b}} {0:^9999999}'.format(1) }}",
        "{{ '{:{}}'.format(1, 2000000000) }}",
    ] {
        let t = ChatTemplate::from_source(src, Map::new(), &TemplateOptions::default()).unwrap();
        let err = t.render(RenderInput::default()).unwrap_err();
        assert!(err.to_string().contains("str.format"), "{src}: {err}");
    }
    let t = ChatTemplate::from_source(
        "{{ '{:>5}|{:<3}|{{x}}'.format(1, 'ab') }}",
        Map::new(),
        &TemplateOptions::default(),
    )
    .unwrap();
    assert_eq!(t.render(RenderInput::default()).unwrap(), "    1|ab |{x}");
}

#[test]
fn special_tokens_and_kwargs_are_variables() {
    let config = br#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "unk_token": null,
        "chat_template": "{{ bos_token }}|{{ eos_token }}|{{ unk_token is defined }}|{{ enable_thinking }}"}"#;
    let t = ChatTemplate::from_tokenizer_config(config, &TemplateOptions::default()).unwrap();
    let out = t
        .render(RenderInput {
            vars: vars(json!({"enable_thinking": false})),
            ..RenderInput::default()
        })
        .unwrap();
    assert_eq!(out, "<s>|</s>|False|False");
}

#[test]
fn named_templates_pick_tool_use_when_tools_are_given() {
    let config = br#"{"chat_template": [{"name": "default", "template": "D"}, {"name": "tool_use", "template": "T"}]}"#;
    let t = ChatTemplate::from_tokenizer_config(config, &TemplateOptions::default()).unwrap();
    let with = |tools: Json| {
        t.render(RenderInput {
            vars: vars(json!({ "tools": tools })),
            ..RenderInput::default()
        })
        .unwrap()
    };
    assert_eq!(with(Json::Null), "D");
    assert_eq!(with(json!([])), "T"); // HF: `tools is not None`
    let only_tools = br#"{"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "rag", "template": "R"}]}"#;
    let t = ChatTemplate::from_tokenizer_config(only_tools, &TemplateOptions::default()).unwrap();
    assert!(matches!(
        t.render(RenderInput::default()),
        Err(TemplateError::NoDefaultTemplate(_))
    ));
    assert_eq!(
        ChatTemplate::from_tokenizer_config(b"{}", &TemplateOptions::default()).unwrap_err(),
        TemplateError::NoTemplate
    );
    assert!(matches!(
        ChatTemplate::from_tokenizer_config(b"[", &TemplateOptions::default()),
        Err(TemplateError::InvalidConfig(_))
    ));
}

#[test]
fn generation_blocks_render_their_body() {
    let src = "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}[{{ m.content }}]{% endif %}\n{% endfor %}";
    let out = render(
        src,
        json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    )
    .unwrap();
    assert_eq!(out, "[q]a"); // trim_blocks eats the newline after endif (checked with Jinja2)
    assert_eq!(
        rewrite_generation_tags("x{%- generation -%}y{%+ endgeneration %}"),
        "x{%- if true -%}y{%+ endif %}"
    );
}

#[test]
fn continue_final_message_cuts_after_the_content() {
    let src = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</end>\n{% endfor %}";
    let t = tmpl(src);
    let out = t
        .render(RenderInput {
            vars: vars(json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "The answer is"}]})),
            tools: None,
            continue_final_message: true,
            now_unix_secs: 0,
        })
        .unwrap();
    assert_eq!(out, "<user>Hi</end>\n<assistant>The answer is");
    let parts = t
        .render(RenderInput {
            vars: vars(json!({"messages": [{"role": "assistant", "content": [{"type": "text", "text": "So"}]}]})),
            tools: None,
            continue_final_message: true,
            now_unix_secs: 0,
        })
        .unwrap();
    assert!(
        parts.starts_with("<assistant>[{'type': 'text', 'text': 'So"),
        "{parts}"
    );
    let err = t
        .render(RenderInput {
            vars: vars(json!({"messages": [{"role": "assistant"}]})),
            tools: None,
            continue_final_message: true,
            now_unix_secs: 0,
        })
        .unwrap_err();
    assert!(matches!(err, TemplateError::ContinueFinalMessage(_)));
}

#[test]
fn content_format_detection() {
    let fmt = |src: &str| tmpl(src).content_format();
    assert_eq!(fmt("{{ messages[0].content }}"), ContentFormat::String);
    assert_eq!(
        fmt("{% for m in messages %}{% for c in m.content %}{{ c.text }}{% endfor %}{% endfor %}"),
        ContentFormat::OpenAi
    );
    assert_eq!(fmt("{%- for part in message['content'] | selectattr('type', 'equalto', 'text') %}{% endfor %}"), ContentFormat::OpenAi);
    assert_eq!(
        fmt("{% for tc in message.tool_calls %}{% endfor %}"),
        ContentFormat::String
    );
    let forced = ChatTemplate::from_source(
        "x",
        Map::new(),
        &TemplateOptions {
            content_format: Some(ContentFormat::OpenAi),
            ..TemplateOptions::default()
        },
    )
    .unwrap();
    assert_eq!(forced.content_format(), ContentFormat::OpenAi);
}

#[test]
fn tojson_rejects_bad_arguments() {
    assert!(render("{{ 1 | tojson(separators=1) }}", json!({})).is_err());
    assert!(render("{{ 1 | tojson(bogus=1) }}", json!({})).is_err());
    assert!(render("{{ x | tojson }}", json!({})).is_err()); // undefined is not serializable
    assert_eq!(
        render("{{ [1] | tojson(false, 1) }}", json!({})).unwrap(),
        "[\n 1\n]"
    );
}

/// The tools cache keeps at most `TOOLS_CACHE_MAX_ENTRIES` lists and `TOOLS_CACHE_MAX_BYTES`,
/// evicting the least recently used; a list too big to keep is still rendered.
#[test]
fn tools_cache_is_bounded() {
    let t = tmpl("{% for x in tools %}{{ x | tojson }}{% endfor %}");
    let list = |i: usize| json!([{"name": format!("f{i}")}]);
    for i in 0..TOOLS_CACHE_MAX_ENTRIES + 5 {
        let entry = t
            .tools_entry::<()>(&format!("key{i}"), || Ok(list(i)))
            .unwrap();
        let out = t
            .render(RenderInput {
                tools: Some(entry),
                ..RenderInput::default()
            })
            .unwrap();
        assert_eq!(out, format!("{{\"name\": \"f{i}\"}}"));
    }
    let stats = t.tools_cache_stats();
    assert_eq!(stats.entries, TOOLS_CACHE_MAX_ENTRIES);
    assert_eq!(stats.misses, (TOOLS_CACHE_MAX_ENTRIES + 5) as u64);
    // The most recent list is kept, the oldest was evicted.
    let last = format!("key{}", TOOLS_CACHE_MAX_ENTRIES + 4);
    t.tools_entry::<()>(&last, || panic!("kept list rebuilt"))
        .unwrap();
    assert_eq!(t.tools_cache_stats().hits, 1);
    assert!(t.tools_entry::<()>("key0", || Err(())).is_err());

    // A key beyond the byte bound is converted and used, but not kept.
    let huge = "x".repeat(TOOLS_CACHE_MAX_BYTES / 4 + 1);
    t.tools_entry::<()>(&huge, || Ok(list(0))).unwrap();
    let stats = t.tools_cache_stats();
    assert_eq!(stats.entries, TOOLS_CACHE_MAX_ENTRIES);
    assert!(stats.bytes <= TOOLS_CACHE_MAX_BYTES);
    assert!(t.tools_entry::<()>(&huge, || Err(())).is_err());
}
