//! The RPC layer's handle on the pump thread: hand it a process's pipes and
//! sockets ([`Pump::attach`]), end its stdin ([`Pump::close_stdin`]), resize
//! its terminal ([`Pump::resize`]), and wait until its output reached the
//! host ([`DrainHandle::wait_drained`]).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::header::ProcessKey;
use super::{sys, StdioError};

/// A process's stdio as the pump takes it: the agent's ends of the
/// process's pipes (or its pty master) and the host's sockets. Every fd is
/// made non-blocking here; the process's own ends must already be closed
/// in the agent (else the pump never sees end of file).
#[derive(Debug)]
pub struct ProcessIo {
    pub key: ProcessKey,
    /// (read end of the stdout pipe, stdout socket).
    pub stdout: Option<(OwnedFd, OwnedFd)>,
    /// (read end of the stderr pipe, stderr socket).
    pub stderr: Option<(OwnedFd, OwnedFd)>,
    /// (stdin socket, write end of the stdin pipe).
    pub stdin: Option<(OwnedFd, OwnedFd)>,
    /// (pty master, tty socket); excludes the three above.
    pub tty: Option<(OwnedFd, OwnedFd)>,
}

/// How a process's output ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every byte reached its socket, and each socket was shut down for
    /// writing (the host read EOF).
    Complete,
    /// The deadline passed (something still held a pipe, or the host did
    /// not read): what was buffered was written if the host took it within
    /// the flush bound, the sockets were closed and the pipes released.
    Forced,
}

/// What the loop is asked to do (queued, then the eventfd is kicked).
pub(crate) enum Command {
    Attach(Box<Entry>),
    CloseStdin(u64),
    Abandon(u64),
    /// The server is dropped: end the loop.
    Stop,
}

/// A process's flows as the loop holds them; built by [`Pump::attach`].
pub(crate) struct Entry {
    pub id: u64,
    pub key: ProcessKey,
    /// Its `tty` is taken out into [`Entry::tty`].
    pub io: ProcessIo,
    /// (pty master, shared with resizes; tty socket).
    pub tty: Option<(Arc<OwnedFd>, OwnedFd)>,
    pub drain: Arc<DrainState>,
}

/// Set once by the loop when the process's streams are all closed.
pub(crate) struct DrainState {
    done: Mutex<Option<Drained>>,
    cv: Condvar,
}

impl DrainState {
    fn new() -> Self {
        Self {
            done: Mutex::new(None),
            cv: Condvar::new(),
        }
    }

    pub(crate) fn finish(&self, how: Drained) {
        let mut d = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        d.get_or_insert(how);
        self.cv.notify_all();
    }

