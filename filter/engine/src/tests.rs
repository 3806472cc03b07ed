//! Native tests of the VM logic with the real Qwen3 tokenizer (fetched by `make setup`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use crate::headers::RoutedPath;
use crate::ledger::Others;
use crate::outcome::{Degraded, ForwardReason, Outcome, Reply, Route};
use crate::{DecideInput, Engine, ModelFiles};
use kvgate_core::index::IndexDelta;
use kvgate_core::sync::{self as ksync, ModelEntry, RemoteLoad, SyncFrame};
use kvgate_core::workers::{WorkerInfo, WorkerRole};
use std::path::PathBuf;

pub(crate) fn model_dir() -> PathBuf {
    std::env::var_os("KVGATE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/models/Qwen3-0.6B")
        })
}

pub(crate) fn files() -> ModelFiles {
    let dir = model_dir();
    let read = |f: &str| {
        std::fs::read(dir.join(f)).unwrap_or_else(|e| {
            panic!(
                "{}/{f}: {e} — run `make setup` to fetch the tokenizer",
                dir.display()
            )
        })
    };
    ModelFiles {
        name: "Qwen/Qwen3-0.6B".into(),
        block_size: 16,
        tokenizer_json: read("tokenizer.json"),
        tokenizer_config_json: read("tokenizer_config.json"),
    }
}

pub(crate) fn worker(id: u64, role: WorkerRole) -> WorkerInfo {
    WorkerInfo {
        instance_id: id,
        endpoint: format!("127.0.0.1:{}", 18000 + id),
        model: "Qwen/Qwen3-0.6B".into(),
        role,
        block_size: Some(16),
        dp_size: 1,
        dp_start_rank: 0,
        total_kv_blocks: Some(1000),
        max_num_seqs: None,
        max_num_batched_tokens: None,
        zmq_events: None,
        zmq_replay: None,
        lora_adapters: Vec::new(),
    }
}

fn static_engine(extra: &str) -> Engine {
    let workers: Vec<WorkerInfo> = (1..=4).map(|i| worker(i, WorkerRole::Aggregated)).collect();
    let json = format!(
        r#"{{"sidecar_cluster": "", "workers": {} {extra}}}"#,
        serde_json::to_string(&workers).unwrap()
    );
    let cfg = kvgate_core::config::Config::from_json(json.as_bytes()).unwrap();
    let mut e = Engine::new(cfg, 7, 42);
    e.load_model("d1", &files()).unwrap();
    e
}

pub(crate) fn long_chat(user: &str) -> Vec<u8> {
    let system = "You are a meticulous assistant. ".repeat(60);
    serde_json::to_vec(&serde_json::json!({
        "model": "Qwen/Qwen3-0.6B",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]
    }))
    .unwrap()
}

/// The routed decision of an outcome (fails the test otherwise).
pub(crate) fn routed(o: Outcome) -> Route {
    match o {
        Outcome::Route(r) => *r,
        other => panic!("expected a route, got {other:?}"),
    }
}

/// The local reply of an outcome (fails the test otherwise).
pub(crate) fn replied(o: Outcome) -> Reply {
    match o {
        Outcome::Reply(r) => r,
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn decide(e: &mut Engine, ctx: u32, body: &[u8]) -> Outcome {
    decide_at(e, ctx, body, 1_000)
}

fn decide_at(e: &mut Engine, ctx: u32, body: &[u8], now_ms: u64) -> Outcome {
    e.decide(
        &DecideInput {
            ctx,
            path: RoutedPath::Chat,
            body,
            tenant: None,
            session: None,
            now_ms,
        },
        &Others::default(),
    )
}

#[test]
fn routes_and_injects_exact_token_ids() {
    let mut e = static_engine("");
    let body = long_chat("hello");
    let Route {
        headers,
        body: new_body,
        prompt_tokens,
        ..
    } = routed(decide(&mut e, 1, &body));
    let get = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.clone())
    };
    let dest = get("x-gateway-destination-endpoint").unwrap();
    let dest = dest.split(',').next().unwrap().to_string();
    let id = get("x-worker-instance-id").unwrap();
    assert_eq!(
        dest,
        format!("127.0.0.1:{}", 18000 + id.parse::<u64>().unwrap())
    );
    assert_eq!(get("x-dynamo-worker-instance-id"), Some(id));
    assert_eq!(get("x-dynamo-routing-mode").as_deref(), Some("aggregated"));
    let v: serde_json::Value = serde_json::from_slice(&new_body.unwrap()).unwrap();
    let ids = v["nvext"]["token_data"].as_array().unwrap();
    assert_eq!(ids.len(), prompt_tokens);
    assert_eq!(ids[0].as_u64(), Some(151644), "<|im_start|>");
}

