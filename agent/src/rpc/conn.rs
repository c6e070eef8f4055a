//! One accepted connection: its socket, the write side shared by whichever
//! thread answers, and running one request's handler.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ttrpc::proto::{Code, MessageHeader, Request, Response, MESSAGE_TYPE_RESPONSE};
use ttrpc::{ConnectionContext, MethodHandler, TtrpcContext};

use super::frame::header_bytes;

/// How long a reply may wait for the peer to make room in the socket; a
/// peer that reads nothing for this long loses the connection.
const WRITE_STALL: Duration = Duration::from_secs(60);

/// The generated service's methods, by path (`/package.Service/Method`).
pub type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// The shared part of a connection.
pub struct Conn {
    fd: OwnedFd,
    /// Held while a whole frame is written, so replies from different
    /// threads do not interleave.
    write: Mutex<()>,
    /// Disconnected when the connection closes (the ttrpc context's
    /// cancellation).
    cancel_rx: crossbeam_channel::Receiver<()>,
}

impl Conn {
    /// The connection and the sender whose drop cancels its requests.
    pub fn new(fd: OwnedFd) -> (Arc<Self>, crossbeam_channel::Sender<()>) {
        let (tx, rx) = crossbeam_channel::bounded(0);
        let conn = Self {
            fd,
            write: Mutex::new(()),
            cancel_rx: rx,
        };
        (Arc::new(conn), tx)
    }

    pub fn raw_fd(&self) -> libc::c_int {
        self.fd.as_raw_fd()
    }

    /// Ends the connection both ways; the I/O thread then sees it hang up.
    pub fn shut_down(&self) {
        // SAFETY: shutdown(2) on our open socket; touches no memory.
        unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Writes one frame (header + payload) whole. On failure the
    /// connection is shut down.
    pub fn write_frame(&self, mh: MessageHeader, payload: &[u8]) -> io::Result<()> {
        let header = header_bytes(mh);
        let _guard = self.write.lock().unwrap_or_else(PoisonError::into_inner);
        let r = self.write_all(&header, payload);
        if r.is_err() {
            self.shut_down();
        }
        r
    }

    fn write_all(&self, mut head: &[u8], mut body: &[u8]) -> io::Result<()> {
        while !(head.is_empty() && body.is_empty()) {
            let mut iov = [
                libc::iovec {
                    iov_base: head.as_ptr().cast_mut().cast(),
                    iov_len: head.len(),
                },
                libc::iovec {
                    iov_base: body.as_ptr().cast_mut().cast(),
                    iov_len: body.len(),
                },
            ];
            // SAFETY: msghdr is plain data; all zeroes is a valid empty one.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = iov.len() as _;
            // SAFETY: `msg` points at two iovecs describing live slices the
            // kernel only reads during the call; the socket is open.
            let n = unsafe {
                libc::sendmsg(
                    self.fd.as_raw_fd(),
                    &msg,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            match usize::try_from(n) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    let from_head = n.min(head.len());
                    head = &head[from_head..];
                    body = &body[n - from_head..];
                }
                Err(_) => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => {}
                        io::ErrorKind::WouldBlock => self.wait_writable()?,
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    fn wait_writable(&self) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ms = WRITE_STALL.as_millis() as libc::c_int;
        loop {
            // SAFETY: one valid pollfd, alive for the call.
            match unsafe { libc::poll(&mut pfd, 1, ms) } {
                0 => return Err(io::ErrorKind::TimedOut.into()),
                n if n > 0 => return Ok(()),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() != io::ErrorKind::Interrupted {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// Where a handler's reply goes: a channel owned by the answering thread,
/// drained into the socket once the handler returns. Made once per thread.
pub struct Replies {
    tx: Sender<(MessageHeader, Vec<u8>)>,
    rx: Receiver<(MessageHeader, Vec<u8>)>,
    conn_ctx: Arc<ConnectionContext>,
}

impl Replies {
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Self {
            tx,
            rx,
            conn_ctx: Arc::new(ConnectionContext::default()),
        }
    }

    /// Answers `stream_id` with `status` and no payload.
    pub fn status(&self, conn: &Conn, stream_id: u32, code: Code, message: String) {
        let res: Response = ttrpc::Error::RpcStatus(ttrpc::get_status(code, message)).into();
        // Encoding a Response with a short status cannot fail; if it did,
        // the client's own timeout is the answer.
        if ttrpc::send_response(stream_id, res, self.tx.clone(), &self.conn_ctx).is_ok() {
            self.flush(conn);
        }
    }

    /// Runs `method` for `req` and writes what it answered.
    pub fn handle(
        &self,
        conn: &Conn,
        mh: MessageHeader,
        method: &(dyn MethodHandler + Send + Sync),
        req: Request,
    ) {
        let stream_id = mh.stream_id;
        let ctx = TtrpcContext {
            fd: conn.raw_fd(),
            cancel_rx: conn.cancel_rx.clone(),
            mh,
            res_tx: self.tx.clone(),
            metadata: ttrpc::context::from_pb(&req.metadata),
            timeout_nano: req.timeout_nano,
            conn_ctx: Arc::clone(&self.conn_ctx),
        };
        match method.handler(ctx, req) {
            Ok(()) => self.flush(conn),
            // The generated handler fails before answering only when the
            // request payload does not decode (or the reply does not
            // encode). ttrpc's server drops the connection then; the one
            // connection the host keeps is worth more than that.
            Err(e) => self.status(
                conn,
                stream_id,
                Code::INVALID_ARGUMENT,
                format!("request not handled: {e}"),
            ),
        }
    }

    /// Writes every queued reply.
    fn flush(&self, conn: &Conn) {
        // Drained whole even after a failed write (which shut the
        // connection down; the I/O thread drops it): nothing may be left
        // for the next request's connection.
        let mut ok = true;
        for (mh, payload) in self.rx.try_iter() {
            debug_assert_eq!(mh.type_, MESSAGE_TYPE_RESPONSE);
            ok = ok && conn.write_frame(mh, &payload).is_ok();
        }
    }
}

impl Default for Replies {
    fn default() -> Self {
        Self::new()
    }
}
