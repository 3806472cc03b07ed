#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;

#[test]
fn defaults_are_dynamos() {
    let c = Config::default();
    assert_eq!(c.router.overlap_score_credit, 1.0);
    assert_eq!(c.router.prefill_load_scale, 1.0);
    assert_eq!(c.router.temperature, 0.0);
    assert!(
        c.router.use_kv_events && c.router.track_active_blocks && c.router.track_prefill_tokens
    );
    assert!(
        !c.router.track_output_blocks
            && !c.router.replica_sync
            && c.router.enforce_disagg == EnforceDisagg::Off
    );
    assert_eq!(c.router.approx_ttl_ms, 120_000);
    assert_eq!(c.router.active_decode_blocks_threshold, None);
    assert_eq!(c.gateway.fail_policy, FailPolicy::FailOpen);
    assert_eq!(c.gateway.sidecar_cluster.as_deref(), Some("kvgate_sidecar"));
}

#[test]
fn unknown_json_key_is_named() {
    let e = Config::from_json(br#"{"router_temprature": 0.5}"#).unwrap_err();
    assert_eq!(e, ConfigError::UnknownKey("router_temprature".into()));
}

#[test]
fn out_of_range_values_name_the_key() {
    for (json, key) in [
        (r#"{"router_temperature": -1}"#, "router_temperature"),
        (
            r#"{"active_decode_blocks_threshold": 1.5}"#,
            "active_decode_blocks_threshold",
        ),
        (r#"{"block_size": 0}"#, "block_size"),
        (
            r#"{"router_prune_target_ratio": 1.5}"#,
            "router_prune_target_ratio",
        ),
        (r#"{"fail_policy": "maybe"}"#, "fail_policy"),
        (r#"{"overload_status": 200}"#, "overload_status"),
        (
            r#"{"router_track_active_blocks": false, "router_track_output_blocks": true}"#,
            "router_track_output_blocks",
        ),
        (r#"{"block_size": "sixteen"}"#, "block_size"),
        (
            r#"{"workers": [{"instance_id": 1, "endpoint": "localhost:80", "model": "m"}]}"#,
            "workers",
        ),
        // Reproduced with the `config` fuzz target (tests/fuzz): the ranks overflowed u32.
        (
            r#"{"workers": [{"instance_id": 1, "endpoint": "127.0.0.1:80", "model": "m", "dp_size": 2, "dp_start_rank": 4294967295}]}"#,
            "workers",
        ),
    ] {
        match Config::from_json(json.as_bytes()) {
            Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{json}"),
            other => panic!("{json}: {other:?}"),
        }
    }
}

#[test]
fn env_names_and_aliases() {
    let c = ConfigSources::new()
        .env(
            [
                ("DYN_ROUTER_TEMPERATURE", "0.5"),
                ("DYN_USE_KV_EVENTS", "false"),
                ("DYN_KV_CACHE_BLOCK_SIZE", "64"),
                ("DYN_OVERLAP_SCORE_WEIGHT", "0"),
                ("PATH", "/bin"),
            ],
            false,
        )
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(c.router.temperature, 0.5);
    assert!(!c.router.use_kv_events);
    assert_eq!(c.router.block_size, 64);
    assert_eq!(c.router.prefill_load_scale, 0.0);
    assert_eq!(c.router.overlap_score_credit, 0.0);
    // Canonical name beats the alias whatever the order.
    let c = ConfigSources::new()
        .env(
            [
                ("DYN_USE_KV_EVENTS", "false"),
                ("DYN_ROUTER_USE_KV_EVENTS", "true"),
            ],
            true,
        )
        .unwrap()
        .build()
        .unwrap();
    assert!(c.router.use_kv_events);
}

#[test]
fn env_errors() {
    assert_eq!(
        ConfigSources::new()
            .env([("PATH", "/bin")], true)
            .unwrap_err(),
        ConfigError::UnknownKey("PATH".into())
    );
    assert_eq!(
        ConfigSources::new()
            .env([("KVGATE_NOPE", "1")], false)
            .unwrap_err(),
        ConfigError::UnknownKey("KVGATE_NOPE".into())
    );
    match ConfigSources::new().env([("DYN_ROUTER_TRACK_ACTIVE_BLOCKS", "maybe")], true) {
        Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, "DYN_ROUTER_TRACK_ACTIVE_BLOCKS"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn token_capacity_sets_dynamo_defaults_and_json_overrides_env() {
    let c = ConfigSources::new()
        .env(
            [
                ("DYN_ADMISSION_CONTROL", "token-capacity"),
                ("DYN_ROUTER_TEMPERATURE", "0.9"),
            ],
            true,
        )
        .unwrap()
        .json(br#"{"router_temperature": 0.1}"#)
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(c.router.active_decode_blocks_threshold, Some(1.0));
    assert_eq!(c.router.active_prefill_tokens_threshold, Some(10_000_000));
    assert_eq!(c.router.active_prefill_tokens_threshold_frac, Some(10.0));
    assert_eq!(c.router.temperature, 0.1);
}

#[test]
fn every_key_has_a_raw_field_and_env_names_are_unique() {
    let mut seen = std::collections::BTreeSet::new();
    for k in keys::KEYS {
        for e in k.env {
            assert!(seen.insert(*e), "duplicate env name {e}");
        }
        // A value of the right kind for every key must be accepted by RawConfig.
        let v = match k.kind {
            keys::Kind::Bool => "true".to_string(),
            keys::Kind::UInt => "1".to_string(),
            keys::Kind::Float => "0.5".to_string(),
            keys::Kind::Str => "\"x\"".to_string(),
            keys::Kind::Json => "[]".to_string(),
        };
        let json = format!("{{\"{}\": {}}}", k.json, v);
        let parsed = serde_json::from_str::<RawConfig>(&json);
        assert!(
            parsed.is_ok(),
            "key {} not in RawConfig: {:?}",
            k.json,
            parsed.err()
        );
    }
}

/// The README's configuration table is generated from the key table; it must be current.
#[test]
fn readme_table_is_current() {
    let readme = include_str!("../../../../README.md");
    let table = keys::markdown_table();
    if !readme.contains(&table) {
        let path = std::env::temp_dir().join("kvgate-config-table.md");
        let _ = std::fs::write(&path, &table);
        panic!(
            "README.md's configuration table is out of date; the current one is in {}",
            path.display()
        );
    }
}

#[test]
fn enforce_disagg_is_for_every_model_or_the_models_named() {
    let c = Config::from_json(br#"{"enforce_disagg": true}"#).unwrap();
    assert!(c.router.enforce_disagg.applies("any/model"));
    let c = Config::from_json(br#"{"enforce_disagg": ["Qwen/Qwen3-0.6B"]}"#).unwrap();
    assert!(c.router.enforce_disagg.applies("Qwen/Qwen3-0.6B"));
    assert!(!c.router.enforce_disagg.applies("meta-llama/Llama-3.2-1B"));
    let c = Config::from_json(br#"{"enforce_disagg": false}"#).unwrap();
    assert!(!c.router.enforce_disagg.applies("Qwen/Qwen3-0.6B"));
    for bad in [r#"{"enforce_disagg": [""]}"#, r#"{"enforce_disagg": 3}"#] {
        let e = Config::from_json(bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("enforce_disagg"), "{bad}: {e}");
    }
}