#[test]
fn a_packed_tokenizer_loads_from_inside_a_larger_buffer_and_a_bad_range_is_an_error() {
    let f = files();
    let packed = kvgate_prompt::pack_tokenizer(&f.tokenizer_json).unwrap();
    // The packed tokenizer in the middle of a buffer (as in a postcard of the files).
    let mut buf = b"head".to_vec();
    buf.extend_from_slice(&packed);
    buf.extend_from_slice(b"tail");
    let mut e = static_engine("");
    e.load_model_in(
        "d2",
        &f.name,
        16,
        buf.clone(),
        4..4 + packed.len(),
        &f.tokenizer_config_json,
    )
    .unwrap();
    let Route { prompt_tokens, .. } = routed(decide(&mut e, 1, &long_chat("hello")));
    let mut json = static_engine("");
    let Route {
        prompt_tokens: want,
        ..
    } = routed(decide(&mut json, 1, &long_chat("hello")));
    assert_eq!(
        prompt_tokens, want,
        "packed and JSON tokenizers count alike"
    );
    // A range past the buffer, or one that cuts the pack short: the model is not loaded.
    let err = e
        .load_model_in(
            "d3",
            &f.name,
            16,
            buf.clone(),
            4..buf.len() + 1,
            &f.tokenizer_config_json,
        )
        .unwrap_err();
    assert!(err.to_string().contains(&f.name), "{err}");
    assert!(e
        .load_model_in(
            "d3",
            &f.name,
            16,
            buf,
            4..packed.len(),
            &f.tokenizer_config_json
        )
        .is_err());
    assert!(e
        .models
        .get(&f.name)
        .and_then(|m| m.prompt.as_ref())
        .is_none());
}

#[test]
fn repeated_prefix_goes_to_the_same_worker_in_approximate_mode() {
    let mut e = static_engine("");
    let first = decide(&mut e, 1, &long_chat("first question"));
    let w1 = routed(first).worker;
    e.request_done(1);
    for ctx in 2..6 {
        let Route {
            worker,
            matched_blocks,
            ..
        } = routed(decide(&mut e, ctx, &long_chat("another one")));
        assert_eq!(worker, w1);
        assert!(matched_blocks > 10, "{matched_blocks}");
        e.request_done(ctx);
    }
    assert_eq!(e.in_flight(), 0);
}

