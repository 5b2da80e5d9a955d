//! The CLI's side of the API: one HTTP/1.1 request per TCP connection (`Connection:
//! close`), read to the end. That is all a loopback control client needs, and it keeps
//! hyper's client, TLS stacks and connection pools out of the binary.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::form;

/// Cap on an answer's size: a `weave report` of a thousand peers is a few MB.
const MAX_RESPONSE: u64 = 64 << 20;
/// Long enough for a busy daemon, short enough that a wedged one does not hang a shell.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of the daemon's HTTP API.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    addr: SocketAddr,
    timeout: Duration,
}

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) content_type: Option<String>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// Nothing listens on the API address.
    #[error("weave is not running")]
    NotRunning,
    #[error("the daemon at {addr} did not answer within {secs} s")]
    Timeout { addr: SocketAddr, secs: u64 },
    #[error("talking to the daemon at {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("the daemon at {addr} sent a malformed answer: {why}")]
    Malformed { addr: SocketAddr, why: String },
}

impl Client {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub(crate) fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) async fn get(&self, path: &str) -> Result<Response, ClientError> {
        self.request("GET", path, None).await
    }

    /// GETs `path` with `pairs` as its query string.
    pub(crate) async fn get_with(
        &self,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        if pairs.is_empty() {
            return self.get(path).await;
        }
        self.get(&format!("{path}?{}", form::encode(pairs))).await
    }

    /// POSTs `pairs` as an `application/x-www-form-urlencoded` body.
    pub(crate) async fn post_form(
        &self,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> Result<Response, ClientError> {
        self.request("POST", path, Some(form::encode(pairs))).await
    }

    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        form_body: Option<String>,
    ) -> Result<Response, ClientError> {
        let addr = self.addr;
        let secs = self.timeout.as_secs();
        tokio::time::timeout(self.timeout, self.exchange(method, path, form_body))
            .await
            .map_err(|_| ClientError::Timeout { addr, secs })?
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        form_body: Option<String>,
    ) -> Result<Response, ClientError> {
        let addr = self.addr;
        let io_err = |source: io::Error| ClientError::Io { addr, source };
        let mut stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ClientError::NotRunning);
            }
            Err(e) => return Err(io_err(e)),
        };
        let request = encode_request(method, path, &addr, form_body.as_deref());
        stream.write_all(request.as_bytes()).await.map_err(io_err)?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE + 1)
            .read_to_end(&mut raw)
            .await
            .map_err(io_err)?;
        if raw.len() as u64 > MAX_RESPONSE {
            return Err(ClientError::Malformed {
                addr,
                why: "answer too large".to_owned(),
            });
        }
        parse_response(&raw).map_err(|why| ClientError::Malformed { addr, why })
    }
}

fn encode_request(method: &str, path: &str, host: &SocketAddr, form_body: Option<&str>) -> String {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: weave/{}\r\nAccept: */*\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    match form_body {
        Some(body) => {
            request.push_str("Content-Type: application/x-www-form-urlencoded\r\n");
            request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        }
        None if method == "GET" => request.push_str("\r\n"),
        None => request.push_str("Content-Length: 0\r\n\r\n"),
    }
    request
}

/// Parses a complete HTTP/1.x answer (the server closed the connection after it).
pub(crate) fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| "headers are not UTF-8")?;
    let rest = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 status line: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let mut content_type = None;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_owned());
        } else if name.eq_ignore_ascii_case("content-length") {
            let len = value
                .parse::<usize>()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            content_length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = content_length {
        rest.get(..len)
            .ok_or("body shorter than its Content-Length")?
            .to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn decode_chunked(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = find(rest, b"\r\n").ok_or("truncated chunk header")?;
        let size_field = std::str::from_utf8(&rest[..line_end]).map_err(|_| "bad chunk header")?;
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        let chunk = rest.get(..size).ok_or("truncated chunk")?;
        body.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("chunk not followed by CRLF")?;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_content_length_answer() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello";
        let r = parse_response(raw).expect("valid");
        assert_eq!(r.status, 200);
        assert_eq!(r.content_type.as_deref(), Some("text/plain"));
        assert_eq!(r.body, "hello");
        assert!(r.is_success());
    }

    #[test]
    fn parses_a_chunked_answer() {
        let raw = b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbad \r\n4;x=y\r\npeer\r\n0\r\n\r\n";
        let r = parse_response(raw).expect("valid");
        assert_eq!(r.status, 400);
        assert_eq!(r.body, "bad peer");
        assert!(!r.is_success());
    }

    #[test]
    fn parses_a_close_delimited_answer() {
        let r = parse_response(b"HTTP/1.0 503 Service Unavailable\r\n\r\nshutting down")
            .expect("valid");
        assert_eq!((r.status, r.body.as_str()), (503, "shutting down"));
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for raw in [
            &b""[..],
            b"\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno-colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabX",
        ] {
            assert!(
                parse_response(raw).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn encodes_requests() {
        let host: SocketAddr = "127.0.0.1:6784".parse().expect("literal");
        let get = encode_request("GET", "/status", &host, None);
        assert!(get.starts_with("GET /status HTTP/1.1\r\nHost: 127.0.0.1:6784\r\n"));
        assert!(get.ends_with("Connection: close\r\n\r\n"));
        let post = encode_request("POST", "/connect", &host, Some("peer=a"));
        assert!(post.ends_with("Content-Length: 6\r\n\r\npeer=a"));
        let stop = encode_request("POST", "/stop", &host, None);
        assert!(stop.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[tokio::test]
    async fn refused_connection_means_not_running() {
        // Bind then drop to find a port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let err = Client::new(addr)
            .get("/status")
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, ClientError::NotRunning), "{err}");
        assert_eq!(err.to_string(), "weave is not running");
    }
}
