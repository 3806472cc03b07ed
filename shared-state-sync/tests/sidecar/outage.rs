//! NATS outages: the sidecar keeps serving its last index (not ready, growing source
//! age), reconnects by itself, and its durable consumer resumes with the events the
//! stream captured meanwhile. Also: worker load reports reach the frames, and Dynamo's
//! legacy JSON JetStream stream is read when it exists.

use super::common::{eventually, Nats, Sidecar};
use super::dynamo_events::{hashes, publish, publish_event, stored};
use kvgate_core::events::dynamo::encode_router_event_json;
use kvgate_core::events::metrics::{
    encode_load_envelope, kv_metrics_endpoint_subject, kv_metrics_subject, WorkerLoadReport,
};
use kvgate_core::WorkerKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_last_index_through_a_nats_outage_and_resumes() {
    let mut nats = Nats::start().await;
    let sc = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "nso",
        "--durable",
        "do",
    ])
    .await;
    sc.ready().await;
    let h = hashes();
    {
        let client = nats.client().await;
        publish_event(&client, "nso", 0, &stored(5, 0, None, &[(1, h.local[0])])).await;
    }
    eventually("first event", || async { sc.blocks(5).await == 1 }).await;

    nats.stop();
    eventually("not ready while NATS is down", || async {
        let (status, body) = sc.get("/readyz").await;
        status == 503 && String::from_utf8_lossy(&body).contains("NATS disconnected")
    })
    .await;
    // Still serving the index.
    assert_eq!(
        sc.filter_index()
            .await
            .overlap(&h.sequence)
            .of(&WorkerKey::new(5, 0)),
        1
    );
    eventually("source age grows", || async {
        sc.frame(0, 0, 0).await.source_age_ms > 0
    })
    .await;

    nats.restart().await;
    let client = nats.client().await;
    publish_event(
        &client,
        "nso",
        1,
        &stored(5, 1, Some(1), &[(2, h.local[1])]),
    )
    .await;
    sc.ready().await;
    eventually("events after the outage", || async {
        sc.blocks(5).await == 2
    })
    .await;
    assert_eq!(sc.frame(0, 0, 0).await.source_age_ms, 0);
    assert_eq!(sc.state().await["totals"]["gaps"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_and_the_legacy_stream() {
    let nats = Nats::start().await;
    let client = nats.client().await;
    // Dynamo's old durable path: a JetStream stream with JSON RouterEvents.
    let js = async_nats::jetstream::new(client.clone());
    let legacy = "namespace-nsl-component-backend-kv-events";
    js.create_stream(async_nats::jetstream::stream::Config {
        name: legacy.into(),
        subjects: vec![format!("{legacy}.kv-events")],
        ..Default::default()
    })
    .await
    .unwrap();
    let h = hashes();
    let ev = stored(6, 1, None, &[(1, h.local[0]), (2, h.local[1])]);
    js.publish(
        format!("{legacy}.kv-events"),
        encode_router_event_json(&ev).into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let sc = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "nsl",
        "--durable",
        "dl",
    ])
    .await;
    sc.ready().await;
    eventually("legacy JSON events applied", || async {
        sc.blocks(6).await == 2
    })
    .await;

    let report = WorkerLoadReport {
        worker: WorkerKey::new(6, 0),
        kv_used_blocks: Some(77),
        active_decode_blocks: Some(5),
        ..Default::default()
    };
    publish(
        &client,
        kv_metrics_endpoint_subject("nsl", "backend", "generate"),
        encode_load_envelope(1, 0, 0, &report),
    )
    .await;
    let later = WorkerLoadReport {
        worker: WorkerKey::new(6, 0),
        kv_used_blocks: Some(80),
        ..Default::default()
    };
    publish(
        &client,
        kv_metrics_subject("nsl"),
        encode_load_envelope(1, 1, 0, &later),
    )
    .await;
    eventually("loads in the frame", || async {
        let f = sc.frame(0, 0, 0).await;
        f.loads.unwrap_or_default().iter().any(|l| {
            l.worker == WorkerKey::new(6, 0)
                && l.kv_used_blocks == Some(80)
                && l.active_decode_blocks == Some(5)
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stream_name_binds_the_stream_that_captures_the_subjects() {
    let nats = Nats::start().await;
    let a = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "nss",
        "--durable",
        "a",
        "--stream",
        "first",
    ])
    .await;
    a.ready().await;
    let b = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "nss",
        "--durable",
        "b",
        "--stream",
        "second",
    ])
    .await;
    b.ready().await;
    let client = nats.client().await;
    let h = hashes();
    publish_event(&client, "nss", 0, &stored(4, 0, None, &[(1, h.local[0])])).await;
    eventually("both sidecars follow the one stream", || async {
        a.blocks(4).await == 1 && b.blocks(4).await == 1
    })
    .await;
    assert!(b
        .log()
        .contains("reading the stream that captures its subjects"));
}

/// A long poll holding back a load change (answered at most every `loads_interval_ms`)
/// still answers at once when a KV event arrives: the held-back wait used to ignore index
/// changes, so every event waited out the loads interval (found by the lag benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_event_answers_a_long_poll_that_holds_back_loads() {
    let nats = Nats::start().await;
    let sc = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "nsh",
        "--durable",
        "dh",
        "--loads-interval-ms",
        "120000",
    ])
    .await;
    sc.ready().await;
    let client = nats.client().await;
    let h = hashes();
    publish_event(&client, "nsh", 0, &stored(9, 0, None, &[(1, h.local[0])])).await;
    eventually("first event applied", || async { sc.blocks(9).await == 1 }).await;
    // This client's view: everything, loads just sent.
    let f0 = sc.frame(0, 0, 0).await;
    // A load change: held back for 120 s from now on.
    publish(
        &client,
        kv_metrics_subject("nsh"),
        encode_load_envelope(
            1,
            0,
            0,
            &WorkerLoadReport {
                worker: WorkerKey::new(9, 0),
                kv_used_blocks: Some(3),
                ..Default::default()
            },
        ),
    )
    .await;
    eventually("load report applied", || async {
        let s = sc.state().await;
        s.to_string().contains("\"kv_used_blocks\":3")
    })
    .await;
    // A long poll of 60 s, then an event: the event answers it, not the 60 s timeout.
    let poll = sc.frame(f0.epoch, f0.to_version, 60_000);
    let publish_later = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        publish_event(
            &client,
            "nsh",
            1,
            &stored(9, 1, Some(1), &[(2, h.local[1])]),
        )
        .await;
    };
    let (f, ()) = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        tokio::join!(poll, publish_later)
    })
    .await
    .expect("the long poll waited for the loads interval instead of answering the KV event");
    assert!(!f.snapshot);
    assert!(
        !f.ops.is_empty(),
        "answered without the event's delta: {f:?}"
    );
}

