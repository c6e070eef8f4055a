//! AF_VSOCK stream connect with a time bound (libc; std has no vsock).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// The host's CID, as seen from a guest.
pub const HOST_CID: u32 = libc::VMADDR_CID_HOST;

/// Connects a stream socket to `cid:port`, waiting at most `timeout`.
///
/// The returned socket is non-blocking and close-on-exec. Errors: the
/// socket family is missing (`EAFNOSUPPORT`: no vsock in this kernel), no
/// transport (`ENODEV`: no vsock device), refused or reset by the peer, or
/// `TimedOut` when the peer did not answer in time.
pub fn connect(cid: u32, port: u32, timeout: Duration) -> io::Result<OwnedFd> {
    let fd = socket(true)?;
    let addr = sockaddr(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of the length passed, alive for
    // the call; `fd` is an open socket.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(fd);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINPROGRESS) {
        return Err(e);
    }
    wait_writable(&fd, timeout)?;
    match socket_error(&fd)? {
        0 => Ok(fd),
        errno => Err(io::Error::from_raw_os_error(errno)),
    }
}

fn wait_writable(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    loop {
        // SAFETY: `pfd` is one valid pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        match n {
            0 => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {timeout:?}"),
                ))
            }
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

fn socket_error(fd: &OwnedFd) -> io::Result<libc::c_int> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid out pointers sized for SO_ERROR.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(err)
}

// No host test: on a host (often itself a guest with virtio-vsock) a connect
// to CID 2 would reach the real hypervisor host. The guest boot exercises
// this (ENODEV without a vsock device, the stream with one).

/// A new AF_VSOCK stream socket, close-on-exec (and non-blocking when
/// asked).
fn socket(nonblocking: bool) -> io::Result<OwnedFd> {
    let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket(2) call; the result is checked below.
    let raw = unsafe {
        libc::socket(
            libc::AF_VSOCK,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | flags,
            0,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// The address `cid:port`.
fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all zeroes is valid before the
    // fields are set.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

/// A stream socket bound to `cid:port` and listening (`backlog`),
/// close-on-exec, non-blocking when asked.
pub fn listen(cid: u32, port: u32, backlog: i32, nonblocking: bool) -> io::Result<OwnedFd> {
    let fd = socket(nonblocking)?;
    let addr = sockaddr(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of the length passed, alive for
    // the call; `fd` is an open socket.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our bound socket; no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
