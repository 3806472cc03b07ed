//! From the InferencePool and its pods to worker entries: the pool's selector and target
//! ports, which pods are routable, and each worker's details from annotations.
//!
//! A pod is routable when it has an IP, is `Running`, its `Ready` condition is `True`
//! and it is not being deleted (no `deletionTimestamp`): the pods a Service would send
//! traffic to. Each routable pod gives one worker per target port (GAIE: "every port is a
//! distinctive endpoint, addressable as podIP:portNumber").
//!
//! Details, first found wins: the pod's annotation, the InferencePool's annotation, the
//! flag (`--k8s-default-*`):
//!
//! | annotation | worker field |
//! |---|---|
//! | `kvgate.io/model` | `model` (served model name; a pod without one anywhere is skipped) |
//! | `kvgate.io/role` | `role`: `aggregated`, `prefill` or `decode` |
//! | `kvgate.io/block-size` | `block_size` |
//! | `kvgate.io/dp-size` | `dp_size` |
//! | `kvgate.io/lora-adapters` | `lora_adapters` (comma-separated adapter names) |
//! | `kvgate.io/instance-id` | `instance_id` (pod annotation only) |
//!
//! The instance id is otherwise Dynamo's for the pod name
//! ([`instance_id_of_name`]); a pool with several target ports gives the first port that
//! id and port N the id of `"{pod}:{N}"`.

use crate::discovery::instance_id::instance_id_of_name;
use k8s_openapi::api::core::v1::Pod;
use kvgate_core::workers::{WorkerInfo, WorkerRole};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Annotation names.
pub const MODEL: &str = "kvgate.io/model";
/// Role annotation.
pub const ROLE: &str = "kvgate.io/role";
/// Block size annotation.
pub const BLOCK_SIZE: &str = "kvgate.io/block-size";
/// Data-parallel size annotation.
pub const DP_SIZE: &str = "kvgate.io/dp-size";
/// LoRA adapters annotation (comma-separated names).
pub const LORA_ADAPTERS: &str = "kvgate.io/lora-adapters";
/// Instance id annotation.
pub const INSTANCE_ID: &str = "kvgate.io/instance-id";

/// Defaults for pods whose annotations (and the pool's) say nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodDefaults {
    /// Served model name.
    pub model: Option<String>,
    /// Role.
    pub role: WorkerRole,
    /// Tokens per KV block.
    pub block_size: Option<u32>,
}

/// The parts of an `InferencePool` (inference.networking.k8s.io/v1) the sidecar reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// `spec.selector.matchLabels`.
    pub match_labels: BTreeMap<String, String>,
    /// `spec.targetPorts[].number`.
    pub ports: Vec<u16>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PoolSpec {
    selector: Selector,
    target_ports: Vec<Port>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Port {
    number: u16,
}

/// Why an InferencePool cannot be followed.
#[derive(Debug, thiserror::Error)]
#[error("InferencePool spec: {0}")]
pub struct PoolError(String);

impl Pool {
    /// Reads the pool from its `spec` and `metadata.annotations`.
    pub fn parse(
        spec: &serde_json::Value,
        annotations: BTreeMap<String, String>,
    ) -> Result<Pool, PoolError> {
        let spec = PoolSpec::deserialize(spec).map_err(|e| PoolError(e.to_string()))?;
        if spec.selector.match_labels.is_empty() {
            return Err(PoolError("selector.matchLabels is empty".into()));
        }
        if spec.target_ports.is_empty() || spec.target_ports.iter().any(|p| p.number == 0) {
            return Err(PoolError("targetPorts must list ports 1..65535".into()));
        }
        Ok(Pool {
            match_labels: spec.selector.match_labels,
            ports: spec.target_ports.iter().map(|p| p.number).collect(),
            annotations,
        })
    }

    /// The label selector for the pod watch: `k1=v1,k2=v2`.
    pub fn label_selector(&self) -> String {
        self.match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Whether a pod would receive traffic: IP, Running, Ready, not terminating.
pub fn routable(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty())
        && ready
}

/// Why a routable pod was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The pod.
    pub pod: String,
    /// Why.
    pub reason: String,
}

fn annotation<'a>(pod: &'a Pod, pool: &'a Pool, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .or_else(|| pool.annotations.get(key))
        .map(String::as_str)
}

