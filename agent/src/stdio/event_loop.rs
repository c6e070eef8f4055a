//! The stdio thread: one poll(2) loop over the listener, connections whose
//! header is still arriving, and every flow of every attached process.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flow::{Buf, Dir, Flow};
use super::header::{HeaderReader, Progress};
use super::pump::{Command, DrainState, Drained, Entry, Shared};
use super::registry::{Refused, Registry};
use super::sys;
use crate::log::log;
use crate::rpc::listen;

/// Connections whose header is still arriving, at most; more are closed.
pub const MAX_PENDING: usize = 64;
/// Connections accepted per wake-up of the listener, at most (the rest
/// wait for the next round, so streams already attached are not held up).
const ACCEPT_BURST: usize = 16;
/// Buffers kept for reuse (each touched once, then reused: no new page
/// faults for the next process).
const SPARE_MAX: usize = 8;
/// How long the listener rests after accept failed (EMFILE and the like:
/// the connection stays queued and poll would report it again at once).
const ACCEPT_REST: Duration = Duration::from_millis(100);

/// What one pollfd stands for.
#[derive(Clone, Copy)]
enum Tag {
    Wake,
    Listener,
    Pending(usize),
    Read(usize, usize),
    Write(usize, usize),
}

/// A process the loop serves.
struct Proc {
    id: u64,
    entry_key: super::ProcessKey,
    flows: Vec<Flow>,
    drain: Arc<DrainState>,
    has_output: bool,
    /// Set when abandoned: past it, whatever is left is dropped.
    flush_until: Option<Instant>,
}

impl Proc {
    /// How it ended, once it has.
    fn finished(&self, now: Instant) -> Option<Drained> {
        let forced = self.flush_until.is_some();
        let how = if forced {
            Drained::Forced
        } else {
            Drained::Complete
        };
        if self.flush_until.is_some_and(|t| now >= t) {
            return Some(Drained::Forced);
        }
        let done = if self.has_output {
            self.flows
                .iter()
                .filter(|f| f.dir.is_output())
                .all(Flow::is_done)
        } else {
            self.flows.iter().all(Flow::is_done)
        };
        done.then_some(how)
    }
}

pub(crate) struct EventLoop {
    pub listener: OwnedFd,
    pub shared: Arc<Shared>,
    pub registry: Arc<Registry>,
    pub header_deadline: Duration,
    /// Warm buffers to start with.
    pub spare: Vec<Buf>,
}

struct State {
    pending: Vec<HeaderReader>,
    procs: Vec<Proc>,
    listener_rest: Option<Instant>,
    registry_due: Option<Instant>,
}

