//! Header maps and the proxy-wasm pair serialization
//! (`u32 count`, `count × (u32 key_len, u32 value_len)`, then each key and value NUL-terminated).

use std::fmt;

/// Why a serialized header map could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The buffer ends before the announced sizes or strings.
    #[error("serialized header map is truncated")]
    Truncated,
    /// A key or value is not followed by its NUL terminator.
    #[error("serialized header map lacks a NUL terminator")]
    MissingNul,
    /// Bytes are left over after the last pair.
    #[error("serialized header map has trailing bytes")]
    TrailingBytes,
}

/// Decoded pairs: raw names and values, in order.
pub type RawPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Serializes pairs in the proxy-wasm format.
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.as_ref().len() + v.as_ref().len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&len_u32(k.as_ref().len()).to_le_bytes());
        out.extend_from_slice(&len_u32(v.as_ref().len()).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decodes the proxy-wasm pair format strictly (like proxy-wasm-cpp-host's `PairsUtil::toPairs`).
/// An empty buffer decodes to no pairs.
pub fn decode_pairs(bytes: &[u8]) -> Result<RawPairs, CodecError> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let mut pos = 0usize;
    let count = read_u32(bytes, &mut pos)? as usize;
    // Each pair needs at least 8 bytes of sizes and 2 NULs: reject absurd counts before allocating.
    if count > bytes.len() / 10 + 1 {
        return Err(CodecError::Truncated);
    }
    let mut sizes = Vec::with_capacity(count);
    for _ in 0..count {
        let k = read_u32(bytes, &mut pos)? as usize;
        let v = read_u32(bytes, &mut pos)? as usize;
        sizes.push((k, v));
    }
    let mut pairs = Vec::with_capacity(count);
    for (k, v) in sizes {
        let key = read_str(bytes, &mut pos, k)?;
        let value = read_str(bytes, &mut pos, v)?;
        pairs.push((key, value));
    }
    if pos != bytes.len() {
        return Err(CodecError::TrailingBytes);
    }
    Ok(pairs)
}

fn read_u32(bytes: &[u8], pos: &mut usize) -> Result<u32, CodecError> {
    let end = pos.checked_add(4).ok_or(CodecError::Truncated)?;
    let raw: [u8; 4] = bytes
        .get(*pos..end)
        .and_then(|s| s.try_into().ok())
        .ok_or(CodecError::Truncated)?;
    *pos = end;
    Ok(u32::from_le_bytes(raw))
}

fn read_str(bytes: &[u8], pos: &mut usize, len: usize) -> Result<Vec<u8>, CodecError> {
    let end = pos.checked_add(len).ok_or(CodecError::Truncated)?;
    let s = bytes.get(*pos..end).ok_or(CodecError::Truncated)?.to_vec();
    match bytes.get(end) {
        Some(0) => {}
        Some(_) => return Err(CodecError::MissingNul),
        None => return Err(CodecError::Truncated),
    }
    *pos = end + 1;
    Ok(s)
}

/// Joins property path segments the way the SDK serializes them (NUL-separated).
pub fn property_path(segments: &[&str]) -> Vec<u8> {
    segments.join("\0").into_bytes()
}

/// An ordered HTTP header map with Envoy's semantics: names are lower-cased, repeated names are
/// allowed, pseudo-headers (`:name`) are kept before regular headers, values are raw bytes.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HeaderMap {
    entries: Vec<(String, Vec<u8>)>,
}

impl fmt::Debug for HeaderMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.entries
                    .iter()
                    .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v))),
            )
            .finish()
    }
}

fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

impl HeaderMap {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a map from string pairs (names are lower-cased).
    pub fn from_pairs<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Self {
        let mut map = Self::new();
        for (k, v) in pairs {
            map.add(k.as_ref().as_bytes(), v.as_ref().as_bytes());
        }
        map
    }

    /// Builds a map from raw pairs as decoded from the guest.
    pub fn from_raw(pairs: RawPairs) -> Self {
        let mut map = Self::new();
        for (k, v) in pairs {
            map.add(&k, &v);
        }
        map
    }

    /// Number of entries (a repeated name counts once per value), as Envoy's `HeaderMap::size`.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// First value of `name` (case-insensitive), lossily converted to UTF-8.
    pub fn get(&self, name: &str) -> Option<String> {
        self.get_bytes(name.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// First raw value of `name` (case-insensitive).
    pub fn get_bytes(&self, name: &[u8]) -> Option<&[u8]> {
        let name = lower(name);
        self.entries
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_slice())
    }

    /// All values of `name`, in order.
    pub fn get_all(&self, name: &str) -> Vec<String> {
        let name = name.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// Whether `name` is present.
    pub fn contains(&self, name: &str) -> bool {
        self.get_bytes(name.as_bytes()).is_some()
    }

    /// Iterates over `(name, raw value)` in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The entries as `(name, lossy UTF-8 value)` pairs.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.entries
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect()
    }

    /// Serializes the map in the proxy-wasm pair format.
    pub fn encode(&self) -> Vec<u8> {
        encode_pairs(&self.entries)
    }

    /// Appends a value (Envoy `addCopy`): pseudo-headers go after the last pseudo-header.
    pub fn add(&mut self, name: &[u8], value: &[u8]) {
        let name = lower(name);
        let entry = (name, value.to_vec());
        if entry.0.starts_with(':') {
            let at = self
                .entries
                .iter()
                .position(|(k, _)| !k.starts_with(':'))
                .unwrap_or(self.entries.len());
            self.entries.insert(at, entry);
        } else {
            self.entries.push(entry);
        }
    }

    /// Replaces all values of `name` by one value (Envoy `setCopy`).
    pub fn replace(&mut self, name: &[u8], value: &[u8]) {
        self.remove(name);
        self.add(name, value);
    }

    /// Removes all values of `name`.
    pub fn remove(&mut self, name: &[u8]) {
        let name = lower(name);
        self.entries.retain(|(k, _)| *k != name);
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )]

