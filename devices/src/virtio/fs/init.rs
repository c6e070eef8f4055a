//! Large FUSE requests.
//!
//! PassthroughFs's `init` does not ask for `FUSE_BIG_WRITES` or
//! `FUSE_MAX_PAGES`, so fuse-backend-rs answers INIT with a 4 KiB
//! `max_write`: the guest then sends one WRITE per page, and each request is
//! a trip through the guest's FUSE and virtio code (on nested hosts, where
//! the guest kernel is emulated, milliseconds each). The device amends the
//! server's INIT reply: the options the guest offered among these two are
//! turned on, with `max_pages` = 256 and `max_write` = 1 MiB — what the
//! server accepts (its `MAX_BUFFER_SIZE`) and within
//! [`MAX_REQUEST_BYTES`](super::MAX_REQUEST_BYTES) /
//! [`MAX_REPLY_BYTES`](super::MAX_REPLY_BYTES).

use vm_memory::{Address, Bytes, GuestMemoryError, GuestMemoryMmap};

use super::request::{Segment, IN_HEADER_SIZE, OUT_HEADER_SIZE};

/// `FUSE_BIG_WRITES`.
pub const BIG_WRITES: u32 = 1 << 5;
/// `FUSE_MAX_PAGES`.
pub const MAX_PAGES: u32 = 1 << 22;
/// Pages per request when MAX_PAGES is on (1 MiB).
pub const MAX_REQ_PAGES: u16 = 256;
/// `max_write` when the options are on.
pub const MAX_WRITE: u32 = MAX_REQ_PAGES as u32 * 4096;

/// Offset of `fuse_init_in.flags` in the request.
const IN_FLAGS: usize = IN_HEADER_SIZE + 12;
/// Offsets in the reply: `fuse_init_out.flags`, `.max_write`, `.max_pages`.
const OUT_FLAGS: usize = OUT_HEADER_SIZE + 12;
const OUT_MAX_WRITE: usize = OUT_HEADER_SIZE + 20;
const OUT_MAX_PAGES: usize = OUT_HEADER_SIZE + 28;

/// Copies `buf.len()` bytes at `offset` of the buffers `segs` (in chain
/// order) to or from `buf`; false when the buffers are too short.
fn at_offset(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    mut offset: usize,
    buf: &mut [u8],
    write: bool,
) -> Result<bool, GuestMemoryError> {
    let mut done = 0usize;
    for seg in segs {
        let len = seg.len as usize;
        if offset >= len {
            offset -= len;
            continue;
        }
        let n = (len - offset).min(buf.len() - done);
        let Some(addr) = seg.addr.checked_add(offset as u64) else {
            return Ok(false);
        };
        if write {
            mem.write_slice(&buf[done..done + n], addr)?;
        } else {
            mem.read_slice(&mut buf[done..done + n], addr)?;
        }
        done += n;
        offset = 0;
        if done == buf.len() {
            return Ok(true);
        }
    }
    Ok(done == buf.len())
}

fn u32_at(mem: &GuestMemoryMmap, segs: &[Segment], off: usize) -> Option<u32> {
    let mut b = [0u8; 4];
    matches!(at_offset(mem, segs, off, &mut b, false), Ok(true)).then(|| u32::from_le_bytes(b))
}

fn put(mem: &GuestMemoryMmap, segs: &[Segment], off: usize, data: &[u8]) -> bool {
    let mut b = data.to_vec();
    matches!(at_offset(mem, segs, off, &mut b, true), Ok(true))
}

/// Amends a successful INIT reply of `reply_len` bytes in `writable`, given
/// the request in `readable`; returns whether it did. Replies too short to
/// hold a whole `fuse_init_out` (old protocol minors) are left alone.
pub fn amend_init_reply(
    mem: &GuestMemoryMmap,
    readable: &[Segment],
    writable: &[Segment],
    reply_len: u32,
) -> bool {
    if (reply_len as usize) < OUT_MAX_PAGES + 2 {
        return false;
    }
    // The reply must be a success (error field 0).
    if u32_at(mem, writable, 4) != Some(0) {
        return false;
    }
    let (Some(offered), Some(flags)) = (
        u32_at(mem, readable, IN_FLAGS),
        u32_at(mem, writable, OUT_FLAGS),
    ) else {
        return false;
    };
    let add = offered & (BIG_WRITES | MAX_PAGES);
    if add == 0 {
        return false;
    }
    let mut ok = put(mem, writable, OUT_FLAGS, &(flags | add).to_le_bytes());
    ok &= put(mem, writable, OUT_MAX_WRITE, &MAX_WRITE.to_le_bytes());
    if add & MAX_PAGES != 0 {
        ok &= put(mem, writable, OUT_MAX_PAGES, &MAX_REQ_PAGES.to_le_bytes());
    }
    ok
}
