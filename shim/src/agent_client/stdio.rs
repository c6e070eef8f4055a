//! Containers' stdio streams: one hybrid-vsock connection per stream to
//! the agent's [`STDIO_VSOCK_PORT`], opened by the host before it asks for
//! the process (`CreateContainer` / `ExecProcess`). The host writes one
//! header line, `<container_id> <exec_id> <stream>\n` (exec id
//! [`INIT_EXEC_ID`] for the container's own process; stream `stdin`,
//! `stdout`, `stderr` or `tty`); then the connection carries the stream's
//! bytes. stdout/stderr/tty end with EOF from the agent; the process reads
//! EOF on stdin once the host shuts down its side (or calls
//! [`close_stdin`](super::AgentClient::close_stdin)).

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_agent_protocol::{INIT_EXEC_ID, STDIO_VSOCK_PORT};
use thiserror::Error;

use super::{hybrid_vsock_connect, HandshakeError, Stdio};

/// How long the agent may take to accept a stream (the handshake's reply).
pub const STREAM_CONNECT_BOUND: Duration = Duration::from_secs(10);
pub use husk_agent_protocol::stdio::{StreamKind, ID_MAX};

/// Why a stdio stream could not be opened.
#[derive(Debug, Error)]
pub enum StdioError {
    #[error("container {container:?}: the {what} {id:?} must be 1..={ID_MAX} of [A-Za-z0-9_.-]{}",
        if *what == "exec id" { " and not \"-\"" } else { "" })]
    InvalidId {
        container: String,
        what: &'static str,
        id: String,
    },
    #[error("container {container}{}: {stream} stream: vsock {} (port {STDIO_VSOCK_PORT}): {source}",
        exec_text(exec), path.display())]
    Connect {
        container: String,
        exec: Option<String>,
        stream: StreamKind,
        path: PathBuf,
        #[source]
        source: HandshakeError,
    },
    #[error(
        "container {container}{}: {stream} stream: sending its header: {source}",
        exec_text(exec)
    )]
    Header {
        container: String,
        exec: Option<String>,
        stream: StreamKind,
        #[source]
        source: io::Error,
    },
}

fn exec_text(exec: &Option<String>) -> String {
    exec.as_ref()
        .map(|e| format!(" exec {e}"))
        .unwrap_or_default()
}

/// Whether `id` is a valid container or exec id: 1..=64 of
/// `[A-Za-z0-9_.-]`.
pub fn is_valid_id(id: &str) -> bool {
    husk_agent_protocol::stdio::is_valid_id(id.as_bytes())
}

/// Checks a container id and an exec id (not [`INIT_EXEC_ID`], which names
/// the container's own process).
pub fn validate_ids(container_id: &str, exec_id: Option<&str>) -> Result<(), StdioError> {
    let invalid = |what, id: &str| StdioError::InvalidId {
        container: container_id.to_owned(),
        what,
        id: id.to_owned(),
    };
    if !is_valid_id(container_id) {
        return Err(invalid("container id", container_id));
    }
    match exec_id {
        Some(e) if !is_valid_id(e) || e == INIT_EXEC_ID => Err(invalid("exec id", e)),
        _ => Ok(()),
    }
}

/// The header line of a stream.
pub fn header_line(container_id: &str, exec_id: Option<&str>, stream: StreamKind) -> String {
    husk_agent_protocol::stdio::header_line(container_id, exec_id.unwrap_or(INIT_EXEC_ID), stream)
}

