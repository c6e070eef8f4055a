//! Containers' stdio streams in the guest.
//!
//! The host opens one vsock connection per stream to
//! [`STDIO_VSOCK_PORT`], writes `<container_id> <exec_id> <stream>\n`
//! ([`header`]), usually before the CreateContainer/ExecProcess request of
//! that process, then raw bytes. The pieces:
//!
//! - [`StdioServer::start`] binds the listener (vsock in the guest, a Unix
//!   socket in host tests: [`StdioConfig::addr`]) and makes the one stdio
//!   thread, before the agent reports ready (a template snapshot holds it
//!   warm, its stack and first buffers touched).
//! - That thread accepts, reads each header (at most [`HEADER_MAX`] bytes,
//!   by [`HEADER_DEADLINE`]) and files the socket in the [`Registry`]
//!   under (container, exec, stream). A bad header, a late one, or a second
//!   stream for a key already waiting: the connection is closed, one log
//!   line. A stream nobody claims within [`UNCLAIMED_TTL`] is closed.
//! - The RPC layer, creating a process, calls [`Registry::claim`] (waits up
//!   to its deadline, [`CLAIM_TIMEOUT`] from the request, for the streams
//!   to land), starts the process on pipes (or a pty), closes the
//!   process's ends, and hands its own ends and the sockets to the
//!   [`Pump`] ([`Pump::attach`]), which returns a [`DrainHandle`].
//! - The same thread copies every stream of every process: one poll(2)
//!   loop over non-blocking fds, a 64 KiB buffer per direction
//!   ([`flow::BUF_SIZE`]); a full buffer stops reading its source, so a
//!   process writing faster than the host reads blocks on its pipe (no
//!   unbounded memory). Idle, it sleeps in poll with no timeout (timers:
//!   pending headers, unclaimed streams, abandoned flushes).
//! - WaitProcess: after the reaper reported the exit,
//!   [`DrainHandle::wait_drained`]`(exit + OUTPUT_GRACE)`; ResizeTty:
//!   [`Pump::resize`]; CloseStdin: [`Pump::close_stdin`].
//!
//! Policies: output the host stops reading (its socket closed: EPIPE) is
//! read on and discarded, so the process never blocks or dies of SIGPIPE
//! (what runc's and kata's shims do); stdin the process stops reading
//! (EPIPE, or its pipe's read end closed) closes the host's stdin socket.
//! A pty master's EIO (all slave fds closed) is its end of file. With a
//! tty, CloseStdin stops writing to the master (no EOF character is
//! sent); the host's later tty bytes are discarded.
//!
//! # Guest cost (syscalls at ~0.3 ms each where the kernel is emulated)
//!
//! Per stream, to attach: a poll wake-up of the listener, `accept4`,
//! `recv(MSG_PEEK)` + `recv` of the header (tried right after accept: it
//! is usually there; else that peek finds nothing and one more poll
//! wake-up comes first), a mutex and a futex wake of a claim waiting:
//! ~4–6 syscalls. No thread, no allocation beyond the header. Measured in
//! a guest on this host: a bad header is refused ~40 ms after the host
//! sent it (round trips through the VMM included).
//! Per process: one `fcntl(O_NONBLOCK)` per fd handed over (2 per stream),
//! an eventfd write + the loop's wake-up (poll, eventfd read); buffers are
//! reused from a small pool (no page faults once warm). At the end: one
//! read returning 0 (or EIO), `shutdown(SHUT_WR)` per output socket, one
//! close per fd.
//! Per 64 KiB of data: one poll wake-up, one `read`, one `send`/`write`
//! (the write is tried straight after the read; a full destination costs
//! one more wake-up for POLLOUT). poll's own cost grows with the number of
//! fds watched (~2 per stream), which stays small for a pod.
//! ResizeTty: one ioctl on the caller's thread. CloseStdin: an eventfd
//! write and one wake-up. Threads: one for all of it, made before ready.

mod event_loop;
pub mod flow;
pub mod header;
mod pump;
pub mod registry;
mod sys;
#[cfg(test)]
mod tests;

use std::io;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use husk_agent_protocol::STDIO_VSOCK_PORT;
use thiserror::Error;

pub use header::{HeaderError, ProcessKey, StreamKey, StreamKind, HEADER_MAX};
pub use pump::{DrainHandle, Drained, ProcessIo, Pump};
pub use registry::{Claimed, Registry, Wanted};

use crate::rpc::listen::{self, Address};
use event_loop::EventLoop;
use flow::Buf;
use pump::Shared;

/// How long a new connection may take to send its whole header.
pub const HEADER_DEADLINE: Duration = Duration::from_secs(5);
/// How long an attached stream waits to be claimed before it is closed
/// (a host that gave up leaks nothing).
pub const UNCLAIMED_TTL: Duration = Duration::from_secs(60);
/// The most streams waiting to be claimed; more are refused.
pub const MAX_UNCLAIMED: usize = 256;
/// How long a create/exec request waits for its streams (the RPC layer's
/// claim deadline, from the request).
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long after a process's exit its output may still arrive, from
/// processes it left holding its pipes; then the streams are closed.
pub const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long output already buffered may take to reach a host once the
/// streams are abandoned (after the grace period).
pub const FLUSH_BOUND: Duration = Duration::from_secs(1);
/// Buffers made (and touched) at start: stdout, stderr and stdin of the
/// first process find them mapped.
const WARM_BUFS: usize = 3;

