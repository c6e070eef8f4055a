//! A process's stdio between containerd and the guest: containerd's FIFOs
//! (or a `file://` log) on one side, the process's vsock streams on the
//! other, one thread per direction.
//!
//! - Output FIFOs are opened read-write: the open never blocks, and a
//!   containerd restart (its read end closing) never turns into EPIPE and
//!   lost output; a reader that stops reading holds the process back
//!   instead (back-pressure, as with runc).
//! - stdin is read non-blocking with poll(2): it ends at the writer's EOF,
//!   or, after `CloseIO`, once what containerd wrote is drained.
//! - [`IoCopy::finish`] waits (bounded) until stdout and stderr reached
//!   EOF: an exit is published only after its output is out.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent_client::{ProcessStreams, Stdio, TtySize};

const COPY_BUF: usize = 64 << 10;
/// How often the stdin thread looks at its flags while nothing arrives.
const STDIN_POLL_MS: i32 = 100;

/// Where containerd wants a process's stdio: FIFO paths ("" for none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// The streams to ask the agent for.
    pub fn to_stdio(&self, size: Option<TtySize>) -> Stdio {
        if self.terminal {
            Stdio {
                stdin: !self.stdin.is_empty(),
                stdout: !self.stdout.is_empty(),
                ..Stdio::tty(size)
            }
        } else {
            Stdio {
                terminal: false,
                stdin: !self.stdin.is_empty(),
                stdout: !self.stdout.is_empty(),
                stderr: !self.stderr.is_empty(),
                tty_size: None,
            }
        }
    }
}

/// Opens where output goes: a FIFO (or any file) by path, read-write; a
/// `file://` URI appended to (created).
fn open_output(path: &str) -> io::Result<File> {
    if let Some(file) = path.strip_prefix("file://") {
        return OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(file);
    }
    if path.contains("://") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{path}: only FIFO paths and file:// URIs are supported"),
        ));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// The stdin thread's controls.
#[derive(Default)]
struct StdinCtl {
    /// `CloseIO`: end once drained.
    close: AtomicBool,
    /// Stop now.
    stop: AtomicBool,
}

/// The copying of one process's stdio.
pub struct IoCopy {
    what: String,
    stdin: Option<Arc<StdinCtl>>,
    /// One message per output thread when its stream ended.
    outputs_done: mpsc::Receiver<()>,
    outputs: usize,
    /// Clones of the streams, to cut them.
    streams: Vec<UnixStream>,
}

impl IoCopy {
    /// Starts copying between `streams` (as opened for `paths`) and
    /// containerd's FIFOs. `what` names the process in logs.
    pub fn start(what: &str, streams: ProcessStreams, paths: &StdioPaths) -> io::Result<Self> {
        let (tx, outputs_done) = mpsc::channel();
        let mut me = Self {
            what: what.to_owned(),
            stdin: None,
            outputs_done,
            outputs: 0,
            streams: Vec::new(),
        };
        let ProcessStreams {
            stdin,
            stdout,
            stderr,
            tty,
        } = streams;
        let (input, outputs) = match tty {
            Some(t) => {
                let input = if paths.stdin.is_empty() {
                    None
                } else {
                    Some(t.try_clone()?)
                };
                (input, vec![(t, paths.stdout.as_str())])
            }
            None => {
                let mut outs = Vec::new();
                outs.extend(stdout.map(|s| (s, paths.stdout.as_str())));
                outs.extend(stderr.map(|s| (s, paths.stderr.as_str())));
                (stdin, outs)
            }
        };
        for (stream, path) in outputs {
            let file = open_output(path)
                .map_err(|e| io::Error::new(e.kind(), format!("opening {path}: {e}")))?;
            me.streams.push(stream.try_clone()?);
            let tx = tx.clone();
            let what = me.what.clone();
            std::thread::Builder::new()
                .name("husk-io-out".into())
                .spawn(move || {
                    if let Err(e) = copy_out(stream, file) {
                        tracing::debug!(process = %what, error = %e, "output copy ended");
                    }
                    let _ = tx.send(());
                })?;
            me.outputs += 1;
        }
        if let Some(stream) = input {
            let fifo = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(&paths.stdin)
                .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", paths.stdin)))?;
            me.streams.push(stream.try_clone()?);
            let ctl = Arc::new(StdinCtl::default());
            me.stdin = Some(ctl.clone());
            let what = me.what.clone();
            std::thread::Builder::new()
                .name("husk-io-in".into())
                .spawn(move || {
                    if let Err(e) = copy_in(&fifo, &stream, &ctl) {
                        tracing::debug!(process = %what, error = %e, "stdin copy ended");
                    }
                    // The process reads EOF (a terminal keeps its output
                    // direction open).
                    let _ = stream.shutdown(Shutdown::Write);
                })?;
        }
        Ok(me)
    }

    /// `CloseIO`: the process's stdin ends once what containerd wrote is
    /// through.
    pub fn close_stdin(&self) {
        if let Some(c) = &self.stdin {
            c.close.store(true, Ordering::SeqCst);
        }
    }

    /// Waits until stdout and stderr ended, at most `grace`; says whether
    /// they did.
    pub fn finish(&mut self, grace: Duration) -> bool {
        let end = Instant::now() + grace;
        while self.outputs > 0 {
            let left = end.saturating_duration_since(Instant::now());
            match self.outputs_done.recv_timeout(left) {
                Ok(()) => self.outputs -= 1,
                Err(_) => {
                    tracing::warn!(process = %self.what, "output still open after the exit; cutting it");
                    return false;
                }
            }
        }
        true
    }

