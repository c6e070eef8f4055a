//! Attaching to a started process: its streams to the host's, signals to
//! it, until it has ended and its output is all out.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use crate::agent_client::{
    AgentClient, AgentClientError, ProcessExit, ProcessStreams, SignalTarget, Stdio, TtySize,
};

/// Stdio copy buffer.
const COPY_BUF: usize = 64 << 10;

/// Where signals for the process come from ([`super::signals::Signals`]
/// in `husk run`).
pub trait SignalSource: Sync {
    /// The next signal; `None` once [`wake`](Self::wake) was called.
    fn next(&self) -> Option<i32>;
    /// Ends [`next`](Self::next)'s wait.
    fn wake(&self);
}

impl SignalSource for super::signals::Signals {
    fn next(&self) -> Option<i32> {
        super::signals::Signals::next(self)
    }
    fn wake(&self) {
        super::signals::Signals::wake(self)
    }
}

/// The host's side of the process's stdio.
pub struct HostIo {
    /// Copied to the process's stdin (or its terminal) when its [`Stdio`]
    /// has stdin; on a thread that is not joined (it may sit in read(2) on
    /// a terminal forever). Its EOF is the process's.
    pub stdin: Box<dyn Read + Send>,
    pub stdout: Box<dyn Write + Send>,
    pub stderr: Box<dyn Write + Send>,
    /// The size to give the process's terminal on SIGWINCH.
    pub tty_size: fn() -> Option<TtySize>,
}

impl HostIo {
    /// husk's own stdin, stdout and stderr, and its terminal's size.
    pub fn husk() -> Self {
        Self {
            stdin: Box::new(io::stdin()),
            stdout: Box::new(io::stdout()),
            stderr: Box::new(io::stderr()),
            tty_size: super::term::host_size,
        }
    }
}

/// Copies the streams and forwards signals (SIGWINCH as a resize of the
/// terminal, any other to the process) until the process has ended and
/// its stdout and stderr have reached EOF; returns how it ended. When the
/// wait fails, the streams are cut so that this returns.
pub fn attach(
    agent: &AgentClient,
    id: &str,
    mut streams: ProcessStreams,
    stdio: Stdio,
    signals: &dyn SignalSource,
    io: HostIo,
) -> Result<ProcessExit, AgentClientError> {
    let HostIo {
        stdin,
        stdout,
        stderr,
        tty_size,
    } = io;
    let input = if stdio.terminal {
        streams.tty.as_ref().and_then(|t| t.try_clone().ok())
    } else {
        streams.stdin.take()
    };
    if let Some(to) = input.filter(|_| stdio.stdin) {
        let spawned = std::thread::Builder::new()
            .name("husk-run-stdin".into())
            .spawn(move || copy_in(stdin, to));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no stdin thread: the container's stdin ends now");
        }
    }
    let outputs: Vec<(UnixStream, Box<dyn Write + Send>)> = if stdio.terminal {
        streams
            .tty
            .take()
            .map(|t| (t, stdout))
            .into_iter()
            .collect()
    } else {
        [
            streams.stdout.take().map(|s| (s, stdout)),
            streams.stderr.take().map(|s| (s, stderr)),
        ]
        .into_iter()
        .flatten()
        .collect()
    };
    // Clones to cut the copies short when the wait fails (the process's
    // fate unknown, its streams may never end).
    let cutters: Vec<UnixStream> = outputs
        .iter()
        .filter_map(|(s, _)| s.try_clone().ok())
        .collect();
    std::thread::scope(|scope| {
        let forwarder =
            scope.spawn(|| forward_signals(agent, id, stdio.terminal, signals, tty_size));
        let copies: Vec<_> = outputs
            .into_iter()
            .map(|(from, to)| scope.spawn(move || copy_out(from, to)))
            .collect();
        let waited = agent.wait_process(id, None, None);
        if waited.is_err() {
            for c in &cutters {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
        for c in copies {
            let _ = c.join();
        }
        signals.wake();
        let _ = forwarder.join();
        waited
    })
}

/// SIGWINCH → the process's terminal size; other signals → the process.
/// Until [`SignalSource::wake`].
fn forward_signals(
    agent: &AgentClient,
    id: &str,
    terminal: bool,
    signals: &dyn SignalSource,
    tty_size: fn() -> Option<TtySize>,
) {
    while let Some(sig) = signals.next() {
        let sent = if sig == libc::SIGWINCH {
            match tty_size() {
                Some(size) if terminal => agent.resize_tty(id, None, size),
                _ => continue,
            }
        } else {
            agent.signal_process(id, SignalTarget::Init, sig)
        };
        // The process may have just ended.
        if let Err(e) = sent {
            tracing::debug!(container = id, signal = sig, error = %e, "forwarding a signal");
        }
    }
}

/// `from` to the process until EOF, then EOF for the process.
fn copy_in(mut from: Box<dyn Read + Send>, to: UnixStream) {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if (&to).write_all(&buf[..n]).is_err() {
                    // The process is gone.
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading stdin; ending the container's");
                break;
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// A stream to `to` until EOF. When `to` fails (a closed pipe), the rest
/// is drained and dropped: the process must not block on its output.
fn copy_out(from: UnixStream, mut to: Box<dyn Write + Send>) {
    let mut buf = vec![0u8; COPY_BUF];
    let mut sink_ok = true;
    loop {
        let n = match (&from).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if sink_ok {
            if let Err(e) = to.write_all(&buf[..n]).and_then(|()| to.flush()) {
                tracing::debug!(error = %e, "writing the container's output; dropping the rest");
                sink_ok = false;
            }
        }
    }
}

#[cfg(test)]
mod tests;
