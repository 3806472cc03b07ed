//! Python-compatible text for template values: `json.dumps` (the HF `tojson` filter) and `str()`/`repr()`.
//!
//! Hugging Face replaces Jinja's `tojson` with `json.dumps(x, ensure_ascii=False, indent=None,
//! separators=None, sort_keys=False)`: `", "` and `": "` separators, insertion key order,
//! non-ASCII kept, and with `indent` set one item per line with `","`/`": "` separators.
//! Tool schemas pass through it, so it must match byte for byte. Printing a non-string value
//! (`{{ x }}`) uses Python's `str()`, which is what Jinja2 does.

use std::fmt::Write as _;

use minijinja::value::{from_args, Kwargs, Rest, ValueKind, ValueOrKwargs};
use minijinja::{Error, ErrorKind, State, Value};

use super::dump::DumpOptions;
use super::tools_cache::EntryRef;
use super::TOOLS_VAR;

/// The `tojson` filter: `tojson(ensure_ascii=False, indent=None, separators=None, sort_keys=False)`,
/// positional or keyword, like HF's Python function. A list or object of the render's cached
/// tools list (see `tools_cache`) is dumped once per set of options and then looked up.
pub(crate) fn tojson_filter(
    state: &State,
    value: &Value,
    args: Rest<ValueOrKwargs>,
) -> Result<Value, Error> {
    let opts = dump_options(args)?;
    let dump = || {
        let mut out = String::new();
        dumps(value, &opts, 0, &mut out)?;
        Ok(out)
    };
    if matches!(value.kind(), ValueKind::Map | ValueKind::Seq) {
        if let Some(cached) = state.lookup(TOOLS_VAR) {
            if let Some(entry) = cached.downcast_object_ref::<EntryRef>() {
                let (text, remembered) = entry.entry.dump(value, &opts, dump)?;
                if remembered {
                    entry.count_hit();
                }
                return Ok(Value::from(text));
            }
        }
    }
    Ok(Value::from(dump()?))
}

/// The `json.dumps` options of a `tojson` call.
fn dump_options(args: Rest<ValueOrKwargs>) -> Result<DumpOptions, Error> {
    let args = args.into_values();
    let (positional, kwargs): (&[Value], Kwargs) = from_args(&args)?;
    if positional.len() > 4 {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    let pick = |index: usize, name: &str| -> Result<Option<Value>, Error> {
        let named: Option<Value> = kwargs.get(name)?;
        Ok(named.or_else(|| positional.get(index).cloned()))
    };
    let ensure_ascii = pick(0, "ensure_ascii")?;
    let indent = pick(1, "indent")?;
    let separators = pick(2, "separators")?;
    let sort_keys = pick(3, "sort_keys")?;
    kwargs.assert_all_used()?;

    let mut opts = DumpOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        ..DumpOptions::default()
    };
    if let Some(indent) = indent.filter(|v| !v.is_none() && !v.is_undefined()) {
        opts.indent = Some(indent_unit(&indent)?);
        opts.item_sep = ",".into();
    }
    if let Some(seps) = separators.filter(|v| !v.is_none() && !v.is_undefined()) {
        let mut items = seps.try_iter()?;
        match (items.next(), items.next(), items.next()) {
            (Some(a), Some(b), None) if a.as_str().is_some() && b.as_str().is_some() => {
                opts.item_sep = a.as_str().unwrap_or_default().to_owned();
                opts.key_sep = b.as_str().unwrap_or_default().to_owned();
            }
            _ => return Err(type_error("separators must be a pair of strings")),
        }
    }
    Ok(opts)
}

fn indent_unit(indent: &Value) -> Result<String, Error> {
    if let Some(s) = indent.as_str() {
        return Ok(s.to_owned());
    }
    match indent.kind() {
        ValueKind::Number | ValueKind::Bool => {
            let n = i64::try_from(indent.clone())
                .map_err(|_| type_error("indent must be an integer or a string"))?;
            Ok(" ".repeat(usize::try_from(n.clamp(0, 64)).unwrap_or(0)))
        }
        _ => Err(type_error("indent must be an integer or a string")),
    }
}

fn type_error(msg: &str) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("tojson: {msg}"))
}

/// Python `json.dumps` of a template value.
pub(crate) fn dumps(
    value: &Value,
    opts: &DumpOptions,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(value, true, out),
        ValueKind::String => {
            write_json_str(value.as_str().unwrap_or_default(), opts.ensure_ascii, out)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, opts, level, '[', ']', items.len(), |i, out| {
                items
                    .get(i)
                    .map_or(Ok(()), |item| dumps(item, opts, level + 1, out))
            })?;
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key)?, item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, opts, level, '{', '}', entries.len(), |i, out| {
                if let Some((k, v)) = entries.get(i) {
                    write_json_str(k, opts.ensure_ascii, out);
                    out.push_str(&opts.key_sep);
                    dumps(v, opts, level + 1, out)?;
                }
                Ok(())
            })?;
        }
        kind => {
            return Err(type_error(&format!(
                "Object of type {kind} is not JSON serializable"
            )));
        }
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    opts: &DumpOptions,
    level: usize,
    open: char,
    close: char,
    len: usize,
    mut item: impl FnMut(usize, &mut String) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(unit) = &opts.indent {
            out.push('\n');
            for _ in 0..depth {
                out.push_str(unit);
            }
        }
    };
    for i in 0..len {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        newline(out, level + 1);
        item(i, out)?;
    }
    newline(out, level);
    out.push(close);
    Ok(())
}

