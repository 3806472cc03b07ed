//! Tokenizer files served to the filter (`GET /v1/models/files`): each `--model NAME=DIR`
//! is read once at start (tokenizer.json and tokenizer_config.json), checked to be JSON,
//! and given a content digest (`ModelEntry.files_digest`) the filter caches by.

use crate::settings::ModelSpec;
use kvgate_core::sync::{ModelEntry, ModelFiles};
use std::collections::BTreeMap;
use std::path::Path;
use xxhash_rust::xxh3::xxh3_128;

/// Why a model directory was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("--model {name}: cannot read {path}: {source}")]
    Read {
        /// The model.
        name: String,
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// A file is not a JSON object.
    #[error("--model {name}: {path} is not a JSON object: {detail}")]
    NotJson {
        /// The model.
        name: String,
        /// The file.
        path: String,
        /// The parser's message.
        detail: String,
    },
}

/// Content digest of a model's two files: xxh3-128 over both, length-prefixed, in hex.
pub fn files_digest(tokenizer_json: &[u8], tokenizer_config_json: &[u8]) -> String {
    let mut buf = Vec::with_capacity(tokenizer_json.len() + tokenizer_config_json.len() + 16);
    for part in [tokenizer_json, tokenizer_config_json] {
        buf.extend_from_slice(&(part.len() as u64).to_le_bytes());
        buf.extend_from_slice(part);
    }
    format!("{:032x}", xxh3_128(&buf))
}

/// Reads one file of a model and checks it is a JSON object.
fn read_json(name: &str, path: &Path) -> Result<Vec<u8>, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Read {
        name: name.to_string(),
        path: path.display().to_string(),
        source,
    })?;
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(_)) => Ok(bytes),
        Ok(_) => Err(ModelError::NotJson {
            name: name.to_string(),
            path: path.display().to_string(),
            detail: "not an object".into(),
        }),
        Err(e) => Err(ModelError::NotJson {
            name: name.to_string(),
            path: path.display().to_string(),
            detail: e.to_string(),
        }),
    }
}

/// Reads a model directory.
pub fn read_model(name: &str, dir: &Path, block_size: u32) -> Result<ModelFiles, ModelError> {
    Ok(ModelFiles {
        name: name.to_string(),
        block_size,
        tokenizer_json: packed(read_json(name, &dir.join("tokenizer.json"))?),
        tokenizer_config_json: read_json(name, &dir.join("tokenizer_config.json"))?,
    })
}

/// The static VM configuration (the filter's `vm_config.configuration` without a sidecar)
/// for these models, `NAME=DIR` each: `{"models": [...]}`, each tokenizer packed when it is a
/// BPE model (`kvgate-sync vm-config`).
#[cfg(feature = "explain")]
pub fn vm_config_json(models: &[String], block_size: u32) -> Result<String, String> {
    let mut out = Vec::with_capacity(models.len());
    for m in models {
        let (name, dir) = m
            .split_once('=')
            .ok_or_else(|| format!("--model {m}: expected NAME=DIR"))?;
        let dir = Path::new(dir);
        let tokenizer = read_json(name, &dir.join("tokenizer.json")).map_err(|e| e.to_string())?;
        let config =
            read_json(name, &dir.join("tokenizer_config.json")).map_err(|e| e.to_string())?;
        out.push(kvgate_engine::vm::vm_config_model(
            name,
            block_size,
            &tokenizer,
            &String::from_utf8_lossy(&config),
        ));
    }
    Ok(serde_json::json!({ "models": out }).to_string())
}

/// What the VMs load a `tokenizer.json` from: its packed form (a BPE model's tables without
/// a JSON tree: a third of the bytes, and less than half the VM's peak memory while loading),
/// else its canonical form (what `tokenizers` 1.0 reads without first converting it through a
/// JSON tree), else the file as read (the filter converts it on load then); as read without
/// the tokenizer built in.
fn packed(tokenizer_json: Vec<u8>) -> Vec<u8> {
    #[cfg(feature = "explain")]
    if let Ok(p) = kvgate_prompt::pack_tokenizer(&tokenizer_json) {
        return p;
    }
    #[cfg(feature = "explain")]
    if let Ok(c) = kvgate_prompt::canonical_json(&tokenizer_json) {
        return c.into_bytes();
    }
    tokenizer_json
}

/// The models the sidecar serves, by name.
#[derive(Debug, Clone, Default)]
pub struct ModelStore {
    models: BTreeMap<String, (String, ModelFiles)>,
}

