//! A small ttrpc server for the agent, in place of ttrpc's sync `Server`.
//!
//! Why: ttrpc 0.10's sync server makes five threads for every connection it
//! accepts (connection handler, reader, writer and two method workers) and
//! passes every request through three of them. In a guest whose kernel runs
//! in an instruction emulator (nested PVM) each new thread costs a clone,
//! a stack mapping and guard page, and fresh page faults on its stack and
//! malloc arena (~2.3 ms each), and each hand-off between threads a futex
//! wake and a context switch; a restored VM paid that on its first request.
//!
//! This server speaks the same wire protocol and runs the same generated
//! method handlers (`create_agent`'s map), with a fixed set of threads made
//! before the agent reports ready (so a template snapshot holds them warm):
//!
//! - one I/O thread polls the listener and every connection, accepts, reads
//!   and splits frames ([`frame`]), and answers the methods named *inline*
//!   (quick ones that never block: `Version`, `GuestInfo`, ...) itself: a
//!   request costs one wake-up, one read and one write, no thread hand-off;
//! - a [`pool`] of workers takes every other request (`Exec` may run for
//!   minutes), so one long call never holds up the connection.
//!
//! Replies are written whole under a per-connection lock by whichever
//! thread answered; the host's ttrpc client matches them by stream id.

pub mod frame;
pub mod listen;

mod conn;
mod pool;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use thiserror::Error;
use ttrpc::proto::{Code, Codec, Request, MESSAGE_TYPE_REQUEST};

pub use conn::Methods;
use conn::{Conn, Replies};
use frame::{Frame, FrameReader};
pub use listen::{Address, BadAddress};
use pool::{Job, Pool, PoolConfig};

/// Bytes each thread touches on its stack when it starts, so the pages a
/// request needs are mapped before a template snapshot, not faulted in
/// (one emulated page fault each) by the first request after a restore.
pub const STACK_WARM: usize = 64 * 1024;
/// The least room a read asks for.
const READ_MIN: usize = 4096;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Method paths (`/package.Service/Method`) answered on the I/O thread:
    /// only methods that return quickly and never block.
    pub inline: HashSet<String>,
    /// Worker threads made at start.
    pub workers: usize,
    /// The most worker threads.
    pub max_workers: usize,
    /// Stack size of every server thread.
    pub stack_size: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            inline: HashSet::new(),
            workers: 1,
            max_workers: 8,
            stack_size: 512 * 1024,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Address(#[from] BadAddress),
    #[error("bind {addr}: {source}")]
    Bind { addr: String, source: io::Error },
    #[error("{what}: {source}")]
    Start {
        what: &'static str,
        source: io::Error,
    },
}

/// A running server; dropping it stops it (connections are shut down,
/// workers end once their current request is answered).
pub struct RpcServer {
    stop: OwnedFd,
    pool: Arc<Pool>,
    io: Option<JoinHandle<()>>,
}

impl RpcServer {
    /// Binds `addr`, makes every thread, and returns listening.
    pub fn start(addr: &str, methods: Methods, config: ServerConfig) -> Result<Self, ServerError> {
        let parsed = Address::parse(addr)?;
        let listener = listen::bind(&parsed).map_err(|source| ServerError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
        let start = |what| move |source| ServerError::Start { what, source };
        let stop = eventfd().map_err(start("eventfd"))?;
        let methods = Arc::new(methods);
        let pool = Pool::start(
            Arc::clone(&methods),
            PoolConfig {
                workers: config.workers,
                max_workers: config.max_workers.max(config.workers),
                stack_size: config.stack_size,
            },
        )
        .map_err(start("worker thread"))?;
        let io = IoLoop {
            listener,
            stop: stop.try_clone().map_err(start("eventfd"))?,
            methods,
            inline: config.inline,
            pool: Arc::clone(&pool),
            conns: Vec::new(),
        };
        let io = std::thread::Builder::new()
            .name("rpc-io".into())
            .stack_size(config.stack_size)
            .spawn(move || io.run());
        let io = match io {
            Ok(h) => h,
            Err(e) => {
                pool.stop();
                return Err(start("I/O thread")(e));
            }
        };
        Ok(Self {
            stop,
            pool,
            io: Some(io),
        })
    }
}

impl Drop for RpcServer {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: an 8-byte write from a live buffer to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
        self.pool.stop();
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Touches [`STACK_WARM`] bytes of the calling thread's stack (and makes
/// its malloc arena), so neither faults later.
#[inline(never)]
pub fn warm_thread() {
    let mut stack = [0u8; STACK_WARM];
    std::hint::black_box(&mut stack);
    drop(std::hint::black_box(Vec::<u8>::with_capacity(64)));
}

/// A connection as the I/O thread holds it.
struct ConnState {
    conn: Arc<Conn>,
    reader: FrameReader,
    /// Dropped when the connection closes: cancels its requests' contexts.
    _cancel: crossbeam_channel::Sender<()>,
}

struct IoLoop {
    listener: OwnedFd,
    stop: OwnedFd,
    methods: Arc<Methods>,
    inline: HashSet<String>,
    pool: Arc<Pool>,
    conns: Vec<ConnState>,
}

impl IoLoop {
    fn run(mut self) {
        warm_thread();
        let replies = Replies::new();
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(16);
        let pollfd = |fd: libc::c_int| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            fds.clear();
            fds.push(pollfd(self.stop.as_raw_fd()));
            fds.push(pollfd(self.listener.as_raw_fd()));
            fds.extend(self.conns.iter().map(|c| pollfd(c.conn.raw_fd())));
            // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                crate::log::log(&format!("rpc server: poll: {e}; stopping"));
                break;
            }
            if fds[0].revents != 0 {
                break;
            }
            // Backwards, so swap_remove only moves connections already seen.
            for i in (0..self.conns.len()).rev() {
                if fds[i + 2].revents != 0 && !self.serve(i, &replies) {
                    self.conns.swap_remove(i);
                }
            }
            if fds[1].revents != 0 {
                self.accept();
            }
        }
        for c in &self.conns {
            c.conn.shut_down();
        }
    }

