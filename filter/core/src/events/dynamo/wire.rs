//! A bounded, panic-free MessagePack reader and writer shared by every event decoder.
//!
//! The reader walks a byte slice without building a value tree, so decoding costs no
//! more memory than the decoded result, never recurses (skipping nested values is
//! iterative) and never pre-allocates from a length claimed on the wire. The writer
//! always picks the shortest encoding, exactly as `rmp-serde` and Python's `msgpack`
//! do, so what it writes is byte-identical to what Dynamo and vLLM write. JSON inputs
//! are transcoded to MessagePack first and then read by the same code.

use std::borrow::Cow;
use std::fmt;

use super::super::EventError;

mod write;
pub(crate) use write::{json_to_msgpack, looks_like_json, msgpack_to_json, Writer};

/// What was wrong with the bytes (without the format name, added by [`WireError::at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) String);

impl WireError {
    fn new(detail: impl fmt::Display) -> Self {
        Self(detail.to_string())
    }

    /// The error as an [`EventError::Malformed`] of `format`.
    pub(crate) fn at(self, format: &'static str) -> EventError {
        EventError::Malformed {
            format,
            detail: self.0,
        }
    }
}

/// A [`WireError`] for a value of the wrong shape.
pub(crate) fn wrong(what: impl fmt::Display) -> WireError {
    WireError::new(what)
}

/// Rejects inputs longer than `limit` bytes.
pub(crate) fn check_size(size: usize, limit: usize) -> Result<(), EventError> {
    if size > limit {
        return Err(EventError::TooLarge { size, limit });
    }
    Ok(())
}

/// The header of one MessagePack value (for strings, binaries, arrays, maps and
/// extensions: the length; the payload is not consumed yet).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Head {
    Nil,
    Bool(bool),
    UInt(u64),
    NegInt(i64),
    Float(f64),
    Str(usize),
    Bin(usize),
    Array(usize),
    Map(usize),
    Ext(usize),
}

impl Head {
    fn describe(self) -> &'static str {
        match self {
            Head::Nil => "nil",
            Head::Bool(_) => "a boolean",
            Head::UInt(_) | Head::NegInt(_) => "an integer",
            Head::Float(_) => "a float",
            Head::Str(_) => "a string",
            Head::Bin(_) => "a binary",
            Head::Array(_) => "an array",
            Head::Map(_) => "a map",
            Head::Ext(_) => "an extension",
        }
    }
}

