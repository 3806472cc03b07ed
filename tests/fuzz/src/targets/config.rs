//! Fuzz target `config`: configuration parsing on arbitrary input.
//!
//! The input is `json \0 strict-env \0 lenient-env`: the first part is a plugin
//! configuration for `Config::from_json`; the other two are `NAME=value` lines (one per line)
//! for `ConfigSources::env` in strict mode (a dedicated configuration map) and lenient mode (a
//! process environment), merged over the JSON as the sidecar does. Nothing may panic, and
//! a configuration that is accepted is used the way the router uses it: each static
//! worker's (worker, dp rank) keys are listed.

use kvgate_core::config::{Config, ConfigSources};

fn env_pairs(block: &[u8]) -> Vec<(&str, &str)> {
    let Ok(text) = std::str::from_utf8(block) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| line.split_once('=').unwrap_or((line, "")))
        .collect()
}

fn use_config(config: &Config) {
    for w in &config.gateway.workers {
        let keys: Vec<_> = w.keys().collect();
        assert!(
            !keys.is_empty() && keys.len() <= 1024,
            "dp ranks of a worker"
        );
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut parts = data.splitn(3, |&b| b == 0);
    let json = parts.next().unwrap_or_default();
    let strict = env_pairs(parts.next().unwrap_or_default());
    let lenient = env_pairs(parts.next().unwrap_or_default());

    if let Ok(config) = Config::from_json(json) {
        use_config(&config);
    }
    let merged = ConfigSources::new()
        .json(json)
        .and_then(|s| s.env(strict.iter().copied(), true))
        .and_then(|s| s.env(lenient.iter().copied(), false))
        .and_then(ConfigSources::build);
    if let Ok(config) = merged {
        use_config(&config);
    }
    if let Ok(config) = ConfigSources::new()
        .env(lenient.iter().copied(), false)
        .and_then(ConfigSources::build)
    {
        use_config(&config);
    }
}