    fn accept(&mut self) {
        match listen::accept(&self.listener) {
            Ok(Some(fd)) => {
                let (conn, cancel) = Conn::new(fd);
                self.conns.push(ConnState {
                    conn,
                    reader: FrameReader::new(),
                    _cancel: cancel,
                });
            }
            Ok(None) => {}
            // EMFILE and the like: the pending connection stays queued and
            // poll reports it again; do not spin on it.
            Err(e) => {
                crate::log::log(&format!("rpc server: accept: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// Reads what connection `i` has and acts on each whole frame; false
    /// when it is closed.
    fn serve(&mut self, i: usize, replies: &Replies) -> bool {
        let open = read_some(&mut self.conns[i]);
        while let Some(frame) = self.conns[i].reader.next_frame() {
            let conn = Arc::clone(&self.conns[i].conn);
            self.dispatch(conn, frame, replies);
        }
        open
    }

    fn dispatch(&self, conn: Arc<Conn>, frame: Frame, replies: &Replies) {
        let (mh, payload) = match frame {
            Frame::Message(mh, payload) => (mh, payload),
            Frame::Oversize(mh) => {
                if mh.type_ == MESSAGE_TYPE_REQUEST {
                    let msg = format!(
                        "message length {} exceed maximum message size of {}",
                        mh.length,
                        ttrpc::proto::MESSAGE_LENGTH_MAX
                    );
                    replies.status(&conn, mh.stream_id, Code::INVALID_ARGUMENT, msg);
                }
                return;
            }
        };
        // Responses and stream data: not for a unary server.
        if mh.type_ != MESSAGE_TYPE_REQUEST {
            return;
        }
        let req = match <Request as Codec>::decode(&payload) {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                return replies.status(&conn, mh.stream_id, Code::INVALID_ARGUMENT, msg);
            }
        };
        let path = format!("/{}/{}", req.service, req.method);
        let Some(method) = self.methods.get(&path) else {
            let msg = format!("{path} does not exist");
            return replies.status(&conn, mh.stream_id, Code::INVALID_ARGUMENT, msg);
        };
        if self.inline.contains(&path) {
            replies.handle(&conn, mh, method.as_ref(), req);
        } else {
            self.pool.submit(Job {
                conn,
                mh,
                req,
                path,
            });
        }
    }
}

/// Reads what the socket has now into the connection's frame reader;
/// false once the peer closed or the socket failed.
fn read_some(c: &mut ConnState) -> bool {
    let fd = c.conn.raw_fd();
    loop {
        let spare = c.reader.spare(READ_MIN);
        let len = spare.len();
        // SAFETY: `spare` is a live, writable buffer of `len` bytes; the
        // socket is open (the Arc in `c` keeps it so).
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
        match usize::try_from(n) {
            Ok(0) => {
                c.reader.filled(len, 0);
                return false;
            }
            Ok(n) => {
                c.reader.filled(len, n);
                // A short read emptied the socket: back to poll without
                // another (EAGAIN) read.
                if n < len {
                    return true;
                }
            }
            Err(_) => {
                c.reader.filled(len, 0);
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => return true,
                    _ => return false,
                }
            }
        }
    }
}
