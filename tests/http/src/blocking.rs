//! Blocking calls for synchronous test code: one process-wide client (its I/O runs on a
//! background thread), a new connection per call as a fresh client would use, no proxy.

use super::{header_map, header_pairs, HttpError, Response, BLOCKING_TIMEOUT, BODY_LIMIT};
use std::io::Read;
use std::sync::OnceLock;

/// The process-wide blocking client, or why it could not be built.
fn client() -> Result<&'static reqwest::blocking::Client, HttpError> {
    static CLIENT: OnceLock<Result<reqwest::blocking::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::blocking::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .pool_max_idle_per_host(0)
                .timeout(BLOCKING_TIMEOUT)
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| HttpError::Setup(e.clone()))
}

/// Refuses blocking calls from async code.
fn outside_runtime(url: &str) -> Result<(), HttpError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Err(HttpError::InRuntime {
            url: url.to_string(),
        }),
        Err(_) => Ok(()),
    }
}

fn finish(url: &str, mut r: reqwest::blocking::Response) -> Result<Response, HttpError> {
    let status = r.status().as_u16();
    let headers = header_pairs(r.headers());
    let mut body = Vec::new();
    (&mut r)
        .take(BODY_LIMIT as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| HttpError::Request {
            url: url.to_string(),
            detail: format!("reading the body: {e}"),
        })?;
    if body.len() > BODY_LIMIT {
        return Err(HttpError::TooLarge {
            url: url.to_string(),
            limit: BODY_LIMIT,
        });
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// GET `url`; any status is a response.
pub fn get(url: &str) -> Result<Response, HttpError> {
    outside_runtime(url)?;
    let r = client()?
        .get(url)
        .send()
        .map_err(|e| HttpError::request(url, &e))?;
    finish(url, r)
}

/// POST `body` to `url` with extra `headers` (`content-type: application/json` unless one
/// is given); any status is a response.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, HttpError> {
    outside_runtime(url)?;
    let r = client()?
        .post(url)
        .headers(header_map(url, headers, true)?)
        .body(body.to_vec())
        .send()
        .map_err(|e| HttpError::request(url, &e))?;
    finish(url, r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    /// Serves one connection: reads the request (head, then `content-length` bytes of
    /// body), answers `response`, and returns the request as text.
    fn serve_once(response: &'static [u8]) -> (String, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len {
                        break;
                    }
                }
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            s.write_all(response).unwrap();
            String::from_utf8_lossy(&got).into_owned()
        });
        (url, t)
    }

    #[test]
    fn post_sends_json_and_reads_any_status() {
        let (url, t) = serve_once(
            b"HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\nX-A: b\r\nConnection: close\r\n\r\nbusy",
        );
        let r = post(&format!("{url}/p"), &[("x-request-id", "r1")], b"{}").unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "busy"));
        assert_eq!(r.header("x-a"), Some("b"));
        let req = t.join().unwrap().to_ascii_lowercase();
        assert!(req.starts_with("post /p http/1.1\r\n"), "{req}");
        assert!(req.contains("content-type: application/json\r\n"), "{req}");
        assert!(req.contains("x-request-id: r1\r\n"), "{req}");
    }

    #[test]
    fn get_reads_chunked_bodies_and_reports_refused_connections() {
        let (url, t) = serve_once(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        );
        let r = get(&url).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
        t.join().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}/", l.local_addr().unwrap());
        drop(l);
        assert!(matches!(get(&closed), Err(HttpError::Request { .. })));
    }

    #[tokio::test]
    async fn refuses_to_block_inside_a_runtime() {
        assert!(matches!(
            get("http://127.0.0.1:9/"),
            Err(HttpError::InRuntime { .. })
        ));
    }
}
