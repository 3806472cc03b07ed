//! The one parsing pass over a request body: the fields the prompt and the router use become JSON values, `tools` stays raw text, everything else is skipped.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::RequestError;

/// The top-level fields this crate reads (besides `tools`).
const FIELDS: [&str; 16] = [
    "model",
    "stream",
    "stream_options",
    "max_completion_tokens",
    "max_tokens",
    "nvext",
    "add_special_tokens",
    "prompt",
    "prompt_embeds",
    "messages",
    "chat_template",
    "documents",
    "chat_template_kwargs",
    "add_generation_prompt",
    "continue_final_message",
    "tools",
];

/// A body's top level: the fields read (a later duplicate key wins, as with a JSON object),
/// and `tools` as the raw text of its items.
pub(super) struct TopLevel<'a> {
    pub fields: Map<String, Value>,
    pub tools: RawTools<'a>,
}

/// The `tools` field, its items not parsed.
#[derive(Debug, Default)]
pub(super) enum RawTools<'a> {
    /// Absent or null.
    #[default]
    Absent,
    /// An array: its items' JSON texts.
    Items(Vec<&'a RawValue>),
    /// Anything else.
    NotAnArray,
}

/// Parses the top level of `body`.
pub(super) fn parse(body: &[u8]) -> Result<TopLevel<'_>, RequestError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = de
        .deserialize_map(TopVisitor)
        .and_then(|top| de.end().map(|()| top));
    parsed.map_err(|e| {
        // Only the top level can refuse a type (every nested seed takes any value), so a
        // data error means "not an object"; it says so only for valid JSON, judged by a
        // skim (which cannot see bad UTF-8 in strings, but a syntax error inside an
        // object, bad UTF-8 included, never gets here as a data error).
        let not_an_object = e.classify() == serde_json::error::Category::Data
            && serde_json::from_slice::<IgnoredAny>(body).is_ok();
        if not_an_object {
            RequestError::NotAnObject
        } else {
            RequestError::InvalidJson {
                reason: e.to_string(),
            }
        }
    })
}

struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = TopLevel<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TopLevel<'de>, A::Error> {
        let mut top = TopLevel {
            fields: Map::new(),
            tools: RawTools::Absent,
        };
        while let Some(key) = access.next_key_seed(KeySeed)? {
            match key {
                Some("tools") => top.tools = access.next_value_seed(ToolsSeed)?,
                Some(name) => {
                    let value: Value = access.next_value()?;
                    top.fields.insert(name.to_owned(), value);
                }
                None => {
                    access.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

/// Reads a key as the matching name of [`FIELDS`], `None` for any other key (not copied).
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(FIELDS.iter().copied().find(|f| *f == key))
    }
}

/// Reads `tools`: the items of an array as raw texts, in one pass.
struct ToolsSeed;

impl<'de> DeserializeSeed<'de> for ToolsSeed {
    type Value = RawTools<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ToolsSeed {
    type Value = RawTools<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(RawTools::Absent)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<&'de RawValue>()? {
            items.push(item);
        }
        Ok(RawTools::Items(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(RawTools::NotAnArray)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(RawTools::NotAnArray)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(RawTools::NotAnArray)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(RawTools::NotAnArray)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(RawTools::NotAnArray)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(RawTools::NotAnArray)
    }
}
