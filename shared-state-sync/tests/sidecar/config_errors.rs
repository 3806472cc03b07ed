//! (7) Bad configuration exits with code 2 and names the key, before touching NATS.

use super::common::command;

fn serve_fails(args: &[&str], env: &[(&str, &str)], key: &str) {
    let mut all = vec!["--allow-unauthenticated"];
    all.extend_from_slice(args);
    serve_fails_exactly(&all, env, key);
}

fn serve_fails_exactly(args: &[&str], env: &[(&str, &str)], key: &str) {
    let mut c = command();
    c.arg("serve")
        .args(["--nats-url", "nats://127.0.0.1:1"])
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {stderr}");
    assert!(
        stderr.contains(key),
        "{args:?} {env:?}: stderr does not name `{key}`: {stderr}"
    );
}

#[test]
fn config_errors_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    serve_fails(
        &[],
        &[("DYN_ROUTER_TEMPERATURE", "hot")],
        "DYN_ROUTER_TEMPERATURE",
    );
    serve_fails(&[], &[("KVGATE_NO_SUCH_KEY", "1")], "KVGATE_NO_SUCH_KEY");
    let bad_value = file("a.json", r#"{"router_temperature": -1}"#);
    serve_fails(&["--config", &bad_value], &[], "router_temperature");
    let unknown = file("b.json", r#"{"colour": "red"}"#);
    serve_fails(&["--config", &unknown], &[], "colour");
    serve_fails(&["--config", "/nonexistent/kvgate.json"], &[], "--config");
    serve_fails(&["--model", "no-directory"], &[], "--model");
    serve_fails(&["--model", "m=/nonexistent"], &[], "--model m");
    serve_fails(&["--listen", "localhost"], &[], "--listen");
    serve_fails(&["--durable", "a.b"], &[], "--durable");
    serve_fails(&["--epp", "localhost:9002"], &[], "--epp");
    let static_mode = file("s.json", r#"{"sidecar_cluster": ""}"#);
    serve_fails(
        &["--epp", "127.0.0.1:9002", "--config", &static_mode],
        &[],
        "--epp",
    );
    let workers = file(
        "w.json",
        r#"[{"instance_id": 1, "endpoint": "x", "model": "m", "colour": 2}]"#,
    );
    serve_fails(&["--workers-file", &workers], &[], "--workers-file");
    // No API token and no explicit opt-out; a token too short to be one.
    serve_fails_exactly(&[], &[], "--allow-unauthenticated");
    let short = file("t", "short");
    serve_fails_exactly(&["--api-token-file", &short], &[], "--api-token-file");
    serve_fails_exactly(&[], &[("KVGATE_SIDECAR_TOKEN", "short")], "sidecar_token");
    // clap's own usage errors use the same exit code.
    serve_fails(&["--no-such-flag"], &[], "--no-such-flag");
}
