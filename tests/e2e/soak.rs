//! The short load soak (`make test`; the ten-minute one is `make soak`): the whole stack
//! at a fixed request rate with small KV pools (caches fill and evict, the index churns),
//! Envoy's and the sidecar's RSS sampled from `/proc`. No request may fail, memory must
//! stay within the bound stated in `kvgate_faults::soak`, and the filter's
//! in-flight gauges must be back at zero. Latency percentiles per window are printed,
//! not asserted.

use crate::common::*;
use kvgate_faults::soak::{self, SoakConfig};
use std::time::Duration;

#[test]
fn short_soak_no_errors_no_growth() {
    let mut cfg = SoakConfig::new(test_dir("soak"), Duration::from_secs(30), 10.0);
    cfg.warmup = Duration::from_secs(15);
    cfg.window = Duration::from_secs(10);
    cfg.sample_every = Duration::from_secs(2);
    let r = soak::run(&cfg, |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    println!("{}", r.markdown());
    assert_eq!(r.errors, 0, "failed requests: {:?}", r.error_kinds);
    assert!(r.envoy.ok(), "Envoy RSS grew: {:?}", r.envoy);
    assert!(r.sidecar.ok(), "sidecar RSS grew: {:?}", r.sidecar);
    assert!(r.inflight_after.is_zero(), "{:?}", r.inflight_after);
    assert!(r.requests > 200, "load did not run: {}", r.requests);
}
