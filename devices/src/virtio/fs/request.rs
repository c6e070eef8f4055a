//! virtio-fs requests over descriptor chains: pure parsing and policy.
//!
//! A request is a FUSE message split over descriptors (virtio 1.2, 5.11.6):
//! the device-readable part starts with the 40-byte `fuse_in_header`
//! `{ len: le32, opcode: le32, unique: le64, nodeid: le64, uid: le32,
//! gid: le32, pid: le32, total_extlen: le16, padding: le16 }` followed by the
//! opcode's arguments; the device-writable part that follows receives the
//! reply, which starts with the 16-byte `fuse_out_header`
//! `{ len: le32, error: le32 (minus an errno), unique: le64 }`.
//!
//! Everything the guest controls is checked here before anything else sees
//! it: descriptor directions, that each buffer lies inside one guest memory
//! region, the number of descriptors and the bytes of each part, and the
//! header's `len` against the bytes the chain holds. [`decide`] then says
//! whether the request goes to the server or is answered by the device:
//! FORGET-like requests are never answered; unknown opcodes, DAX and
//! notification replies get ENOSYS; mutations of a read-only share get EROFS;
//! MKNOD of a device node gets EPERM; a template device answers everything
//! with ENODEV. Nothing here panics on
//! guest input or allocates more than one entry per descriptor.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryError, GuestMemoryMmap};

use super::{MAX_DESCRIPTORS, MAX_REPLY_BYTES, MAX_REQUEST_BYTES};
use crate::virtio::chain::{pieces, read_at, split, write_at, Limits};
pub use crate::virtio::chain::{ChainError, Segment, Split};

/// Size of `struct fuse_in_header`.
pub const IN_HEADER_SIZE: usize = 40;
/// Size of `struct fuse_out_header`.
pub const OUT_HEADER_SIZE: usize = 16;
/// Size of `struct fuse_setattr_in`, the longest fixed argument whose
/// fields the device reads or rewrites.
pub const SETATTR_IN_SIZE: usize = 88;
/// The bytes of a request the device copies and reads itself: the
/// in-header and the first 88 bytes of the arguments (where OPEN keeps its
/// flags, and CREATE, MKDIR, MKNOD and SETATTR their mode; see
/// [`strip_setid`]).
pub const HEAD_BYTES: usize = IN_HEADER_SIZE + SETATTR_IN_SIZE;

/// FUSE opcodes (Linux `include/uapi/linux/fuse.h`, protocol 7.40).
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
}

/// What a request chain may hold ([`MAX_DESCRIPTORS`],
/// [`MAX_REQUEST_BYTES`], [`MAX_REPLY_BYTES`]).
const LIMITS: Limits = Limits {
    descriptors: MAX_DESCRIPTORS,
    readable_bytes: MAX_REQUEST_BYTES as u64,
    writable_bytes: MAX_REPLY_BYTES as u64,
};

/// Splits a chain into its readable and writable buffers, with the bounds
/// checks of the module documentation.
pub fn walk(
    mem: &GuestMemoryMmap,
    chain: impl IntoIterator<Item = Descriptor>,
) -> Result<Split, ChainError> {
    split(mem, chain, &LIMITS)
}

/// The fields of `struct fuse_in_header` the device looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    pub len: u32,
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// The start of a request, as copied out of guest memory once: the header
/// the policy reads is the one the server gets (see `relay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub header: InHeader,
    /// The first `len` bytes of the request (at most [`HEAD_BYTES`]).
    pub bytes: [u8; HEAD_BYTES],
    pub len: usize,
}

impl Head {
    /// The first 4 bytes of the arguments (OPEN's and OPENDIR's flags), if
    /// the request has them.
    pub fn first_arg_u32(&self) -> Option<u32> {
        let at = IN_HEADER_SIZE;
        if self.header.len < (at + 4) as u32 || self.len < at + 4 {
            return None;
        }
        Some(le_u32(&self.bytes, at))
    }
}

/// Why the start of a request is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request of {got} bytes, less than the {IN_HEADER_SIZE}-byte header")]
    Short { got: usize },
    #[error("header says {len} bytes, the chain holds {readable} (header {IN_HEADER_SIZE})")]
    Length {
        len: u32,
        readable: u64,
        unique: u64,
    },
    #[error("guest memory: {0}")]
    Memory(String),
}

