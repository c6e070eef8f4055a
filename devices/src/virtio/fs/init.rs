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

use vm_memory::GuestMemoryMmap;

use super::request::{Segment, IN_HEADER_SIZE, OUT_HEADER_SIZE};
use crate::virtio::chain::{read_at, write_at};

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

fn u32_at(mem: &GuestMemoryMmap, segs: &[Segment], off: usize) -> Option<u32> {
    let mut b = [0u8; 4];
    matches!(read_at(mem, segs, off as u64, &mut b), Ok(4)).then(|| u32::from_le_bytes(b))
}

fn put(mem: &GuestMemoryMmap, segs: &[Segment], off: usize, data: &[u8]) -> bool {
    matches!(write_at(mem, segs, off as u64, data), Ok(n) if n == data.len())
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