/// A cursor over MessagePack bytes. Cheap to copy: a copy is a look-ahead.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// Bytes not consumed yet.
    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(wrong(format_args!("{} trailing bytes", self.rest.len())))
        }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let (head, tail) = self
            .rest
            .split_at_checked(n)
            .ok_or_else(|| wrong("truncated input"))?;
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        self.take(N)?
            .try_into()
            .map_err(|_| wrong("truncated input"))
    }

    fn len32(&mut self) -> Result<usize, WireError> {
        usize::try_from(u32::from_be_bytes(self.array()?)).map_err(|_| wrong("length overflow"))
    }

    /// Reads the header of the next value.
    pub(crate) fn head(&mut self) -> Result<Head, WireError> {
        let [marker] = self.array::<1>()?;
        Ok(match marker {
            0x00..=0x7f => Head::UInt(u64::from(marker)),
            0x80..=0x8f => Head::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Head::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Head::Str(usize::from(marker & 0x1f)),
            0xc0 => Head::Nil,
            0xc2 => Head::Bool(false),
            0xc3 => Head::Bool(true),
            0xc4 => Head::Bin(usize::from(u8::from_be_bytes(self.array()?))),
            0xc5 => Head::Bin(usize::from(u16::from_be_bytes(self.array()?))),
            0xc6 => Head::Bin(self.len32()?),
            0xc7 => {
                let len = usize::from(u8::from_be_bytes(self.array()?));
                self.take(1)?;
                Head::Ext(len)
            }
            0xc8 => {
                let len = usize::from(u16::from_be_bytes(self.array()?));
                self.take(1)?;
                Head::Ext(len)
            }
            0xc9 => {
                let len = self.len32()?;
                self.take(1)?;
                Head::Ext(len)
            }
            0xca => Head::Float(f64::from(f32::from_be_bytes(self.array()?))),
            0xcb => Head::Float(f64::from_be_bytes(self.array()?)),
            0xcc => Head::UInt(u64::from(u8::from_be_bytes(self.array()?))),
            0xcd => Head::UInt(u64::from(u16::from_be_bytes(self.array()?))),
            0xce => Head::UInt(u64::from(u32::from_be_bytes(self.array()?))),
            0xcf => Head::UInt(u64::from_be_bytes(self.array()?)),
            0xd0 => int(i64::from(i8::from_be_bytes(self.array()?))),
            0xd1 => int(i64::from(i16::from_be_bytes(self.array()?))),
            0xd2 => int(i64::from(i32::from_be_bytes(self.array()?))),
            0xd3 => int(i64::from_be_bytes(self.array()?)),
            0xd4..=0xd8 => {
                self.take(1)?;
                Head::Ext(1usize << (marker - 0xd4))
            }
            0xd9 => Head::Str(usize::from(u8::from_be_bytes(self.array()?))),
            0xda => Head::Str(usize::from(u16::from_be_bytes(self.array()?))),
            0xdb => Head::Str(self.len32()?),
            0xdc => Head::Array(usize::from(u16::from_be_bytes(self.array()?))),
            0xdd => Head::Array(self.len32()?),
            0xde => Head::Map(usize::from(u16::from_be_bytes(self.array()?))),
            0xdf => Head::Map(self.len32()?),
            0xe0..=0xff => Head::NegInt(i64::from(i8::from_be_bytes([marker]))),
            0xc1 => return Err(wrong("reserved marker 0xc1")),
        })
    }

    /// The header of the next value, without consuming it.
    pub(crate) fn peek(&self) -> Result<Head, WireError> {
        let mut look = *self;
        look.head()
    }

    /// Skips one complete value (iteratively: nesting costs no stack).
    pub(crate) fn skip(&mut self) -> Result<(), WireError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.head()? {
                Head::Str(n) | Head::Bin(n) | Head::Ext(n) => {
                    self.take(n)?;
                }
                Head::Array(n) => pending = pending.saturating_add(n as u64),
                Head::Map(n) => pending = pending.saturating_add((n as u64).saturating_mul(2)),
                Head::Nil | Head::Bool(_) | Head::UInt(_) | Head::NegInt(_) | Head::Float(_) => {}
            }
        }
        Ok(())
    }

    /// Consumes a nil and returns true, or returns false and consumes nothing.
    pub(crate) fn nil(&mut self) -> Result<bool, WireError> {
        if self.peek()? == Head::Nil {
            self.head()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// `None` for nil, else the value read by `read`.
    pub(crate) fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Result<T, WireError>,
    ) -> Result<Option<T>, WireError> {
        if self.nil()? {
            return Ok(None);
        }
        read(self).map(Some)
    }

    /// An unsigned integer (any width).
    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        match self.head()? {
            Head::UInt(v) => Ok(v),
            Head::NegInt(v) => Err(wrong(format_args!("expected an unsigned integer, got {v}"))),
            other => Err(wrong(format_args!(
                "expected an unsigned integer, got {}",
                other.describe()
            ))),
        }
    }

    /// An unsigned integer that fits in `u32`.
    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        let v = self.u64()?;
        u32::try_from(v).map_err(|_| wrong(format_args!("{v} does not fit in 32 bits")))
    }

    /// Any integer as `i64` (unsigned values above `i64::MAX` are an error).
    pub(crate) fn i64(&mut self) -> Result<i64, WireError> {
        match self.head()? {
            Head::UInt(v) => i64::try_from(v).map_err(|_| wrong("integer out of range")),
            Head::NegInt(v) => Ok(v),
            other => Err(wrong(format_args!(
                "expected an integer, got {}",
                other.describe()
            ))),
        }
    }

    /// A float (integers are accepted and converted).
    pub(crate) fn f64(&mut self) -> Result<f64, WireError> {
        match self.head()? {
            Head::Float(v) => Ok(v),
            Head::UInt(v) => Ok(v as f64),
            Head::NegInt(v) => Ok(v as f64),
            other => Err(wrong(format_args!(
                "expected a number, got {}",
                other.describe()
            ))),
        }
    }

    /// A boolean.
    pub(crate) fn bool(&mut self) -> Result<bool, WireError> {
        match self.head()? {
            Head::Bool(v) => Ok(v),
            other => Err(wrong(format_args!(
                "expected a boolean, got {}",
                other.describe()
            ))),
        }
    }

    /// A UTF-8 string, borrowed from the input.
    pub(crate) fn str(&mut self) -> Result<&'a str, WireError> {
        match self.head()? {
            Head::Str(n) => {
                std::str::from_utf8(self.take(n)?).map_err(|_| wrong("string is not UTF-8"))
            }
            other => Err(wrong(format_args!(
                "expected a string, got {}",
                other.describe()
            ))),
        }
    }

    /// A binary, borrowed from the input.
    pub(crate) fn bin(&mut self) -> Result<&'a [u8], WireError> {
        match self.head()? {
            Head::Bin(n) => self.take(n),
            other => Err(wrong(format_args!(
                "expected a binary, got {}",
                other.describe()
            ))),
        }
    }

    /// Bytes given as a binary or as an array of small integers (how serde writes a
    /// `Vec<u8>` that was not marked as bytes).
    pub(crate) fn bytes(&mut self) -> Result<Cow<'a, [u8]>, WireError> {
        match self.peek()? {
            Head::Bin(_) => self.bin().map(Cow::Borrowed),
            Head::Array(_) => {
                let n = self.array_len()?;
                let mut out = Vec::with_capacity(n.min(self.remaining()));
                for _ in 0..n {
                    let b = self.u64()?;
                    out.push(u8::try_from(b).map_err(|_| wrong("byte array element above 255"))?);
                }
                Ok(Cow::Owned(out))
            }
            other => Err(wrong(format_args!(
                "expected bytes, got {}",
                other.describe()
            ))),
        }
    }

    /// The length of an array.
    pub(crate) fn array_len(&mut self) -> Result<usize, WireError> {
        match self.head()? {
            Head::Array(n) => Ok(n),
            other => Err(wrong(format_args!(
                "expected an array, got {}",
                other.describe()
            ))),
        }
    }

    /// The number of entries of a map.
    pub(crate) fn map_len(&mut self) -> Result<usize, WireError> {
        match self.head()? {
            Head::Map(n) => Ok(n),
            other => Err(wrong(format_args!(
                "expected a map, got {}",
                other.describe()
            ))),
        }
    }

    /// A capacity hint for `n` claimed elements that never exceeds what the
    /// remaining input could hold (each element takes at least one byte).
    pub(crate) fn cap(&self, n: usize) -> usize {
        n.min(self.remaining())
    }

    /// An array of unsigned integers.
    pub(crate) fn u64_list(&mut self) -> Result<Vec<u64>, WireError> {
        let n = self.array_len()?;
        let mut out = Vec::with_capacity(self.cap(n));
        for _ in 0..n {
            out.push(self.u64()?);
        }
        Ok(out)
    }

    /// Whether the map starting here has a string key `key` (nothing is consumed).
    pub(crate) fn map_has_key(&self, key: &str) -> bool {
        let mut look = *self;
        let Ok(n) = look.map_len() else { return false };
        for _ in 0..n {
            match look.str() {
                Ok(k) if k == key => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            if look.skip().is_err() {
                return false;
            }
        }
        false
    }
}

