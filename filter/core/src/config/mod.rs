//! Configuration: one validated [`Config`] for the routing core and the gateway filter,
//! read from the JSON plugin configuration and/or an environment-style map of Dynamo's
//! `DYN_*` names. Unknown keys and out-of-range values are rejected with a message that
//! names the key. [`keys::KEYS`] is the single table of every key.

pub mod keys;
mod validate;

use crate::workers::WorkerInfo;
use serde::Deserialize;
use serde_json::{Map, Value};

pub use validate::{
    AdmissionControl, Config, EnforceDisagg, FailPolicy, GatewayConfig, RouterConfig, Secret,
    TemplateCompat, UnknownModel,
};

/// `enforce_disagg` as written: every model (`true`), none (`false`), or these models.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum EnforceDisaggRaw {
    /// Every model or none.
    All(bool),
    /// Only the models named.
    Models(Vec<String>),
}

/// Why a configuration was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The configuration is not a JSON object.
    #[error("configuration is not a JSON object: {0}")]
    NotJson(String),
    /// A key that kvgate does not know.
    #[error("unknown configuration key `{0}`")]
    UnknownKey(String),
    /// A value of the wrong type or out of range.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// The key (JSON name, or the environment variable it came from).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl ConfigError {
    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Every key as optional, exactly as written in JSON (after environment translation).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawConfig {
    pub block_size: Option<u32>,
    pub overlap_score_credit: Option<f64>,
    pub overlap_score_credit_decay: Option<f64>,
    pub prefill_load_scale: Option<f64>,
    pub overlap_score_weight: Option<f64>,
    pub decode_active_request_weight: Option<f64>,
    pub router_temperature: Option<f64>,
    pub use_kv_events: Option<bool>,
    pub router_replica_sync: Option<bool>,
    pub router_track_active_blocks: Option<bool>,
    pub router_track_output_blocks: Option<bool>,
    pub router_track_prefill_tokens: Option<bool>,
    pub router_prefill_decay: Option<bool>,
    pub router_ttl_secs: Option<f64>,
    pub router_max_tree_size: Option<u64>,
    pub router_prune_target_ratio: Option<f64>,
    pub router_predicted_ttl_secs: Option<f64>,
    pub active_request_ttl_secs: Option<f64>,
    pub admission_control: Option<String>,
    pub active_decode_blocks_threshold: Option<f64>,
    pub active_prefill_tokens_threshold: Option<u64>,
    pub active_prefill_tokens_threshold_frac: Option<f64>,
    pub busy_threshold: Option<f64>,
    pub enforce_disagg: Option<EnforceDisaggRaw>,
    pub overload_status: Option<u16>,
    pub max_fallbacks: Option<u64>,
    pub prefill_quarantine_ms: Option<u64>,
    pub session_affinity_header: Option<String>,
    pub session_affinity_slack: Option<f64>,
    pub fail_policy: Option<String>,
    pub max_body_bytes: Option<u64>,
    pub max_messages: Option<u64>,
    pub max_json_depth: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub pause_watchdog_ms: Option<u64>,
    pub max_match_blocks: Option<u64>,
    pub inject_token_data: Option<bool>,
    pub max_tokenize_bytes: Option<u64>,
    pub model_wait_ms: Option<u64>,
    pub decision_header: Option<bool>,
    pub vllm_dp_rank_header: Option<bool>,
    pub unknown_model: Option<String>,
    pub sidecar_cluster: Option<String>,
    pub sidecar_authority: Option<String>,
    pub sidecar_token: Option<String>,
    pub sync_interval_ms: Option<u64>,
    pub sync_wait_ms: Option<u64>,
    pub stale_after_ms: Option<u64>,
    pub segment_cache_entries: Option<u64>,
    pub template_compat: Option<String>,
    pub workers: Option<Vec<WorkerInfo>>,
}

/// Where configuration values come from, merged in this order (later wins).
#[derive(Debug, Clone, Default)]
pub struct ConfigSources {
    object: Map<String, Value>,
}

impl ConfigSources {
    /// No values: every key at its default.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the keys of a JSON object (the plugin configuration). An empty input is an
    /// empty object. Keys must be JSON names from the table.
    pub fn json(mut self, bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(self);
        }
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::NotJson(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(ConfigError::NotJson("expected an object".into()));
        };
        for (k, v) in map {
            if keys::by_json(&k).is_none() {
                return Err(ConfigError::UnknownKey(k));
            }
            self.object.insert(k, v);
        }
        Ok(self)
    }

    /// Adds environment-style `NAME=value` pairs (Dynamo's `DYN_*` names and kvgate's
    /// `KVGATE_*`). With `strict`, any name not in the table is an error (a dedicated
    /// configuration map); otherwise only unknown `KVGATE_*` names are (a process
    /// environment, which holds unrelated variables). A canonical name beats its alias.
    pub fn env<'a>(
        mut self,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        strict: bool,
    ) -> Result<Self, ConfigError> {
        let mut from_alias: Vec<(&'static str, Value)> = Vec::new();
        for (name, raw) in pairs {
            let Some(key) = keys::by_env(name) else {
                if strict || name.starts_with("KVGATE_") {
                    return Err(ConfigError::UnknownKey(name.to_string()));
                }
                continue;
            };
            let value = parse_env_value(key, name, raw)?;
            if key.env.first() == Some(&name) {
                self.object.insert(key.json.to_string(), value);
            } else {
                from_alias.push((key.json, value));
            }
        }
        for (json, value) in from_alias {
            self.object.entry(json.to_string()).or_insert(value);
        }
        Ok(self)
    }

    /// Validates the merged values.
    pub fn build(self) -> Result<Config, ConfigError> {
        let raw: RawConfig = match serde_json::from_value(Value::Object(self.object.clone())) {
            Ok(raw) => raw,
            // serde's message does not name the field: find the key whose value alone fails.
            Err(e) => return Err(self.type_error(e)),
        };
        validate::validate(raw)
    }

    fn type_error(&self, whole: serde_json::Error) -> ConfigError {
        for (k, v) in &self.object {
            let mut one = Map::new();
            one.insert(k.clone(), v.clone());
            if let Err(e) = serde_json::from_value::<RawConfig>(Value::Object(one)) {
                return ConfigError::invalid(k, e.to_string());
            }
        }
        ConfigError::invalid("configuration", whole.to_string())
    }
}

fn parse_env_value(key: &keys::Key, name: &str, raw: &str) -> Result<Value, ConfigError> {
    let raw = raw.trim();
    let bad = |what: &str| ConfigError::invalid(name, format!("`{raw}` is not {what}"));
    Ok(match key.kind {
        keys::Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Value::Bool(true),
            "0" | "false" | "no" | "off" => Value::Bool(false),
            _ => return Err(bad("a boolean")),
        },
        keys::Kind::UInt => Value::from(
            raw.parse::<u64>()
                .map_err(|_| bad("a non-negative integer"))?,
        ),
        keys::Kind::Float => {
            let f = raw.parse::<f64>().map_err(|_| bad("a number"))?;
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| bad("a finite number"))?
        }
        keys::Kind::Str => Value::String(raw.to_string()),
        keys::Kind::Json => serde_json::from_str(raw).map_err(|_| bad("JSON"))?,
    })
}

impl Config {
    /// Parses a JSON plugin configuration alone.
    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        ConfigSources::new().json(bytes)?.build()
    }
}

#[cfg(test)]
mod tests;
