//! The header line that opens every stdio stream,
//! `<container_id> <exec_id> <stream>\n`: a pure parser ([`parse_header`],
//! fuzzed in the tests) and the non-blocking reader that takes it off a new
//! connection without consuming a byte of the stream after it
//! ([`HeaderReader`]).

use std::fmt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use thiserror::Error;

use super::sys;

pub use husk_agent_protocol::stdio::{StreamKind, HEADER_MAX, ID_MAX};

/// A process, as stdio names it: its container and exec id
/// ([`husk_agent_protocol::INIT_EXEC_ID`] for the container's own).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub container_id: String,
    pub exec_id: String,
}

impl ProcessKey {
    pub fn new(container_id: impl Into<String>, exec_id: impl Into<String>) -> Self {
        Self {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
        }
    }
}

impl fmt::Display for ProcessKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.exec_id)
    }
}

/// One stream of one process: what a header names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub process: ProcessKey,
    pub stream: StreamKind,
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.process, self.stream)
    }
}

/// Why a header was refused. Messages quote at most a short, escaped
/// prefix of what the host sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderError {
    #[error("no newline in the first {HEADER_MAX} bytes")]
    TooLong,
    #[error("want 3 space-separated fields, got {0}")]
    Fields(usize),
    #[error("{field} {value}: {reason}")]
    BadId {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("unknown stream {0} (want stdin, stdout, stderr or tty)")]
    UnknownStream(String),
    #[error("closed before the header's newline")]
    Closed,
    #[error("no whole header by the deadline")]
    Timeout,
    #[error("reading the header: {0}")]
    Io(String),
}

/// Quotes at most 32 bytes of host data for a log line.
fn quote(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(32)];
    let mut s = format!("{:?}", String::from_utf8_lossy(cut));
    if bytes.len() > cut.len() {
        s.push_str("...");
    }
    s
}

/// Checks a container or exec id: 1..=[`ID_MAX`] of `[A-Za-z0-9_.-]`.
pub fn check_id(field: &'static str, id: &[u8]) -> Result<(), HeaderError> {
    let bad = |reason| HeaderError::BadId {
        field,
        value: quote(id),
        reason,
    };
    if id.is_empty() {
        return Err(bad("empty"));
    }
    if id.len() > ID_MAX {
        return Err(bad("longer than 64 bytes"));
    }
    if !husk_agent_protocol::stdio::id_chars_ok(id) {
        return Err(bad("not all of [A-Za-z0-9_.-]"));
    }
    Ok(())
}

/// Parses one header line, its newline removed.
pub fn parse_header(line: &[u8]) -> Result<StreamKey, HeaderError> {
    if line.len() >= HEADER_MAX {
        return Err(HeaderError::TooLong);
    }
    let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    let [cid, eid, stream] = fields[..] else {
        return Err(HeaderError::Fields(fields.len()));
    };
    check_id("container id", cid)?;
    check_id("exec id", eid)?;
    let stream =
        StreamKind::from_name(stream).ok_or_else(|| HeaderError::UnknownStream(quote(stream)))?;
    // Checked above: ASCII only.
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok(StreamKey {
        process: ProcessKey::new(text(cid), text(eid)),
        stream,
    })
}

/// What one read of a pending connection came to.
#[derive(Debug)]
pub enum Progress {
    /// Not whole yet: poll again.
    More,
    Done(StreamKey),
    Failed(HeaderError),
}

/// A connection whose header has not all arrived.
///
/// Each readiness costs two syscalls: `recv(MSG_PEEK)` of what is there,
/// then a `recv` of exactly the bytes up to and including the newline (or
/// of everything peeked when it holds no newline: all header then). Bytes
/// after the newline stay in the socket for the stream.
pub struct HeaderReader {
    pub(crate) sock: OwnedFd,
    buf: Vec<u8>,
    pub(crate) deadline: Instant,
}

impl HeaderReader {
    pub fn new(sock: OwnedFd, deadline: Instant) -> Self {
        Self {
            sock,
            buf: Vec::with_capacity(HEADER_MAX),
            deadline,
        }
    }

