//! A small in-test Kubernetes API server: answers list and watch of pods and
//! InferencePools in one namespace the way kube-apiserver does (shapes in
//! `tests/fixtures/kube/`, documented in its PROVENANCE.md): lists with a
//! `resourceVersion`, chunked newline-delimited watch streams of ADDED / MODIFIED /
//! DELETED events after the requested version, BOOKMARK events when asked for, and a
//! watch from a version older than the kept history answered with an ERROR event
//! carrying a 410 `Expired` Status, after which a client must list again.
//!
//! The test changes objects with [`ApiServer::apply`] / [`ApiServer::delete`]; open
//! watches see the change at once. [`ApiServer::compact_and_drop_watches`] changes objects
//! without telling anyone, forgets the history and ends every watch: only a fresh list
//! shows the change.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kube");

/// A fixture with its placeholders replaced.
pub fn fixture(name: &str, fill: &[(&str, &str)]) -> Value {
    let mut text = std::fs::read_to_string(format!("{FIXTURES}/{name}")).unwrap();
    for (k, v) in fill {
        text = text.replace(k, v);
    }
    serde_json::from_str(&text).unwrap()
}

/// The two resources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    /// `pods` (core v1).
    Pods,
    /// `inferencepools` (inference.networking.k8s.io/v1).
    Pools,
}

impl Res {
    fn kind(self) -> (&'static str, &'static str) {
        match self {
            Res::Pods => ("Pod", "v1"),
            Res::Pools => ("InferencePool", "inference.networking.k8s.io/v1"),
        }
    }
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Res, String), Value>,
    /// (resource version, resource, event type, object) since `oldest`.
    history: Vec<(u64, Res, &'static str, Value)>,
    /// Watches from a version before this get 410 Gone.
    oldest: u64,
    /// Requests served, by (resource, "list" | "watch" | "expired" | "bookmark").
    counts: HashMap<(Res, &'static str), u64>,
}

/// The server and its state.
#[derive(Clone)]
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    changed: watch::Sender<u64>,
    drop_watches: watch::Sender<u64>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// The namespace served.
    pub namespace: String,
}

fn labels_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        obj["metadata"]["labels"][k].as_str() == Some(v)
    })
}

fn fields_match(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .filter(|s| !s.is_empty())
        .all(|term| match term.split_once('=') {
            Some(("metadata.name", v)) => obj["metadata"]["name"].as_str() == Some(v),
            _ => false,
        })
}

fn selected(obj: &Value, q: &HashMap<String, String>) -> bool {
    labels_match(
        obj,
        q.get("labelSelector").map(String::as_str).unwrap_or(""),
    ) && fields_match(
        obj,
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
    )
}

