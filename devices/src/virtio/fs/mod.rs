//! virtio-fs (device id 26): a host directory shared with the guest, served
//! in-process by `fuse-backend-rs`'s `PassthroughFs` (no external virtiofsd).
//!
//! Two queues of [`QUEUE_SIZE`]: hiprio ([`HIPRIO_QUEUE`], FORGET and
//! INTERRUPT) and one request queue ([`REQUEST_QUEUE`]); both are served
//! alike. Config space (virtio 1.2, 5.11.4): the tag, zero-padded to 36
//! bytes, and `num_request_queues = 1`. Only VIRTIO_F_VERSION_1 is offered:
//! no DAX window, no notification queue.
//!
//! Every chain goes through [`request`] (pure, fuzzable) first: it bounds
//! the chain ([`MAX_DESCRIPTORS`], [`MAX_REQUEST_BYTES`],
//! [`MAX_REPLY_BYTES`]), parses the FUSE in-header and decides what the
//! device may do with it: serve it, or answer it itself (unknown and DAX
//! opcodes, mutations on a read-only share, anything on a template device).
//! What reaches the server is described by a device-owned descriptor table
//! whose header copy the guest cannot touch (`relay`), so the opcode the
//! policy checked is the one the server runs.
//!
//! The server runs as host root, so the modes the guest asks for are
//! host modes: S_ISUID and S_ISGID are cleared from every mode a request
//! would apply (SETATTR with FATTR_MODE, CREATE, MKDIR, MKNOD;
//! [`request::strip_setid`]), in the device's copy of the request. A guest
//! `chmod 4755 f` leaves `f` 0755 on the host (the guest sees 0755 too once
//! its attribute cache expires), `mkdir -m 2775` makes 0775: a guest cannot
//! plant a set-id file in a host directory. The VMM thread also serves
//! without CAP_FSETID, so the host kernel clears set-id bits on writes and
//! chowns (see husk-vmm's `confine`).
//!
//! A device created without a directory is a *template*: it exists, with its
//! tag, so that a VM snapshot taken before the guest mounts it can be
//! restored with a directory chosen then ([`Fs::from_state`]); until then
//! every request is answered with ENODEV and a mount fails cleanly.
//!
//! Requests are served synchronously on the event-loop thread. For
//! creations by a non-root guest user the server switches that thread's
//! effective uid/gid to the caller's (raw setresuid/setresgid, per thread)
//! and back; a VMM not running as root can only create files as guest
//! root. fuse-backend-rs clears the umask whenever it imports its root (at
//! creation and on each INIT and DESTROY): the device lets it do so only on
//! a thread with its own fs_struct ([`isolate_umask`]; creation runs on a
//! helper thread when the caller's is shared) and puts that thread's umask
//! back after the request, so no guest request changes the process umask.
//! Files the guest creates in its share get the guest's mode less the
//! guest's umask, less the serving thread's umask (the VMM's, copied when
//! the thread unshared it): the guest chooses the modes of its own files
//! within that, including making them readable or executable by everyone
//! in the share. fuse-backend-rs logs through the `log` crate.
//!
//! Layout: [`request`] (chain and header parsing, policy, error replies),
//! `relay` (the device-owned descriptor table), `backend` (the
//! fuse-backend-rs server), `device` ([`VirtioDevice`](crate::virtio::VirtioDevice)),
//! `event_handler` (the event-loop side).

mod backend;
mod device;
mod event_handler;
mod init;
mod relay;
pub mod request;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use backend::isolate_umask;
pub use device::{Fs, FsState};

/// The hiprio queue's index.
pub const HIPRIO_QUEUE: usize = 0;
/// The (only) request queue's index.
pub const REQUEST_QUEUE: usize = 1;
/// Each queue's size. Linux's virtio-fs driver limits a request to the
/// queue size in pages, and a 1 MiB request takes about 260 descriptors.
pub const QUEUE_SIZE: u16 = 1024;
/// The longest tag (virtio 1.2, 5.11.4).
pub const TAG_MAX: usize = 36;
/// The most descriptors in a chain: a queue's worth. Only reachable through
/// indirect descriptors, which the device does not offer.
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// The most bytes of a request (device-readable part): 1 MiB of payload and
/// 4 KiB of headers. It is the bound fuse-backend-rs puts on the in-header's
/// `len` (`MAX_BUFFER_SIZE + BUFFER_HEADER_SIZE`); the largest request a
/// guest sends is a WRITE of `max_write` (the INIT reply says 4 KiB, or
/// 1 MiB = 256 pages when the server enables MAX_PAGES) plus 80 bytes.
pub const MAX_REQUEST_BYTES: u32 = (1 << 20) + 4096;
/// The most bytes of a reply (device-writable part): the largest reply is a
/// READ of at most `max_pages` (256 at most) pages plus its 16-byte header;
/// `max_readahead` only sizes the guest's window, which it splits into such
/// READs.
pub const MAX_REPLY_BYTES: u32 = (1 << 20) + 4096;

/// How a virtio-fs device is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The mount tag the guest names the share by (1..=36 bytes, no NUL or
    /// newline).
    pub tag: String,
    /// The host directory to share; `None` makes a template device.
    pub shared_dir: Option<PathBuf>,
    /// Refuse every request that would change the directory (EROFS).
    pub read_only: bool,
}

/// Why a virtio-fs device could not be created, restored or snapshotted.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {tag:?}: {len} bytes, it must be 1 to {TAG_MAX}")]
    TagLength { tag: String, len: usize },
    #[error("virtio-fs tag {tag:?}: contains a NUL or a newline")]
    TagByte { tag: String },
    #[error("virtio-fs {tag}: shared directory {}: {source}", dir.display())]
    SharedDir {
        tag: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs {tag}: shared directory {}: not a directory", dir.display())]
    NotADirectory { tag: String, dir: PathBuf },
    #[error("virtio-fs {tag}: shared directory {}: the path is not UTF-8", dir.display())]
    NotUtf8 { tag: String, dir: PathBuf },
    #[error("virtio-fs {tag}: serving {}: {source}", dir.display())]
    Server {
        tag: String,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("virtio-fs {tag}: the guest has used the mounted share; take templates before anything but the mount")]
    Mounted { tag: String },
    #[error("virtio-fs {tag}: the snapshot has it mounted: a restore must give it a directory")]
    MountedNoDir { tag: String },
    #[error("virtio-fs {tag}: {what}: {source}")]
    Sys {
        tag: String,
        what: &'static str,
        source: std::io::Error,
    },
}

/// Checks a tag: 1..=36 bytes, no NUL (it ends the tag in config space) and
/// no newline (Linux refuses such tags).
fn validate_tag(tag: &str) -> Result<(), FsError> {
    if tag.is_empty() || tag.len() > TAG_MAX {
        return Err(FsError::TagLength {
            tag: tag.to_string(),
            len: tag.len(),
        });
    }
    if tag.bytes().any(|b| b == 0 || b == b'\n') {
        return Err(FsError::TagByte {
            tag: tag.to_string(),
        });
    }
    Ok(())
}
