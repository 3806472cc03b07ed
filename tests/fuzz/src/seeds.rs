//! The seed corpus of every fuzz target, written into `OUT_DIR/<target>/` (by the `seeds`
//! binary for libFuzzer, and by the native replay test),
//! from the repository's real fixtures and the crates' own encoders:
//!
//! * `prompt`: the Qwen3 golden requests (`tests/fixtures/qwen3/…golden.jsonl`, long
//!   conversations cut to fit the input size), plus completions bodies;
//! * `template`: the model's real chat template, the Jinja2 cases of the template tests, and
//!   a few tiny loops;
//! * `dynamo_events`, `vllm_events`: every message of `tests/fixtures/events/golden.json`
//!   (well-formed and malformed), plus their JSON, ZMQ-frame, multipart and replay forms;
//! * `sync_codec`: snapshot, delta and empty frames from `SyncLog` over events of the
//!   golden file, with worker table, loads and models;
//! * `config`: every key at its default (JSON and environment form), a static worker list;
//! * `index_ops`: a few fixed byte strings (the input is interpreted through `arbitrary`).
//!
//! The seeds are small (well under 1 MiB in all) and regenerated on every run, so none are
//! committed.

use std::fs;
use std::path::{Path, PathBuf};

use crate::{join_frames, model_files, repo_root, MAX_PAYLOAD};
use kvgate_core::config::keys::{self, Kind};
use kvgate_core::events::dynamo;
use kvgate_core::index::KvIndexer;
use kvgate_core::sync::{self, ModelEntry, RemoteLoad, SyncLog};
use kvgate_core::workers::WorkerInfo;
use kvgate_core::WorkerKey;
use serde_json::{json, Map, Value};

/// Largest prompt seed, in bytes (the `prompt` target runs with `-max_len` 4096: tokenizing
/// dominates its cost).
const MAX_PROMPT_SEED: usize = 4000;

/// Errors of the seed writer (reading fixtures, writing files).
pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Out {
    dir: PathBuf,
    count: usize,
    bytes: usize,
}

impl Out {
    fn put(&mut self, target: &str, name: &str, data: &[u8]) -> Result<()> {
        let dir = self.dir.join(target);
        fs::create_dir_all(&dir)?;
        let name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        fs::write(dir.join(name), data)?;
        self.count += 1;
        self.bytes += data.len();
        Ok(())
    }
}

fn unhex(s: &str) -> Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd hex length {}", s.len()).into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(s.get(i..i + 2).ok_or("hex")?, 16)?))
        .collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("fixture entry without string `{key}`").into())
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_slice(&bytes)?)
}

