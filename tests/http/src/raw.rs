//! A raw HTTP/1.1 client on blocking sockets, for what ordinary clients cannot do: write
//! header lines verbatim (any case, repeated names), stop reading a streamed response
//! after its first bytes and close the socket (a client that goes away mid-stream), give
//! up before any response, or send part of a chunked body and hang up. It also tells a
//! complete response from a truncated one (an upstream that died mid-stream).
//!
//! Ordinary requests go through the crate's [`Client`](crate::Client) or
//! [`get`](crate::get)/[`post`](crate::post); this one is for the hostile, security,
//! abort and fault tests, which need the malformed or abandoned requests above. One
//! request per connection (`Connection: close`).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

/// A request to write.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Header lines written verbatim and in order (repeats allowed); `Host`,
    /// `Content-Length` and `Connection` are added unless present.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Request {
    /// `POST path` with a JSON body.
    pub fn post_json(path: &str, body: Vec<u8>) -> Self {
        Request {
            method: "POST".into(),
            path: path.into(),
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
        }
    }

    /// Adds a header line.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn has(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The request head (request line and headers) for a body of `len` bytes, or chunked
    /// transfer encoding when `len` is None.
    pub fn head(&self, host: &str, len: Option<usize>) -> Vec<u8> {
        let mut h = format!("{} {} HTTP/1.1\r\n", self.method, self.path);
        if !self.has("host") {
            h.push_str(&format!("Host: {host}\r\n"));
        }
        if !self.has("connection") {
            h.push_str("Connection: close\r\n");
        }
        match len {
            Some(n) if !self.has("content-length") => {
                h.push_str(&format!("Content-Length: {n}\r\n"))
            }
            Some(_) => {}
            None => h.push_str("Transfer-Encoding: chunked\r\n"),
        }
        for (n, v) in &self.headers {
            h.push_str(&format!("{n}: {v}\r\n"));
        }
        h.push_str("\r\n");
        h.into_bytes()
    }
}

/// When the client stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Read the whole response.
    Never,
    /// Close the socket once the first response body bytes arrived (a client that goes
    /// away mid-stream).
    AfterFirstBodyBytes,
    /// Close the socket this long after sending, whatever arrived (a client that gives
    /// up while the request waits or prefills).
    AfterSend(Duration),
}

/// What came back.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Status code, None when no response head arrived.
    pub status: Option<u16>,
    /// Headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body received (de-chunked).
    pub body: Vec<u8>,
    /// The whole body arrived (content length reached, last chunk seen, or EOF of a
    /// close-delimited body).
    pub complete: bool,
    /// The client closed the connection on purpose ([`Stop`]).
    pub aborted: bool,
    /// Connect, write or read error, or timeout.
    pub error: Option<String>,
    /// Time from connect to the end of the exchange.
    pub elapsed: Duration,
}

