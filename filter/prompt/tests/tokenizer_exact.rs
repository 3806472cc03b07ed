//! Exactness against Hugging Face, for Qwen3 and Llama 3: token ids of every string of the seeded
//! adversarial corpus and of every ShareGPT / MT-bench chat (tests/fixtures/tokenizers, generated
//! once by tests/tools/gen-tokenizer-fixtures.py) through the full encode and the segment-cached
//! path; the chat templates render every chat as transformers does; the canonical form loads to
//! the same tokenizer; capped encodes of a long text are prefixes of the full one. Needs the model
//! files (`make setup`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::BufRead;
use std::path::{Path, PathBuf};

use kvgate_prompt::request::{self, Payload};
use kvgate_prompt::tokenize::{Encoded, MAX_WORD_BYTES};
use kvgate_prompt::{
    canonical_json, is_packed, pack_tokenizer, CacheConfig, Compat, EncodeOptions, Endpoint,
    Limits, ModelPrompt, PromptOptions, PromptTokenizer,
};
use serde_json::{json, Value};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    workspace().join("tests/fixtures/tokenizers")
}

/// The model directory: `$env`, else `<workspace>/target/models/<default>`.
fn model_dir(model: &str) -> PathBuf {
    let (env, default, arg) = match model {
        "qwen3" => ("KVGATE_MODEL_DIR", "Qwen3-0.6B", "qwen3"),
        "llama3" => ("KVGATE_LLAMA3_DIR", "Llama-3", "llama3"),
        other => panic!("unknown model {other}"),
    };
    let dir = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/models").join(default));
    if !dir.join("tokenizer.json").is_file() {
        panic!(
            "{}/tokenizer.json is missing: the {model} tokenizer is not committed; run `make setup` \
             (or `tests/tools/fetch-model.sh target/models/{default} {arg}`), or set {env}.",
            dir.display()
        );
    }
    dir
}

fn read_model(model: &str, file: &str) -> Vec<u8> {
    std::fs::read(model_dir(model).join(file)).unwrap()
}

/// The JSON lines of a gzipped fixture, without its `_meta` line.
fn gz_lines(path: &Path) -> Vec<Value> {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    std::io::BufReader::new(flate2::read::GzDecoder::new(file))
        .lines()
        .map(|l| serde_json::from_str::<Value>(&l.unwrap()).unwrap())
        .filter(|v| v.get("_meta").is_none())
        .collect()
}

