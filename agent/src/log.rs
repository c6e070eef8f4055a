//! The agent's log: each line `husk-agent: ...` on the console (stderr) and,
//! once connected, on a stream to the host (vsock CID 2, `LOG_VSOCK_PORT`).
//!
//! Nothing here blocks on the host: the stream is written with
//! `MSG_DONTWAIT`; a line the socket buffer has no room for is dropped (and
//! counted), the tail of a line it took only part of goes out first next time
//! (lines stay whole), and a stream that fails is let go (console only from
//! then on). Until the stream's connect attempt ends, lines are also kept in a
//! small backlog that is replayed to the stream when it connects.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use husk_agent_protocol::LOG_VSOCK_PORT;

use crate::vsock;

/// The prefix of every line.
pub const PREFIX: &str = "husk-agent: ";
/// Lines kept for the stream while it connects.
const BACKLOG_LINES: usize = 64;
/// How long the connect to the host's log port may take.
pub const CONNECT_BOUND: Duration = Duration::from_secs(2);

/// A console + stream logger. [`log`] uses the process-wide one.
pub struct Logger {
    state: Mutex<State>,
}

struct State {
    stream: Option<OwnedFd>,
    /// The unsent tail of a line the stream took only part of; it goes out
    /// before any new line, so lines stay whole on the host side.
    pending: Vec<u8>,
    /// `Some` until the stream connects or is given up on.
    backlog: Option<VecDeque<String>>,
    dropped: u64,
}

/// Why the stream took nothing.
enum SendError {
    /// The socket buffer is full.
    Full,
    /// The stream is broken: let it go.
    Broken(io::Error),
}