/// Opens one stream of a process (`exec_id` `None`: the container's own)
/// through the sandbox's hybrid-vsock socket `vsock_socket`.
pub fn open_stream(
    vsock_socket: &Path,
    container_id: &str,
    exec_id: Option<&str>,
    stream: StreamKind,
) -> Result<UnixStream, StdioError> {
    validate_ids(container_id, exec_id)?;
    let mut s = hybrid_vsock_connect(vsock_socket, STDIO_VSOCK_PORT, STREAM_CONNECT_BOUND)
        .map_err(|source| StdioError::Connect {
            container: container_id.to_owned(),
            exec: exec_id.map(str::to_owned),
            stream,
            path: vsock_socket.to_owned(),
            source,
        })?;
    s.write_all(header_line(container_id, exec_id, stream).as_bytes())
        .map_err(|source| StdioError::Header {
            container: container_id.to_owned(),
            exec: exec_id.map(str::to_owned),
            stream,
            source,
        })?;
    Ok(s)
}

/// The streams of one process, as its [`Stdio`] asked for them.
#[derive(Debug, Default)]
pub struct ProcessStreams {
    /// Write to it; [`close_stdin`](Self::close_stdin) ends it.
    pub stdin: Option<UnixStream>,
    pub stdout: Option<UnixStream>,
    pub stderr: Option<UnixStream>,
    /// The terminal, both ways (then there is no stdin/stdout/stderr).
    pub tty: Option<UnixStream>,
}

impl ProcessStreams {
    /// Opens every stream `stdio` asks for (with a terminal: the `tty`
    /// stream alone). Call it before `create_container`/`exec_process`.
    pub fn open(
        vsock_socket: &Path,
        container_id: &str,
        exec_id: Option<&str>,
        stdio: &Stdio,
    ) -> Result<Self, StdioError> {
        validate_ids(container_id, exec_id)?;
        let open = |want: bool, kind| {
            want.then(|| open_stream(vsock_socket, container_id, exec_id, kind))
                .transpose()
        };
        if stdio.terminal {
            return Ok(Self {
                tty: open(true, StreamKind::Tty)?,
                ..Self::default()
            });
        }
        Ok(Self {
            stdin: open(stdio.stdin, StreamKind::Stdin)?,
            stdout: open(stdio.stdout, StreamKind::Stdout)?,
            stderr: open(stdio.stderr, StreamKind::Stderr)?,
            tty: None,
        })
    }

