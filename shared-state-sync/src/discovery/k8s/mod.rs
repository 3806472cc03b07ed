//! Kubernetes discovery: follows one `InferencePool` (inference.networking.k8s.io/v1) —
//! its pod selector and target ports — and the pods it selects, with the `kube` client's
//! list+watch ([`kube::runtime::watcher`]: resource versions, bookmarks, and a fresh list
//! when a watch expires with 410 Gone), and reports the ready pods as the
//! [`Source::Kubernetes`] worker list on every change.
//!
//! The pool is watched by name (`fieldSelector=metadata.name=…`); when its selector
//! changes the pod watch restarts with the new label selector; when it is deleted (or
//! absent) the list is empty. RBAC: `get`, `list`, `watch` on `inferencepools` and `pods`
//! in the namespace.

pub mod pods;

use super::{Discovery, Sink, Task, Update};
use crate::workers::Source;
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use kvgate_core::workers::WorkerInfo;
use pods::{PodDefaults, Pool};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What to follow.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    /// Namespace of the pool and its pods.
    pub namespace: String,
    /// InferencePool name.
    pub pool: String,
    /// API server URL used without credentials (e.g. `kubectl proxy`); `None`: the
    /// in-cluster service account, else `$KUBECONFIG` / `~/.kube/config`.
    pub api_url: Option<String>,
    /// Details of pods without annotations.
    pub defaults: PodDefaults,
}

/// The InferencePool API resource.
pub fn pool_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "inference.networking.k8s.io",
        "v1",
        "InferencePool",
    ))
}

/// Follows an InferencePool and its pods.
pub struct KubeDiscovery {
    settings: KubeSettings,
    on_synced: Box<dyn Fn() + Send + Sync>,
}

impl KubeDiscovery {
    /// A follower of `settings.pool`; `on_synced` is called once the pool and its pods
    /// have been listed (readiness).
    pub fn new(settings: KubeSettings, on_synced: Box<dyn Fn() + Send + Sync>) -> Self {
        KubeDiscovery {
            settings,
            on_synced,
        }
    }

    async fn client(&self) -> Result<Client, String> {
        let config = match &self.settings.api_url {
            Some(url) => kube::Config::new(
                url.parse::<hyper::Uri>()
                    .map_err(|e| format!("--k8s-api-url {url}: {e}"))?,
            ),
            None => kube::Config::infer().await.map_err(|e| e.to_string())?,
        };
        Client::try_from(config).map_err(|e| e.to_string())
    }
}

type Events<K> = BoxStream<'static, Result<Event<K>, watcher::Error>>;

/// The pool and pod state being followed, and what was last reported.
#[derive(Default)]
struct Follow {
    pool: Option<Pool>,
    pool_init: Option<Pool>,
    pool_synced: bool,
    pods: BTreeMap<String, Pod>,
    pods_init: BTreeMap<String, Pod>,
    pods_synced: bool,
    sent: Option<Vec<WorkerInfo>>,
    skipped: Vec<String>,
}

fn pool_of(obj: DynamicObject) -> Option<Pool> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let annotations = obj.metadata.annotations.clone().unwrap_or_default();
    let spec = obj.data.get("spec").cloned().unwrap_or_default();
    match Pool::parse(&spec, annotations) {
        Ok(p) => Some(p),
        Err(e) => {
            tracing::warn!(pool = %name, "{e}; no workers from it");
            None
        }
    }
}