    /// Reads what has arrived (the socket is non-blocking).
    pub fn advance(&mut self) -> Progress {
        let mut peek = [0u8; HEADER_MAX];
        let room = HEADER_MAX - self.buf.len();
        let fd = self.sock.as_raw_fd();
        let n = match sys::recv(fd, &mut peek[..room], libc::MSG_PEEK) {
            Ok(0) => return Progress::Failed(HeaderError::Closed),
            Ok(n) => n,
            Err(e) if sys::retry_later(&e) => return Progress::More,
            Err(e) => return Progress::Failed(HeaderError::Io(e.to_string())),
        };
        let newline = peek[..n].iter().position(|&b| b == b'\n');
        let take = newline.map_or(n, |i| i + 1);
        // Consume exactly what was peeked (the socket has only one reader,
        // so those bytes are still first).
        match sys::recv(fd, &mut peek[..take], 0) {
            Ok(got) if got == take => {}
            Ok(_) => return Progress::Failed(HeaderError::Io("short read after peek".into())),
            Err(e) => return Progress::Failed(HeaderError::Io(e.to_string())),
        }
        self.buf.extend_from_slice(&peek[..take]);
        match newline {
            Some(_) => {
                let line = &self.buf[..self.buf.len() - 1];
                match parse_header(line) {
                    Ok(key) => Progress::Done(key),
                    Err(e) => Progress::Failed(e),
                }
            }
            None if self.buf.len() >= HEADER_MAX => Progress::Failed(HeaderError::TooLong),
            None => Progress::More,
        }
    }

    /// The socket, once the header was read.
    pub fn into_socket(self) -> OwnedFd {
        self.sock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &str, e: &str, s: StreamKind) -> StreamKey {
        StreamKey {
            process: ProcessKey::new(c, e),
            stream: s,
        }
    }

    #[test]
    fn good_headers() {
        assert_eq!(
            parse_header(b"web-1 - stdout"),
            Ok(key("web-1", "-", StreamKind::Stdout))
        );
        assert_eq!(
            parse_header(b"c exec.2_A tty"),
            Ok(key("c", "exec.2_A", StreamKind::Tty))
        );
        let long = "a".repeat(ID_MAX);
        let line = format!("{long} {long} stderr");
        assert_eq!(
            parse_header(line.as_bytes()),
            Ok(key(&long, &long, StreamKind::Stderr))
        );
        for s in StreamKind::ALL {
            let line = format!("c e {s}");
            assert_eq!(parse_header(line.as_bytes()), Ok(key("c", "e", s)));
        }
    }

    #[test]
    fn bad_headers() {
        let long = "a".repeat(ID_MAX + 1);
        let too_long_id = format!("{long} - stdin");
        let cases: Vec<&[u8]> = vec![
            b"",
            b"c - ",
            b"c -",
            b"c  stdout",
            b" c - stdout",
            b"c - stdout ",
            b"c - stdout\r",
            b"c - STDOUT",
            b"c - stdio",
            b"c/d - stdout",
            b"c \xff stdout",
            b"c - stdout extra",
            b"c\t- stdout",
            too_long_id.as_bytes(),
        ];
        for c in cases {
            assert!(parse_header(c).is_err(), "{:?}", String::from_utf8_lossy(c));
        }
        assert_eq!(parse_header(&[b'a'; 300]), Err(HeaderError::TooLong));
        assert_eq!(parse_header(b"a b"), Err(HeaderError::Fields(2)));
    }

    #[test]
    fn error_messages_quote_little() {
        let line = format!("{} - stdin", "é".repeat(60));
        let msg = parse_header(line.as_bytes()).unwrap_err().to_string();
        assert!(msg.len() < 120, "{msg}");
        assert!(msg.contains("container id"), "{msg}");
    }

    /// Random and mutated lines: the parser never panics, and whatever it
    /// accepts is well formed.
    #[test]
    fn fuzz_parser_with_random_bytes() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: [&[u8]; 3] = [b"c - stdout", b"ctr-1 exec.9 tty", b"x y stdin"];
        for i in 0..200_000u32 {
            let len = (next() % 260) as usize;
            let line: Vec<u8> = if i % 2 == 0 {
                // Mostly the characters that matter.
                let alphabet = b"ab-_. \n\x00\xffstdinoutrrty9";
                (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect()
            } else {
                let mut l = seeds[(next() % 3) as usize].to_vec();
                for _ in 0..(next() % 4) {
                    let at = (next() % (l.len() as u64 + 1)) as usize;
                    match next() % 3 {
                        0 if at < l.len() => {
                            l.remove(at);
                        }
                        1 => l.insert(at, next() as u8),
                        _ if at < l.len() => l[at] = next() as u8,
                        _ => {}
                    }
                }
                l
            };
            if let Ok(k) = parse_header(&line) {
                assert!(line.len() < HEADER_MAX);
                assert!(check_id("c", k.process.container_id.as_bytes()).is_ok());
                assert!(check_id("e", k.process.exec_id.as_bytes()).is_ok());
                let again = format!(
                    "{} {} {}",
                    k.process.container_id, k.process.exec_id, k.stream
                );
                assert_eq!(again.as_bytes(), &line[..]);
            }
        }
    }
}