impl ApiServer {
    /// Serves namespace `namespace` on a free loopback port.
    pub async fn start(namespace: &str) -> ApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = ApiServer {
            store: Arc::new(Mutex::new(Store {
                rv: 100,
                ..Store::default()
            })),
            changed: watch::channel(0).0,
            drop_watches: watch::channel(0).0,
            url,
            namespace: namespace.to_string(),
        };
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/pods", get(pods))
            .route(
                "/apis/inference.networking.k8s.io/v1/namespaces/{ns}/inferencepools",
                get(pools),
            )
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        server
    }

    /// Creates or replaces an object (named by its metadata.name): ADDED or MODIFIED.
    pub fn apply(&self, res: Res, mut obj: Value) {
        let mut st = self.store.lock().unwrap();
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        let kind = if st.objects.contains_key(&(res, name.clone())) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.objects.insert((res, name), obj.clone());
        st.history.push((rv, res, kind, obj));
        drop(st);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Deletes an object: DELETED with its last state.
    pub fn delete(&self, res: Res, name: &str) {
        let mut st = self.store.lock().unwrap();
        let Some(mut obj) = st.objects.remove(&(res, name.to_string())) else {
            return;
        };
        st.rv += 1;
        let rv = st.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        st.history.push((rv, res, "DELETED", obj));
        drop(st);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Applies `change` to the objects without any watch event, forgets the whole history
    /// (as etcd compaction does) and ends every open watch: a client that watches again
    /// from its last version gets 410 Gone and has to list.
    pub fn compact_and_drop_watches(
        &self,
        change: impl FnOnce(&mut BTreeMap<(Res, String), Value>),
    ) {
        let mut st = self.store.lock().unwrap();
        change(&mut st.objects);
        st.rv += 10;
        let rv = st.rv;
        for obj in st.objects.values_mut() {
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        }
        st.history.clear();
        st.oldest = rv;
        drop(st);
        self.drop_watches.send_modify(|v| *v += 1);
    }

    /// Requests served of one kind.
    pub fn count(&self, res: Res, what: &'static str) -> u64 {
        self.store
            .lock()
            .unwrap()
            .counts
            .get(&(res, what))
            .copied()
            .unwrap_or(0)
    }

    fn list(&self, res: Res, q: &HashMap<String, String>) -> Value {
        let mut st = self.store.lock().unwrap();
        *st.counts.entry((res, "list")).or_default() += 1;
        let (kind, api_version) = res.kind();
        let mut list = fixture(
            "list.json",
            &[
                ("KIND", &format!("{kind}List")),
                ("API_VERSION", api_version),
                ("RV", &st.rv.to_string()),
            ],
        );
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((r, _), o)| *r == res && selected(o, q))
            .map(|(_, o)| {
                let mut o = o.clone();
                if res == Res::Pods {
                    // Items of a core-group list carry no kind/apiVersion.
                    let m = o.as_object_mut().unwrap();
                    m.remove("kind");
                    m.remove("apiVersion");
                }
                o
            })
            .collect();
        list["items"] = json!(items);
        list
    }

    fn watch(&self, res: Res, q: HashMap<String, String>) -> Response {
        let from: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
        let timeout = q
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let (kind, api_version) = res.kind();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
        let server = self.clone();
        {
            let mut st = self.store.lock().unwrap();
            *st.counts.entry((res, "watch")).or_default() += 1;
            if from < st.oldest {
                *st.counts.entry((res, "expired")).or_default() += 1;
                let ev = fixture(
                    "expired.json",
                    &[("RV", &from.to_string()), ("CURRENT", &st.rv.to_string())],
                );
                let _ = tx.try_send(Ok(format!("{ev}\n")));
                drop(tx);
                return stream_response(rx);
            }
        }
        tokio::spawn(async move {
            let mut changed = server.changed.subscribe();
            let mut dropped = server.drop_watches.subscribe();
            dropped.borrow_and_update();
            let mut sent = from;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                let events: Vec<Value> = {
                    let st = server.store.lock().unwrap();
                    st.history
                        .iter()
                        .filter(|(rv, r, _, o)| *rv > sent && *r == res && selected(o, &q))
                        .map(|(_, _, t, o)| json!({"type": t, "object": o}))
                        .collect()
                };
                for ev in events {
                    sent = ev["object"]["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    if tx.send(Ok(format!("{ev}\n"))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    _ = changed.changed() => {}
                    _ = dropped.changed() => return,
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)), if bookmarks => {
                        // A bookmark promises every event up to its version was sent.
                        let rv = {
                            let mut st = server.store.lock().unwrap();
                            let unsent = st.history.iter().any(|(rv, r, _, o)| *rv > sent && *r == res && selected(o, &q));
                            if unsent {
                                continue;
                            }
                            *st.counts.entry((res, "bookmark")).or_default() += 1;
                            st.rv
                        };
                        let ev = fixture("bookmark.json", &[("KIND", kind), ("API_VERSION", api_version), ("RV", &rv.to_string())]);
                        if tx.send(Ok(format!("{ev}\n"))).await.is_err() {
                            return;
                        }
                        sent = sent.max(rv);
                    }
                }
            }
        });
        stream_response(rx)
    }
}

fn stream_response(rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>) -> Response {
    let body = Body::from_stream(tokio_stream_from(rx));
    ([("content-type", "application/json")], body).into_response()
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<String, std::io::Error>>,
) -> impl futures::Stream<Item = Result<String, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn serve(server: ApiServer, res: Res, ns: String, q: HashMap<String, String>) -> Response {
    if ns != server.namespace {
        let (kind, api_version) = res.kind();
        return axum::Json(fixture(
            "list.json",
            &[
                ("KIND", &format!("{kind}List")),
                ("API_VERSION", api_version),
                ("RV", "1"),
            ],
        ))
        .into_response();
    }
    if q.get("watch").is_some_and(|v| v == "true" || v == "1") {
        server.watch(res, q)
    } else {
        axum::Json(server.list(res, &q)).into_response()
    }
}

async fn pods(
    State(s): State<ApiServer>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    serve(s, Res::Pods, ns, q).await
}

async fn pools(
    State(s): State<ApiServer>,
    Path(ns): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    serve(s, Res::Pools, ns, q).await
}

/// A pod from the fixture: `ready` sets its Ready and ContainersReady conditions.
pub fn pod(
    namespace: &str,
    name: &str,
    ip: &str,
    ready: bool,
    labels: Value,
    annotations: Value,
) -> Value {
    let mut p = fixture(
        "pod.json",
        &[
            ("NAMESPACE", namespace),
            ("UID", &format!("uid-{name}")),
            ("POD_IP", ip),
            ("READY", if ready { "True" } else { "False" }),
        ],
    );
    p["metadata"]["name"] = json!(name);
    p["metadata"]["labels"] = labels;
    p["metadata"]["annotations"] = annotations;
    p
}

/// An InferencePool from the fixture selecting `labels` on `port`.
pub fn pool(namespace: &str, name: &str, labels: Value, port: u16) -> Value {
    let mut p = fixture(
        "inferencepool.json",
        &[("NAMESPACE", namespace), ("UID", &format!("uid-{name}"))],
    );
    p["metadata"]["name"] = json!(name);
    p["spec"]["selector"]["matchLabels"] = labels;
    p["spec"]["targetPorts"] = json!([{"number": port}]);
    p
}
