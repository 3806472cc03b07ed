//! The async client: load generators and the mock engine's remote prefill. Without
//! keep-alive every call opens (and closes) its own connection; with it, connections are
//! pooled per host. No proxy, `TCP_NODELAY`, connect timeout 5 s.

use super::{header, header_map, header_pairs, HttpError, Response, BODY_LIMIT};
use bytes::Bytes;
use reqwest::Method;
use std::time::Duration;

/// An async HTTP client; cheap to clone (clones share connections).
#[derive(Debug, Clone)]
pub struct Client {
    inner: reqwest::Client,
}

/// A response whose body is still arriving.
#[derive(Debug)]
pub struct Streaming {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-case, in order.
    pub headers: Vec<(String, String)>,
    url: String,
    inner: reqwest::Response,
}

impl Client {
    /// A client; `keep_alive` pools connections (idle ones close after 60 s), else each
    /// call has a connection of its own. `timeout` bounds a call from connect to the end
    /// of the body.
    pub fn new(keep_alive: bool, timeout: Duration) -> Result<Client, HttpError> {
        let b = reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5).min(timeout));
        let b = if keep_alive {
            b.pool_idle_timeout(Duration::from_secs(60))
        } else {
            b.pool_max_idle_per_host(0)
        };
        let inner = b.build().map_err(|e| HttpError::Setup(e.to_string()))?;
        Ok(Client { inner })
    }

    /// Sends `method url` with exactly `headers` and `body`; returns once the response
    /// head arrived.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Streaming, HttpError> {
        self.send_with(method, url, headers, body, false).await
    }

    async fn send_with(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        json_default: bool,
    ) -> Result<Streaming, HttpError> {
        let inner = self
            .inner
            .request(method, url)
            .headers(header_map(url, headers, json_default)?)
            .body(body)
            .send()
            .await
            .map_err(|e| HttpError::request(url, &e))?;
        Ok(Streaming {
            status: inner.status().as_u16(),
            headers: header_pairs(inner.headers()),
            url: url.to_string(),
            inner,
        })
    }

    /// GET `url`, whole body; any status is a response.
    pub async fn get(&self, url: &str) -> Result<Response, HttpError> {
        self.send(Method::GET, url, &[], Vec::new())
            .await?
            .read_all()
            .await
    }

    /// POST `body` to `url` with extra `headers` (`content-type: application/json` unless
    /// one is given), whole body; any status is a response.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Response, HttpError> {
        self.send_with(Method::POST, url, headers, body, true)
            .await?
            .read_all()
            .await
    }
}

impl Streaming {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The next piece of the body as it arrives; None at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        self.inner
            .chunk()
            .await
            .map_err(|e| HttpError::request(&self.url, &e))
    }

    /// Reads the rest of the body (up to [`BODY_LIMIT`] bytes).
    pub async fn read_all(mut self) -> Result<Response, HttpError> {
        let mut body = Vec::new();
        while let Some(c) = self.chunk().await? {
            body.extend_from_slice(&c);
            if body.len() > BODY_LIMIT {
                return Err(HttpError::TooLarge {
                    url: self.url,
                    limit: BODY_LIMIT,
                });
            }
        }
        Ok(Response {
            status: self.status,
            headers: self.headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Answers every connection with a chunked body sent in two writes, the second one
    /// `gap` after the first; counts connections.
    async fn chunked_server(gap: Duration) -> (String, tokio::task::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/x", l.local_addr().unwrap());
        let t = tokio::spawn(async move {
            let mut conns = 0;
            while let Ok(Ok((mut s, _))) =
                tokio::time::timeout(Duration::from_millis(500), l.accept()).await
            {
                conns += 1;
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        let mut head = Vec::new();
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            let n = s.read(&mut buf).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            head.extend_from_slice(&buf[..n]);
                        }
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Kvgate-Worker: 7\r\n\r\n2\r\nab\r\n")
                            .await;
                        tokio::time::sleep(gap).await;
                        let _ = s.write_all(b"1\r\nc\r\n0\r\n\r\n").await;
                    }
                });
            }
            conns
        });
        (url, t)
    }

    #[tokio::test]
    async fn streams_chunks_as_they_arrive() {
        let (url, _t) = chunked_server(Duration::from_secs(1)).await;
        let c = Client::new(false, Duration::from_secs(5)).unwrap();
        let start = std::time::Instant::now();
        let mut s = c
            .send(Method::POST, &url, &[], b"{}".to_vec())
            .await
            .unwrap();
        assert_eq!((s.status, s.header("x-kvgate-worker")), (200, Some("7")));
        assert_eq!(s.chunk().await.unwrap().unwrap().as_ref(), b"ab");
        assert!(start.elapsed() < Duration::from_millis(800));
        assert_eq!(s.read_all().await.unwrap().body, b"c");
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection_and_plain_does_not() {
        for (keep_alive, want) in [(true, 1), (false, 3)] {
            let (url, t) = chunked_server(Duration::ZERO).await;
            let c = Client::new(keep_alive, Duration::from_secs(5)).unwrap();
            for _ in 0..3 {
                let r = c.post(&url, &[], b"{}".to_vec()).await.unwrap();
                assert_eq!(r.text(), "abc");
            }
            assert_eq!(t.await.unwrap(), want, "keep_alive={keep_alive}");
        }
    }

    #[tokio::test]
    async fn times_out() {
        let (url, _t) = chunked_server(Duration::from_secs(3)).await;
        let c = Client::new(false, Duration::from_millis(200)).unwrap();
        let err = c.get(&url).await.unwrap_err();
        assert!(matches!(err, HttpError::Request { .. }), "{err}");
    }
}
