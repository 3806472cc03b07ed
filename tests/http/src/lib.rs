//! The one HTTP client of kvgate's test crates (stack launchers, mock engine, bench, fault
//! tools, end-to-end tests), on `reqwest`:
//!
//! - [`get`] / [`post`]: blocking calls for synchronous code (readiness probes, admin and
//!   stats endpoints, test requests). One new connection per call, no proxy, 120 s timeout.
//!   They refuse to run inside a tokio runtime ([`HttpError::InRuntime`]): use [`Client`].
//! - [`Client`]: the async client (load generators, the mock engine's remote prefill),
//!   optionally keep-alive, with whole-body calls and a [`Streaming`] response that yields
//!   body chunks as they arrive (time to first token).
//! - [`raw`]: a raw-socket HTTP/1.1 client, kept only for what a real client refuses or
//!   cannot do on purpose: header lines written verbatim (any case, repeated names), a
//!   chunked body cut half-way, a client that hangs up mid-stream or before any answer,
//!   and telling a complete response from a truncated one. Only the hostile, security,
//!   abort and fault tests use it.
//!
//! Bodies are read up to [`BODY_LIMIT`] bytes.

mod blocking;
mod client;
pub mod raw;

pub use blocking::{get, post};
pub use client::{Client, Streaming};
pub use reqwest::Method;

use std::time::Duration;

/// The largest body read into a [`Response`].
pub const BODY_LIMIT: usize = 64 << 20;

/// The timeout of the blocking calls (connect to end of body).
pub const BLOCKING_TIMEOUT: Duration = Duration::from_secs(120);

/// A complete response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (Null if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, sending or receiving failed, or timed out.
    #[error("{url}: {detail}")]
    Request {
        /// The URL.
        url: String,
        /// What went wrong, with its causes.
        detail: String,
    },
    /// The body is larger than the limit.
    #[error("{url}: body larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// A header name or value that is not valid HTTP.
    #[error("{url}: invalid header `{name}`")]
    Header {
        /// The URL.
        url: String,
        /// The header name.
        name: String,
    },
    /// The client could not be built.
    #[error("http client setup: {0}")]
    Setup(String),
    /// A blocking call from async code (it would stall or panic the runtime).
    #[error("{url}: blocking HTTP call inside a tokio runtime; use kvgate_http::Client")]
    InRuntime {
        /// The URL.
        url: String,
    },
}

impl HttpError {
    /// A [`HttpError::Request`] from a reqwest error, with its chain of causes.
    fn request(url: &str, e: &reqwest::Error) -> Self {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        HttpError::Request {
            url: url.to_string(),
            detail,
        }
    }
}

/// The first value of header `name` in `headers`.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Headers as (lower-case name, value) pairs; values that are not text are read lossily.
fn header_pairs(map: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// `headers` as a header map, with `content-type: application/json` added when
/// `json_default` and no content type is given.
fn header_map(
    url: &str,
    headers: &[(&str, &str)],
    json_default: bool,
) -> Result<reqwest::header::HeaderMap, HttpError> {
    use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
    let mut map = reqwest::header::HeaderMap::new();
    for (n, v) in headers {
        let bad = || HttpError::Header {
            url: url.to_string(),
            name: n.to_string(),
        };
        let name = HeaderName::from_bytes(n.as_bytes()).map_err(|_| bad())?;
        let value = HeaderValue::from_str(v).map_err(|_| bad())?;
        map.append(name, value);
    }
    if json_default && !map.contains_key(CONTENT_TYPE) {
        map.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    #[test]
    fn header_map_adds_json_content_type_once() {
        let m = header_map("u", &[("X-A", "1"), ("x-a", "2")], true).unwrap();
        assert_eq!(m.get_all("x-a").iter().count(), 2);
        assert_eq!(m["content-type"], "application/json");
        let m = header_map("u", &[("Content-Type", "text/plain")], true).unwrap();
        assert_eq!(m["content-type"], "text/plain");
        assert!(!header_map("u", &[], false)
            .unwrap()
            .contains_key("content-type"));
        assert!(matches!(
            header_map("u", &[("bad name", "v")], false),
            Err(HttpError::Header { .. })
        ));
    }

    #[test]
    fn response_accessors() {
        let r = Response {
            status: 200,
            headers: vec![("x-kvgate-worker".into(), "3".into())],
            body: br#"{"a": 1}"#.to_vec(),
        };
        assert_eq!(r.header("x-kvgate-worker"), Some("3"));
        assert_eq!(r.header("x-other"), None);
        assert_eq!(r.json()["a"], 1);
        assert_eq!(r.text(), r#"{"a": 1}"#);
        let not_json = Response {
            body: b"{oops".to_vec(),
            ..r
        };
        assert!(not_json.json().is_null());
    }
}