fn events(out: &mut Out, golden: &Value) -> Result<()> {
    let mut indexer_events = Vec::new();
    for section in ["dynamo", "metrics", "replica"] {
        for case in list(golden, section) {
            let name = str_of(case, "name")?;
            let bytes = unhex(str_of(case, "hex")?)?;
            out.put("dynamo_events", &format!("{section}_{name}"), &bytes)?;
            if section != "dynamo" {
                continue;
            }
            if let Ok(msg) = dynamo::decode_kv_message(&bytes, MAX_PAYLOAD) {
                for (i, ev) in msg.events.iter().enumerate() {
                    let json = dynamo::encode_router_event_json(ev);
                    out.put("dynamo_events", &format!("json_{name}_{i}"), &json)?;
                }
                if msg.envelope.is_some() {
                    let frame = dynamo::encode_zmq_frame(&bytes);
                    out.put("dynamo_events", &format!("zmq_{name}"), &frame)?;
                }
                indexer_events.extend(msg.events);
            }
        }
    }
    for case in list(golden, "vllm") {
        let name = str_of(case, "name")?;
        let payload = unhex(str_of(case, "payload_hex")?)?;
        let seq = unhex(str_of(case, "seq_hex")?)?;
        let topic = str_of(case, "topic")?.as_bytes();
        out.put("vllm_events", &format!("batch_{name}"), &payload)?;
        let multipart = join_frames(&[topic, &seq, &payload]);
        out.put("vllm_events", &format!("multipart_{name}"), &multipart)?;
    }
    let replay = golden.get("vllm_replay").cloned().unwrap_or_default();
    if let Some(req) = replay.get("request") {
        out.put(
            "vllm_events",
            "replay_request",
            &unhex(str_of(req, "hex")?)?,
        )?;
    }
    for case in list(&replay, "replies") {
        let frames = list(case, "frames_hex")
            .iter()
            .map(|f| unhex(f.as_str().unwrap_or_default()))
            .collect::<Result<Vec<_>>>()?;
        let name = format!("replay_{}", str_of(case, "name")?);
        out.put("vllm_events", &name, &join_frames(&frames))?;
    }
    for case in list(golden, "malformed") {
        let name = format!("malformed_{}", str_of(case, "name")?);
        let bytes = match case.get("frames_hex") {
            Some(frames) => join_frames(
                &frames
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .map(|f| unhex(f.as_str().unwrap_or_default()))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => unhex(str_of(case, "hex")?)?,
        };
        let target = match str_of(case, "decoder")? {
            "vllm" | "vllm_seq" | "vllm_replay" => "vllm_events",
            _ => "dynamo_events",
        };
        out.put(target, &name, &bytes)?;
    }
    sync_frames(out, &indexer_events)
}

fn sync_frames(out: &mut Out, events: &[kvgate_core::events::KvEvent]) -> Result<()> {
    let mut indexer = KvIndexer::new();
    let mut log = SyncLog::new(0x5eed, 64);
    for ev in events {
        log.record(&indexer.apply(ev).deltas);
    }
    let worker: WorkerInfo = serde_json::from_value(json!({
        "instance_id": 7, "endpoint": "127.0.0.1:8001", "model": "Qwen/Qwen3-0.6B",
        "role": "decode", "block_size": 16, "dp_size": 2, "dp_start_rank": 0,
        "total_kv_blocks": 4096, "max_num_seqs": 256, "max_num_batched_tokens": 8192
    }))?;
    let load = RemoteLoad {
        worker: WorkerKey::new(7, 1),
        kv_used_blocks: Some(12),
        active_decode_blocks: Some(3),
        active_prefill_tokens: None,
        ..RemoteLoad::default()
    };
    let model = ModelEntry {
        name: "Qwen/Qwen3-0.6B".into(),
        block_size: 16,
        files_digest: "sha256:0123".into(),
    };
    let mut last_rank = worker.clone();
    last_rank.instance_id = 8;
    last_rank.dp_start_rank = u32::MAX;
    let mut snapshot = log.frame_since(0, 0, indexer.index());
    snapshot.workers = Some(vec![worker, last_rank]);
    snapshot.loads = Some(vec![load]);
    snapshot.models = Some(vec![model]);
    snapshot.source_age_ms = 250;
    out.put("sync_codec", "snapshot", &sync::encode(&snapshot))?;
    let delta = log.frame_since(
        log.epoch(),
        log.version().saturating_sub(3),
        indexer.index(),
    );
    out.put("sync_codec", "delta", &sync::encode(&delta))?;
    let empty = log.frame_since(log.epoch(), log.version(), indexer.index());
    out.put("sync_codec", "empty_delta", &sync::encode(&empty))?;
    out.put(
        "sync_codec",
        "default",
        &sync::encode(&sync::SyncFrame::default()),
    )?;
    Ok(())
}

fn config(out: &mut Out) -> Result<()> {
    let mut object = Map::new();
    let (mut canonical, mut aliases) = (String::new(), String::new());
    for key in keys::KEYS {
        let default = key.default.trim_matches('`');
        if default == "unset" {
            continue;
        }
        let value = match key.kind {
            Kind::Str => Value::String(default.to_owned()),
            _ => serde_json::from_str(default).unwrap_or(Value::String(default.to_owned())),
        };
        object.insert(key.json.to_owned(), value);
        for (i, env) in key.env.iter().enumerate() {
            let line = format!("{env}={default}\n");
            if i == 0 {
                canonical.push_str(&line);
            } else {
                aliases.push_str(&line);
            }
        }
    }
    let json = serde_json::to_vec(&Value::Object(object))?;
    let mut all = json.clone();
    all.push(0);
    all.extend_from_slice(canonical.as_bytes());
    all.push(0);
    all.extend_from_slice(aliases.as_bytes());
    all.extend_from_slice(b"PATH=/usr/bin\nDYN_ROUTER_TEMPERATURE=0.5\n");
    out.put("config", "defaults_json", &json)?;
    out.put("config", "defaults_json_env", &all)?;
    let workers = br#"{"use_kv_events":false,"sidecar_cluster":"","workers":[{"instance_id":1,"endpoint":"127.0.0.1:8001","model":"m","role":"prefill","dp_size":2,"dp_start_rank":4},{"instance_id":2,"endpoint":"[::1]:8002","model":"m","block_size":32}]}"#;
    out.put("config", "static_workers", workers)?;
    // dp ranks past u32::MAX (overflowed in `WorkerInfo::keys` before it was fixed).
    let last_rank = br#"{"workers":[{"instance_id":1,"endpoint":"127.0.0.1:80","model":"m","dp_size":2,"dp_start_rank":4294967295}]}"#;
    out.put("config", "last_dp_rank", last_rank)?;
    let env = b"\0DYN_KV_CACHE_BLOCK_SIZE=32\nKVGATE_WORKERS=[{\"instance_id\":3,\"endpoint\":\"10.0.0.1:80\",\"model\":\"m\"}]\n\0DYN_OVERLAP_SCORE_WEIGHT=0\nHOME=/root\n";
    out.put("config", "env_only", env)?;
    Ok(())
}

fn prompt(out: &mut Out) -> Result<()> {
    let path = repo_root().join("tests/fixtures/qwen3/qwen3_chat_template_golden.jsonl");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    for line in text.lines() {
        let case: Value = serde_json::from_str(line)?;
        if case.get("_meta").is_some() {
            continue;
        }
        let Some(Value::Object(request)) = case.get("request") else {
            continue;
        };
        let mut body = request.clone();
        if let Some(Value::Object(kwargs)) = case.get("chat_template_kwargs") {
            if !kwargs.is_empty() {
                body.insert("chat_template_kwargs".into(), Value::Object(kwargs.clone()));
            }
        }
        // Cut long agent conversations (and their tool lists) until they fit.
        while serde_json::to_vec(&body)?.len() > MAX_PROMPT_SEED {
            let cut = |v: Option<&mut Value>| match v.and_then(Value::as_array_mut) {
                Some(a) if a.len() > 1 => {
                    a.pop();
                    true
                }
                _ => false,
            };
            if !cut(body.get_mut("tools")) && !cut(body.get_mut("messages")) {
                break;
            }
        }
        // Still too long (a long system prompt): shorten the message texts.
        if serde_json::to_vec(&body)?.len() > MAX_PROMPT_SEED {
            for m in body
                .get_mut("messages")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(Value::String(text)) = m.get_mut("content") {
                    let keep: String = text.chars().take(400).collect();
                    *text = keep;
                }
            }
        }
        let id = str_of(&case, "id")?;
        out.put("prompt", &format!("chat_{id}"), &serde_json::to_vec(&body)?)?;
        if let Some(text) = case.get("prompt_text").and_then(Value::as_str) {
            if text.len() < MAX_PROMPT_SEED {
                let completion = json!({"model": "Qwen/Qwen3-0.6B", "prompt": text});
                out.put(
                    "prompt",
                    &format!("completion_{id}"),
                    &serde_json::to_vec(&completion)?,
                )?;
            }
        }
    }
    let extra: [(&str, &[u8]); 4] = [
        (
            "completion_tokens",
            br#"{"model":"m","prompt":[151644,872,198,9707,151645],"max_tokens":4}"#,
        ),
        (
            "completion_batch",
            br#"{"model":"m","prompt":["Hello <|im_end|> world","second"],"add_special_tokens":true}"#,
        ),
        (
            "chat_parts_continue",
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]},{"role":"assistant","content":"Hel"}],"add_generation_prompt":false,"continue_final_message":true,"stream":true,"nvext":{"backend_instance_id":3}}"#,
        ),
        (
            "chat_tools_reasoning",
            br#"{"model":"m","messages":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"","reasoning_content":"add","tool_calls":[{"id":"1","type":"function","function":{"name":"calc","arguments":"{\"e\":\"2+2\"}"}}]},{"role":"tool","tool_call_id":"1","content":"4"}],"tools":[{"type":"function","function":{"name":"calc","parameters":{}}}],"chat_template_kwargs":{"enable_thinking":true}}"#,
        ),
    ];
    for (name, body) in extra {
        out.put("prompt", name, body)?;
    }
    Ok(())
}

