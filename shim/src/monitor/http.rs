//! The little HTTP/1.0 the monitor speaks: one bounded request per
//! connection, one response, close. No keep-alive, no chunking, no
//! request bodies.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The most a request's head may take (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// The most a client reads of a response.
pub const MAX_RESPONSE: u64 = 16 << 20;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /stats`: the pod's counters as JSON.
    Stats,
}

/// A parsed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub route: Route,
    /// HEAD: headers only.
    pub head_only: bool,
}

/// An error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    BadRequest,
    NotFound,
    MethodNotAllowed,
    TooLarge,
}

impl Refusal {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest => (400, "Bad Request"),
            Refusal::NotFound => (404, "Not Found"),
            Refusal::MethodNotAllowed => (405, "Method Not Allowed"),
            Refusal::TooLarge => (431, "Request Header Fields Too Large"),
        }
    }
}

/// Parses a request's head (everything before the blank line; headers
/// are ignored).
pub fn parse(head: &[u8]) -> Result<Request, Refusal> {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| Refusal::BadRequest)?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest);
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") || !target.starts_with('/') {
        return Err(Refusal::BadRequest);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Err(Refusal::MethodNotAllowed),
    };
    let path = target.split(['?', '#']).next().unwrap_or(target);
    let route = match path {
        "/metrics" => Route::Metrics,
        "/stats" => Route::Stats,
        _ => return Err(Refusal::NotFound),
    };
    Ok(Request { route, head_only })
}

/// Where the head ends (after its blank line), if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads a request's head from `r`: up to the blank line, or to EOF after
/// a complete request line; at most [`MAX_REQUEST`] bytes.
pub fn read_head(r: &mut impl Read) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&buf) {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST {
            return Err(ReadError::Refused(Refusal::TooLarge));
        }
        let want = chunk.len().min(MAX_REQUEST - buf.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) if buf.contains(&b'\n') => return Ok(buf),
            Ok(0) => return Err(ReadError::Refused(Refusal::BadRequest)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
}

/// Why no request was read.
#[derive(Debug)]
pub enum ReadError {
    /// Answer with this.
    Refused(Refusal),
    /// The connection failed or timed out: close it.
    Io(io::Error),
}

/// A whole response.
pub fn response(status: (u16, &str), content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.0 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        status.0,
        status.1,
        body.len()
    );
    if status.0 == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

/// Errors of a client request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {path}: {source}")]
    Connect { path: String, source: io::Error },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: {message}")]
    Response { path: String, message: String },
}

/// `GET target` on the monitor socket at `path`; returns the body of a
/// 200 response. Each step is bounded by `timeout`.
pub fn get(path: &Path, target: &str, timeout: Duration) -> Result<Vec<u8>, ClientError> {
    let shown = path.display().to_string();
    let io_err = |source| ClientError::Io {
        path: shown.clone(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: shown.clone(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    s.write_all(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes())
        .map_err(io_err)?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE).read_to_end(&mut raw).map_err(io_err)?;
    let bad = |message: String| ClientError::Response {
        path: shown.clone(),
        message,
    };
    let end = head_end(&raw).ok_or_else(|| bad("no complete response head".into()))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let code = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code,
        _ => return Err(bad(format!("not an HTTP response: {status_line:?}"))),
    };
    if code != "200" {
        let body = String::from_utf8_lossy(&raw[end..]);
        return Err(bad(format!("{status_line}: {}", body.trim())));
    }
    Ok(raw[end..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_two_routes() {
        let r = parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(
            r,
            Request {
                route: Route::Metrics,
                head_only: false
            }
        );
        let r = parse(b"HEAD /stats?pretty=1 HTTP/1.0\n\n").unwrap();
        assert_eq!(
            r,
            Request {
                route: Route::Stats,
                head_only: true
            }
        );
    }

    #[test]
    fn refuses_what_it_does_not_serve() {
        for (req, want) in [
            (
                &b"POST /stats HTTP/1.0\r\n\r\n"[..],
                Refusal::MethodNotAllowed,
            ),
            (b"GET /nope HTTP/1.0\r\n\r\n", Refusal::NotFound),
            (b"GET / HTTP/1.0\r\n\r\n", Refusal::NotFound),
            (b"GET /stats\r\n\r\n", Refusal::BadRequest),
            (b"GET /stats HTTP/2.0\r\n\r\n", Refusal::BadRequest),
            (b"GET  /stats HTTP/1.0\r\n\r\n", Refusal::BadRequest),
            (b"GET stats HTTP/1.0\r\n\r\n", Refusal::BadRequest),
            (b"GET /stats HTTP/1.0 extra\r\n\r\n", Refusal::BadRequest),
            (b"\xff\xfe /stats HTTP/1.0\r\n\r\n", Refusal::BadRequest),
            (b"", Refusal::BadRequest),
        ] {
            assert_eq!(parse(req), Err(want), "{}", String::from_utf8_lossy(req));
        }
    }

    #[test]
    fn reads_a_bounded_head() {
        let mut r: &[u8] = b"GET /stats HTTP/1.0\r\nA: b\r\n\r\nbody that is ignored";
        assert_eq!(
            read_head(&mut r).unwrap(),
            b"GET /stats HTTP/1.0\r\nA: b\r\n\r\n"
        );
        // EOF after a request line (a client that half-closed).
        let mut r: &[u8] = b"GET /stats HTTP/1.0\n";
        assert_eq!(read_head(&mut r).unwrap(), b"GET /stats HTTP/1.0\n");
        let mut r: &[u8] = b"GET /sta";
        assert!(matches!(
            read_head(&mut r),
            Err(ReadError::Refused(Refusal::BadRequest))
        ));
        let huge = vec![b'a'; MAX_REQUEST * 4];
        let mut r: &[u8] = &huge;
        assert!(matches!(
            read_head(&mut r),
            Err(ReadError::Refused(Refusal::TooLarge))
        ));
    }

    #[test]
    fn responses_say_their_length() {
        let r = response((200, "OK"), "text/plain", b"abc", false);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
        assert!(text.contains("Content-Length: 3\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
        let r = response((405, "Method Not Allowed"), "text/plain", b"no", true);
        let text = String::from_utf8(r).unwrap();
        assert!(text.contains("Allow: GET, HEAD\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "{text}");
    }
}
