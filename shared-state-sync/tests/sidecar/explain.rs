//! `explain` end to end: a tiny character-level tokenizer served by the sidecar, KV
//! events making one worker hold the longer prefix, and the routing it prints.

use super::common::{command, eventually, Nats, Sidecar};
use super::dynamo_events::{publish_event, stored};
use kvgate_core::hash::BlockHasher;
use serde_json::{json, Value};

fn tiny_model(dir: &std::path::Path) {
    // Character-level: a BPE vocabulary of single letters and no merges, no pre-tokenizer.
    let mut vocab = serde_json::Map::new();
    vocab.insert("[UNK]".into(), json!(0));
    for (i, c) in ('a'..='z').enumerate() {
        vocab.insert(c.to_string(), json!(i + 1));
    }
    let tok = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": "[UNK]",
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = json!({"chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_prints_hashes_overlaps_and_the_choice() {
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("tiny");
    std::fs::create_dir(&model_dir).unwrap();
    tiny_model(&model_dir);
    let workers = dir.path().join("workers.json");
    std::fs::write(
        &workers,
        json!([
            {"instance_id": 51, "endpoint": "127.0.0.1:8051", "model": "tiny", "block_size": 4},
            {"instance_id": 52, "endpoint": "127.0.0.1:8052", "model": "tiny", "block_size": 4}
        ])
        .to_string(),
    )
    .unwrap();
    let model_flag = format!("tiny={},block_size=4", model_dir.display());
    let sc = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "nsx",
        "--durable",
        "dx",
        "--workers-file",
        workers.to_str().unwrap(),
        "--model",
        &model_flag,
    ])
    .await;
    sc.ready().await;
    // "abcdefghijklmnop" → ids 1..=16 → 4 blocks of 4.
    let tokens: Vec<u32> = (1..=16).collect();
    let h = BlockHasher::new(4).hash(&tokens, None, None, usize::MAX);
    let client = nats.client().await;
    publish_event(
        &client,
        "nsx",
        0,
        &stored(51, 0, None, &[(1, h.local[0]), (2, h.local[1])]),
    )
    .await;
    publish_event(&client, "nsx", 1, &stored(52, 0, None, &[(1, h.local[0])])).await;
    eventually("events applied", || async {
        sc.blocks(51).await == 2 && sc.blocks(52).await == 1
    })
    .await;

    let req = dir.path().join("req.json");
    std::fs::write(
        &req,
        json!({"model": "tiny", "prompt": "abcdefghijklmnop"}).to_string(),
    )
    .unwrap();
    let sidecar = format!("http://{}", sc.listen);
    let run = |extra: &[&str]| {
        let out = command()
            .args([
                "explain",
                "--model",
                "tiny",
                "--request",
                req.to_str().unwrap(),
                "--sidecar",
                &sidecar,
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let report: Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(report["block_hashes"], json!(h.local), "{report}");
    assert_eq!(report["block_size"], 4);
    assert_eq!(report["decision"]["decode"]["worker_id"], 51, "{report}");
    let overlap = |id: u64| {
        report["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker_id"] == id)
            .unwrap()["overlap_blocks"]
            .clone()
    };
    assert_eq!(overlap(51), 2);
    assert_eq!(overlap(52), 1);
    let text = run(&[]);
    assert!(text.contains("chosen: 51/0 at 127.0.0.1:8051"), "{text}");
    // The tokenizer can also come from a directory.
    let report: Value = serde_json::from_str(&run(&[
        "--json",
        "--model-dir",
        model_dir.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(report["decision"]["decode"]["worker_id"], 51);
}