    /// Waits until finished or `deadline`.
    fn wait(&self, deadline: Instant) -> Option<Drained> {
        let mut d = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(how) = *d {
                return Some(how);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            d = self
                .cv
                .wait_timeout(d, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// A process the loop serves, as the handle sees it.
struct Active {
    id: u64,
    master: Option<Arc<OwnedFd>>,
}

/// State shared by the handles and the loop.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Kicked after every command.
    pub(crate) wake: OwnedFd,
    /// How long an abandoned output may still take to flush.
    pub(crate) flush_bound: Duration,
}

#[derive(Default)]
struct Inner {
    commands: VecDeque<Command>,
    active: HashMap<ProcessKey, Active>,
    next_id: u64,
    stopped: bool,
}

impl Shared {
    pub(crate) fn new(wake: OwnedFd, flush_bound: Duration) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            wake,
            flush_bound,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn send(&self, mut inner: MutexGuard<'_, Inner>, cmd: Command) {
        inner.commands.push_back(cmd);
        drop(inner);
        sys::kick(self.wake.as_raw_fd());
    }

    /// The commands queued since the last call.
    pub(crate) fn take_commands(&self) -> VecDeque<Command> {
        std::mem::take(&mut self.lock().commands)
    }

    /// The loop let go of process `id`.
    pub(crate) fn forget(&self, key: &ProcessKey, id: u64) {
        let mut inner = self.lock();
        if inner.active.get(key).is_some_and(|a| a.id == id) {
            inner.active.remove(key);
        }
    }

    /// Asks the loop to end.
    pub(crate) fn request_stop(&self) {
        let inner = self.lock();
        self.send(inner, Command::Stop);
    }

    /// The loop stopped: nothing more is attached.
    pub(crate) fn stop(&self) {
        let mut inner = self.lock();
        inner.stopped = true;
        inner.active.clear();
    }
}

/// A handle on the pump thread (cheap to clone).
#[derive(Clone)]
pub struct Pump {
    pub(crate) shared: Arc<Shared>,
}

/// Waits for one process's output to reach the host; see
/// [`wait_drained`](Self::wait_drained).
pub struct DrainHandle {
    id: u64,
    state: Arc<DrainState>,
    shared: Arc<Shared>,
}

impl Pump {
    /// Hands a process's stdio to the pump thread, which copies it until
    /// the process side ends. Errors: `tty` with any of the three others,
    /// a process already attached (its streams are not done), an fd that
    /// cannot be made non-blocking, or the pump stopped.
    ///
    /// Cost: one fcntl per fd, one eventfd write, and one wake-up of the
    /// pump thread.
    pub fn attach(&self, mut io: ProcessIo) -> Result<DrainHandle, StdioError> {
        if io.tty.is_some() && (io.stdin.is_some() || io.stdout.is_some() || io.stderr.is_some()) {
            return Err(StdioError::TtyWithOthers);
        }
        let pairs = [&io.stdout, &io.stderr, &io.stdin, &io.tty];
        for (a, b) in pairs.into_iter().flatten() {
            for fd in [a, b] {
                sys::set_nonblocking(fd.as_raw_fd()).map_err(|source| StdioError::Io {
                    what: "making a stdio fd non-blocking",
                    source,
                })?;
            }
        }
        let mut inner = self.shared.lock();
        if inner.stopped {
            return Err(StdioError::Stopped);
        }
        if inner.active.contains_key(&io.key) {
            return Err(StdioError::AlreadyAttached(io.key));
        }
        inner.next_id += 1;
        let id = inner.next_id;
        let tty = io.tty.take().map(|(m, s)| (Arc::new(m), s));
        let master = tty.as_ref().map(|(m, _)| Arc::clone(m));
        inner.active.insert(io.key.clone(), Active { id, master });
        let drain = Arc::new(DrainState::new());
        let entry = Entry {
            id,
            key: io.key.clone(),
            io,
            tty,
            drain: Arc::clone(&drain),
        };
        self.shared.send(inner, Command::Attach(Box::new(entry)));
        Ok(DrainHandle {
            id,
            state: drain,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Ends the process's stdin: what the pump holds is still written, then
    /// the stdin pipe is closed (the process reads EOF) and the host's
    /// stdin socket too. With a tty the master stays open (it carries the
    /// output); what the host sends on after this is discarded.
    pub fn close_stdin(&self, key: &ProcessKey) -> Result<(), StdioError> {
        let inner = self.shared.lock();
        let id = inner
            .active
            .get(key)
            .map(|a| a.id)
            .ok_or_else(|| StdioError::NotFound(key.clone()))?;
        self.shared.send(inner, Command::CloseStdin(id));
        Ok(())
    }

    /// Sets the terminal size of the process's pty (TIOCSWINSZ on the
    /// master, from the calling thread: one ioctl, no pump wake-up; the
    /// kernel sends SIGWINCH to the terminal's foreground process group).
    pub fn resize(&self, key: &ProcessKey, rows: u16, cols: u16) -> Result<(), StdioError> {
        let master = {
            let inner = self.shared.lock();
            let active = inner
                .active
                .get(key)
                .ok_or_else(|| StdioError::NotFound(key.clone()))?;
            active
                .master
                .clone()
                .ok_or_else(|| StdioError::NoTty(key.clone()))?
        };
        sys::set_winsize(master.as_raw_fd(), rows, cols).map_err(|source| StdioError::Io {
            what: "TIOCSWINSZ",
            source,
        })
    }
}

impl std::fmt::Debug for DrainHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainHandle")
            .field("id", &self.id)
            .field("drained", &self.is_drained())
            .finish()
    }
}

impl DrainHandle {
    /// Whether the process's streams are all closed, without waiting.
    pub fn is_drained(&self) -> Option<Drained> {
        self.state.wait(Instant::now())
    }

    /// Waits until the process's output reached the host: stdout and
    /// stderr (or the tty) read to end of file on the process side, every
    /// byte written to its socket, each socket shut down for writing. Call
    /// it after the process exited, with `deadline` = exit time +
    /// [`OUTPUT_GRACE`](super::OUTPUT_GRACE): whatever still holds a pipe
    /// then (a background child), the pump stops reading, writes out what
    /// it buffered (for at most the flush bound) and closes everything,
    /// stdin included. A deadline already passed forces that at once
    /// (RemoveContainer).
    ///
    /// Returns within `deadline` + the flush bound (+ a margin, should the
    /// pump thread be gone).
    pub fn wait_drained(&self, deadline: Instant) -> Drained {
        if let Some(how) = self.state.wait(deadline) {
            return how;
        }
        let inner = self.shared.lock();
        if inner.stopped {
            drop(inner);
            self.state.finish(Drained::Forced);
        } else {
            self.shared.send(inner, Command::Abandon(self.id));
        }
        let bound = Instant::now() + self.shared.flush_bound + Duration::from_secs(1);
        self.state.wait(bound).unwrap_or(Drained::Forced)
    }
}