impl EventLoop {
    pub fn run(mut self) {
        crate::rpc::warm_thread();
        let mut st = State {
            pending: Vec::with_capacity(MAX_PENDING),
            procs: Vec::with_capacity(16),
            listener_rest: None,
            registry_due: None,
        };
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(64);
        let mut tags: Vec<Tag> = Vec::with_capacity(64);
        let mut ready_pending: Vec<usize> = Vec::with_capacity(MAX_PENDING);
        loop {
            let now = Instant::now();
            fds.clear();
            tags.clear();
            let mut add = |fd: libc::c_int, events: libc::c_short, tag: Tag| {
                fds.push(libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                });
                tags.push(tag);
            };
            add(self.shared.wake.as_raw_fd(), libc::POLLIN, Tag::Wake);
            if st.listener_rest.is_none_or(|t| now >= t) {
                st.listener_rest = None;
                add(self.listener.as_raw_fd(), libc::POLLIN, Tag::Listener);
            }
            for (i, p) in st.pending.iter().enumerate() {
                add(p.sock.as_raw_fd(), libc::POLLIN, Tag::Pending(i));
            }
            for (pi, p) in st.procs.iter().enumerate() {
                for (fi, f) in p.flows.iter().enumerate() {
                    let want = f.interest();
                    if let Some(fd) = want.read {
                        add(fd, libc::POLLIN, Tag::Read(pi, fi));
                    }
                    if let Some((fd, events)) = want.write {
                        add(fd, events, Tag::Write(pi, fi));
                    }
                }
            }
            let timeout = poll_timeout(st.next_timer(), now);
            match sys::poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EINVAL/ENOMEM: nothing here can fix it; stop rather
                    // than spin. Streams attached are closed, waiters told.
                    log(&format!("stdio: poll: {e}; stopping"));
                    break;
                }
            }
            let mut woken = false;
            let mut accept = false;
            ready_pending.clear();
            for (pfd, tag) in fds.iter().zip(&tags) {
                if pfd.revents == 0 {
                    continue;
                }
                match *tag {
                    Tag::Wake => woken = true,
                    Tag::Listener => accept = true,
                    Tag::Pending(i) => ready_pending.push(i),
                    Tag::Read(p, f) => st.procs[p].flows[f].on_readable(),
                    Tag::Write(p, f) => st.procs[p].flows[f].on_writable(pfd.revents),
                }
            }
            let now = Instant::now();
            // Backwards, so swap_remove only moves readers already seen.
            for &i in ready_pending.iter().rev() {
                match st.pending[i].advance() {
                    Progress::More => {}
                    progress => {
                        let reader = st.pending.swap_remove(i);
                        self.finish_header(&mut st, reader, progress, now);
                    }
                }
            }
            st.pending.retain(|p| {
                let keep = now < p.deadline;
                if !keep {
                    log("stdio: refused a stream: no whole header by the deadline");
                }
                keep
            });
            if accept {
                self.accept(&mut st, now);
            }
            if woken {
                sys::drain_eventfd(self.shared.wake.as_raw_fd());
                if !self.commands(&mut st, now) {
                    break;
                }
            }
            self.settle(&mut st, now);
            if st.registry_due.is_some_and(|t| now >= t) {
                st.registry_due = self.registry.expire(now);
            }
        }
        self.shared.stop();
        for p in st.procs {
            p.drain.finish(Drained::Forced);
        }
    }

    fn accept(&mut self, st: &mut State, now: Instant) {
        for _ in 0..ACCEPT_BURST {
            let sock = match listen::accept(&self.listener) {
                Ok(Some(sock)) => sock,
                Ok(None) => return,
                Err(e) => {
                    log(&format!("stdio: accept: {e}"));
                    st.listener_rest = Some(now + ACCEPT_REST);
                    return;
                }
            };
            let mut reader = HeaderReader::new(sock, now + self.header_deadline);
            // The host writes its header right after connecting: it is
            // usually there already, which saves a poll round.
            match reader.advance() {
                Progress::More if st.pending.len() >= MAX_PENDING => {
                    log(&format!(
                        "stdio: refused a stream: {MAX_PENDING} headers pending"
                    ));
                }
                Progress::More => st.pending.push(reader),
                progress => self.finish_header(st, reader, progress, now),
            }
        }
    }

    fn finish_header(&self, st: &mut State, reader: HeaderReader, p: Progress, now: Instant) {
        let key = match p {
            Progress::Done(key) => key,
            Progress::Failed(e) => return log(&format!("stdio: refused a stream: {e}")),
            Progress::More => return,
        };
        match self.registry.file(key.clone(), reader.into_socket()) {
            Ok(()) => {
                if st.registry_due.is_none() {
                    st.registry_due = self.registry.expire(now);
                }
            }
            Err((_sock, Refused::Duplicate)) => {
                log(&format!(
                    "stdio: {key}: already attached; the newer connection is closed"
                ));
            }
            Err((_sock, Refused::Full)) => {
                log(&format!("stdio: {key}: too many streams waiting; closed"));
            }
        }
    }

    /// Runs the queued commands; false on stop.
    fn commands(&mut self, st: &mut State, now: Instant) -> bool {
        for cmd in self.shared.take_commands() {
            match cmd {
                Command::Stop => return false,
                Command::Attach(entry) => {
                    let proc = self.proc_from(*entry);
                    st.procs.push(proc);
                }
                Command::CloseStdin(id) => {
                    if let Some(p) = st.procs.iter_mut().find(|p| p.id == id) {
                        p.flows
                            .iter_mut()
                            .filter(|f| !f.dir.is_output())
                            .for_each(Flow::end_input);
                    }
                }
                Command::Abandon(id) => {
                    if let Some(p) = st.procs.iter_mut().find(|p| p.id == id) {
                        p.flows.iter_mut().for_each(Flow::abandon);
                        p.flush_until = Some(now + self.shared.flush_bound);
                    }
                }
            }
        }
        true
    }

    fn buf(&mut self) -> Buf {
        self.spare.pop().unwrap_or_default()
    }

    fn proc_from(&mut self, e: Entry) -> Proc {
        let mut flows = Vec::with_capacity(3);
        let io = e.io;
        for (pipe, sock) in [io.stdout, io.stderr].into_iter().flatten() {
            let buf = self.buf();
            flows.push(Flow::new(Dir::Out, Arc::new(pipe), Arc::new(sock), buf));
        }
        if let Some((sock, pipe)) = io.stdin {
            let buf = self.buf();
            flows.push(Flow::new(Dir::In, Arc::new(sock), Arc::new(pipe), buf));
        }
        if let Some((master, sock)) = e.tty {
            let sock = Arc::new(sock);
            let out = self.buf();
            flows.push(Flow::new(
                Dir::TtyOut,
                Arc::clone(&master),
                Arc::clone(&sock),
                out,
            ));
            let inp = self.buf();
            flows.push(Flow::new(Dir::TtyIn, sock, master, inp));
        }
        let has_output = flows.iter().any(|f| f.dir.is_output());
        Proc {
            id: e.id,
            entry_key: e.key,
            flows,
            drain: e.drain,
            has_output,
            flush_until: None,
        }
    }

    /// Finishes flows whose source ended, and lets go of processes whose
    /// output is all delivered (or abandoned and past its flush bound).
    fn settle(&mut self, st: &mut State, now: Instant) {
        let mut i = 0;
        while i < st.procs.len() {
            let p = &mut st.procs[i];
            for f in &mut p.flows {
                if let Err(e) = f.settle() {
                    log(&format!(
                        "stdio: {}: shutting a stream down: {e}",
                        p.entry_key
                    ));
                }
            }
            let Some(how) = p.finished(now) else {
                i += 1;
                continue;
            };
            let p = st.procs.swap_remove(i);
            self.shared.forget(&p.entry_key, p.id);
            for f in p.flows {
                let buf = f.into_buf();
                if self.spare.len() < SPARE_MAX {
                    self.spare.push(buf);
                }
            }
            p.drain.finish(how);
        }
    }
}

impl State {
    fn next_timer(&self) -> Option<Instant> {
        let pending = self.pending.iter().map(|p| p.deadline);
        let flush = self.procs.iter().filter_map(|p| p.flush_until);
        pending
            .chain(flush)
            .chain(self.listener_rest)
            .chain(self.registry_due)
            .min()
    }
}

/// poll's timeout for a timer due at `due`: none when there is no timer
/// (the thread sleeps until an fd is ready), rounded up to whole
/// milliseconds so it never wakes just before its timer.
fn poll_timeout(due: Option<Instant>, now: Instant) -> libc::c_int {
    match due {
        None => -1,
        Some(t) => {
            let d = t.saturating_duration_since(now);
            let ms = d.as_micros().div_ceil(1000);
            libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
        }
    }
}