#[test]
fn bad_input_and_unknown_model() {
    let mut e = static_engine("");
    let Reply { status, body, .. } = replied(decide(&mut e, 1, b"{not json"));
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]["message"].is_string()
            && v["error"]["type"].is_string()
            && v["error"]["code"].is_string()
    );
    let Reply { status, .. } = replied(decide(
        &mut e,
        2,
        br#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    ));
    assert_eq!(status, 404);
    let Reply { status, .. } = replied(decide(&mut e, 3, br#"{"model":"Qwen/Qwen3-0.6B"}"#));
    assert_eq!(status, 400);
    assert_eq!(e.in_flight(), 0, "nothing booked for rejected requests");
}

#[test]
fn fail_policies_with_no_workers() {
    let cfg = kvgate_core::config::Config::from_json(br#"{"sidecar_cluster": ""}"#).unwrap();
    let mut e = Engine::new(cfg, 1, 1);
    assert_eq!(
        decide(&mut e, 1, &long_chat("x")),
        Outcome::Forward(ForwardReason::NoWorkers)
    );
    assert_eq!(e.counters.fail_open, 1);
    let cfg = kvgate_core::config::Config::from_json(
        br#"{"sidecar_cluster": "", "fail_policy": "fail_closed"}"#,
    )
    .unwrap();
    let mut e = Engine::new(cfg, 1, 1);
    let Reply { status, .. } = replied(decide(&mut e, 1, &long_chat("x")));
    assert_eq!(status, 503);
}

#[test]
fn sidecar_index_routes_to_the_holder_and_stale_index_degrades() {
    let cfg = kvgate_core::config::Config::from_json(br#"{"stale_after_ms": 5000}"#).unwrap();
    let mut e = Engine::new(cfg, 1, 1);
    let workers: Vec<WorkerInfo> = (1..=3).map(|i| worker(i, WorkerRole::Aggregated)).collect();
    let snap = SyncFrame {
        epoch: 9,
        to_version: 0,
        snapshot: true,
        workers: Some(workers),
        models: Some(vec![ModelEntry {
            name: "Qwen/Qwen3-0.6B".into(),
            block_size: 16,
            files_digest: "d1".into(),
        }]),
        loads: Some(vec![RemoteLoad::default()]),
        ..Default::default()
    };
    let out = e.apply_frame_bytes(&ksync::encode(&snap), 1_000).unwrap();
    assert_eq!(
        out.want_models,
        vec![("Qwen/Qwen3-0.6B".to_string(), "d1".to_string())]
    );
    // Before the tokenizer arrives: load-only routing, counted.
    let degraded = routed(decide(&mut e, 1, &long_chat("q"))).degraded;
    assert_eq!(degraded, Some(Degraded::NoTokenizer));
    e.request_done(1);
    e.load_model("d1", &files()).unwrap();

    // Put the request's blocks on worker 3 through a delta frame.
    let body = long_chat("which worker?");
    let b = routed(decide(&mut e, 2, &body)).body.unwrap();
    e.request_done(2);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    let toks: Vec<u32> = v["nvext"]["token_data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let seq = kvgate_core::hash::BlockHasher::new(16)
        .hash(&toks, None, None, usize::MAX)
        .sequence;
    let w3 = kvgate_core::WorkerKey::new(3, 0);
    let deltas: Vec<IndexDelta> = seq
        .iter()
        .map(|&s| IndexDelta::Insert { worker: w3, seq: s })
        .collect();
    let mut log = ksync::SyncLog::new(9, 1000);
    let mut idx = kvgate_core::index::PrefixIndex::new();
    for d in &deltas {
        idx.apply(d);
    }
    log.record(&deltas);
    let (ep, ver) = e.sync_position();
    let f = log.frame_since(ep, ver, &idx);
    assert!(!f.snapshot);
    e.apply_frame(&f, 2_000).unwrap();
    for ctx in 3..6 {
        let out = e.decide(
            &DecideInput {
                ctx,
                path: RoutedPath::Chat,
                body: &body,
                tenant: None,
                session: None,
                now_ms: 2_000,
            },
            &Others::default(),
        );
        let Route {
            worker,
            matched_blocks,
            degraded,
            ..
        } = routed(out);
        assert_eq!((worker, degraded), (w3, None));
        assert_eq!(matched_blocks as usize, seq.len());
        e.request_done(ctx);
    }
    // 10 s without a frame: stale → load only.
    let out = e.decide(
        &DecideInput {
            ctx: 9,
            path: RoutedPath::Chat,
            body: &body,
            tenant: None,
            session: None,
            now_ms: 12_000,
        },
        &Others::default(),
    );
    let Route {
        degraded,
        matched_blocks,
        ..
    } = routed(out);
    assert_eq!((degraded, matched_blocks), (Some(Degraded::StaleIndex), 0));
    // Snapshot of this VM restores an identical view elsewhere.
    let mut other_vm = Engine::new(e.cfg.clone(), 2, 2);
    other_vm
        .apply_frame_bytes(&e.snapshot_frame(), 2_000)
        .unwrap();
    assert_eq!(other_vm.index_blocks(), e.index_blocks());
    assert_eq!(other_vm.fleet().all().len(), 3);
}

#[test]
fn lifecycle_frees_on_every_path() {
    let mut e = static_engine(r#", "router_track_output_blocks": true"#);
    let worker = routed(decide(&mut e, 1, &long_chat("stream me"))).worker;
    assert!(e
        .own_loads()
        .iter()
        .any(|(w, l)| *w == worker && l.prefill_tokens > 0));
    e.response_chunk(1, b"data: {}\n\n", 0);
    assert!(e.own_loads().iter().all(|(_, l)| l.prefill_tokens == 0));
    e.response_chunk(1, &b"data: {}\n\n".repeat(40), 0);
    assert!(e.request_done(1));
    assert!(!e.request_done(1), "second free is a no-op");
    assert!(e.own_loads().is_empty());
}

/// Issue 17 item 3: a request naming a LoRA adapter uses its base model's pipeline, goes
/// only to workers serving the adapter, and is hashed with the adapter's seed (Dynamo's
/// LoRA-aware block hash); an adapter nobody serves is a clear 404.
#[test]
fn lora_adapters_route_to_their_workers_with_the_adapter_hash() {
    let workers: Vec<WorkerInfo> = (1..=4)
        .map(|i| {
            let mut w = worker(i, WorkerRole::Aggregated);
            if i <= 2 {
                w.lora_adapters = vec!["sql-lora".into()];
            }
            w
        })
        .collect();
    let json = format!(
        r#"{{"sidecar_cluster": "", "workers": {}}}"#,
        serde_json::to_string(&workers).unwrap()
    );
    let cfg = kvgate_core::config::Config::from_json(json.as_bytes()).unwrap();
    let mut e = Engine::new(cfg, 7, 42);
    e.load_model("d1", &files()).unwrap();
    let with_model = |model: &str, user: &str| {
        let mut v: serde_json::Value = serde_json::from_slice(&long_chat(user)).unwrap();
        v["model"] = model.into();
        serde_json::to_vec(&v).unwrap()
    };
    fn e_prepare(e: &mut Engine, body: &[u8]) -> Vec<u64> {
        let input = DecideInput {
            ctx: 1,
            path: RoutedPath::Chat,
            body,
            tenant: None,
            session: None,
            now_ms: 1_000,
        };
        let p = e.prepare(&input).unwrap();
        assert!(
            p.tokens.len() > 32,
            "tokenized with the base model's tokenizer"
        );
        let expect = kvgate_core::hash::BlockHasher::new(p.block_size).hash(
            &p.tokens,
            serde_json::from_slice::<serde_json::Value>(body).unwrap()["model"]
                .as_str()
                .filter(|m| *m == "sql-lora"),
            None,
            usize::MAX,
        );
        assert_eq!(p.hashes.sequence, expect.sequence);
        p.hashes.sequence
    }
    let base = e_prepare(&mut e, &with_model("Qwen/Qwen3-0.6B", "q"));
    let lora = e_prepare(&mut e, &with_model("sql-lora", "q"));
    assert_eq!(base.len(), lora.len());
    assert!(
        base.iter().zip(&lora).all(|(a, b)| a != b),
        "the adapter seeds every block"
    );

    for ctx in 0..8 {
        let r = routed(decide(
            &mut e,
            ctx,
            &with_model("sql-lora", &format!("q{ctx}")),
        ));
        assert!(r.worker.worker_id <= 2, "{:?}", r.worker);
    }
    let r = replied(decide(&mut e, 99, &with_model("no-such-lora", "q")));
    assert_eq!((r.status, r.code), (404, "model_not_found"));
}

/// Issue 13: a worker's booked prefill counts only for the part its learned prefill rate
/// says has not run yet (`router_prefill_decay`); turned off, all of it counts.
#[test]
fn booked_prefill_decays_at_the_learned_rate() {
    fn chat(tag: &str, words: usize) -> Vec<u8> {
        let text: String = (0..words).map(|i| format!("{tag}{i} ")).collect();
        serde_json::to_vec(&serde_json::json!({
            "model": "Qwen/Qwen3-0.6B",
            "messages": [{"role": "user", "content": text}]
        }))
        .unwrap()
    }
    fn at(e: &mut Engine, ctx: u32, body: &[u8], now_ms: u64) -> Route {
        routed(decide_at(e, ctx, body, now_ms))
    }
    let run = |decay: bool| {
        // Prefill cost only: no cache credit, no decode term.
        let mut e = static_engine(&format!(
            r#", "overlap_score_credit": 0, "router_track_active_blocks": false, "router_prefill_decay": {decay}"#
        ));
        // A long prompt and three shorter ones, booked at 1 000 on the four idle workers.
        let long = at(&mut e, 1, &chat("a", 1600), 1_000).worker;
        let mut short = Vec::new();
        for (ctx, tag) in [(2, "b"), (3, "c"), (4, "d")] {
            short.push(at(&mut e, ctx, &chat(tag, 400), 1_000).worker);
        }
        assert!(!short.contains(&long), "{long:?} {short:?}");
        // The long one's worker has prefilled 100 tokens/ms so far, the others 1.
        for w in 1..=4 {
            let key = kvgate_core::WorkerKey::new(w, 0);
            let ms = if key == long { 10 } else { 1000 };
            for i in 0..3u64 {
                let prefill = kvgate_core::load::QueuedPrefill {
                    tokens: 1000,
                    since_ms: i * ms,
                };
                e.prefill_rates.observe(key, prefill, (i + 1) * ms);
            }
        }
        (long, at(&mut e, 5, &chat("e", 400), 1_100).worker)
    };
    // 100 ms later the long prompt has run on its fast worker; ~900 tokens of each short
    // one are still queued on the slow ones.
    let (long, chosen) = run(true);
    assert_eq!(chosen, long, "decayed: the fast worker has nothing left");
    let (long, chosen) = run(false);
    assert_ne!(
        chosen, long,
        "not decayed: the long prompt still counts in full"
    );
}
