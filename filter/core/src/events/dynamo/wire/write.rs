//! The writing half of the wire helpers: MessagePack in its shortest encoding (as
//! `rmp-serde` and Python's `msgpack` write it), and JSON ⇄ MessagePack transcoding.

use super::{wrong, Head, Reader, WireError};

/// Writes MessagePack with the shortest encoding of every value.
#[derive(Debug, Default, Clone)]
pub(crate) struct Writer {
    pub(crate) out: Vec<u8>,
}

fn len_u32(n: usize) -> u32 {
    // Values of 4 GiB and more cannot be encoded; the length saturates.
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Writer {
    /// An empty writer.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Nil.
    pub(crate) fn nil(&mut self) -> &mut Self {
        self.out.push(0xc0);
        self
    }

    /// A boolean.
    pub(crate) fn bool(&mut self, v: bool) -> &mut Self {
        self.out.push(if v { 0xc3 } else { 0xc2 });
        self
    }

    /// An unsigned integer.
    pub(crate) fn uint(&mut self, v: u64) -> &mut Self {
        if v < 0x80 {
            self.out.push(v as u8);
        } else if let Ok(b) = u8::try_from(v) {
            self.out.extend_from_slice(&[0xcc, b]);
        } else if let Ok(s) = u16::try_from(v) {
            self.out.push(0xcd);
            self.out.extend_from_slice(&s.to_be_bytes());
        } else if let Ok(w) = u32::try_from(v) {
            self.out.push(0xce);
            self.out.extend_from_slice(&w.to_be_bytes());
        } else {
            self.out.push(0xcf);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
        self
    }

    /// A signed integer (non-negative values use the unsigned forms).
    pub(crate) fn int(&mut self, v: i64) -> &mut Self {
        if let Ok(u) = u64::try_from(v) {
            return self.uint(u);
        }
        if v >= -32 {
            self.out.push(v as u8);
        } else if let Ok(b) = i8::try_from(v) {
            self.out.push(0xd0);
            self.out.extend_from_slice(&b.to_be_bytes());
        } else if let Ok(s) = i16::try_from(v) {
            self.out.push(0xd1);
            self.out.extend_from_slice(&s.to_be_bytes());
        } else if let Ok(w) = i32::try_from(v) {
            self.out.push(0xd2);
            self.out.extend_from_slice(&w.to_be_bytes());
        } else {
            self.out.push(0xd3);
            self.out.extend_from_slice(&v.to_be_bytes());
        }
        self
    }

    /// A 64-bit float.
    pub(crate) fn f64(&mut self, v: f64) -> &mut Self {
        self.out.push(0xcb);
        self.out.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn sized(&mut self, n: usize, fix: Option<u8>, m8: Option<u8>, m16: u8, m32: u8) {
        match (fix, m8) {
            (Some(f), _) => self.out.push(f),
            (None, Some(m)) if n < 0x100 => self.out.extend_from_slice(&[m, n as u8]),
            _ => {
                if let Ok(s) = u16::try_from(n) {
                    self.out.push(m16);
                    self.out.extend_from_slice(&s.to_be_bytes());
                } else {
                    self.out.push(m32);
                    self.out.extend_from_slice(&len_u32(n).to_be_bytes());
                }
            }
        }
    }

    /// A string.
    pub(crate) fn str(&mut self, s: &str) -> &mut Self {
        let n = s.len();
        let fix = (n < 32).then_some(0xa0 | n as u8);
        self.sized(n, fix, Some(0xd9), 0xda, 0xdb);
        self.out.extend_from_slice(s.as_bytes());
        self
    }

    /// A binary.
    pub(crate) fn bin(&mut self, b: &[u8]) -> &mut Self {
        self.sized(b.len(), None, Some(0xc4), 0xc5, 0xc6);
        self.out.extend_from_slice(b);
        self
    }

    /// The header of an array of `n` elements.
    pub(crate) fn array(&mut self, n: usize) -> &mut Self {
        let fix = (n < 16).then_some(0x90 | n as u8);
        self.sized(n, fix, None, 0xdc, 0xdd);
        self
    }

    /// The header of a map of `n` entries.
    pub(crate) fn map(&mut self, n: usize) -> &mut Self {
        let fix = (n < 16).then_some(0x80 | n as u8);
        self.sized(n, fix, None, 0xde, 0xdf);
        self
    }

    /// An array of unsigned integers.
    pub(crate) fn u64_list(&mut self, values: &[u64]) -> &mut Self {
        self.array(values.len());
        for &v in values {
            self.uint(v);
        }
        self
    }

    /// The bytes written.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}

/// Whether `bytes` look like a JSON document (first non-blank byte `{` or `[`).
///
/// No MessagePack message this crate accepts starts with those bytes: `{` and `[`
/// are positive fixints in MessagePack, a whole message that is one small integer.
pub(crate) fn looks_like_json(bytes: &[u8]) -> bool {
    matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

/// Transcodes a JSON document to MessagePack so the MessagePack readers can decode it.
pub(crate) fn json_to_msgpack(bytes: &[u8]) -> Result<Vec<u8>, WireError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| wrong(format_args!("invalid JSON: {e}")))?;
    let mut w = Writer::new();
    write_json(&mut w, &value);
    Ok(w.into_bytes())
}

// Recursion is bounded by serde_json's own nesting limit (128).
fn write_json(w: &mut Writer, value: &serde_json::Value) {
    use serde_json::Value as J;
    match value {
        J::Null => {
            w.nil();
        }
        J::Bool(b) => {
            w.bool(*b);
        }
        J::Number(n) => {
            if let Some(u) = n.as_u64() {
                w.uint(u);
            } else if let Some(i) = n.as_i64() {
                w.int(i);
            } else {
                w.f64(n.as_f64().unwrap_or(f64::NAN));
            }
        }
        J::String(s) => {
            w.str(s);
        }
        J::Array(items) => {
            w.array(items.len());
            for item in items {
                write_json(w, item);
            }
        }
        J::Object(map) => {
            w.map(map.len());
            for (k, v) in map {
                w.str(k);
                write_json(w, v);
            }
        }
    }
}

/// Reads MessagePack back into JSON (for the JSON encoders: built once as
/// MessagePack, written out in the same field order).
pub(crate) fn msgpack_to_json(r: &mut Reader<'_>) -> Result<serde_json::Value, WireError> {
    use serde_json::Value as J;
    // The encoders nest at most a handful of levels; recursion is bounded by them.
    Ok(match r.head()? {
        Head::Nil => J::Null,
        Head::Bool(b) => J::Bool(b),
        Head::UInt(v) => J::from(v),
        Head::NegInt(v) => J::from(v),
        Head::Float(v) => J::from(v),
        Head::Str(n) => {
            let bytes = r.take(n)?;
            J::String(String::from_utf8_lossy(bytes).into_owned())
        }
        Head::Bin(n) => J::from(r.take(n)?.to_vec()),
        Head::Ext(n) => {
            r.take(n)?;
            J::Null
        }
        Head::Array(n) => {
            let mut items = Vec::with_capacity(r.cap(n));
            for _ in 0..n {
                items.push(msgpack_to_json(r)?);
            }
            J::Array(items)
        }
        Head::Map(n) => {
            let mut map = serde_json::Map::new();
            for _ in 0..n {
                let k = r.str()?.to_owned();
                map.insert(k, msgpack_to_json(r)?);
            }
            J::Object(map)
        }
    })
}