impl HeadError {
    /// The request's `unique` when the header could be read (the device then
    /// answers it with EINVAL).
    pub fn unique(&self) -> Option<u64> {
        match self {
            HeadError::Length { unique, .. } => Some(*unique),
            _ => None,
        }
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Parses the first bytes of a request whose readable part holds
/// `readable` bytes: the header must be whole and its `len` must cover the
/// header and fit in the chain.
pub fn parse_head(bytes: &[u8], readable: u64) -> Result<Head, HeadError> {
    if bytes.len() < IN_HEADER_SIZE {
        return Err(HeadError::Short { got: bytes.len() });
    }
    let header = InHeader {
        len: le_u32(bytes, 0),
        opcode: le_u32(bytes, 4),
        unique: le_u64(bytes, 8),
        nodeid: le_u64(bytes, 16),
        uid: le_u32(bytes, 24),
        gid: le_u32(bytes, 28),
        pid: le_u32(bytes, 32),
    };
    if header.len < IN_HEADER_SIZE as u32 || u64::from(header.len) > readable {
        return Err(HeadError::Length {
            len: header.len,
            readable,
            unique: header.unique,
        });
    }
    let len = bytes.len().min(HEAD_BYTES);
    let mut head = Head {
        header,
        bytes: [0; HEAD_BYTES],
        len,
    };
    head.bytes[..len].copy_from_slice(&bytes[..len]);
    Ok(head)
}

/// Copies the start of the request out of guest memory and parses it.
pub fn read_head(mem: &GuestMemoryMmap, layout: &Split) -> Result<Head, HeadError> {
    let mut buf = [0u8; HEAD_BYTES];
    let got = read_at(mem, &layout.readable, 0, &mut buf)
        .map_err(|e| HeadError::Memory(e.to_string()))?;
    parse_head(&buf[..got], layout.readable_len)
}

/// The readable buffers after the first `skip` bytes.
pub fn readable_after(layout: &Split, skip: usize) -> Vec<Segment> {
    pieces(&layout.readable, skip as u64, u64::MAX).collect()
}

/// What the device does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the server.
    Serve,
    /// Answer it with this errno.
    Reply(i32),
    /// Consume it without an answer (FORGET, BATCH_FORGET, INTERRUPT when
    /// there is no server).
    Drop,
}

/// Requests the guest sends without expecting an answer.
pub fn is_one_way(op: u32) -> bool {
    matches!(
        op,
        opcode::FORGET | opcode::BATCH_FORGET | opcode::INTERRUPT
    )
}

/// Opcodes handed to the server: those fuse-backend-rs dispatches, less
/// DAX mappings (no window), NOTIFY_REPLY (the device sends no
/// notifications) and COPY_FILE_RANGE (unimplemented there). It also keeps
/// out values fuse-backend-rs cannot represent: its `Opcode::from` transmutes
/// the holes at 7 and 19.
pub fn is_served(op: u32) -> bool {
    matches!(op, 1..=6 | 8..=18 | 20..=40 | 42..=46)
}

/// Requests that change the shared directory whatever their arguments.
pub fn is_mutating(op: u32) -> bool {
    use opcode::*;
    matches!(
        op,
        SETATTR
            | SYMLINK
            | MKNOD
            | MKDIR
            | UNLINK
            | RMDIR
            | RENAME
            | LINK
            | WRITE
            | SETXATTR
            | REMOVEXATTR
            | CREATE
            | FALLOCATE
            | RENAME2
            | COPY_FILE_RANGE
            | SETUPMAPPING
            | TMPFILE
    )
}

/// `__O_TMPFILE` (`O_TMPFILE` less `O_DIRECTORY`).
const O_TMPFILE_BIT: u32 = (libc::O_TMPFILE & !libc::O_DIRECTORY) as u32;

/// True when open flags ask for write access or for a change (truncate,
/// append, create, an unnamed temporary file).
pub fn open_flags_write(flags: u32) -> bool {
    let accmode = flags & libc::O_ACCMODE as u32;
    accmode != libc::O_RDONLY as u32
        || flags & (libc::O_TRUNC | libc::O_APPEND | libc::O_CREAT) as u32 != 0
        || flags & O_TMPFILE_BIT != 0
}

/// Decides what to do with a request (see the module documentation).
/// `serving` is false on a template device.
pub fn decide(head: &Head, read_only: bool, serving: bool) -> Verdict {
    let op = head.header.opcode;
    if is_one_way(op) {
        return if serving {
            Verdict::Serve
        } else {
            Verdict::Drop
        };
    }
    if !serving {
        return Verdict::Reply(libc::ENODEV);
    }
    if read_only {
        let opens = matches!(op, opcode::OPEN | opcode::OPENDIR);
        // An OPEN too short to carry flags is refused: the server would
        // fail on it anyway.
        if is_mutating(op) || (opens && head.first_arg_u32().is_none_or(open_flags_write)) {
            return Verdict::Reply(libc::EROFS);
        }
    }
    if !is_served(op) {
        return Verdict::Reply(libc::ENOSYS);
    }
    if op == opcode::MKNOD && head.first_arg_u32().is_none_or(is_device_node) {
        return Verdict::Reply(libc::EPERM);
    }
    Verdict::Serve
}

/// True for a character or block device mode: the guest may not plant
/// device nodes in a host directory (the server would not open them, but
/// host processes might).
fn is_device_node(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFBLK)
}

