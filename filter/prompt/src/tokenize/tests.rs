#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use proptest::prelude::*;
use serde_json::json;

use super::*;

#[test]
fn floor_char_boundary_backs_off_to_a_char_start() {
    assert_eq!(floor_char_boundary("aé", 2), 1);
    assert_eq!(floor_char_boundary("aé", 9), 3);
}

#[test]
fn canonical_files_are_recognised_by_their_opening() {
    assert!(is_canonical(r#"{"version":"2.0","truncation":null}"#));
    assert!(is_canonical("{\n  \"version\": \"2.0\",\n"));
    assert!(!is_canonical(r#"{"version":"1.0","truncation":null}"#));
    assert!(!is_canonical(r#"{"truncation":null,"version":"2.0"}"#));
    assert!(!is_canonical(""));
}

/// A BPE tokenizer without a pre-tokenizer (a text piece is one word, so merges reach across
/// it) with overlapping added tokens, so any difference in where the text is cut shows up in
/// the ids.
fn toy(flags: serde_json::Value, post: serde_json::Value) -> PromptTokenizer {
    let added = |id: u32, content: &str, extra: &serde_json::Value| {
        let mut t = json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true});
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        t
    };
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [
            added(20, "<a>", &json!({})),
            added(21, "<a><b>", &json!({})),
            added(22, "b>", &json!({"special": false})),
            added(23, "ab", &json!({"normalized": true})),
            added(24, "</a>", &flags),
        ],
        "normalizer": null,
        "pre_tokenizer": null,
        "post_processor": post,
        "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "[UNK]",
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false,
            "vocab": {"[UNK]": 0, "a": 1, "b": 2, "<": 3, ">": 4, "/": 5, " ": 6, "[CLS]": 7,
                "[SEP]": 8, "</": 9, "a>": 10, "ba": 11},
            "merges": [["<", "/"], ["a", ">"], ["b", "a"]]}
    });
    PromptTokenizer::from_bytes(tok.to_string().as_bytes(), CacheConfig::default()).unwrap()
}

fn text_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("a"),
            Just("b"),
            Just("<"),
            Just(">"),
            Just("/"),
            Just(" "),
            Just("<a>"),
            Just("</a>"),
            Just("<b>")
        ],
        0..40,
    )
    .prop_map(|v| v.concat())
}

#[test]
fn contextual_added_tokens_switch_segmenting_off() {
    assert!(toy(json!({}), json!(null)).segmentation_off().is_none());
    for flag in ["lstrip", "rstrip", "single_word"] {
        let t = toy(json!({ flag: true }), json!(null));
        assert!(
            matches!(t.segmentation_off(), Some(SegmentationOff::ContextualToken(c)) if c == "</a>"),
            "{flag}"
        );
    }
}

#[test]
fn content_independent_post_processor_affixes_are_found() {
    let bert = json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [7], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [8], "tokens": ["[SEP]"]}}});
    let mut t = toy(json!({}), bert);
    assert_eq!(t.affixes, Some((vec![7], vec![8])));
    let opts = |cap| EncodeOptions {
        max_tokens: cap,
        add_special_tokens: true,
    };
    let out = t.encode("ab<a>b", opts(100)).unwrap();
    assert_eq!(out.ids, t.encode_full("ab<a>b", true).unwrap());
    assert!(out.complete);
    let capped = t.encode("ab<a>b", opts(3)).unwrap();
    assert_eq!((capped.ids.len(), capped.complete), (3, false));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// Splitting at added tokens (leftmost-longest, overlapping candidates, a normalized token
    /// inside pieces) gives exactly the ids of one full encode, with or without the cache, and
    /// when segmenting is off because of a contextual token.
    #[test]
    fn segments_equal_full_encode(texts in prop::collection::vec(text_strategy(), 1..6), flag in 0usize..4) {
        let flags = [json!({}), json!({"lstrip": true}), json!({"rstrip": true}), json!({"single_word": true})];
        let mut t = toy(flags[flag].clone(), json!(null));
        for text in &texts {
            let full = t.encode_full(text, false).unwrap();
            for _ in 0..2 {
                let out = t.encode(text, EncodeOptions { max_tokens: 1000, add_special_tokens: false }).unwrap();
                prop_assert_eq!(&out.ids, &full, "text {:?}", text);
                prop_assert!(out.complete);
            }
            let cap = full.len() / 2;
            let out = t.encode(text, EncodeOptions { max_tokens: cap, add_special_tokens: false }).unwrap();
            prop_assert_eq!(&out.ids[..], &full[..cap]);
        }
    }
}

/// A pipeline that loads but cannot run in this build (a `Split` with a regex outside the
/// GPT family) is refused when it is loaded, with the reason, not on every request.
#[test]
fn a_tokenizer_that_cannot_run_is_refused_at_load() {
    let vocab: serde_json::Map<String, serde_json::Value> =
        std::iter::once(("[UNK]".into(), json!(0)))
            .chain(
                ('a'..='z')
                    .enumerate()
                    .map(|(i, c)| (c.to_string(), json!(i + 1))),
            )
            .collect();
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "unk_token": "[UNK]", "vocab": vocab}
    });
    let err = PromptTokenizer::from_bytes(tok.to_string().as_bytes(), CacheConfig::default())
        .expect_err("refused");
    assert!(
        matches!(&err, TokenizeError::Load(m) if m.contains("cannot run here")),
        "{err}"
    );
}

/// The per-byte scan `long_run_end` replaced: run lengths counted byte by byte.
fn long_run_end_naive(bytes: &[u8], longer_than: usize) -> Option<usize> {
    let (mut run, mut space) = (0usize, false);
    bytes.iter().position(|b| {
        let ws = b.is_ascii_whitespace();
        run = if ws == space { run + 1 } else { 1 };
        space = ws;
        run > longer_than
    })
}

proptest! {
    #[test]
    fn long_run_end_finds_what_a_byte_by_byte_scan_finds(
        bytes in prop::collection::vec(prop::sample::select(vec![b'a', b' ', b'\n', 0xC3, 0xA9, b'<']), 0..80),
        longer_than in 1usize..10,
    ) {
        prop_assert_eq!(long_run_end(&bytes, longer_than), long_run_end_naive(&bytes, longer_than));
    }
}

#[test]
fn long_run_end_finds_long_runs_of_either_kind() {
    let mut text = "word ".repeat(1000).into_bytes();
    assert_eq!(long_run_end(&text, 2048), None);
    text.extend(std::iter::repeat_n(b'x', 3000));
    assert_eq!(
        long_run_end(&text, 2048),
        Some(5000 + 2048),
        "the run starts after the last space"
    );
    let spaces = [b"ab".as_slice(), &[b' '; 2049]].concat();
    assert_eq!(long_run_end(&spaces, 2048), Some(2 + 2048));
}