impl Reply {
    /// The first header named `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A complete 200.
    pub fn ok(&self) -> bool {
        self.status == Some(200) && self.complete
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

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl Conn {
    /// Reads more bytes into the buffer; Ok(false) at EOF.
    fn fill(&mut self) -> std::io::Result<bool> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "response timed out",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf
            .extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(n > 0)
    }

    /// Position of `\r\n` at or after `from`, reading as needed; None at EOF.
    fn line_end(&mut self, from: usize) -> std::io::Result<Option<usize>> {
        loop {
            if let Some(p) = find(self.buf.get(from..).unwrap_or_default(), b"\r\n") {
                return Ok(Some(from + p));
            }
            if !self.fill()? {
                return Ok(None);
            }
        }
    }

    /// Ensures `n` buffered bytes; false at EOF before that.
    fn want(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn io_err(e: std::io::Error) -> String {
    format!("{:?}: {e}", e.kind())
}

/// Sends `req` to `addr` (`ip:port`) and reads the response until `stop` or `timeout`.
pub fn send(addr: &str, req: &Request, stop: Stop, timeout: Duration) -> Reply {
    send_framed(addr, req, None, stop, timeout)
}

/// Sends `req` with its body chunked in pieces of `chunk` bytes and reads the response.
pub fn send_chunked(addr: &str, req: &Request, chunk: usize, timeout: Duration) -> Reply {
    send_framed(addr, req, Some(chunk.max(1)), Stop::Never, timeout)
}

fn send_framed(
    addr: &str,
    req: &Request,
    chunk: Option<usize>,
    stop: Stop,
    timeout: Duration,
) -> Reply {
    let start = Instant::now();
    let mut reply = Reply::default();
    let result = exchange(addr, req, chunk, stop, timeout, &mut reply);
    if let Err(e) = result {
        reply.error = Some(e);
    }
    reply.elapsed = start.elapsed();
    reply
}

fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("bad address: {e}"))?;
    let stream =
        TcpStream::connect_timeout(&sock, timeout.min(Duration::from_secs(5))).map_err(io_err)?;
    let _ = stream.set_nodelay(true);
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    Ok(stream)
}

/// Bodies above this are written by a second thread while the response is read: a
/// server may answer (413) and stop reading before the body is through.
const BACKGROUND_WRITE: usize = 256 * 1024;

fn exchange(
    addr: &str,
    req: &Request,
    chunk: Option<usize>,
    stop: Stop,
    timeout: Duration,
    reply: &mut Reply,
) -> Result<(), String> {
    let mut stream = connect(addr, timeout)?;
    let mut bytes = req.head(addr, chunk.is_none().then_some(req.body.len()));
    match chunk {
        None => bytes.extend_from_slice(&req.body),
        Some(n) => {
            for piece in req.body.chunks(n) {
                bytes.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                bytes.extend_from_slice(piece);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(b"0\r\n\r\n");
        }
    }
    if bytes.len() > BACKGROUND_WRITE {
        let mut w = stream.try_clone().map_err(io_err)?;
        std::thread::spawn(move || {
            let _ = w.write_all(&bytes);
        });
    } else {
        stream.write_all(&bytes).map_err(io_err)?;
    }
    let sent = Instant::now();
    let deadline = match stop {
        Stop::AfterSend(d) => sent + d.min(timeout),
        _ => sent + timeout,
    };
    let mut c = Conn {
        stream,
        buf: Vec::new(),
        deadline,
    };
    let r = read_response(&mut c, stop, reply);
    if let (Stop::AfterSend(_), Err(e)) = (stop, &r) {
        if e.starts_with("TimedOut") || e.starts_with("WouldBlock") {
            reply.aborted = true;
            let _ = c.stream.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
    if reply.aborted {
        let _ = c.stream.shutdown(Shutdown::Both);
    }
    r
}

fn read_response(c: &mut Conn, stop: Stop, reply: &mut Reply) -> Result<(), String> {
    // Head.
    let head_end = loop {
        if let Some(p) = find(&c.buf, b"\r\n\r\n") {
            break p;
        }
        if !c.fill().map_err(io_err)? {
            return Err(if c.buf.is_empty() {
                "connection closed without a response".into()
            } else {
                "connection closed inside the response head".into()
            });
        }
    };
    let head = String::from_utf8_lossy(c.buf.get(..head_end).unwrap_or_default()).into_owned();
    let mut lines = head.split("\r\n");
    reply.status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    reply.headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    c.buf.drain(..head_end + 4);
    let chunked = reply
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = reply
        .header("content-length")
        .and_then(|v| v.trim().parse::<usize>().ok());
    let early = stop == Stop::AfterFirstBodyBytes;
    if chunked {
        loop {
            let Some(eol) = c.line_end(0).map_err(io_err)? else {
                return Ok(()); // truncated
            };
            let size_text = String::from_utf8_lossy(c.buf.get(..eol).unwrap_or_default())
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let size = usize::from_str_radix(&size_text, 16)
                .map_err(|_| format!("bad chunk size `{size_text}`"))?;
            if size == 0 {
                reply.complete = true;
                return Ok(());
            }
            if !c.want(eol + 2 + size + 2).map_err(io_err)? {
                let got = c.buf.get(eol + 2..).unwrap_or_default();
                reply.body.extend_from_slice(got.get(..size).unwrap_or(got));
                return Ok(()); // truncated
            }
            reply
                .body
                .extend_from_slice(c.buf.get(eol + 2..eol + 2 + size).unwrap_or_default());
            c.buf.drain(..eol + 2 + size + 2);
            if early {
                reply.aborted = true;
                return Ok(());
            }
        }
    }
    match length {
        Some(n) => {
            if early && n > 0 {
                c.want(1).map_err(io_err)?;
                reply.body = std::mem::take(&mut c.buf);
                reply.aborted = true;
                return Ok(());
            }
            let full = c.want(n).map_err(io_err)?;
            reply.body = c.buf.get(..n.min(c.buf.len())).unwrap_or_default().to_vec();
            reply.complete = full;
        }
        None => {
            while c.fill().map_err(io_err)? {
                if early && !c.buf.is_empty() {
                    reply.aborted = true;
                    break;
                }
            }
            reply.body = std::mem::take(&mut c.buf);
            reply.complete = !reply.aborted;
        }
    }
    Ok(())
}

/// Sends the head of a chunked request and `first` as its first chunk, waits `linger`
/// for anything the server answers, then closes the connection without the last chunk
/// (a client that stops half-way through its body).
pub fn send_partial_chunked(addr: &str, req: &Request, first: &[u8], linger: Duration) -> Reply {
    let start = Instant::now();
    let mut reply = Reply::default();
    let r = (|| -> Result<(), String> {
        let mut stream = connect(addr, linger + Duration::from_secs(5))?;
        let mut bytes = req.head(addr, None);
        bytes.extend_from_slice(format!("{:x}\r\n", first.len()).as_bytes());
        bytes.extend_from_slice(first);
        bytes.extend_from_slice(b"\r\n");
        stream.write_all(&bytes).map_err(io_err)?;
        let mut c = Conn {
            stream,
            buf: Vec::new(),
            deadline: Instant::now() + linger,
        };
        let got = read_response(&mut c, Stop::Never, &mut reply);
        reply.aborted = true;
        let _ = c.stream.shutdown(Shutdown::Both);
        match got {
            Err(e) if e.starts_with("TimedOut") || e.starts_with("WouldBlock") => Ok(()),
            other => other,
        }
    })();
    if let Err(e) = r {
        reply.error = Some(e);
    }
    reply.elapsed = start.elapsed();
    reply
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use std::net::TcpListener;

    fn serve_once(response: &'static [u8]) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(response);
        });
        addr
    }

    #[test]
    fn complete_truncated_and_aborted_responses() {
        let r = Request::post_json("/x", b"{}".to_vec());
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        let rep = send(&addr, &r, Stop::Never, Duration::from_secs(5));
        assert_eq!(
            (rep.status, rep.body.as_slice(), rep.complete),
            (Some(200), &b"abcde"[..], true)
        );
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
        let rep = send(&addr, &r, Stop::Never, Duration::from_secs(5));
        assert_eq!((rep.body.as_slice(), rep.complete), (&b"abc"[..], false));
        let addr = serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        let rep = send(&addr, &r, Stop::AfterFirstBodyBytes, Duration::from_secs(5));
        assert!(rep.aborted && !rep.complete);
        assert_eq!(rep.body, b"abc");
        let addr = serve_once(b"HTTP/1.1 413 Too Large\r\nContent-Length: 4\r\n\r\nbig!");
        let rep = send(&addr, &r, Stop::Never, Duration::from_secs(5));
        assert_eq!(
            (rep.status, rep.text().as_str(), rep.complete),
            (Some(413), "big!", true)
        );
    }

    #[test]
    fn head_writes_headers_verbatim() {
        let r = Request::post_json("/p", vec![])
            .header("X-A", "1")
            .header("x-a", "2");
        let h = String::from_utf8(r.head("h:1", Some(0))).unwrap();
        assert!(h.contains("X-A: 1\r\nx-a: 2\r\n"), "{h}");
        assert!(h.contains("Content-Length: 0\r\n"));
        let h = String::from_utf8(r.head("h:1", None)).unwrap();
        assert!(h.contains("Transfer-Encoding: chunked\r\n"));
    }
}
