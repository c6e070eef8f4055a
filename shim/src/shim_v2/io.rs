//! A process's stdio between containerd and the guest: containerd's FIFOs
//! (or a `file://` log) on one side, the process's vsock streams on the
//! other, one thread per direction.
//!
//! - Output FIFOs are opened write-only and non-blocking, and written with
//!   poll(2) and a stop flag: a reader that stops reading holds the process
//!   back (back-pressure, as with runc); a reader that goes away (a
//!   containerd restart) is waited for, the unwritten output kept, until a
//!   reader opens the FIFO again (containerd reconnecting) or the copy is
//!   stopped ([`IoCopy::stop`]: Delete, the shim's end), which ends the
//!   thread and closes the FIFO whatever the reader does.
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
/// How often a blocked output thread looks at its stop flag, and for a
/// reader of a FIFO that has none.
const OUTPUT_POLL_MS: i32 = 100;

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

/// Where output goes.
enum Output {
    /// A `file://` URI's file, appended to.
    File(File),
    /// A FIFO (or any file) by path, written non-blocking; `None` while
    /// nobody reads it.
    Fifo { path: String, file: Option<File> },
}

/// Opens `path` for writing without blocking: None when it is a FIFO that
/// nobody reads (ENXIO).
fn open_writer(path: &str) -> io::Result<Option<File>> {
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens where output goes: a FIFO (or any file) by path; a `file://` URI
/// appended to (created).
fn open_output(path: &str) -> io::Result<Output> {
    if let Some(file) = path.strip_prefix("file://") {
        return OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(file)
            .map(Output::File);
    }
    if path.contains("://") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{path}: only FIFO paths and file:// URIs are supported"),
        ));
    }
    Ok(Output::Fifo {
        path: path.to_owned(),
        file: open_writer(path)?,
    })
}

/// Waits up to `ms` for `events` on `fd`.
fn poll_fd(fd: &File, events: libc::c_short, ms: i32) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    let r = unsafe { libc::poll(&mut pfd, 1, ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

impl Output {
    /// Writes all of `data`, unless `stop` is set first (then Ok(false)).
    fn write_all(&mut self, mut data: &[u8], stop: &AtomicBool) -> io::Result<bool> {
        let (path, file) = match self {
            Self::File(f) => return f.write_all(data).map(|()| true),
            Self::Fifo { path, file } => (path, file),
        };
        let mut waiting_for_reader = false;
        while !data.is_empty() {
            if stop.load(Ordering::SeqCst) {
                return Ok(false);
            }
            let Some(f) = file.as_ref() else {
                *file = open_writer(path)?;
                if file.is_none() {
                    std::thread::sleep(Duration::from_millis(OUTPUT_POLL_MS as u64));
                }
                continue;
            };
            let mut w = f;
            match w.write(data) {
                Ok(n) => {
                    data = &data[n..];
                    waiting_for_reader = false;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_fd(f, libc::POLLOUT, OUTPUT_POLL_MS)?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    // The reader went away. Our fd keeps what it had not
                    // read in the FIFO; a new reader (containerd back)
                    // gets it, and the rest.
                    if !waiting_for_reader {
                        tracing::debug!(fifo = %path, "output reader gone; waiting for one");
                        waiting_for_reader = true;
                    }
                    std::thread::sleep(Duration::from_millis(OUTPUT_POLL_MS as u64));
                    if let Some(again) = open_writer(path)? {
                        *file = Some(again);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
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
    /// Tells the output threads to end.
    stop_out: Arc<AtomicBool>,
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
            stop_out: Arc::new(AtomicBool::new(false)),
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
            let stop = me.stop_out.clone();
            std::thread::Builder::new()
                .name("husk-io-out".into())
                .spawn(move || {
                    if let Err(e) = copy_out(stream, file, &stop) {
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
        self.stop_out.store(true, Ordering::SeqCst);
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

/// Copies the stream to the output until the stream ends or `stop`.
fn copy_out(mut from: UnixStream, mut to: Output, stop: &AtomicBool) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if !to.write_all(&buf[..n], stop)? {
            return Ok(());
        }
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

    /// Our fds open on `path`.
    fn fds_on(path: &str) -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == Path::new(path)))
            .count()
    }

    fn read_for(f: &mut File, want: usize) -> Vec<u8> {
        let end = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < want {
            match f.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < end, "{} of {want} bytes", got.len());
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    /// containerd's reader goes away for good while the process writes
    /// more than the FIFO holds: the output thread waits for a reader,
    /// and `stop` ends it and closes the FIFO (no thread or fd is left).
    #[test]
    fn output_thread_ends_on_stop_without_a_reader() {
        let dir = temp_dir("noreader");
        let paths = StdioPaths {
            stdout: mkfifo(&dir, "out"),
            ..Default::default()
        };
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&paths.stdout)
            .unwrap();
        let (out_host, mut out_guest) = UnixStream::pair().unwrap();
        let streams = ProcessStreams {
            stdout: Some(out_host),
            ..Default::default()
        };
        let mut io = IoCopy::start("t", streams, &paths).unwrap();
        assert_eq!(fds_on(&paths.stdout), 2, "ours and the reader's");
        drop(reader);
        let writer = std::thread::spawn(move || {
            let _ = out_guest.write_all(&vec![b'x'; 1 << 20]);
        });
        std::thread::sleep(Duration::from_millis(300));
        assert!(!io.finish(Duration::from_millis(100)), "nobody read it all");
        io.stop();
        assert!(io.finish(Duration::from_secs(5)), "the output thread ended");
        writer.join().unwrap();
        assert_eq!(fds_on(&paths.stdout), 0, "the FIFO is closed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The reader goes away (containerd restarts) and a new one opens the
    /// FIFO: what the process wrote meanwhile reaches the new reader.
    #[test]
    fn output_resumes_for_a_new_reader() {
        let dir = temp_dir("reopen");
        let paths = StdioPaths {
            stdout: mkfifo(&dir, "out"),
            ..Default::default()
        };
        let open_reader = || {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&paths.stdout)
                .unwrap()
        };
        let mut r1 = open_reader();
        let (out_host, mut out_guest) = UnixStream::pair().unwrap();
        let streams = ProcessStreams {
            stdout: Some(out_host),
            ..Default::default()
        };
        let mut io = IoCopy::start("t", streams, &paths).unwrap();
        out_guest.write_all(b"first\n").unwrap();
        assert_eq!(read_for(&mut r1, 6), b"first\n");
        drop(r1);
        out_guest.write_all(b"second\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let mut r2 = open_reader();
        assert_eq!(read_for(&mut r2, 7), b"second\n");
        drop(out_guest);
        assert!(io.finish(Duration::from_secs(5)));
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
