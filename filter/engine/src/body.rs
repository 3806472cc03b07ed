//! Request-body rewriting: removes the `nvext` fields a client could use to pick its own
//! worker, and injects the prompt's token ids as `nvext.token_data` so the worker's
//! frontend skips tokenization. Dynamo's `nvext` rejects unknown keys, so only known keys
//! are ever added.

use serde_json::{Map, Value};

/// `nvext` keys that select a worker; a client must not set them.
const NVEXT_ROUTING_KEYS: &[&str] = &[
    "backend_instance_id",
    "prefill_worker_id",
    "decode_worker_id",
    "dp_rank",
    "prefill_dp_rank",
];

/// What the rewrite did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// The body is unchanged.
    Unchanged,
    /// The new body.
    Changed(Vec<u8>),
}

/// Rewrites a parsed request body: strips client routing keys from `nvext`, and sets
/// `nvext.token_data` when `tokens` is given. Key order of everything else is kept.
pub fn rewrite(
    mut body: Map<String, Value>,
    tokens: Option<&[u32]>,
) -> Result<Rewrite, serde_json::Error> {
    let mut changed = false;
    if let Some(Value::Object(nvext)) = body.get_mut("nvext") {
        for k in NVEXT_ROUTING_KEYS {
            changed |= nvext.shift_remove(*k).is_some();
        }
    }
    if let Some(tokens) = tokens {
        let entry = body
            .entry("nvext")
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(nvext) = entry {
            nvext.insert(
                "token_data".into(),
                Value::Array(tokens.iter().map(|t| Value::from(*t)).collect()),
            );
        }
        changed = true;
    }
    if !changed {
        return Ok(Rewrite::Unchanged);
    }
    serde_json::to_vec(&Value::Object(body)).map(Rewrite::Changed)
}

/// The body without client routing keys in `nvext`, or None when it has none (or is not
/// a JSON object). Used for requests forwarded unrouted.
pub fn strip_routing_keys(body: &[u8]) -> Option<Vec<u8>> {
    // Cheap test first: most bodies name none of the keys.
    let names_one = NVEXT_ROUTING_KEYS
        .iter()
        .any(|k| body.windows(k.len()).any(|w| w == k.as_bytes()));
    if !names_one {
        return None;
    }
    let map = serde_json::from_slice::<Map<String, Value>>(body).ok()?;
    match rewrite(map, None).ok()? {
        Rewrite::Changed(b) => Some(b),
        Rewrite::Unchanged => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn obj(s: &str) -> Map<String, Value> {
        match serde_json::from_str(s).unwrap() {
            Value::Object(m) => m,
            _ => panic!(),
        }
    }

    #[test]
    fn injects_tokens_and_strips_client_routing() {
        let b = obj(
            r#"{"model":"m","messages":[],"nvext":{"backend_instance_id":7,"annotations":["a"]}}"#,
        );
        let Rewrite::Changed(out) = rewrite(b, Some(&[1, 2])).unwrap() else {
            panic!()
        };
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"model":"m","messages":[],"nvext":{"annotations":["a"],"token_data":[1,2]}}"#
        );
    }

    #[test]
    fn forwarded_bodies_lose_only_their_routing_keys() {
        let b = br#"{"model":"m","nvext":{"backend_instance_id":7,"prefill_worker_id":2,"annotations":["a"]},"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#;
        let out = strip_routing_keys(b).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"model":"m","nvext":{"annotations":["a"]},"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#
        );
        assert_eq!(strip_routing_keys(br#"{"model":"m"}"#), None);
        assert_eq!(
            strip_routing_keys(br#"{"model":"dp_rank"}"#),
            None,
            "a key name outside nvext is left alone"
        );
    }

    #[test]
    fn unchanged_without_tokens_or_routing_keys() {
        assert_eq!(
            rewrite(obj(r#"{"model":"m"}"#), None).unwrap(),
            Rewrite::Unchanged
        );
        let Rewrite::Changed(out) = rewrite(obj(r#"{"nvext":{"dp_rank":3}}"#), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(out, br#"{"nvext":{}}"#);
    }
}
