//! The few syscalls stdio makes, each a thin checked wrapper.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Whether an error only means "not now" (poll again).
pub fn retry_later(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn check(n: isize) -> io::Result<usize> {
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// recv(2) into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
    check(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) })
}

/// read(2) into `buf` (pipes and pty masters; sockets too).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, writable buffer of `buf.len()` bytes.
    check(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// Writes `buf` to a socket without raising SIGPIPE (`MSG_NOSIGNAL`):
/// a host that closed its end is EPIPE here, not a signal.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live buffer of `buf.len()` bytes.
    check(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

/// write(2) of `buf` (pipes and pty masters). A pipe with no reader is
/// EPIPE; the SIGPIPE that comes with it is ignored in every Rust program
/// (std sets SIG_IGN before `main`), the agent included.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live buffer of `buf.len()` bytes.
    check(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// shutdown(2) for writing: the peer reads end of file.
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers.
    if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `fd` non-blocking with one F_SETFL (the other flags F_SETFL can
/// change, O_APPEND, O_ASYNC, O_DIRECT, O_NOATIME, are never set on the
/// pipes, pty masters and sockets given to stdio).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl F_SETFL takes an int argument, no pointers.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a terminal's window size (TIOCSWINSZ; on a pty master it also
/// sends SIGWINCH to the slave's foreground process group).
pub fn set_winsize(fd: RawFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which is live
    // for the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd (wakes its poller).
pub fn kick(fd: RawFd) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte write from a live buffer. It fails only when the
    // counter would overflow, and then the poller is awake anyway.
    unsafe { libc::write(fd, one.as_ptr().cast(), one.len()) };
}

/// Resets an eventfd's counter.
pub fn drain_eventfd(fd: RawFd) {
    let mut v = [0u8; 8];
    // SAFETY: an 8-byte read into a live buffer; EAGAIN (already zero) is
    // fine.
    unsafe { libc::read(fd, v.as_mut_ptr().cast(), v.len()) };
}

/// poll(2) with a timeout in milliseconds (-1: none).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: libc::c_int) -> io::Result<usize> {
    // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