impl ModelStore {
    /// Reads every model; `default_block_size` applies where the flag gives none.
    pub fn load(specs: &[ModelSpec], default_block_size: u32) -> Result<ModelStore, ModelError> {
        let mut models = BTreeMap::new();
        for s in specs {
            let files = read_model(&s.name, &s.dir, s.block_size.unwrap_or(default_block_size))?;
            let digest = files_digest(&files.tokenizer_json, &files.tokenizer_config_json);
            tracing::info!(model = %s.name, %digest, block_size = files.block_size, "model files loaded");
            models.insert(s.name.clone(), (digest, files));
        }
        Ok(ModelStore { models })
    }

    /// The model list for sync frames.
    pub fn entries(&self) -> Vec<ModelEntry> {
        self.models
            .iter()
            .map(|(name, (digest, f))| ModelEntry {
                name: name.clone(),
                block_size: f.block_size,
                files_digest: digest.clone(),
            })
            .collect()
    }

    /// The files of `name`, if its digest is `digest` (or no digest is asked for).
    pub fn get(&self, name: &str, digest: Option<&str>) -> Option<&ModelFiles> {
        let (d, files) = self.models.get(name)?;
        match digest {
            Some(want) if !want.is_empty() && want != d => None,
            _ => Some(files),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn digest_depends_on_both_files_and_their_boundary() {
        let a = files_digest(b"{}", b"{\"x\":1}");
        assert_ne!(a, files_digest(b"{}", b"{\"x\":2}"));
        assert_ne!(files_digest(b"ab", b"c"), files_digest(b"a", b"bc"));
        assert_eq!(a.len(), 32);
    }

    #[cfg(feature = "explain")]
    #[test]
    fn the_tokenizer_is_served_packed_and_loads_to_the_same_ids() {
        let dir = std::env::var_os("KVGATE_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models/Qwen3-0.6B")
            });
        let original = std::fs::read(dir.join("tokenizer.json")).unwrap();
        assert!(
            !String::from_utf8_lossy(original.get(..64).unwrap_or_default()).contains("\"2.0\""),
            "the fixture is the non-canonical file"
        );
        let files = read_model("m", &dir, 16).unwrap();
        assert!(kvgate_prompt::is_packed(&files.tokenizer_json));
        assert!(files.tokenizer_json.len() * 2 < original.len());
        let load = |json: &[u8]| {
            kvgate_prompt::PromptTokenizer::from_bytes(json, kvgate_prompt::CacheConfig::default())
                .unwrap()
                .encode_full("Hello, wörld! 123 你好", false)
                .unwrap()
        };
        assert_eq!(load(&files.tokenizer_json), load(&original));
    }

    #[cfg(feature = "explain")]
    #[test]
    fn vm_config_carries_the_packed_tokenizer_the_filter_reads() {
        let dir = std::env::var_os("KVGATE_MODEL_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/models/Qwen3-0.6B")
            });
        let json = vm_config_json(&[format!("m={}", dir.display())], 16).unwrap();
        let listing = kvgate_engine::VmConfig::parse(json.as_bytes()).unwrap();
        assert_eq!(listing.models, vec![("m".to_string(), 16)]);
        let files = listing.model_files("m").unwrap().unwrap();
        assert!(kvgate_prompt::is_packed(&files.tokenizer_json));
        assert!(json.len() * 2 < std::fs::read(dir.join("tokenizer.json")).unwrap().len());
        assert!(vm_config_json(&["no-equals".into()], 16).is_err());
    }

    #[test]
    fn store_serves_by_name_and_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), "{}").unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            "{\"chat_template\": \"x\"}",
        )
        .unwrap();
        let spec = ModelSpec {
            name: "m".into(),
            dir: dir.path().to_path_buf(),
            block_size: None,
        };
        let store = ModelStore::load(&[spec], 16).unwrap();
        let e = store.entries();
        assert_eq!(e.first().map(|m| m.block_size), Some(16));
        let d = e.first().map(|m| m.files_digest.clone()).unwrap();
        assert!(store.get("m", Some(&d)).is_some());
        assert!(store.get("m", Some("nope")).is_none());
        std::fs::write(dir.path().join("tokenizer.json"), "[]").unwrap();
        let spec = ModelSpec {
            name: "m".into(),
            dir: dir.path().to_path_buf(),
            block_size: None,
        };
        assert!(ModelStore::load(&[spec], 16)
            .unwrap_err()
            .to_string()
            .contains("--model m"));
    }
}
