//! (8) `kvgate-sync hash` reproduces the independent Python xxhash vectors.

use super::common::command;
use serde_json::Value;

#[test]
fn hash_cli_matches_python_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/vectors/block_hashes.json"
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("vector file")).unwrap();
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() >= 5);
    for c in cases {
        let tokens: Vec<String> = c["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.to_string())
            .collect();
        let mut cmd = command();
        cmd.args(["hash", "--block-size", &c["block_size"].to_string()]);
        if tokens.is_empty() {
            cmd.arg("--tokens");
        } else {
            cmd.arg(format!("--tokens={}", tokens.join(",")));
        }
        if let Some(l) = c["lora"].as_str() {
            cmd.args(["--lora", l]);
        }
        if let Some(s) = c["salt"].as_str() {
            cmd.args(["--salt", s]);
        }
        let out = cmd.output().expect("run hash");
        assert!(
            out.status.success(),
            "{}: {}",
            c["name"],
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).expect("JSON output");
        assert_eq!(got["block_hashes"], c["block_hashes"], "{}", c["name"]);
        assert_eq!(
            got["sequence_hashes"], c["sequence_hashes"],
            "{}",
            c["name"]
        );
    }
}