/// The set-id bits the guest may not set on the host.
pub const SETID_BITS: u32 = libc::S_ISUID | libc::S_ISGID;
/// `FATTR_MODE` in `fuse_setattr_in.valid`.
const FATTR_MODE: u32 = 1 << 0;
/// Offset of `fuse_setattr_in.mode` in the arguments: `valid`, `padding`,
/// six u64 (`fh`, `size`, `lock_owner`, `atime`, `mtime`, `ctime`), three
/// u32 nanosecond fields.
const SETATTR_MODE_OFF: usize = 4 + 4 + 6 * 8 + 3 * 4;

/// Where a request carries a mode the host applies: the offset of the
/// `mode` field in the arguments, for CREATE (`fuse_create_in { flags, mode,
/// .. }`), MKDIR (`fuse_mkdir_in { mode, umask }`), MKNOD (`fuse_mknod_in {
/// mode, .. }`) and a SETATTR whose `valid` has FATTR_MODE (a chmod).
fn mode_offset(op: u32, args: &[u8]) -> Option<usize> {
    match op {
        opcode::CREATE => Some(4),
        opcode::MKDIR | opcode::MKNOD => Some(0),
        opcode::SETATTR => {
            let valid = args.get(0..4).map(|_| le_u32(args, 0))?;
            (valid & FATTR_MODE != 0).then_some(SETATTR_MODE_OFF)
        }
        _ => None,
    }
}

/// Clears S_ISUID and S_ISGID in the mode a request would apply (chmod,
/// create, mkdir, mknod), in the device's copy of the request, which is the
/// one the server reads ([`Head`]). The server runs as host root: a set-id
/// file the guest plants in a host directory would be a set-id-root file
/// for host users, so a guest's `chmod 4755` leaves 0755 and a `mkdir` with
/// 02775 makes 0775 (the sticky bit and the permission bits pass). Returns
/// the bits cleared (0: none). A mode field the copy does not hold is one
/// the request is too short to carry (the copy holds
/// [`HEAD_BYTES`] = the longest such argument): the server refuses those.
pub fn strip_setid(head: &mut Head) -> u32 {
    let args = &head.bytes[IN_HEADER_SIZE.min(head.len)..head.len];
    let Some(off) = mode_offset(head.header.opcode, args) else {
        return 0;
    };
    let at = IN_HEADER_SIZE + off;
    if head.len < at + 4 {
        return 0;
    }
    let mode = le_u32(&head.bytes, at);
    let cleared = mode & SETID_BITS;
    if cleared != 0 {
        head.bytes[at..at + 4].copy_from_slice(&(mode & !SETID_BITS).to_le_bytes());
    }
    cleared
}