/// Dict keys as `json.dumps` converts them (str, int, float, bool, None; anything else fails).
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::None => Ok("null".into()),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.into()),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(key, true, &mut s);
            Ok(s)
        }
        kind => Err(type_error(&format!(
            "keys must be str, int, float, bool or None, not {kind}"
        ))),
    }
}

/// Integers in decimal; floats as Python's `repr` (`json` spells non-finite values NaN/Infinity).
fn write_number(value: &Value, json: bool, out: &mut String) {
    if value.is_integer() {
        let _ = write!(out, "{value}");
        return;
    }
    match f64::try_from(value.clone()) {
        Ok(f) => out.push_str(&float_repr(f, json)),
        Err(_) => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits; positional for decimal exponents in
/// [-4, 16), else `d.ddde±XX`.
pub(crate) fn float_repr(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.into();
    }
    if f.is_infinite() {
        let sign = if f < 0.0 { "-" } else { "" };
        return format!("{sign}{}", if json { "Infinity" } else { "inf" });
    }
    let sign = if f.is_sign_negative() { "-" } else { "" };
    if f == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "1.2345e-5".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let n = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let int_len = usize::try_from(exp + 1).unwrap_or(0);
            let (int_part, frac) = if n > exp + 1 {
                (
                    digits.get(..int_len).unwrap_or_default().to_owned(),
                    digits.get(int_len..).unwrap_or_default().to_owned(),
                )
            } else {
                let zeros = usize::try_from(exp + 1 - n).unwrap_or(0);
                (format!("{digits}{}", "0".repeat(zeros)), "0".to_owned())
            };
            format!("{sign}{int_part}.{frac}")
        } else {
            let zeros = usize::try_from(-exp - 1).unwrap_or(0);
            format!("{sign}0.{}{digits}", "0".repeat(zeros))
        }
    } else {
        let mut chars = digits.chars();
        let first = chars.next().unwrap_or('0');
        let rest: String = chars.collect();
        let dot = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{dot}e{esign}{:02}", exp.unsigned_abs())
    }
}

/// A JSON string literal with Python's escaping (`ensure_ascii` escapes all non-ASCII and DEL).
fn write_json_str(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `str()` of a value, used when a template prints a non-string (`{{ x }}`).
pub(crate) fn py_str(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        _ => py_repr(value, out),
    }
}

/// Python's `repr()`: strings quoted, containers recursively.
fn py_repr(value: &Value, out: &mut String) {
    match value.kind() {
        ValueKind::Undefined => out.push_str("Undefined"),
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if value.is_true() { "True" } else { "False" }),
        ValueKind::Number => write_number(value, false, out),
        ValueKind::String => repr_str(value.as_str().unwrap_or_default(), out),
        ValueKind::Seq => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&item, out);
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(&key, out);
                out.push_str(": ");
                py_repr(&value.get_item(&key).unwrap_or_default(), out);
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

fn repr_str(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || (0x7f..0xa0).contains(&(c as u32)) => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn float_repr_matches_python() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (-2.5, "-2.5"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e15, "1000000000000000.0"),
            (123456.789, "123456.789"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (1.234e-7, "1.234e-07"),
            (1e100, "1e+100"),
            (-0.0, "-0.0"),
            (1.0 / 3.0, "0.3333333333333333"),
        ];
        for (f, want) in cases {
            assert_eq!(float_repr(f, true), want, "{f}");
        }
        assert_eq!(float_repr(f64::NAN, true), "NaN");
        assert_eq!(float_repr(f64::NEG_INFINITY, true), "-Infinity");
    }

    #[test]
    fn strings_escape_like_python() {
        let mut s = String::new();
        write_json_str("a\"b\\c\n\u{1}\u{7f}é😀", false, &mut s);
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001\u{7f}é😀\"");
        let mut s = String::new();
        write_json_str("é😀\u{7f}", true, &mut s);
        assert_eq!(s, "\"\\u00e9\\ud83d\\ude00\\u007f\"");
        let mut r = String::new();
        repr_str("it's", &mut r);
        assert_eq!(r, "\"it's\"");
        let mut r = String::new();
        repr_str("a'\"b", &mut r);
        assert_eq!(r, "'a\\'\"b'");
    }
}
