//! A minimal HTTP/1.1 client for the sidecar's own API (used by `explain` and the
//! tests): one request per connection, over TCP (`http://host:port`) or a unix socket
//! (`unix:/path`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use std::path::PathBuf;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not `http://host:port` or `unix:/path`.
    #[error("sidecar address `{0}` is not http://HOST:PORT or unix:/PATH")]
    BadUrl(String),
    /// Connecting failed.
    #[error("cannot connect to the sidecar at {addr}: {source}")]
    Connect {
        /// The address.
        addr: String,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("HTTP request to the sidecar failed: {0}")]
    Http(String),
}

/// Where the sidecar is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `host:port`.
    Tcp(String),
    /// A unix socket.
    Unix(PathBuf),
}

impl Target {
    /// Parses `http://host:port[/]` or `unix:/path`.
    pub fn parse(url: &str) -> Result<Target, ClientError> {
        if let Some(p) = url.strip_prefix("unix:") {
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::BadUrl(url.to_string()))?;
        let host = rest.trim_end_matches('/');
        if host.is_empty() || host.contains('/') {
            return Err(ClientError::BadUrl(url.to_string()));
        }
        Ok(Target::Tcp(host.to_string()))
    }

    fn authority(&self) -> String {
        match self {
            Target::Tcp(h) => h.clone(),
            Target::Unix(_) => "kvgate-sidecar".into(),
        }
    }
}

async fn exchange<S>(io: S, req: Request<Full<Bytes>>) -> Result<(u16, Bytes), ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |e: hyper::Error| ClientError::Http(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(http)?;
    let driver = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(http)?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.map_err(http)?.to_bytes();
    driver.abort();
    Ok((status, body))
}

/// Sends one request; returns the status and body.
pub async fn request(
    target: &Target,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Bytes), ClientError> {
    request_with_token(target, method, path, body, None).await
}

/// Sends one request with `authorization: Bearer <token>` when `token` is given.
pub async fn request_with_token(
    target: &Target,
    method: Method,
    path: &str,
    body: Vec<u8>,
    token: Option<&str>,
) -> Result<(u16, Bytes), ClientError> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, target.authority());
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ClientError::Http(e.to_string()))?;
    match target {
        Target::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            exchange(s, req).await
        }
        Target::Unix(path) => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|source| ClientError::Connect {
                    addr: path.display().to_string(),
                    source,
                })?;
            exchange(s, req).await
        }
    }
}

/// `GET path`.
pub async fn get(target: &Target, path: &str) -> Result<(u16, Bytes), ClientError> {
    request(target, Method::GET, path, Vec::new()).await
}

/// `POST path` with `body`.
pub async fn post(target: &Target, path: &str, body: Vec<u8>) -> Result<(u16, Bytes), ClientError> {
    request(target, Method::POST, path, body).await
}

pub use kvgate_core::sync::query_escape;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert!(
            matches!(Target::parse("http://127.0.0.1:9100/"), Ok(Target::Tcp(h)) if h == "127.0.0.1:9100")
        );
        assert!(matches!(Target::parse("unix:/tmp/s"), Ok(Target::Unix(_))));
        assert!(Target::parse("https://x").is_err());
        assert_eq!(query_escape("Qwen/Qwen3 0.6B"), "Qwen%2FQwen3%200.6B");
    }
}
