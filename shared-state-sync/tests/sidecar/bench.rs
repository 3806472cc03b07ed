//! Ingest throughput (not run by default: `cargo test -p kvgate-sync --test sidecar --
//! --ignored --nocapture bench`): publishes Dynamo KV events as fast as one NATS client
//! can and reports how many the sidecar applied per second, end to end (NATS core →
//! JetStream stream → durable consumer → decode → index → sync log).

use super::common::{Nats, Sidecar, WAIT};
use super::dynamo_events::stored;
use kvgate_core::events::dynamo::{encode_envelope, kv_events_subject};
use std::time::{Duration, Instant};

async fn applied(sc: &Sidecar) -> u64 {
    sc.state().await["totals"]["events"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark"]
async fn bench_ingest_rate() {
    const N: u64 = 50_000;
    const BLOCKS: u64 = 4;
    let nats = Nats::start().await;
    let url = nats.url();
    let args = [
        "--nats-url",
        &url,
        "--namespace",
        "bench",
        "--durable",
        "bench",
    ];
    let mut sc = Sidecar::start(&args).await;
    sc.ready().await;
    let client = nats.client().await;
    let subject = kv_events_subject("bench", "backend");
    let payloads: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            let w = i % 8;
            let id = i / 8;
            let blocks: Vec<(u64, u64)> = (0..BLOCKS)
                .map(|b| (i * 16 + b, (i * 16 + b).wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect();
            encode_envelope(w + 1, id, 0, &stored(w + 1, id, None, &blocks))
        })
        .collect();
    let start = Instant::now();
    for p in payloads {
        client.publish(subject.clone(), p.into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let published = start.elapsed();
    let deadline = Instant::now() + WAIT * 6;
    while applied(&sc).await < N && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    let n = applied(&sc).await;
    let s = sc.state().await;
    println!(
        "published {N} events ({BLOCKS} blocks each) in {published:?}; sidecar applied {n} in {took:?}: {:.0} events/s, {:.0} blocks/s; index entries {}",
        n as f64 / took.as_secs_f64(),
        (n * BLOCKS) as f64 / took.as_secs_f64(),
        s["index"]["entries"]
    );

    // Restart: the whole stream is replayed before /readyz answers 200.
    sc.kill();
    let start = Instant::now();
    let sc = Sidecar::start(&args).await;
    sc.ready().await;
    let took = start.elapsed();
    let n = applied(&sc).await;
    println!(
        "restart: replayed {n} events from JetStream and ready in {took:?} ({:.0} events/s, process start included)",
        n as f64 / took.as_secs_f64()
    );
}