fn key(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

impl Follow {
    /// Applies one pool event; true when the pod selector may have changed.
    fn pool_event(&mut self, ev: Event<DynamicObject>) -> bool {
        match ev {
            Event::Init => {
                self.pool_init = None;
                false
            }
            Event::InitApply(o) => {
                self.pool_init = pool_of(o);
                false
            }
            Event::InitDone => {
                self.pool = self.pool_init.take();
                self.pool_synced = true;
                true
            }
            Event::Apply(o) => {
                self.pool = pool_of(o);
                true
            }
            Event::Delete(_) => {
                self.pool = None;
                true
            }
        }
    }

    fn pod_event(&mut self, ev: Event<Pod>) {
        match ev {
            Event::Init => self.pods_init.clear(),
            Event::InitApply(p) => {
                self.pods_init.insert(key(&p), p);
            }
            Event::InitDone => {
                self.pods = std::mem::take(&mut self.pods_init);
                self.pods_synced = true;
            }
            Event::Apply(p) => {
                self.pods.insert(key(&p), p);
            }
            Event::Delete(p) => {
                self.pods.remove(&key(&p));
            }
        }
    }

    /// Whether the list is known: the pool listed, and its pods if it exists.
    fn synced(&self) -> bool {
        self.pool_synced && (self.pool.is_none() || self.pods_synced)
    }

    /// The worker list, if it differs from the last one reported.
    fn news(&mut self, defaults: &PodDefaults) -> Option<Vec<WorkerInfo>> {
        if !self.synced() {
            return None;
        }
        let workers = match &self.pool {
            None => Vec::new(),
            Some(pool) => {
                let (w, skipped) = pods::workers(self.pods.values(), pool, defaults);
                let names: Vec<String> = skipped.iter().map(|s| s.pod.clone()).collect();
                if names != self.skipped {
                    for s in &skipped {
                        tracing::warn!(pod = %s.pod, "ready pod left out: {}", s.reason);
                    }
                    self.skipped = names;
                }
                w
            }
        };
        if self.sent.as_ref() == Some(&workers) {
            return None;
        }
        self.sent = Some(workers.clone());
        Some(workers)
    }
}

async fn next<K>(s: &mut Option<Events<K>>) -> Option<Result<Event<K>, watcher::Error>> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Discovery for KubeDiscovery {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn run(self: Box<Self>, sink: Arc<dyn Sink>) -> Task {
        Box::pin(async move {
            let client = loop {
                match self.client().await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!("no Kubernetes client: {e}; retrying in 5 s");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            };
            let s = &self.settings;
            let pools: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &s.namespace, &pool_resource());
            let pool_config =
                watcher::Config::default().fields(&format!("metadata.name={}", s.pool));
            let mut pool_events: Option<Events<DynamicObject>> = Some(
                watcher::watcher(pools, pool_config)
                    .default_backoff()
                    .boxed(),
            );
            let mut pod_events: Option<Events<Pod>> = None;
            let mut selector = String::new();
            let mut f = Follow::default();
            let mut reported = false;
            loop {
                tokio::select! {
                    ev = next(&mut pool_events) => match ev {
                        Some(Ok(ev)) => {
                            if f.pool_event(ev) {
                                let want = f.pool.as_ref().map(Pool::label_selector).unwrap_or_default();
                                if want != selector || (pod_events.is_none() && !want.is_empty()) {
                                    selector = want;
                                    f.pods.clear();
                                    f.pods_synced = false;
                                    pod_events = (!selector.is_empty()).then(|| {
                                        let pods: Api<Pod> = Api::namespaced(client.clone(), &s.namespace);
                                        let config = watcher::Config::default().labels(&selector);
                                        watcher::watcher(pods, config).default_backoff().boxed()
                                    });
                                    tracing::info!(pool = %s.pool, selector = %selector, "following the pool's pods");
                                }
                            }
                        }
                        Some(Err(e)) => tracing::warn!(pool = %s.pool, "InferencePool watch: {e}"),
                        None => pool_events = None,
                    },
                    ev = next(&mut pod_events) => match ev {
                        Some(Ok(ev)) => f.pod_event(ev),
                        Some(Err(e)) => tracing::warn!(pool = %s.pool, "pod watch: {e}"),
                        None => pod_events = None,
                    },
                }
                if let Some(workers) = f.news(&s.defaults) {
                    tracing::info!(pool = %s.pool, workers = workers.len(), "ready pods changed");
                    sink.update(Update::Replace(Source::Kubernetes, workers));
                }
                if f.synced() && !reported {
                    reported = true;
                    (self.on_synced)();
                }
            }
        })
    }
}