    /// Cuts every stream and stops the threads.
    pub fn stop(&mut self) {
        if let Some(c) = &self.stdin {
            c.stop.store(true, Ordering::SeqCst);
        }
        for s in &self.streams {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for IoCopy {
    fn drop(&mut self) {
        self.stop();
    }
}

fn copy_out(mut from: UnixStream, mut to: File) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
    }
}

/// Copies the stdin FIFO (non-blocking) to the stream until its EOF, a
/// `close` with nothing left to read, or `stop`.
fn copy_in(fifo: &File, mut to: &UnixStream, ctl: &StdinCtl) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut reader = fifo;
    loop {
        if ctl.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut pfd = libc::pollfd {
            fd: fifo.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call's duration.
        let r = unsafe { libc::poll(&mut pfd, 1, STDIN_POLL_MS) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            // Nothing to read: after CloseIO, that is the end.
            if ctl.close.load(Ordering::SeqCst) {
                return Ok(());
            }
            continue;
        }
        match reader.read(&mut buf) {
            // EOF: the last writer closed.
            Ok(0) => return Ok(()),
            Ok(n) => to.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if ctl.close.load(Ordering::SeqCst) {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether `path` names something husk can write output to.
pub fn check_output_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with("file://") {
        return Ok(());
    }
    if path.contains("://") {
        return Err(format!(
            "{path}: only FIFO paths and file:// URIs are supported"
        ));
    }
    if !Path::new(path).exists() {
        return Err(format!("{path}: no such file"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::ffi::CString;

    fn mkfifo(dir: &Path, name: &str) -> String {
        let p = dir.join(name);
        let c = CString::new(p.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        p.to_str().unwrap().to_owned()
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("husk-io-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// stdout and stderr reach their FIFOs whole, stdin reaches the
    /// stream, and `finish` returns once the outputs ended.
    #[test]
    fn copies_both_ways() {
        let dir = temp_dir("both");
        let paths = StdioPaths {
            stdin: mkfifo(&dir, "in"),
            stdout: mkfifo(&dir, "out"),
            stderr: mkfifo(&dir, "err"),
            terminal: false,
        };
        // containerd's side: readers of the outputs, a writer of stdin.
        let mut out_r = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&paths.stdout)
            .unwrap();
        let mut err_r = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&paths.stderr)
            .unwrap();
        let (in_host, mut in_guest) = UnixStream::pair().unwrap();
        let (out_host, mut out_guest) = UnixStream::pair().unwrap();
        let (err_host, mut err_guest) = UnixStream::pair().unwrap();
        let streams = ProcessStreams {
            stdin: Some(in_host),
            stdout: Some(out_host),
            stderr: Some(err_host),
            tty: None,
        };
        let mut io = IoCopy::start("t", streams, &paths).unwrap();
        let mut in_w = OpenOptions::new().write(true).open(&paths.stdin).unwrap();
        in_w.write_all(b"typed\n").unwrap();
        drop(in_w);
        let mut got = String::new();
        in_guest.read_to_string(&mut got).unwrap();
        assert_eq!(got, "typed\n");

        let big = vec![b'x'; 300_000];
        let writer = std::thread::spawn(move || {
            out_guest.write_all(&big).unwrap();
            err_guest.write_all(b"oops").unwrap();
        });
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 65536];
        while seen.len() < 300_000 {
            match out_r.read(&mut buf) {
                Ok(n) => seen.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        writer.join().unwrap();
        assert!(io.finish(Duration::from_secs(5)));
        let mut e = String::new();
        let _ = err_r.read_to_string(&mut e);
        assert_eq!(e, "oops");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// CloseIO with a writer that stays open still ends stdin, after what
    /// was written.
    #[test]
    fn close_io_drains_then_ends() {
        let dir = temp_dir("close");
        let paths = StdioPaths {
            stdin: mkfifo(&dir, "in"),
            ..Default::default()
        };
        let (in_host, mut in_guest) = UnixStream::pair().unwrap();
        let streams = ProcessStreams {
            stdin: Some(in_host),
            ..Default::default()
        };
        let mut w = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&paths.stdin)
            .unwrap();
        let io = IoCopy::start("t", streams, &paths).unwrap();
        w.write_all(b"abc").unwrap();
        io.close_stdin();
        let mut got = String::new();
        in_guest.read_to_string(&mut got).unwrap();
        assert_eq!(got, "abc");
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_paths() {
        assert!(check_output_path("").is_ok());
        assert!(check_output_path("file:///tmp/x").is_ok());
        assert!(check_output_path("binary:///usr/bin/logger").is_err());
        assert!(check_output_path("/nonexistent/fifo").is_err());
        let s = StdioPaths {
            stdin: "a".into(),
            stdout: "b".into(),
            stderr: "".into(),
            terminal: false,
        }
        .to_stdio(None);
        assert!(s.stdin && s.stdout && !s.stderr && !s.terminal);
        let t = StdioPaths {
            stdout: "b".into(),
            terminal: true,
            ..Default::default()
        }
        .to_stdio(None);
        assert!(t.terminal && t.stdout && !t.stdin);
    }
}
