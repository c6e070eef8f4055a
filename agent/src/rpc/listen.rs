//! The server's listening socket from a ttrpc address (`vsock://CID:PORT`,
//! CID `-1` for any; `unix://PATH`), and non-blocking accept.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;

use thiserror::Error;

/// Pending connections the kernel keeps (ttrpc's own server uses 10).
const BACKLOG: libc::c_int = 16;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Vsock { cid: u32, port: u32 },
    Unix(String),
}

/// Why an address is not one we serve on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{addr:?}: {reason}")]
pub struct BadAddress {
    pub addr: String,
    pub reason: &'static str,
}

impl Address {
    pub fn parse(addr: &str) -> Result<Self, BadAddress> {
        let bad = |reason| BadAddress {
            addr: addr.to_owned(),
            reason,
        };
        if let Some(path) = addr.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            return Ok(Self::Unix(path.to_owned()));
        }
        let Some(rest) = addr.strip_prefix("vsock://") else {
            return Err(bad("want vsock://CID:PORT or unix://PATH"));
        };
        let (cid, port) = rest.split_once(':').ok_or_else(|| bad("want CID:PORT"))?;
        let cid = match cid {
            "-1" => libc::VMADDR_CID_ANY,
            c => c.parse().map_err(|_| bad("CID is not a number"))?,
        };
        let port = port.parse().map_err(|_| bad("port is not a number"))?;
        Ok(Self::Vsock { cid, port })
    }
}

/// A listening, non-blocking, close-on-exec socket.
pub fn bind(addr: &Address) -> io::Result<OwnedFd> {
    match addr {
        Address::Unix(path) => {
            let l = UnixListener::bind(path)?;
            l.set_nonblocking(true)?;
            Ok(OwnedFd::from(l))
        }
        Address::Vsock { cid, port } => bind_vsock(*cid, *port),
    }
}

fn bind_vsock(cid: u32, port: u32) -> io::Result<OwnedFd> {
    crate::vsock::listen(cid, port, BACKLOG, true)
}

/// One pending connection, non-blocking and close-on-exec; `None` when
/// there is none now.
pub fn accept(listener: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    loop {
        // SAFETY: accept4 on our listening socket; null address pointers
        // are allowed (we do not want the peer's address).
        let raw = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        if raw >= 0 {
            // SAFETY: accept4 returned a new descriptor nothing else owns.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(raw) }));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            // The peer gave up before we accepted: nothing to do.
            _ if e.raw_os_error() == Some(libc::ECONNABORTED) => return Ok(None),
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            Address::parse("vsock://-1:1024"),
            Ok(Address::Vsock {
                cid: libc::VMADDR_CID_ANY,
                port: 1024
            })
        );
        assert_eq!(
            Address::parse("vsock://3:5"),
            Ok(Address::Vsock { cid: 3, port: 5 })
        );
        assert_eq!(
            Address::parse("unix:///run/a.sock"),
            Ok(Address::Unix("/run/a.sock".into()))
        );
        for bad in [
            "",
            "tcp://1:2",
            "vsock://1",
            "vsock://x:1",
            "vsock://1:y",
            "unix://",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad}");
        }
    }
}