fn int(v: i64) -> Head {
    if v >= 0 {
        Head::UInt(v as u64)
    } else {
        Head::NegInt(v)
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
    use proptest::prelude::*;

    #[test]
    fn integers_use_the_shortest_form() {
        let cases: &[(i64, &[u8])] = &[
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0xcc, 0x80]),
            (256, &[0xcd, 0x01, 0x00]),
            (65536, &[0xce, 0, 1, 0, 0]),
            (-1, &[0xff]),
            (-32, &[0xe0]),
            (-33, &[0xd0, 0xdf]),
            (-129, &[0xd1, 0xff, 0x7f]),
        ];
        for (v, bytes) in cases {
            let mut w = Writer::new();
            w.int(*v);
            assert_eq!(w.out.as_slice(), *bytes, "{v}");
            let mut r = Reader::new(bytes);
            assert_eq!(r.i64().unwrap(), *v);
            r.finish().unwrap();
        }
        let mut w = Writer::new();
        w.uint(u64::MAX);
        assert_eq!(
            w.out,
            [0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]
        );
    }

    #[test]
    fn strings_bins_arrays_and_maps_round_trip() {
        let long = "x".repeat(300);
        let mut w = Writer::new();
        w.map(2).str("a").bin(&[1, 2, 3]).str(&long).array(3);
        w.nil().bool(true).f64(1.5);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert!(r.map_has_key("a"));
        assert_eq!(r.map_len().unwrap(), 2);
        assert_eq!(r.str().unwrap(), "a");
        assert_eq!(r.bin().unwrap(), &[1, 2, 3]);
        assert_eq!(r.str().unwrap(), long);
        assert_eq!(r.array_len().unwrap(), 3);
        assert!(r.nil().unwrap());
        assert!(r.bool().unwrap());
        assert_eq!(r.f64().unwrap(), 1.5);
        r.finish().unwrap();
    }

    #[test]
    fn skip_handles_deep_nesting_without_recursion() {
        let mut bytes = vec![0x91; 100_000];
        bytes.push(0xc0);
        let mut r = Reader::new(&bytes);
        r.skip().unwrap();
        r.finish().unwrap();
    }

    #[test]
    fn json_transcodes_big_unsigned_integers_exactly() {
        let bytes =
            json_to_msgpack(br#"{"a":18446744073709551615,"b":-5,"c":[1.5,null]}"#).unwrap();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.map_len().unwrap(), 3);
        assert_eq!(r.str().unwrap(), "a");
        assert_eq!(r.u64().unwrap(), u64::MAX);
        assert_eq!(r.str().unwrap(), "b");
        assert_eq!(r.i64().unwrap(), -5);
        r.skip().unwrap();
        r.skip().unwrap();
        r.finish().unwrap();
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = Reader::new(&bytes);
            while r.remaining() > 0 && r.skip().is_ok() {}
            let _ = msgpack_to_json(&mut Reader::new(&bytes));
            let _ = json_to_msgpack(&bytes);
        }
    }
}