fn parse<T: std::str::FromStr>(key: &str, v: Option<&str>) -> Result<Option<T>, String> {
    v.map(|s| {
        s.trim()
            .parse::<T>()
            .map_err(|_| format!("annotation {key}=`{s}` is not a number"))
    })
    .transpose()
}

fn role(v: &str) -> Result<WorkerRole, String> {
    match v.trim() {
        "aggregated" => Ok(WorkerRole::Aggregated),
        "prefill" => Ok(WorkerRole::Prefill),
        "decode" => Ok(WorkerRole::Decode),
        other => Err(format!(
            "annotation {ROLE}=`{other}` is not aggregated, prefill or decode"
        )),
    }
}

/// The workers of one pod (one per target port), or why it has none.
pub fn workers_of_pod(
    pod: &Pod,
    pool: &Pool,
    defaults: &PodDefaults,
) -> Result<Vec<WorkerInfo>, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();
    let model = annotation(pod, pool, MODEL)
        .map(str::to_string)
        .or_else(|| defaults.model.clone())
        .filter(|m| !m.is_empty())
        .ok_or_else(|| format!("no {MODEL} annotation and no --k8s-default-model"))?;
    let role = match annotation(pod, pool, ROLE) {
        Some(v) => role(v)?,
        None => defaults.role,
    };
    let block_size = parse::<u32>(BLOCK_SIZE, annotation(pod, pool, BLOCK_SIZE))?
        .or(defaults.block_size)
        .filter(|b| *b > 0);
    let dp_size = parse::<u32>(DP_SIZE, annotation(pod, pool, DP_SIZE))?
        .unwrap_or(1)
        .max(1);
    let lora_adapters: Vec<String> = annotation(pod, pool, LORA_ADAPTERS)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let own_id = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INSTANCE_ID))
        .map(String::as_str);
    let base_id = match parse::<u64>(INSTANCE_ID, own_id)? {
        Some(id) => id,
        None => instance_id_of_name(&name),
    };
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip
    };
    Ok(pool
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| WorkerInfo {
            instance_id: if i == 0 {
                base_id
            } else {
                instance_id_of_name(&format!("{name}:{port}"))
            },
            endpoint: format!("{host}:{port}"),
            model: model.clone(),
            role,
            block_size,
            dp_size,
            dp_start_rank: 0,
            total_kv_blocks: None,
            max_num_seqs: None,
            max_num_batched_tokens: None,
            zmq_events: None,
            zmq_replay: None,
            lora_adapters: lora_adapters.clone(),
        })
        .collect())
}

