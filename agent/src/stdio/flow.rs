//! One direction of one stream: bytes from a source fd, through a bounded
//! buffer, to a destination fd. The pump drives every flow from its poll
//! loop; a flow only says what it waits for and reacts to readiness.
//!
//! A flow ends when both its ends are let go (`src` and `dst` `None`):
//!
//! - the source's end of file (read 0; EIO from a pty master, which is how
//!   a master reports that every slave fd is closed), or a read error, sets
//!   `eof`; once the buffer is written out the destination is finished:
//!   an output socket is shut down for writing (the host reads EOF), a
//!   stdin pipe is closed (the process reads EOF);
//! - a write error (EPIPE/ECONNRESET: the reader went away) drops the
//!   buffer and the destination; an output flow then keeps reading its
//!   source and discards it, so the process never blocks on a full pipe
//!   (what runc's and kata's shims do with output nobody reads); a stdin
//!   flow closes the host's socket (nobody will read what it sends).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::sys;

/// Bytes buffered per direction.
pub const BUF_SIZE: usize = 64 * 1024;

/// A fixed buffer: bytes `start..end` are waiting to be written.
pub struct Buf {
    data: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Buf {
    /// A buffer of [`BUF_SIZE`] bytes, every page touched (so a template
    /// snapshot holds it mapped): filled with a non-zero byte, as zeroes
    /// could come from calloc's untouched pages.
    pub fn new() -> Self {
        Self {
            data: vec![0xa5u8; BUF_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Free room at the end, after moving the pending bytes to the front
    /// when more than half the buffer lies before them.
    fn room(&mut self) -> &mut [u8] {
        if self.start > BUF_SIZE / 2 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end..]
    }

    fn has_room(&self) -> bool {
        self.end < BUF_SIZE || self.start > BUF_SIZE / 2
    }

    fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.clear();
        }
    }
}

impl Default for Buf {
    fn default() -> Self {
        Self::new()
    }
}

/// Which way a flow copies, and so what its ends are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// stdout/stderr pipe → socket.
    Out,
    /// pty master → tty socket.
    TtyOut,
    /// stdin socket → pipe.
    In,
    /// tty socket → pty master.
    TtyIn,
}

impl Dir {
    pub fn is_output(self) -> bool {
        matches!(self, Self::Out | Self::TtyOut)
    }

    fn dst_is_socket(self) -> bool {
        self.is_output()
    }
}

/// What a flow wants from poll now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// Its source, for POLLIN.
    pub read: Option<libc::c_int>,
    /// Its destination, with POLLOUT when `events` says so (a stdin pipe is
    /// watched with no events too: POLLERR tells that its reader is gone).
    pub write: Option<(libc::c_int, libc::c_short)>,
}

pub struct Flow {
    pub dir: Dir,
    src: Option<Arc<OwnedFd>>,
    dst: Option<Arc<OwnedFd>>,
    buf: Buf,
    /// No more bytes go to `dst` once `buf` is written out (reads, if
    /// `src` is still open, are discarded).
    eof: bool,
}

impl Flow {
    pub fn new(dir: Dir, src: Arc<OwnedFd>, dst: Arc<OwnedFd>, buf: Buf) -> Self {
        Self {
            dir,
            src: Some(src),
            dst: Some(dst),
            buf,
            eof: false,
        }
    }

    /// Both ends let go.
    pub fn is_done(&self) -> bool {
        self.src.is_none() && self.dst.is_none()
    }

    /// Whether reads are thrown away (no destination, or it was ended).
    fn discarding(&self) -> bool {
        self.dst.is_none() || self.eof
    }

    pub fn interest(&self) -> Interest {
        let read = self
            .src
            .as_ref()
            .filter(|_| self.discarding() || self.buf.has_room())
            .map(|fd| fd.as_raw_fd());
        let write = self.dst.as_ref().and_then(|fd| {
            if !self.buf.is_empty() {
                Some((fd.as_raw_fd(), libc::POLLOUT))
            } else if self.dir == Dir::In {
                Some((fd.as_raw_fd(), 0))
            } else {
                None
            }
        });
        Interest { read, write }
    }

    /// The source is readable (or hung up): one read, then, when it
    /// brought bytes, one write attempt (the destination usually has room,
    /// which saves a poll round).
    pub fn on_readable(&mut self) {
        let Some(src) = self.src.as_ref().map(|s| s.as_raw_fd()) else {
            return;
        };
        let discard = self.discarding();
        if discard {
            // Nothing is pending while discarding: the buffer is scratch.
            self.buf.clear();
        }
        let room = self.buf.room();
        match sys::read(src, room) {
            Ok(0) => self.source_ended(),
            Ok(n) if discard => {
                let _ = n;
            }
            Ok(n) => {
                self.buf.end += n;
                self.write_some();
            }
            Err(e) if sys::retry_later(&e) => {}
            // EIO: a pty master whose slaves are all closed. Anything else
            // is as final.
            Err(_) => self.source_ended(),
        }
    }

    /// The destination is writable, or reported an error or hang-up.
    pub fn on_writable(&mut self, revents: libc::c_short) {
        if self.buf.is_empty() {
            if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                self.destination_failed();
            }
            return;
        }
        self.write_some();
    }

    fn write_some(&mut self) {
        let Some(dst) = self.dst.as_ref().map(|d| d.as_raw_fd()) else {
            return;
        };
        let pending = self.buf.pending();
        let r = if self.dir.dst_is_socket() {
            sys::send(dst, pending)
        } else {
            sys::write(dst, pending)
        };
        match r {
            Ok(n) => self.buf.consume(n),
            Err(e) if sys::retry_later(&e) => {}
            Err(_) => self.destination_failed(),
        }
    }

    fn source_ended(&mut self) {
        self.src = None;
        self.eof = true;
    }

    fn destination_failed(&mut self) {
        self.dst = None;
        self.buf.clear();
        if self.dir == Dir::In {
            self.src = None;
        }
    }

    /// Ends the input: what is buffered still goes to the destination, then
    /// it is closed. A stdin socket is closed at once; a tty socket (the
    /// output's too) is read on and discarded.
    pub fn end_input(&mut self) {
        self.eof = true;
        if self.dir == Dir::In {
            self.src = None;
        }
    }

    /// Stops reading the source and lets go of it (the deadline passed);
    /// an output flow still writes out its buffer and shuts its socket
    /// down, an input flow ends at once.
    pub fn abandon(&mut self) {
        self.src = None;
        self.eof = true;
        if !self.dir.is_output() {
            self.dst = None;
        }
    }

    /// Finishes the destination once the source ended and the buffer is
    /// written out. Returns the shutdown error of an output socket.
    pub fn settle(&mut self) -> io::Result<()> {
        if !(self.eof && self.buf.is_empty()) {
            return Ok(());
        }
        let Some(dst) = self.dst.take() else {
            return Ok(());
        };
        match self.dir {
            Dir::Out | Dir::TtyOut => match sys::shutdown_write(dst.as_raw_fd()) {
                // The host closed first: it needs no EOF.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
                r => r,
            },
            // Dropping the last reference closes a stdin pipe: EOF for the
            // process. The pty master stays open while the output flow
            // holds it.
            Dir::In | Dir::TtyIn => Ok(()),
        }
    }

    /// The buffer, back for reuse.
    pub fn into_buf(self) -> Buf {
        let mut b = self.buf;
        b.clear();
        b
    }
}