impl Logger {
    pub const fn new() -> Self {
        Self {
            state: Mutex::new(State {
                stream: None,
                pending: Vec::new(),
                backlog: Some(VecDeque::new()),
                dropped: 0,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while logging leaves consistent state: keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes `husk-agent: {msg}` to `console` and to the stream.
    pub fn log_to(&self, console: &mut dyn Write, msg: &str) {
        let line = console_line(console, msg);
        let mut st = self.state();
        if let Some(backlog) = st.backlog.as_mut() {
            if backlog.len() == BACKLOG_LINES {
                backlog.pop_front();
            }
            backlog.push_back(line);
            return;
        }
        st.send(console, line.as_bytes());
    }

    /// Streams from now on to `stream` (a connected stream socket), starting
    /// with the backlog.
    pub fn attach(&self, console: &mut dyn Write, stream: OwnedFd) {
        let mut st = self.state();
        st.stream = Some(stream);
        st.pending.clear();
        for line in st.backlog.take().unwrap_or_default() {
            st.send(console, line.as_bytes());
        }
    }

    /// The stream will not come: stop keeping a backlog.
    pub fn give_up_stream(&self) {
        self.state().backlog = None;
    }

    /// Lines the stream could not take (socket buffer full).
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }
}

impl Default for Logger {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    fn send(&mut self, console: &mut dyn Write, line: &[u8]) {
        let Some(fd) = self.stream.as_ref() else {
            return;
        };
        match push(fd, &mut self.pending, line) {
            Ok(true) => {}
            Ok(false) | Err(SendError::Full) => self.dropped += 1,
            Err(SendError::Broken(e)) => {
                self.stream = None;
                self.pending.clear();
                console_line(console, &format!("log stream to the host closed: {e}"));
            }
        }
    }
}

/// Sends the tail of a cut line, then `line`; what the socket does not take
/// of `line` becomes the new tail. `Ok(false)`: `line` was dropped.
fn push(fd: &OwnedFd, pending: &mut Vec<u8>, line: &[u8]) -> Result<bool, SendError> {
    if !pending.is_empty() {
        let n = send_some(fd, pending)?;
        pending.drain(..n);
        if !pending.is_empty() {
            return Ok(false);
        }
    }
    let n = send_some(fd, line)?;
    pending.extend_from_slice(line.get(n..).unwrap_or_default());
    Ok(true)
}

/// Sends what the socket takes now, without waiting.
fn send_some(fd: &OwnedFd, bytes: &[u8]) -> Result<usize, SendError> {
    loop {
        // SAFETY: `bytes` is valid for `bytes.len()` bytes for the call; `fd`
        // is an open socket.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Err(SendError::Full),
            _ => return Err(SendError::Broken(e)),
        }
    }
}

/// Writes `husk-agent: {msg}\n` to `console` in one write (stderr is
/// unbuffered: piecewise writes interleave with other threads' lines).
fn console_line(console: &mut dyn Write, msg: &str) -> String {
    let line = format!("{PREFIX}{msg}\n");
    let _ = console.write_all(line.as_bytes());
    let _ = console.flush();
    line
}

static LOGGER: Logger = Logger::new();

/// Logs one line to the console (stderr) and the host stream.
///
/// Each console byte is guest work: on nested hosts a line costs ~10 ms of
/// emulated UART driver and port exits, so per-container routine lines are
/// not logged here (the shim logs each create and start) and warnings that
/// repeat for every container go through [`log_once`].
pub fn log(msg: &str) {
    LOGGER.log_to(&mut io::stderr(), msg);
}

/// Messages [`log_once`] keeps at most; later new ones are logged each time.
const ONCE_MAX: usize = 256;

/// [`log`], once per distinct message for this guest's life (a warning
/// every container of every pod would repeat, such as a spec field the
/// guest ignores).
pub fn log_once(msg: &str) {
    static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
    {
        let mut seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner);
        if seen.iter().any(|m| m == msg) {
            return;
        }
        if seen.len() < ONCE_MAX {
            seen.push(msg.to_owned());
        }
    }
    log(msg);
}

/// Connects the process-wide logger to the host's log port on a background
/// thread (one try, bounded by [`CONNECT_BOUND`]); boot does not wait.
pub fn connect_host_stream() {
    let spawned =
        std::thread::Builder::new()
            .name("log-vsock".into())
            .spawn(
                || match vsock::connect(vsock::HOST_CID, LOG_VSOCK_PORT, CONNECT_BOUND) {
                    Ok(fd) => LOGGER.attach(&mut io::stderr(), fd),
                    Err(e) => {
                        LOGGER.give_up_stream();
                        console_line(
                            &mut io::stderr(),
                            &format!(
                                "no log stream to the host (vsock {}:{LOG_VSOCK_PORT}): {e}; \
                                 console only",
                                vsock::HOST_CID
                            ),
                        );
                    }
                },
            );
    if let Err(e) = spawned {
        LOGGER.give_up_stream();
        log(&format!("no log stream to the host: thread: {e}"));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::io::Read;
    use std::os::unix::net::UnixStream;

    use super::*;

    fn read_available(s: &mut UnixStream) -> String {
        s.set_nonblocking(true).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn backlog_is_replayed_then_lines_stream() {
        let logger = Logger::new();
        let mut console = Vec::new();
        logger.log_to(&mut console, "early");
        let (ours, mut host) = UnixStream::pair().unwrap();
        logger.attach(&mut console, ours.into());
        logger.log_to(&mut console, "later");
        assert_eq!(
            String::from_utf8(console).unwrap(),
            "husk-agent: early\nhusk-agent: later\n"
        );
        assert_eq!(
            read_available(&mut host),
            "husk-agent: early\nhusk-agent: later\n"
        );
    }

    #[test]
    fn backlog_is_bounded_and_dropped_when_given_up() {
        let logger = Logger::new();
        let mut console = Vec::new();
        for i in 0..BACKLOG_LINES + 10 {
            logger.log_to(&mut console, &format!("line {i}"));
        }
        let (ours, mut host) = UnixStream::pair().unwrap();
        logger.attach(&mut console, ours.into());
        let got = read_available(&mut host);
        assert_eq!(got.lines().count(), BACKLOG_LINES);
        assert!(got.starts_with("husk-agent: line 10\n"), "{got}");

        let logger = Logger::new();
        logger.log_to(&mut console, "lost");
        logger.give_up_stream();
        let (ours, mut host) = UnixStream::pair().unwrap();
        logger.attach(&mut console, ours.into());
        assert_eq!(read_available(&mut host), "");
    }

    #[test]
    fn full_stream_drops_lines_and_closed_stream_is_let_go() {
        let logger = Logger::new();
        let mut console = Vec::new();
        let (ours, host) = UnixStream::pair().unwrap();
        logger.attach(&mut console, ours.into());
        // Nobody reads: the socket buffer fills; logging must not block.
        let long = "x".repeat(1000);
        for _ in 0..2000 {
            logger.log_to(&mut console, &long);
        }
        assert!(logger.dropped() > 0);
        drop(host);
        logger.log_to(&mut Vec::new(), "after close");
        let mut console = Vec::new();
        logger.log_to(&mut console, "console only");
        assert_eq!(
            String::from_utf8(console).unwrap(),
            "husk-agent: console only\n"
        );
    }
}