fn template(out: &mut Out) -> Result<()> {
    let (_, config) = model_files();
    let config: Value = serde_json::from_slice(&config)?;
    let qwen = str_of(&config, "chat_template")?;
    out.put("template", "qwen3", qwen.as_bytes())?;
    let cases =
        read_json(&repo_root().join("filter/prompt/src/template/testdata/jinja2_cases.json"))?;
    for (name, case) in cases.as_object().map(|m| m.iter()).into_iter().flatten() {
        if let Some(src) = case.get("src").and_then(Value::as_str) {
            out.put("template", &format!("jinja2_{name}"), src.as_bytes())?;
        }
    }
    // Templates that built 0.2–1.3 GB under the former default fuel (see the prompt crate's
    // `default_fuel_bounds_template_memory`).
    let small: [(&str, &str); 7] = [
        ("format_width", "{{ '{:>200000000}'.format(1) }}"),
        (
            "replace_grow",
            "{{ ('x' * 20000000) | replace('x', 'xxxxxxxxxx') }}",
        ),
        (
            "doubling",
            "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        ),
        (
            "loop_messages",
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
        ),
        (
            "nested_loop",
            "{% for i in range(1000) %}{% for j in range(1000) %}{{ i }}{% endfor %}{% endfor %}",
        ),
        (
            "recursive_macro",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        ),
        (
            "tools_json",
            "{{ tools | tojson(indent=2) }}{{ messages[-1].content | trim }}{{ raise_exception('no') if not messages }}",
        ),
    ];
    for (name, src) in small {
        out.put("template", name, src.as_bytes())?;
    }
    Ok(())
}

fn index_ops(out: &mut Out) -> Result<()> {
    // A small deterministic generator: the bytes only steer `arbitrary`.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..8 {
        let len = 64 << (i % 4);
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        out.put("index_ops", &format!("random_{i}"), &bytes)?;
    }
    Ok(())
}

/// Writes every target's seeds under `dir`; returns (files, bytes).
pub fn write_all(dir: &Path) -> Result<(usize, usize)> {
    let mut out = Out {
        dir: dir.to_path_buf(),
        count: 0,
        bytes: 0,
    };
    let golden = read_json(&repo_root().join("tests/fixtures/events/golden.json"))?;
    events(&mut out, &golden)?;
    config(&mut out)?;
    prompt(&mut out)?;
    template(&mut out)?;
    index_ops(&mut out)?;
    Ok((out.count, out.bytes))
}