fn corpus() -> Vec<String> {
    let texts: Vec<String> = gz_lines(&fixtures().join("corpus.jsonl.gz"))
        .into_iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert!(texts.len() >= 20_000, "{} strings", texts.len());
    texts
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Hugging Face's ids for one model.
struct Expected {
    /// Per corpus string: ids without and (for the first 2,000) with special tokens.
    corpus: Vec<(Vec<u32>, Option<Vec<u32>>)>,
    /// Per chat: id, text rendered by transformers, its ids.
    chats: Vec<(String, String, Vec<u32>)>,
}

fn expected(model: &str) -> Expected {
    let mut out = Expected {
        corpus: Vec::new(),
        chats: Vec::new(),
    };
    for v in gz_lines(&fixtures().join(model).join("ids.jsonl.gz")) {
        if let Some(i) = v.get("i") {
            assert_eq!(i.as_u64().unwrap() as usize, out.corpus.len());
            out.corpus
                .push((ids(&v["ids"]), v.get("ids_special").map(ids)));
        } else {
            out.chats.push((
                v["chat"].as_str().unwrap().to_owned(),
                v["text"].as_str().unwrap().to_owned(),
                ids(&v["ids"]),
            ));
        }
    }
    out
}

/// One difference from Hugging Face, described for the failure message.
fn describe(what: &str, text: &str, want: &[u32], got: &[u32]) -> String {
    let at = want
        .iter()
        .zip(got)
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    let shown: String = text.chars().take(200).collect();
    let end = |v: &[u32]| v[at.min(v.len())..(at + 8).min(v.len())].to_vec();
    format!(
        "{what}: text {shown:?}{}: {} ids expected, {} produced, first difference at token {at}: \
         expected {:?}…, produced {:?}…",
        if shown.len() < text.len() { "…" } else { "" },
        want.len(),
        got.len(),
        end(want),
        end(got)
    )
}

fn uncapped(add_special_tokens: bool) -> EncodeOptions {
    EncodeOptions {
        max_tokens: usize::MAX,
        add_special_tokens,
    }
}

/// Every corpus string and chat through `encode_full` and the segment path (cache off, then
/// on and twice), with and without special tokens; fails naming the first mismatch.
fn check_ids(model: &str, tokenizer_json: &[u8]) {
    let texts = corpus();
    let want = expected(model);
    assert_eq!(want.corpus.len(), texts.len());
    assert!(want.chats.len() >= 600, "{} chats", want.chats.len());
    let no_cache = CacheConfig {
        max_entries: 0,
        max_bytes: 0,
    };
    let mut plain = PromptTokenizer::from_bytes(tokenizer_json, no_cache).unwrap();
    let mut cached = PromptTokenizer::from_bytes(tokenizer_json, CacheConfig::default()).unwrap();
    assert!(plain.segmentation_off().is_none(), "{model}");
    let mut mismatches: Vec<String> = Vec::new();
    let mut check = |what: String, text: &str, want: &[u32], got: Vec<u32>| {
        if got != want {
            mismatches.push(describe(&what, text, want, &got));
        }
    };
    // The segment path stops before a pre-token longer than MAX_WORD_BYTES (bounded work):
    // then its ids must be exactly the start of Hugging Face's, and only such text may be cut.
    let mut cuts = 0usize;
    let mut bounded = |text: &str, want: &[u32], got: Encoded| -> Vec<u32> {
        if !got.complete && text.len() > MAX_WORD_BYTES && want.starts_with(&got.ids) {
            cuts += 1;
            want.to_vec()
        } else {
            got.ids
        }
    };
    let mut compared = 0usize;
    let cases = texts
        .iter()
        .zip(&want.corpus)
        .enumerate()
        .map(|(i, (t, (w, ws)))| (format!("corpus #{i}"), t.as_str(), w, ws.as_ref()))
        .chain(
            want.chats
                .iter()
                .map(|(id, t, w)| (format!("chat {id}"), t.as_str(), w, None)),
        );
    for (what, text, want_ids, want_special) in cases {
        check(
            format!("{what} full"),
            text,
            want_ids,
            plain.encode_full(text, false).unwrap(),
        );
        check(
            format!("{what} segments"),
            text,
            want_ids,
            bounded(text, want_ids, plain.encode(text, uncapped(false)).unwrap()),
        );
        for round in 0..2 {
            check(
                format!("{what} cached, round {round}"),
                text,
                want_ids,
                bounded(
                    text,
                    want_ids,
                    cached.encode(text, uncapped(false)).unwrap(),
                ),
            );
        }
        if let Some(want_special) = want_special {
            check(
                format!("{what} full, special tokens"),
                text,
                want_special,
                plain.encode_full(text, true).unwrap(),
            );
            check(
                format!("{what} segments, special tokens"),
                text,
                want_special,
                bounded(
                    text,
                    want_special,
                    plain.encode(text, uncapped(true)).unwrap(),
                ),
            );
        }
        compared += 1;
    }
    assert!(
        mismatches.is_empty(),
        "{model}: {} of the comparisons over {compared} texts differ from Hugging Face; first: {}",
        mismatches.len(),
        mismatches[0]
    );
    println!(
        "{model}: {compared} texts equal to Hugging Face on every path ({cuts} bounded encodes \
         cut before a pre-token over {MAX_WORD_BYTES} bytes, exact up to the cut)"
    );
}

#[test]
fn qwen3_ids_equal_hugging_face() {
    check_ids("qwen3", &read_model("qwen3", "tokenizer.json"));
}

#[test]
fn llama3_ids_equal_hugging_face() {
    check_ids("llama3", &read_model("llama3", "tokenizer.json"));
}

/// The canonical (2.0) form: loads to a tokenizer with the same ids, is a fixed point of the
/// conversion, and is what `from_bytes` reads without converting.
#[test]
fn canonical_form_round_trips() {
    for model in ["qwen3", "llama3"] {
        let original = read_model(model, "tokenizer.json");
        let canonical = canonical_json(&original).unwrap();
        assert!(canonical.starts_with(r#"{"version":"2.0""#), "{model}");
        assert_eq!(canonical_json(canonical.as_bytes()).unwrap(), canonical);
        println!(
            "{model}: tokenizer.json {} bytes, canonical {} bytes",
            original.len(),
            canonical.len()
        );
        check_ids(model, canonical.as_bytes());
    }
}

fn chat_body(messages: &Value) -> Vec<u8> {
    json!({"model": "m", "messages": messages, "add_generation_prompt": true})
        .to_string()
        .into_bytes()
}

/// Every ShareGPT / MT-bench chat rendered by our template equals transformers' text, and
/// `process` gives its ids — for both models.
#[test]
fn chat_templates_render_as_transformers() {
    let chats = gz_lines(&fixtures().join("chats.jsonl.gz"));
    for model in ["qwen3", "llama3"] {
        let mut prompt = ModelPrompt::new(
            &read_model(model, "tokenizer.json"),
            &read_model(model, "tokenizer_config.json"),
            PromptOptions {
                compat: Compat::HuggingFace,
                max_prompt_tokens: usize::MAX,
                ..PromptOptions::default()
            },
        )
        .unwrap();
        let want = expected(model);
        assert_eq!(want.chats.len(), chats.len());
        for (chat, (id, text, ids)) in chats.iter().zip(&want.chats) {
            assert_eq!(chat["id"].as_str().unwrap(), id);
            let body = chat_body(&chat["messages"]);
            let parsed = request::parse(Endpoint::ChatCompletions, &body, &Limits::default());
            let Payload::Chat(c) = parsed.unwrap().payload else {
                panic!("{id}: not a chat")
            };
            let rendered = prompt.render(&c, 0).unwrap();
            assert!(
                &rendered == text,
                "{model} {id}: rendered text differs from transformers':\n{}",
                describe("text", &rendered, &[], &[])
            );
            let out = prompt.process(Endpoint::ChatCompletions, &body, 0).unwrap();
            assert_eq!(&out.token_ids, ids, "{model} {id}");
        }
    }
}

/// Capped encodes of one long corpus text, through the prefix window (segments far longer
/// than the cap), equal the first ids of its full encode.
#[test]
fn capped_prefix_windows_equal_full_prefixes() {
    // Corpus strings without `<`, so no added token splits the text: one huge segment.
    let text: String = corpus()
        .into_iter()
        .filter(|t| !t.contains('<'))
        .take(4000)
        .collect();
    assert!(text.len() > 200_000);
    for model in ["qwen3", "llama3"] {
        let json = read_model(model, "tokenizer.json");
        let mut tok = PromptTokenizer::from_bytes(&json, CacheConfig::default()).unwrap();
        let full = tok.encode_full(&text, false).unwrap();
        for cap in [1, 2, 3, 17, 500, 4_096, 20_000] {
            let out = tok
                .encode(
                    &text,
                    EncodeOptions {
                        max_tokens: cap,
                        add_special_tokens: false,
                    },
                )
                .unwrap();
            assert!(!out.complete, "{model} cap {cap}");
            assert!(
                out.ids == full[..cap],
                "{model} cap {cap}: {}",
                describe("prefix", &text, &full[..cap], &out.ids)
            );
        }
    }
}

/// The packed form (what the sidecar and the static configuration ship to the VMs): loads to
/// a tokenizer with Hugging Face's ids on every fixture, and is far smaller than the JSON.
#[test]
fn packed_form_loads_to_the_same_ids() {
    for model in ["qwen3", "llama3"] {
        let original = read_model(model, "tokenizer.json");
        let packed = pack_tokenizer(&original).unwrap();
        assert!(is_packed(&packed), "{model}");
        assert!(!is_packed(&original), "{model}");
        assert!(
            packed.len() * 2 < original.len(),
            "{model}: {} bytes",
            packed.len()
        );
        println!(
            "{model}: tokenizer.json {} bytes, packed {} bytes",
            original.len(),
            packed.len()
        );
        check_ids(model, &packed);
    }
}