/// A worker whose events were lost (ids 2 and 3 never arrive) is reset and marked cold;
/// the sidecar then asks it for a dump of its cache (worker KV query over NATS
/// request/reply), replaces its entries with the dump, ends the cold mark, and the
/// stream continues after the dump's last event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cold_after_lost_events_is_recovered_from_its_cache_dump() {
    use futures::StreamExt;
    use kvgate_core::events::query::{query_subject, WorkerKvQueryRequest, WorkerKvQueryResponse};
    let nats = Nats::start().await;
    let sc = Sidecar::start(&[
        "--nats-url",
        &nats.url(),
        "--namespace",
        "nsr",
        "--durable",
        "dr",
    ])
    .await;
    sc.ready().await;
    let h = hashes();
    let client = nats.client().await;
    // The worker's side: its cache holds the four blocks, as of event 4.
    let dump = vec![
        stored(8, 0, None, &[(1, h.local[0])]),
        stored(8, 1, Some(1), &[(2, h.local[1])]),
        stored(8, 2, Some(2), &[(3, h.local[2])]),
        stored(8, 3, Some(3), &[(4, h.local[3])]),
    ];
    let mut sub = client
        .subscribe(query_subject("nsr", "backend", 8, 0))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let responder = client.clone();
    let asked = tokio::spawn(async move {
        let m = sub.next().await.unwrap();
        let req: WorkerKvQueryRequest = serde_json::from_slice(&m.payload).unwrap();
        let answer = WorkerKvQueryResponse::TreeDump {
            events: dump,
            last_event_id: 4,
        };
        responder
            .publish(m.reply.unwrap(), answer.encode().into())
            .await
            .unwrap();
        responder.flush().await.unwrap();
        req
    });
    publish_event(&client, "nsr", 0, &stored(8, 1, None, &[(1, h.local[0])])).await;
    eventually("first event", || async { sc.blocks(8).await == 1 }).await;
    publish_event(
        &client,
        "nsr",
        1,
        &stored(8, 4, Some(3), &[(4, h.local[3])]),
    )
    .await;
    let req = asked.await.unwrap();
    assert_eq!(
        (req.worker_id, req.dp_rank, req.start_event_id),
        (8, 0, None)
    );
    eventually("recovered from the dump", || async {
        let s = sc.state().await;
        sc.blocks(8).await == 4 && s["cold"].as_array().is_some_and(|c| c.is_empty())
    })
    .await;
    let s = sc.state().await;
    assert_eq!(s["totals"]["gaps"], 1, "{s}");
    let (_, metrics) = sc.get("/metrics").await;
    let metrics = String::from_utf8_lossy(&metrics).to_string();
    assert!(
        metrics.contains(r#"kvgate_sync_recoveries_total{result="dump"} 1"#),
        "{metrics}"
    );
    // The stream goes on after the dump's last id: event 4 again is a duplicate, 5 applies.
    publish_event(
        &client,
        "nsr",
        2,
        &stored(8, 4, Some(3), &[(4, h.local[3])]),
    )
    .await;
    publish_event(&client, "nsr", 3, &stored(8, 5, Some(4), &[(5, 77)])).await;
    eventually("event 5 after the dump", || async {
        sc.blocks(8).await == 5
    })
    .await;
    assert_eq!(sc.state().await["totals"]["gaps"], 1);
}