/// Why an error reply could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("no room for a reply ({0} writable bytes)")]
    NoRoom(u64),
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// The bytes of an error reply: a lone `fuse_out_header`.
pub fn error_reply(unique: u64, errno: i32) -> [u8; OUT_HEADER_SIZE] {
    let mut out = [0u8; OUT_HEADER_SIZE];
    out[0..4].copy_from_slice(&(OUT_HEADER_SIZE as u32).to_le_bytes());
    out[4..8].copy_from_slice(&(-errno).to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    out
}

/// Writes an error reply into the writable buffers; returns its length.
pub fn write_error_reply(
    mem: &GuestMemoryMmap,
    writable: &[Segment],
    writable_len: u64,
    unique: u64,
    errno: i32,
) -> Result<u32, ReplyError> {
    if writable_len < OUT_HEADER_SIZE as u64 {
        return Err(ReplyError::NoRoom(writable_len));
    }
    write_at(mem, writable, 0, &error_reply(unique, errno))?;
    Ok(OUT_HEADER_SIZE as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn header(len: u32, op: u32, unique: u64) -> Vec<u8> {
        let mut b = vec![0u8; IN_HEADER_SIZE];
        b[0..4].copy_from_slice(&len.to_le_bytes());
        b[4..8].copy_from_slice(&op.to_le_bytes());
        b[8..16].copy_from_slice(&unique.to_le_bytes());
        b
    }

    fn head(op: u32, args: &[u8]) -> Head {
        let mut b = header((IN_HEADER_SIZE + args.len()) as u32, op, 7);
        b.extend_from_slice(args);
        parse_head(&b, b.len() as u64).unwrap()
    }

    #[test]
    fn header_bounds() {
        assert_eq!(
            parse_head(&[0u8; 39], 39),
            Err(HeadError::Short { got: 39 })
        );
        let b = header(41, opcode::LOOKUP, 9);
        assert_eq!(
            parse_head(&b, 40).unwrap_err().unique(),
            Some(9),
            "len beyond the chain"
        );
        assert!(parse_head(&header(39, opcode::LOOKUP, 9), 40).is_err());
        let h = parse_head(&header(40, opcode::GETATTR, 5), 4096).unwrap();
        assert_eq!((h.header.opcode, h.header.unique, h.len), (3, 5, 40));
        assert_eq!(h.first_arg_u32(), None);
    }

    #[test]
    fn policy() {
        let rw = |op, args: &[u8]| decide(&head(op, args), false, true);
        let ro = |op, args: &[u8]| decide(&head(op, args), true, true);
        let flags = |f: i32| (f as u32).to_le_bytes().to_vec();
        assert_eq!(rw(opcode::WRITE, &[0; 40]), Verdict::Serve);
        assert_eq!(ro(opcode::WRITE, &[0; 40]), Verdict::Reply(libc::EROFS));
        assert_eq!(ro(opcode::READ, &[0; 40]), Verdict::Serve);
        assert_eq!(ro(opcode::OPEN, &flags(libc::O_RDONLY)), Verdict::Serve);
        for f in [
            libc::O_RDWR,
            libc::O_WRONLY,
            libc::O_RDONLY | libc::O_TRUNC,
            libc::O_RDONLY | libc::O_APPEND,
            libc::O_RDWR | libc::O_TMPFILE,
            3,
        ] {
            assert_eq!(ro(opcode::OPEN, &flags(f)), Verdict::Reply(libc::EROFS));
            assert_eq!(rw(opcode::OPEN, &flags(f)), Verdict::Serve);
        }
        assert_eq!(ro(opcode::OPEN, &[]), Verdict::Reply(libc::EROFS));
        assert_eq!(ro(opcode::TMPFILE, &[]), Verdict::Reply(libc::EROFS));
        assert_eq!(rw(opcode::TMPFILE, &[]), Verdict::Reply(libc::ENOSYS));
        for op in [0, 7, 19, 41, 47, 48, 49, 50, 52, 4096, u32::MAX] {
            assert_eq!(rw(op, &[]), Verdict::Reply(libc::ENOSYS), "opcode {op}");
        }
        assert_eq!(rw(opcode::FORGET, &[0; 8]), Verdict::Serve);
        let mknod = |mode: u32| rw(opcode::MKNOD, &[mode.to_le_bytes(), [0; 4]].concat());
        assert_eq!(mknod(libc::S_IFIFO | 0o644), Verdict::Serve);
        assert_eq!(mknod(libc::S_IFREG | 0o644), Verdict::Serve);
        assert_eq!(mknod(libc::S_IFCHR | 0o600), Verdict::Reply(libc::EPERM));
        assert_eq!(mknod(libc::S_IFBLK | 0o600), Verdict::Reply(libc::EPERM));
        assert_eq!(rw(opcode::MKNOD, &[]), Verdict::Reply(libc::EPERM));
        assert_eq!(
            ro(opcode::MKNOD, &(libc::S_IFIFO).to_le_bytes()),
            Verdict::Reply(libc::EROFS)
        );
        let template = |op| decide(&head(op, &[0; 8]), false, false);
        assert_eq!(template(opcode::INIT), Verdict::Reply(libc::ENODEV));
        assert_eq!(template(opcode::FORGET), Verdict::Drop);
        assert_eq!(template(opcode::BATCH_FORGET), Verdict::Drop);
    }

    #[test]
    fn setid_bits_are_cleared_in_the_copy() {
        let mode_at = |h: &Head, off: usize| le_u32(&h.bytes, IN_HEADER_SIZE + off);
        // CREATE { flags, mode, umask, open_flags } + name.
        let mut create = [0u8; 16].to_vec();
        create[4..8].copy_from_slice(&(libc::S_IFREG | 0o6777).to_le_bytes());
        create.extend_from_slice(b"f\0");
        let mut h = head(opcode::CREATE, &create);
        assert_eq!(strip_setid(&mut h), SETID_BITS);
        assert_eq!(mode_at(&h, 4), libc::S_IFREG | 0o777);
        assert_eq!(
            &h.bytes[IN_HEADER_SIZE + 16..h.len],
            b"f\0",
            "the name is kept"
        );
        // MKDIR and MKNOD keep their mode first.
        for op in [opcode::MKDIR, opcode::MKNOD] {
            let mut h = head(
                op,
                &[&(0o7755u32).to_le_bytes()[..], &[0; 12], b"d\0"].concat(),
            );
            assert_eq!(strip_setid(&mut h), SETID_BITS, "opcode {op}");
            assert_eq!(mode_at(&h, 0), 0o1755, "the sticky bit stays");
        }
        // SETATTR only with FATTR_MODE.
        let mut setattr = [0u8; SETATTR_IN_SIZE];
        setattr[SETATTR_MODE_OFF..SETATTR_MODE_OFF + 4]
            .copy_from_slice(&(libc::S_IFREG | 0o4755).to_le_bytes());
        let mut h = head(opcode::SETATTR, &setattr);
        assert_eq!(strip_setid(&mut h), 0, "no FATTR_MODE: no chmod");
        setattr[0] = FATTR_MODE as u8;
        let mut h = head(opcode::SETATTR, &setattr);
        assert_eq!(strip_setid(&mut h), libc::S_ISUID);
        assert_eq!(mode_at(&h, SETATTR_MODE_OFF), libc::S_IFREG | 0o755);
        assert_eq!(strip_setid(&mut h), 0, "nothing left to clear");
        // Too short to carry a mode: left alone (the server refuses it).
        let mut h = head(opcode::SETATTR, &setattr[..40]);
        assert_eq!(strip_setid(&mut h), 0);
        let mut h = head(opcode::MKDIR, &[0x00, 0x08]);
        assert_eq!(strip_setid(&mut h), 0);
        // Other opcodes are not touched, whatever their bytes.
        let mut h = head(opcode::WRITE, &[0xff; 80]);
        let before = h;
        assert_eq!(strip_setid(&mut h), 0);
        assert_eq!(h, before);
    }

    #[test]
    fn skipping_the_head() {
        let layout = Split {
            readable: vec![
                Segment {
                    addr: GuestAddress(0x1000),
                    len: 30,
                },
                Segment {
                    addr: GuestAddress(0x2000),
                    len: 30,
                },
                Segment {
                    addr: GuestAddress(0x3000),
                    len: 8,
                },
            ],
            readable_len: 68,
            writable: vec![],
            writable_len: 0,
        };
        assert_eq!(
            readable_after(&layout, 48),
            vec![
                Segment {
                    addr: GuestAddress(0x2000 + 18),
                    len: 12
                },
                Segment {
                    addr: GuestAddress(0x3000),
                    len: 8
                }
            ]
        );
        assert_eq!(readable_after(&layout, 68), vec![]);
    }

    #[test]
    fn error_reply_bytes() {
        let r = error_reply(0x1122, libc::EROFS);
        assert_eq!(u32::from_le_bytes(r[0..4].try_into().unwrap()), 16);
        assert_eq!(
            i32::from_le_bytes(r[4..8].try_into().unwrap()),
            -libc::EROFS
        );
        assert_eq!(u64::from_le_bytes(r[8..16].try_into().unwrap()), 0x1122);
    }
}
