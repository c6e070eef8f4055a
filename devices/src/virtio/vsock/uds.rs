//! Host-side Unix socket helpers: the `CONNECT <port>` line and a connect
//! that never blocks the event loop.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Parses `CONNECT <port>` (the line without its `\n`; surrounding
/// whitespace tolerated). `None` if malformed.
pub(super) fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let mut words = text.split_whitespace();
    if words.next()? != "CONNECT" {
        return None;
    }
    let port = words.next()?.parse::<u32>().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some(port)
}

/// Connects to the Unix stream socket at `path` without blocking: a listener
/// whose backlog is full fails with `WouldBlock` instead of stalling the
/// event loop. The stream is non-blocking and close-on-exec.
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    // SAFETY: a zeroed sockaddr_un is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Keep a trailing NUL.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscall with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket() and is owned by nobody else.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is a valid, initialized sockaddr_un of `len` bytes that
    // outlives the call; `fd` is an open socket.
    let rc = unsafe { libc::connect(fd, (&raw const addr).cast::<libc::sockaddr>(), len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 1024"), Some(1024));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"  CONNECT   7 "), Some(7));
        for bad in [
            &b""[..],
            b"CONNECT",
            b"CONNECT x",
            b"CONNECT -1",
            b"CONNECT 4294967296",
            b"connect 5",
            b"CONNECT 5 6",
            b"LISTEN 5",
            b"CONNECT \xff",
        ] {
            assert_eq!(parse_connect_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn nonblocking_connect() {
        let dir = std::env::temp_dir().join(format!("husk-uds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _ = std::fs::remove_file(&path);
        let err = connect_nonblocking(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let listener = UnixListener::bind(&path).unwrap();
        let s = connect_nonblocking(&path).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1];
        use std::io::Read;
        assert_eq!(
            (&s).read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let long = dir.join("x".repeat(200));
        assert!(connect_nonblocking(&long).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