    /// Ends the process's stdin (it reads EOF): shuts down the writing
    /// side of the stdin stream, or of the tty stream.
    pub fn close_stdin(&mut self) -> io::Result<()> {
        match (self.stdin.take(), &self.tty) {
            (Some(s), _) => s.shutdown(Shutdown::Write),
            (None, Some(t)) => t.shutdown(Shutdown::Write),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A fake VMM socket: for each connection, checks `CONNECT 1027`,
    /// answers `OK`, reads the header line and hands it with the stream to
    /// `serve`.
    struct FakeVmm {
        dir: PathBuf,
        path: PathBuf,
        server: Option<std::thread::JoinHandle<Vec<String>>>,
    }

    static N: AtomicUsize = AtomicUsize::new(0);

    impl FakeVmm {
        fn new(conns: usize, serve: fn(&str, UnixStream)) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "husk-stdio-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("v.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let server = std::thread::spawn(move || {
                let mut headers = Vec::new();
                let mut servers = Vec::new();
                for _ in 0..conns {
                    let (s, _) = listener.accept().unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    assert_eq!(line, format!("CONNECT {STDIO_VSOCK_PORT}\n"));
                    (&s).write_all(b"OK 1073741825\n").unwrap();
                    let mut header = String::new();
                    r.read_line(&mut header).unwrap();
                    // Nothing buffered past the header: the stream is the
                    // reader's.
                    assert!(r.buffer().is_empty());
                    let h = header.clone();
                    servers.push(std::thread::spawn(move || serve(&h, s)));
                    headers.push(header);
                }
                for s in servers {
                    s.join().unwrap();
                }
                headers
            });
            Self {
                dir,
                path,
                server: Some(server),
            }
        }

        fn headers(mut self) -> Vec<String> {
            self.server.take().unwrap().join().unwrap()
        }
    }

    impl Drop for FakeVmm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn ids() {
        for ok in ["c", "a.b-c_D9", &"x".repeat(64), "-"] {
            assert!(is_valid_id(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "a\n", &"x".repeat(65), "é"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
        assert!(validate_ids("c", None).is_ok());
        assert!(validate_ids("c", Some("e1")).is_ok());
        let e = validate_ids("c", Some("-")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "container \"c\": the exec id \"-\" must be 1..=64 of [A-Za-z0-9_.-] and not \"-\""
        );
        let e = validate_ids("a b", None).unwrap_err();
        assert!(e.to_string().contains("container id \"a b\""), "{e}");
    }

    #[test]
    fn header_lines() {
        assert_eq!(header_line("c1", None, StreamKind::Stdout), "c1 - stdout\n");
        assert_eq!(header_line("c1", Some("e"), StreamKind::Tty), "c1 e tty\n");
    }

    #[test]
    fn pipes_open_one_stream_each_with_its_header() {
        // The fake agent echoes stdin to stdout, and writes stderr.
        fn serve(header: &str, s: UnixStream) {
            if header.ends_with("stdout\n") {
                (&s).write_all(b"out").unwrap();
            } else if header.ends_with("stderr\n") {
                (&s).write_all(b"err").unwrap();
            } else {
                // stdin: read to EOF (the host's shutdown).
                let mut got = Vec::new();
                (&s).read_to_end(&mut got).unwrap();
                assert_eq!(got, b"in");
            }
        }
        let vmm = FakeVmm::new(3, serve);
        let mut p = ProcessStreams::open(&vmm.path, "ctr", None, &Stdio::pipes(true)).unwrap();
        assert!(p.tty.is_none());
        p.stdin.as_ref().unwrap().write_all(b"in").unwrap();
        p.close_stdin().unwrap();
        assert!(p.stdin.is_none());
        let mut out = [0u8; 3];
        p.stdout.as_ref().unwrap().read_exact(&mut out).unwrap();
        assert_eq!(&out, b"out");
        p.stderr.as_ref().unwrap().read_exact(&mut out).unwrap();
        assert_eq!(&out, b"err");
        assert_eq!(
            vmm.headers(),
            ["ctr - stdin\n", "ctr - stdout\n", "ctr - stderr\n"]
        );
    }

    #[test]
    fn a_terminal_is_one_tty_stream() {
        fn serve(_: &str, s: UnixStream) {
            (&s).write_all(b"$ ").unwrap();
        }
        let vmm = FakeVmm::new(1, serve);
        let stdio = Stdio {
            stdin: true,
            stdout: true,
            ..Stdio::tty(None)
        };
        let p = ProcessStreams::open(&vmm.path, "ctr", Some("sh1"), &stdio).unwrap();
        assert!(p.stdin.is_none() && p.stdout.is_none() && p.stderr.is_none());
        let mut prompt = [0u8; 2];
        p.tty.as_ref().unwrap().read_exact(&mut prompt).unwrap();
        assert_eq!(&prompt, b"$ ");
        assert_eq!(vmm.headers(), ["ctr sh1 tty\n"]);
    }

    #[test]
    fn no_streams_no_connections() {
        let p = ProcessStreams::open(Path::new("/nonexistent/v.sock"), "c", None, &Stdio::null())
            .unwrap();
        assert!(p.stdin.is_none() && p.stdout.is_none() && p.tty.is_none());
    }

    #[test]
    fn errors_name_the_container_stream_and_socket() {
        let e = ProcessStreams::open(
            Path::new("/nonexistent/v.sock"),
            "web",
            Some("e1"),
            &Stdio::pipes(false),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with(
                "container web exec e1: stdout stream: vsock /nonexistent/v.sock (port 1027): connect:"
            ),
            "{text}"
        );
        // Bad ids are refused before any connection.
        let e = ProcessStreams::open(Path::new("/nonexistent"), "", None, &Stdio::pipes(false))
            .unwrap_err();
        assert!(matches!(e, StdioError::InvalidId { .. }), "{e}");
    }
}