/// Every worker of the routable pods, sorted by endpoint, and the routable pods skipped.
pub fn workers<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
    pool: &Pool,
    defaults: &PodDefaults,
) -> (Vec<WorkerInfo>, Vec<Skipped>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for pod in pods.into_iter().filter(|p| routable(p)) {
        match workers_of_pod(pod, pool, defaults) {
            Ok(w) => out.extend(w),
            Err(reason) => skipped.push(Skipped {
                pod: pod.metadata.name.clone().unwrap_or_default(),
                reason,
            }),
        }
    }
    out.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
    (out, skipped)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use serde_json::json;

    fn pool() -> Pool {
        Pool::parse(
            &json!({"selector": {"matchLabels": {"app": "vllm", "tier": "a"}},
                    "targetPorts": [{"number": 8000}],
                    "endpointPickerRef": {"name": "x", "port": {"number": 9002}}}),
            BTreeMap::from([(ROLE.to_string(), "decode".to_string())]),
        )
        .unwrap()
    }

    fn pod(name: &str, ip: &str, ready: &str, annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "status": {"phase": "Running", "podIP": ip,
                       "conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap()
    }

    #[test]
    fn pool_spec_and_selector() {
        let p = pool();
        assert_eq!(p.label_selector(), "app=vllm,tier=a");
        assert_eq!(p.ports, vec![8000]);
        let bad = Pool::parse(
            &json!({"selector": {"matchLabels": {}}, "targetPorts": [{"number": 1}]}),
            BTreeMap::new(),
        );
        assert!(bad.is_err());
        assert!(Pool::parse(
            &json!({"selector": {"matchLabels": {"a": "b"}}}),
            BTreeMap::new()
        )
        .is_err());
    }

    #[test]
    fn ready_pods_become_workers_with_dynamo_ids() {
        let defaults = PodDefaults {
            model: Some("Qwen/Qwen3-0.6B".into()),
            ..PodDefaults::default()
        };
        let pods = [
            pod(
                "vllm-agg-worker-0",
                "10.0.0.5",
                "True",
                json!({BLOCK_SIZE: "32"}),
            ),
            pod("not-ready", "10.0.0.6", "False", json!({})),
            pod(
                "qwen-decode-abc12",
                "fd00::7",
                "True",
                json!({MODEL: "other", ROLE: "prefill", LORA_ADAPTERS: "sql, chat,"}),
            ),
        ];
        let (w, skipped) = workers(&pods, &pool(), &defaults);
        assert!(skipped.is_empty());
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].endpoint, "10.0.0.5:8000");
        assert_eq!(w[0].instance_id, 551176242155732);
        assert_eq!(w[0].model, "Qwen/Qwen3-0.6B");
        assert_eq!(w[0].role, WorkerRole::Decode, "the pool's annotation");
        assert_eq!(w[0].block_size, Some(32));
        assert!(w[0].lora_adapters.is_empty());
        assert_eq!(w[1].lora_adapters, vec!["sql", "chat"]);
        assert_eq!(w[1].endpoint, "[fd00::7]:8000");
        assert_eq!(w[1].instance_id, 96838965035402);
        assert_eq!(
            (w[1].model.as_str(), w[1].role),
            ("other", WorkerRole::Prefill)
        );
    }

    #[test]
    fn terminating_and_unnamed_models_are_left_out() {
        let mut p = pod("a", "10.0.0.1", "True", json!({}));
        let (w, skipped) = workers([&p], &pool(), &PodDefaults::default());
        assert!(w.is_empty());
        assert!(skipped[0].reason.contains(MODEL), "{skipped:?}");
        p.metadata.annotations = Some(BTreeMap::from([(MODEL.into(), "m".into())]));
        assert_eq!(workers([&p], &pool(), &PodDefaults::default()).0.len(), 1);
        p.metadata.deletion_timestamp =
            serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap();
        assert!(!routable(&p));
        let bad = pod("b", "10.0.0.2", "True", json!({MODEL: "m", ROLE: "both"}));
        assert!(workers([&bad], &pool(), &PodDefaults::default()).1[0]
            .reason
            .contains("both"));
    }

    #[test]
    fn several_ports_are_several_workers() {
        let mut p = pool();
        p.ports = vec![8000, 8001];
        let pods = [pod(
            "w-0",
            "10.0.0.1",
            "True",
            json!({MODEL: "m", INSTANCE_ID: "42"}),
        )];
        let (w, _) = workers(&pods, &p, &PodDefaults::default());
        assert_eq!(
            w.iter().map(|w| w.endpoint.as_str()).collect::<Vec<_>>(),
            ["10.0.0.1:8000", "10.0.0.1:8001"]
        );
        assert_eq!(w[0].instance_id, 42);
        assert_eq!(w[1].instance_id, instance_id_of_name("w-0:8001"));
    }
}