/// Why a stdio call failed.
#[derive(Debug, Error)]
pub enum StdioError {
    #[error("bind the stdio listener on {addr:?}: {source}")]
    Bind { addr: Address, source: io::Error },
    #[error("start the stdio thread: {0}")]
    Thread(io::Error),
    #[error(transparent)]
    BadId(#[from] HeaderError),
    #[error("a tty stream excludes stdin, stdout and stderr")]
    TtyWithOthers,
    #[error("{process}: streams not attached in time: {}", names(.missing))]
    NotAttached {
        process: ProcessKey,
        missing: Vec<StreamKind>,
    },
    #[error("{0}: stdio already attached")]
    AlreadyAttached(ProcessKey),
    #[error("{0}: no stdio attached")]
    NotFound(ProcessKey),
    #[error("{0}: no tty")]
    NoTty(ProcessKey),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("the stdio thread has stopped")]
    Stopped,
}

fn names(kinds: &[StreamKind]) -> String {
    let v: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    v.join(", ")
}

impl StdioError {
    /// The ttrpc code the RPC layer answers with.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Self::BadId(_) | Self::TtyWithOthers => ttrpc::Code::INVALID_ARGUMENT,
            Self::NotAttached { .. } => ttrpc::Code::DEADLINE_EXCEEDED,
            Self::AlreadyAttached(_) => ttrpc::Code::ALREADY_EXISTS,
            Self::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Self::NoTty(_) => ttrpc::Code::FAILED_PRECONDITION,
            Self::Bind { .. } | Self::Thread(_) | Self::Io { .. } | Self::Stopped => {
                ttrpc::Code::INTERNAL
            }
        }
    }
}

/// Where and how the stdio server runs; [`StdioConfig::guest`] in the
/// agent, a Unix socket and short timers in tests.
#[derive(Debug, Clone)]
pub struct StdioConfig {
    pub addr: Address,
    pub header_deadline: Duration,
    pub unclaimed_ttl: Duration,
    pub max_unclaimed: usize,
    pub flush_bound: Duration,
    pub stack_size: usize,
}

impl StdioConfig {
    /// Vsock port [`STDIO_VSOCK_PORT`], any CID, the default timers.
    pub fn guest() -> Self {
        Self::at(Address::Vsock {
            cid: libc::VMADDR_CID_ANY,
            port: STDIO_VSOCK_PORT,
        })
    }

    /// `addr` with the default timers.
    pub fn at(addr: Address) -> Self {
        Self {
            addr,
            header_deadline: HEADER_DEADLINE,
            unclaimed_ttl: UNCLAIMED_TTL,
            max_unclaimed: MAX_UNCLAIMED,
            flush_bound: FLUSH_BOUND,
            stack_size: 256 * 1024,
        }
    }
}

/// The listener, the registry and the stdio thread. Dropping it stops the
/// thread and closes every stream (tests; the agent keeps it for life).
pub struct StdioServer {
    registry: Arc<Registry>,
    pump: Pump,
    thread: Option<JoinHandle<()>>,
    /// The stdio thread's kernel id (tests watch its CPU time).
    #[cfg_attr(not(test), allow(dead_code))]
    tid: libc::pid_t,
}

impl StdioServer {
    /// Binds the listener and starts the stdio thread; returns once the
    /// thread runs (its stack is warm).
    pub fn start(config: StdioConfig) -> Result<Self, StdioError> {
        let listener = listen::bind(&config.addr).map_err(|source| StdioError::Bind {
            addr: config.addr.clone(),
            source,
        })?;
        let wake = sys::eventfd().map_err(|source| StdioError::Io {
            what: "eventfd",
            source,
        })?;
        let shared = Arc::new(Shared::new(wake, config.flush_bound));
        let registry = Arc::new(Registry::new(config.unclaimed_ttl, config.max_unclaimed));
        let ev = EventLoop {
            listener,
            shared: Arc::clone(&shared),
            registry: Arc::clone(&registry),
            header_deadline: config.header_deadline,
            spare: (0..WARM_BUFS).map(|_| Buf::new()).collect(),
        };
        let (started, running) = std::sync::mpsc::sync_channel::<libc::pid_t>(1);
        let thread = std::thread::Builder::new()
            .name("stdio".into())
            .stack_size(config.stack_size)
            .spawn(move || {
                crate::rpc::warm_thread();
                // SAFETY: gettid takes no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                let _ = started.send(tid);
                ev.run();
            })
            .map_err(StdioError::Thread)?;
        // Fails only if the thread died first; it is joined at drop then.
        let tid = running.recv().unwrap_or(0);
        Ok(Self {
            registry,
            pump: Pump { shared },
            thread: Some(thread),
            tid,
        })
    }

    /// Where streams wait to be claimed.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The handle that attaches processes' stdio.
    pub fn pump(&self) -> &Pump {
        &self.pump
    }
}

impl Drop for StdioServer {
    fn drop(&mut self) {
        self.pump.shared.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