    use super::*;

    const MAP: &[(&str, &str)] = &[
        (":method", "GET"),
        (":path", "/bytes/1"),
        (":authority", "httpbin.org"),
        ("Powered-By", "proxy-wasm"),
    ];

    #[rustfmt::skip]
    const SERIALIZED: &[u8] = &[
        4, 0, 0, 0,
        7, 0, 0, 0, 3, 0, 0, 0,
        5, 0, 0, 0, 8, 0, 0, 0,
        10, 0, 0, 0, 11, 0, 0, 0,
        10, 0, 0, 0, 10, 0, 0, 0,
        b':', b'm', b'e', b't', b'h', b'o', b'd', 0, b'G', b'E', b'T', 0,
        b':', b'p', b'a', b't', b'h', 0, b'/', b'b', b'y', b't', b'e', b's', b'/', b'1', 0,
        b':', b'a', b'u', b't', b'h', b'o', b'r', b'i', b't', b'y', 0,
        b'h', b't', b't', b'p', b'b', b'i', b'n', b'.', b'o', b'r', b'g', 0,
        b'P', b'o', b'w', b'e', b'r', b'e', b'd', b'-', b'B', b'y', 0,
        b'p', b'r', b'o', b'x', b'y', b'-', b'w', b'a', b's', b'm', 0,
    ];

    #[test]
    fn encodes_like_the_sdk() {
        assert_eq!(encode_pairs(MAP), SERIALIZED);
        assert_eq!(encode_pairs::<&str, &str>(&[]), [0, 0, 0, 0]);
    }

    #[test]
    fn decodes_and_round_trips() {
        let pairs = decode_pairs(SERIALIZED).unwrap();
        assert_eq!(pairs.len(), 4);
        assert_eq!(pairs[3], (b"Powered-By".to_vec(), b"proxy-wasm".to_vec()));
        assert_eq!(encode_pairs(&pairs), SERIALIZED);
        assert!(decode_pairs(&[]).unwrap().is_empty());
        assert!(decode_pairs(&[0, 0, 0, 0]).unwrap().is_empty());
    }

    #[test]
    fn binary_values_round_trip() {
        let pairs = vec![(b"k".to_vec(), vec![0xff, 0x00, 0x80])];
        assert_eq!(decode_pairs(&encode_pairs(&pairs)).unwrap(), pairs);
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(decode_pairs(&[1, 0, 0]), Err(CodecError::Truncated));
        let mut bad = SERIALIZED.to_vec();
        bad.truncate(bad.len() - 1);
        assert_eq!(decode_pairs(&bad), Err(CodecError::Truncated));
        let mut bad = SERIALIZED.to_vec();
        bad[4 + 32 + 7] = b'x'; // NUL after ":method"
        assert_eq!(decode_pairs(&bad), Err(CodecError::MissingNul));
        let mut bad = SERIALIZED.to_vec();
        bad.push(0);
        assert_eq!(decode_pairs(&bad), Err(CodecError::TrailingBytes));
        // Huge count, tiny buffer: no giant allocation, just an error.
        assert_eq!(
            decode_pairs(&[0xff, 0xff, 0xff, 0xff, 0]),
            Err(CodecError::Truncated)
        );
        // Sizes that overflow.
        let mut bad = vec![1, 0, 0, 0];
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        bad.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_pairs(&bad), Err(CodecError::Truncated));
    }

    #[test]
    fn header_map_semantics() {
        let mut m = HeaderMap::from_pairs(&[("X-A", "1"), (":path", "/"), ("x-a", "2")]);
        assert_eq!(m.iter().next().unwrap().0, ":path");
        assert_eq!(m.get("x-a").as_deref(), Some("1"));
        assert_eq!(m.get_all("X-A"), vec!["1", "2"]);
        m.add(b":method", b"POST");
        assert_eq!(m.to_pairs()[1].0, ":method");
        m.replace(b"X-A", b"3");
        assert_eq!(m.get_all("x-a"), vec!["3"]);
        m.remove(b"x-A");
        assert!(!m.contains("x-a"));
        assert_eq!(m.len(), 2);
        let decoded = HeaderMap::from_raw(decode_pairs(&m.encode()).unwrap());
        assert_eq!(decoded, m);
    }

    #[test]
    fn property_paths_are_nul_joined() {
        assert_eq!(property_path(&["request", "id"]), b"request\0id");
        assert_eq!(property_path(&["plugin_root_id"]), b"plugin_root_id");
    }
}
