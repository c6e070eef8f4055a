//! The net device's backend: a small trait ([`NetBackend`]) and the TAP
//! that implements it. Tests use a fake over a socket pair.
//!
//! The TAP is opened with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`,
//! non-blocking, with a 12-byte vnet header (`TUNSETVNETHDRSZ`): each
//! `read` gives one frame behind a `virtio_net_hdr_v1`, each `write` takes
//! one.

use std::ffi::c_int;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetError, TapSource, VNET_HDR_LEN};

/// Where frames go to and come from.
pub trait NetBackend: Send {
    /// Names the backend in logs and errors (`tap NAME`).
    fn name(&self) -> &str;
    /// The fd the event loop watches: readable when a frame waits, writable
    /// when a frame can be written.
    fn raw_fd(&self) -> RawFd;
    /// Reads one frame with its vnet header into `buf`; `WouldBlock` when
    /// none waits.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame with its vnet header; `WouldBlock` when the backend
    /// is full.
    fn send(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// The `TUN_F_*` offloads the backend accepts (probed when it was opened).
    fn supported_offloads(&self) -> u32;
    /// Sets the offloads the host may use on frames it gives the guest
    /// (`TUNSETOFFLOAD`).
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
}

/// The offloads husk knows how to map, most to least.
const PROBES: [u32; 3] = [
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO,
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6,
    libc::TUN_F_CSUM,
];

const IFNAMSIZ: usize = 16;

/// `struct ifreq` with the flags member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new() -> Self {
        Self {
            name: [0; IFNAMSIZ],
            flags: 0,
            _pad: [0; 22],
        }
    }
}

/// A TAP interface.
#[derive(Debug)]
pub struct Tap {
    /// `tap NAME`.
    label: String,
    file: File,
    offloads: u32,
}

impl Tap {
    /// Attaches to the TAP named by `src`, or takes (a duplicate of) an
    /// open one ([`TapSource::Disconnected`] is no tap: see
    /// [`open_backend`]).
    pub fn open(src: &TapSource) -> Result<Tap, NetError> {
        match src {
            TapSource::Name(name) => Self::open_named(name),
            TapSource::Fd(fd) => Self::from_fd(fd.as_raw_fd()),
            TapSource::Disconnected => Err(NetError::Sys {
                tap: src.to_string(),
                what: "opening a tap",
                source: io::Error::from(io::ErrorKind::InvalidInput),
            }),
        }
    }

    /// Opens `/dev/net/tun` and attaches to (or creates) the TAP `name`.
    pub fn open_named(name: &str) -> Result<Tap, NetError> {
        let file = create_tap(name)?;
        Self::finish(format!("tap {name}"), File::from(file))
    }

    /// Takes a duplicate of `fd`, a `/dev/net/tun` fd already attached to a
    /// TAP with a vnet header.
    pub fn from_fd(fd: RawFd) -> Result<Tap, NetError> {
        let label = format!("tap fd {fd}");
        let sys = |what, source| NetError::Sys {
            tap: label.clone(),
            what,
            source,
        };
        // SAFETY: F_DUPFD_CLOEXEC on a caller's fd; no memory is passed.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return Err(sys("duplicating the fd", io::Error::last_os_error()));
        }
        // SAFETY: `dup` is a new fd that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(dup) });
        let mut req = IfReq::new();
        // SAFETY: TUNGETIFF writes a `struct ifreq` into `req`, which is
        // one and outlives the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNGETIFF, &mut req) } < 0 {
            return Err(sys("TUNGETIFF", io::Error::last_os_error()));
        }
        let flags = c_int::from(req.flags);
        let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & want != want {
            return Err(sys(
                "not a TAP with IFF_NO_PI and IFF_VNET_HDR",
                io::Error::from(io::ErrorKind::InvalidInput),
            ));
        }
        set_nonblocking(file.as_raw_fd()).map_err(|e| sys("O_NONBLOCK", e))?;
        let end = req.name.iter().position(|b| *b == 0).unwrap_or(IFNAMSIZ);
        let label = format!("tap {}", String::from_utf8_lossy(&req.name[..end]));
        Self::finish(label, file)
    }

    /// Sets the header size and probes the offloads.
    fn finish(label: String, file: File) -> Result<Tap, NetError> {
        let hdr_len = VNET_HDR_LEN as c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int from the pointer, which
        // points at `hdr_len` for the call.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) } < 0 {
            return Err(NetError::Sys {
                tap: label,
                what: "TUNSETVNETHDRSZ",
                source: io::Error::last_os_error(),
            });
        }
        let mut tap = Tap {
            label,
            file,
            offloads: 0,
        };
        tap.offloads = PROBES
            .into_iter()
            .find(|f| tap.set_offload(*f).is_ok())
            .unwrap_or(0);
        // Nothing until the guest says what it takes.
        tap.set_offload(0).map_err(|source| NetError::Sys {
            tap: tap.label.clone(),
            what: "TUNSETOFFLOAD",
            source,
        })?;
        Ok(tap)
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl NetBackend for Tap {
    fn name(&self) -> &str {
        &self.label
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }

    fn supported_offloads(&self) -> u32 {
        self.offloads
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is
        // passed.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(flags),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Opens `/dev/net/tun` (non-blocking, close-on-exec) and attaches it to
/// the TAP `name` with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, creating the
/// TAP in the calling thread's network namespace if there is none: the fd
/// [`Tap::open_named`] uses, and what a caller hands a VM as
/// [`TapSource::Fd`].
pub fn create_tap(name: &str) -> Result<OwnedFd, NetError> {
    let label = format!("tap {name}");
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
        return Err(NetError::BadName { tap: label });
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|source| NetError::OpenTun {
            tap: label.clone(),
            source,
        })?;
    let mut req = IfReq::new();
    req.name[..bytes.len()].copy_from_slice(bytes);
    req.flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one
    // (name, flags, padding to its 40 bytes) and outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(NetError::Sys {
            tap: label,
            what: "TUNSETIFF",
            source: io::Error::last_os_error(),
        });
    }
    Ok(OwnedFd::from(file))
}

/// The backend `src` names: a [`Tap`], or [`Disconnected`].
pub fn open_backend(src: &TapSource) -> Result<Box<dyn NetBackend>, NetError> {
    match src {
        TapSource::Disconnected => Ok(Box::new(Disconnected::new()?)),
        _ => Ok(Box::new(Tap::open(src)?)),
    }
}

/// No backend ([`TapSource::Disconnected`]): sends are dropped, nothing is
/// ever received. Its fd is an eventfd nobody writes (never readable).
///
/// It offers checksum and TSO offloads, the set every Linux tap takes
/// (UFO is not everywhere), so a template made with it restores over any
/// tap and the other way round.
#[derive(Debug)]
pub struct Disconnected {
    never: vmm_sys_util::eventfd::EventFd,
}

impl Disconnected {
    pub fn new() -> Result<Disconnected, NetError> {
        let never = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).map_err(|source| {
            NetError::Sys {
                tap: TapSource::Disconnected.to_string(),
                what: "creating its eventfd",
                source,
            }
        })?;
        Ok(Disconnected { never })
    }
}

impl NetBackend for Disconnected {
    fn name(&self) -> &str {
        "no backend"
    }

    fn raw_fd(&self) -> RawFd {
        self.never.as_raw_fd()
    }

    fn recv(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        Ok(frame.len())
    }

    fn supported_offloads(&self) -> u32 {
        PROBES[1]
    }

    fn set_offload(&mut self, _: u32) -> io::Result<()> {
        Ok(())
    }
}
