//! Kubernetes discovery end to end: `kvgate-sync --k8s-inference-pool` against the
//! in-test API server (`kube_api.rs`). Pods appearing, becoming ready or not ready and
//! being deleted change the worker table the filter is fed (`/v1/sync` frames) within
//! the poll limit; bookmarks keep the watch going; a watch that expires with 410 Gone is
//! followed by a fresh list that shows changes no event announced; a change of the
//! pool's selector and ports, and its deletion, are followed. With NATS, announcements
//! enrich the pods the cluster lists and nothing else.

use super::common::{eventually, Nats, Sidecar};
use super::dynamo_events::publish;
use super::kube_api::{pod, pool, ApiServer, Res};
use kvgate_core::workers::{announce_subject, WorkerAnnouncement, WorkerInfo};
use kvgate_sync::discovery::instance_id::instance_id_of_name;
use serde_json::{json, Value};
use std::collections::BTreeSet;

const NS: &str = "llm";

fn labels(app: &str) -> Value {
    json!({"app": app})
}

/// (instance id, endpoint) of the workers in a `/v1/state` document.
fn workers_in(state: &Value) -> BTreeSet<(u64, String)> {
    state["workers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            (
                w["instance_id"].as_u64().unwrap(),
                w["endpoint"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn expect(pods: &[(&str, &str)]) -> BTreeSet<(u64, String)> {
    pods.iter()
        .map(|(name, ep)| (instance_id_of_name(name), ep.to_string()))
        .collect()
}

/// Waits until both `/v1/state` and a snapshot frame (what the filter applies) list
/// exactly `want`.
async fn routes_to(sc: &Sidecar, what: &str, want: BTreeSet<(u64, String)>) {
    eventually(what, || {
        let want = want.clone();
        async move {
            let frame = sc.frame(0, 0, 0).await;
            let fed: BTreeSet<(u64, String)> = frame
                .workers
                .unwrap_or_default()
                .into_iter()
                .map(|w| (w.instance_id, w.endpoint))
                .collect();
            workers_in(&sc.state().await) == want && fed == want
        }
    })
    .await;
}

async fn start(api: &ApiServer, extra: &[&str]) -> Sidecar {
    let mut args = vec![
        "--k8s-inference-pool",
        "workers",
        "--k8s-namespace",
        NS,
        "--k8s-api-url",
        &api.url,
        "--k8s-default-model",
        "Qwen/Qwen3-0.6B",
    ];
    args.extend_from_slice(extra);
    Sidecar::start(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_coming_and_going_change_the_workers_the_filter_routes_to() {
    let api = ApiServer::start(NS).await;
    api.apply(Res::Pools, pool(NS, "workers", labels("vllm"), 8000));
    api.apply(
        Res::Pods,
        pod(NS, "w-0", "10.1.0.1", true, labels("vllm"), json!({})),
    );
    api.apply(
        Res::Pods,
        pod(
            NS,
            "w-1",
            "10.1.0.2",
            true,
            labels("vllm"),
            json!({"kvgate.io/block-size": "32"}),
        ),
    );
    api.apply(
        Res::Pods,
        pod(NS, "w-2", "10.1.0.3", false, labels("vllm"), json!({})),
    );
    api.apply(
        Res::Pods,
        pod(NS, "other", "10.1.0.9", true, labels("web"), json!({})),
    );
    // Another InferencePool in the namespace is not followed.
    api.apply(Res::Pools, pool(NS, "elsewhere", labels("web"), 80));

    let sc = start(&api, &["--no-nats"]).await;
    sc.ready().await;
    routes_to(
        &sc,
        "the two ready pods",
        expect(&[("w-0", "10.1.0.1:8000"), ("w-1", "10.1.0.2:8000")]),
    )
    .await;
    let s = sc.state().await;
    let w1 = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["endpoint"] == "10.1.0.2:8000")
        .unwrap();
    assert_eq!(w1["block_size"], 32);
    assert_eq!(w1["model"], "Qwen/Qwen3-0.6B");
    assert_eq!(w1["source"], "kubernetes");

    // Ready, not ready, deleted, added.
    api.apply(
        Res::Pods,
        pod(NS, "w-2", "10.1.0.3", true, labels("vllm"), json!({})),
    );
    routes_to(
        &sc,
        "w-2 ready",
        expect(&[
            ("w-0", "10.1.0.1:8000"),
            ("w-1", "10.1.0.2:8000"),
            ("w-2", "10.1.0.3:8000"),
        ]),
    )
    .await;
    api.apply(
        Res::Pods,
        pod(NS, "w-0", "10.1.0.1", false, labels("vllm"), json!({})),
    );
    api.delete(Res::Pods, "w-1");
    api.apply(
        Res::Pods,
        pod(NS, "w-3", "10.1.0.4", true, labels("vllm"), json!({})),
    );
    routes_to(
        &sc,
        "w-0 not ready, w-1 gone, w-3 new",
        expect(&[("w-2", "10.1.0.3:8000"), ("w-3", "10.1.0.4:8000")]),
    )
    .await;
    eventually("a bookmark was sent on the pod watch", || async {
        api.count(Res::Pods, "bookmark") > 0
    })
    .await;

    // The history is compacted while nobody watches: w-3 deleted, w-4 added, no events.
    let lists = api.count(Res::Pods, "list");
    api.compact_and_drop_watches(|objects| {
        objects.remove(&(Res::Pods, "w-3".to_string()));
        let p = pod(NS, "w-4", "10.1.0.5", true, labels("vllm"), json!({}));
        objects.insert((Res::Pods, "w-4".to_string()), p);
    });
    routes_to(
        &sc,
        "the re-list after 410 Gone",
        expect(&[("w-2", "10.1.0.3:8000"), ("w-4", "10.1.0.5:8000")]),
    )
    .await;
    assert!(
        api.count(Res::Pods, "expired") >= 1,
        "the watch was not answered with 410"
    );
    assert!(
        api.count(Res::Pods, "list") > lists,
        "no fresh list after 410"
    );

    // The pool's selector and port change: its new pods, on the new port.
    api.apply(
        Res::Pods,
        pod(NS, "v2-0", "10.1.1.1", true, labels("vllm2"), json!({})),
    );
    api.apply(Res::Pools, pool(NS, "workers", labels("vllm2"), 9000));
    routes_to(
        &sc,
        "the new selector",
        expect(&[("v2-0", "10.1.1.1:9000")]),
    )
    .await;

    // The pool is deleted: no workers.
    api.delete(Res::Pools, "workers");
    routes_to(&sc, "no pool", BTreeSet::new()).await;
}

fn announced(id: u64, endpoint: &str) -> WorkerInfo {
    serde_json::from_value(
        json!({"instance_id": id, "endpoint": endpoint, "model": "announced", "dp_size": 2}),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_announcements_enrich_only_the_pods_the_cluster_lists() {
    let api = ApiServer::start(NS).await;
    api.apply(Res::Pools, pool(NS, "workers", labels("vllm"), 8000));
    api.apply(
        Res::Pods,
        pod(NS, "w-0", "10.2.0.1", true, labels("vllm"), json!({})),
    );
    api.apply(
        Res::Pods,
        pod(NS, "w-1", "10.2.0.2", true, labels("vllm"), json!({})),
    );
    let nats = Nats::start().await;
    let sc = start(
        &api,
        &[
            "--nats-url",
            &nats.url(),
            "--namespace",
            "ns-k8s",
            "--durable",
            "dk8s",
        ],
    )
    .await;
    sc.ready().await;
    routes_to(
        &sc,
        "both pods",
        expect(&[("w-0", "10.2.0.1:8000"), ("w-1", "10.2.0.2:8000")]),
    )
    .await;

    // An announcement for w-0's endpoint (its own Dynamo instance id 7) and one for an
    // endpoint no ready pod has.
    let client = nats.client().await;
    for w in [
        announced(7, "10.2.0.1:8000"),
        announced(8, "10.2.0.99:8000"),
    ] {
        let a = WorkerAnnouncement {
            worker: w,
            lease_ms: 60_000,
            leaving: false,
        };
        publish(
            &client,
            announce_subject("ns-k8s"),
            serde_json::to_vec(&a).unwrap(),
        )
        .await;
    }
    let want: BTreeSet<(u64, String)> = [
        (7, "10.2.0.1:8000".to_string()),
        (instance_id_of_name("w-1"), "10.2.0.2:8000".to_string()),
    ]
    .into();
    routes_to(&sc, "w-0 enriched by its announcement", want).await;
    let s = sc.state().await;
    let w0 = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["instance_id"] == 7)
        .unwrap();
    assert_eq!(
        (
            w0["model"].as_str(),
            w0["dp_size"].as_u64(),
            w0["source"].as_str()
        ),
        (Some("announced"), Some(2), Some("kubernetes+announce"))
    );
    assert_eq!(s["announced_not_in_cluster"], json!([8]));

    // w-0 goes not ready: announced or not, it is not routed to.
    api.apply(
        Res::Pods,
        pod(NS, "w-0", "10.2.0.1", false, labels("vllm"), json!({})),
    );
    routes_to(&sc, "w-0 not ready", expect(&[("w-1", "10.2.0.2:8000")])).await;
}
