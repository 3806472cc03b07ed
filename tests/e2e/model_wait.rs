//! Sidecar mode, a fresh Envoy: the very first request a worker VM sees arrives before it
//! has the model's tokenizer (VMs fetch model files only once they handle streams). It
//! waits for the files (`model_wait_ms`) and is routed with the tokenizer — never decided
//! on load alone (`degraded=no_tokenizer`).

use crate::common::*;
use kvgate_faults::observe::Decision;
use kvgate_http::post as http_post;
use kvgate_stack::{wait_for, Stack, StackOptions};
use serde_json::json;
use std::time::Duration;

#[test]
fn the_first_request_of_a_fresh_vm_waits_for_the_tokenizer_and_is_routed_with_it() {
    let dir = test_dir("model-wait");
    let mut opts = StackOptions::new(&dir);
    opts.workers = 2;
    // One worker thread: the first request is the first of the only VM that tokenizes.
    opts.concurrency = 1;
    opts.plugin = json!({"decision_header": true});
    let stack = Stack::start(&opts).unwrap_or_else(|e| panic!("{e}"));
    // The VMs know the fleet and the model (sync frames applied) before any request.
    let synced = wait_for(Duration::from_secs(60), || {
        (stack.envoy.stat("wasmcustom.kvgate.sync.frames") > 0).then_some(())
    });
    assert!(synced.is_some(), "no sync frame reached the filter");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stack.envoy.stat("wasmcustom.kvgate.model_wait.parked"), 0);

    let url = stack.envoy.url("/v1/chat/completions");
    let r = http_post(&url, &[], &long_chat("The first question of this gateway")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let d = Decision::parse(r.header("x-kvgate-decision").unwrap()).unwrap();
    assert_eq!(d.degraded, None, "{d:?}");
    let served: u64 = r.header("x-kvgate-worker").unwrap().parse().unwrap();
    assert_eq!(d.chosen().unwrap().worker, served);
    assert_eq!(stack.envoy.stat("wasmcustom.kvgate.model_wait.parked"), 1);
    assert_eq!(
        stack.envoy.stat("wasmcustom.kvgate.model_wait.timed_out"),
        0
    );
    assert_eq!(
        stack.envoy.stat("wasmcustom.kvgate.degraded.no_tokenizer"),
        0
    );
    // The next one does not wait.
    let r = http_post(&url, &[], &long_chat("A second question")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stack.envoy.stat("wasmcustom.kvgate.model_wait.parked"), 1);
}
