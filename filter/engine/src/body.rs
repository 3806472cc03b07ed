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

/// `body` (a JSON object with no top-level `nvext`, as parsed) with
/// `"nvext":{"token_data":[…]}` spliced in before its closing brace: the original bytes
/// are kept as they are, nothing is parsed or re-serialised. None when `body` does not
/// end in `}` or names `"nvext"` anywhere (e.g. `"nvext": null`): rewrite the parsed body.
pub fn splice_token_data(body: &[u8], tokens: &[u32]) -> Option<Vec<u8>> {
    if memchr::memmem::find(body, b"\"nvext\"").is_some() {
        return None;
    }
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let close = body.iter().rposition(|b| !is_ws(b))?;
    if body.get(close) != Some(&b'}') {
        return None;
    }
    let head = body.get(..close)?;
    let empty = head.iter().rev().find(|b| !is_ws(b)) == Some(&b'{');
    let mut out = Vec::with_capacity(body.len() + 32 + tokens.len() * 7);
    out.extend_from_slice(head);
    out.extend_from_slice(if empty { b"" } else { b"," });
    out.extend_from_slice(b"\"nvext\":{\"token_data\":[");
    let mut digits = itoa::Buffer::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(digits.format(*t).as_bytes());
    }
    out.extend_from_slice(b"]}");
    out.extend_from_slice(body.get(close..)?);
    Some(out)
}

/// The body without client routing keys in `nvext`, or None when it has none (or is not
/// a JSON object). Used for requests forwarded unrouted.
pub fn strip_routing_keys(body: &[u8]) -> Option<Vec<u8>> {
    // Cheap test first: most bodies name none of the keys.
    let names_one = NVEXT_ROUTING_KEYS
        .iter()
        .any(|k| memchr::memmem::find(body, k.as_bytes()).is_some());
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

    #[test]
    fn splicing_token_data_equals_rewriting_the_parsed_body() {
        for body in [
            r#"{"model":"m","messages":[{"role":"user","content":"hi }"}]}"#,
            "{ \"model\" : \"m\", \"stream\": true }\n\n",
            "{}",
            " {  } ",
        ] {
            let tokens = [1u32, 22, 4_000_000_000];
            let spliced = splice_token_data(body.as_bytes(), &tokens).unwrap();
            let map: Map<String, Value> = serde_json::from_str(body).unwrap();
            let Rewrite::Changed(rewritten) = rewrite(map, Some(&tokens)).unwrap() else {
                panic!("{body}")
            };
            let a: Value = serde_json::from_slice(&spliced).unwrap();
            let b: Value = serde_json::from_slice(&rewritten).unwrap();
            assert_eq!(a, b, "{body}");
            assert!(spliced.starts_with(body.trim_end().trim_end_matches('}').as_bytes()));
        }
        assert_eq!(splice_token_data(b"[1, 2]", &[1]), None);
        assert_eq!(splice_token_data(br#"{"nvext": null}"#, &[1]), None);
        assert_eq!(splice_token_data(b"", &[1]), None);
    }

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
