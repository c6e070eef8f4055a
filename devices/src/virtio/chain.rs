//! Descriptor chains as the devices read them: one bounded split of a chain
//! into its device-readable and device-writable buffers, and copies to and
//! from such buffer lists at a byte offset. Pure functions over guest
//! memory, shared by virtio-blk, virtio-fs and virtio-vsock, so that the
//! checks on what the guest hands over live in one place:
//!
//! - no device-readable descriptor after a device-writable one (virtio 1.2,
//!   2.7.4.2: "device-writable descriptor elements after any device-readable
//!   elements");
//! - every buffer lies inside one guest memory region (what a slice of
//!   guest memory needs; an empty one must still point into memory, and is
//!   then left out of the split);
//! - at most [`Limits::descriptors`] descriptors, and at most
//!   [`Limits::readable_bytes`] / [`Limits::writable_bytes`] in each part.
//!
//! Nothing panics on guest input, and a split holds one entry per non-empty
//! descriptor at most.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, GuestMemoryRegion,
};

/// A guest buffer: `len` bytes at `addr`, inside one guest memory region
/// when it comes from [`split`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// What a device accepts in one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most descriptors, empty ones included.
    pub descriptors: usize,
    /// The most bytes in the device-readable part.
    pub readable_bytes: u64,
    /// The most bytes in the device-writable part.
    pub writable_bytes: u64,
}

impl Limits {
    /// At most `descriptors` descriptors, any number of bytes (each part is
    /// then at most `descriptors` × 4 GiB).
    pub const fn descriptors(descriptors: usize) -> Self {
        Self {
            descriptors,
            readable_bytes: u64::MAX,
            writable_bytes: u64::MAX,
        }
    }
}

/// A chain split by direction. Zero-length descriptors are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub readable: Vec<Segment>,
    pub readable_len: u64,
    pub writable: Vec<Segment>,
    pub writable_len: u64,
}

/// Why a chain is not one a device can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("empty descriptor chain")]
    Empty,
    #[error("chain has more than {0} descriptors")]
    TooManyDescriptors(usize),
    #[error("device-readable descriptor after a device-writable one")]
    ReadableAfterWritable,
    #[error("descriptor {addr:#x}+{len:#x} is not inside one guest memory region")]
    OutOfMemory { addr: u64, len: u32 },
    #[error("device-readable part of more than {0} bytes")]
    ReadableTooLong(u64),
    #[error("device-writable part of more than {0} bytes")]
    WritableTooLong(u64),
}

/// True when `len` bytes at `addr` lie inside one region of `mem`.
fn in_one_region(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32) -> bool {
    let Some(region) = mem.find_region(addr) else {
        return false;
    };
    let offset = addr.raw_value() - region.start_addr().raw_value();
    offset
        .checked_add(u64::from(len))
        .is_some_and(|end| end <= region.len())
}

/// Splits a chain into its readable and writable buffers, within `limits`.
/// The walk stops at the first descriptor past a limit.
pub fn split(
    mem: &GuestMemoryMmap,
    chain: impl IntoIterator<Item = Descriptor>,
    limits: &Limits,
) -> Result<Split, ChainError> {
    let mut s = Split::default();
    let mut count = 0usize;
    let mut writing = false;
    for desc in chain {
        count += 1;
        if count > limits.descriptors {
            return Err(ChainError::TooManyDescriptors(limits.descriptors));
        }
        let write = desc.is_write_only();
        if !write && writing {
            return Err(ChainError::ReadableAfterWritable);
        }
        writing = write;
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if !in_one_region(mem, seg.addr, seg.len) {
            return Err(ChainError::OutOfMemory {
                addr: seg.addr.raw_value(),
                len: seg.len,
            });
        }
        if seg.len == 0 {
            continue;
        }
        let (list, total, max, err) = if write {
            (
                &mut s.writable,
                &mut s.writable_len,
                limits.writable_bytes,
                ChainError::WritableTooLong(limits.writable_bytes),
            )
        } else {
            (
                &mut s.readable,
                &mut s.readable_len,
                limits.readable_bytes,
                ChainError::ReadableTooLong(limits.readable_bytes),
            )
        };
        *total = match total.checked_add(u64::from(seg.len)) {
            Some(t) if t <= max => t,
            _ => return Err(err),
        };
        list.push(seg);
    }
    if count == 0 {
        return Err(ChainError::Empty);
    }
    Ok(s)
}

/// The part of the buffer list `segs` (one stream, in chain order) that
/// starts at byte `offset` and is at most `len` bytes long, piece by piece.
/// Shorter when the list ends first.
pub fn pieces(segs: &[Segment], offset: u64, len: u64) -> impl Iterator<Item = Segment> + '_ {
    let mut skip = offset;
    let mut left = len;
    segs.iter()
        .map_while(move |seg| {
            if left == 0 {
                return None;
            }
            let seg_len = u64::from(seg.len);
            if skip >= seg_len {
                skip -= seg_len;
                return Some(None);
            }
            // n <= seg.len - skip, a u32; the address stays inside the segment.
            let n = (seg_len - skip).min(left);
            let addr = seg.addr.checked_add(skip)?;
            skip = 0;
            left -= n;
            Some(Some(Segment {
                addr,
                len: n as u32,
            }))
        })
        .flatten()
}

/// Copies from the buffer list `segs`, from byte `offset` on, into `buf`;
/// returns how many bytes it copied (less than `buf.len()` when the list
/// ends first).
pub fn read_at(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: u64,
    buf: &mut [u8],
) -> Result<usize, GuestMemoryError> {
    let mut done = 0usize;
    for p in pieces(segs, offset, buf.len() as u64) {
        let n = p.len as usize;
        mem.read_slice(&mut buf[done..done + n], p.addr)?;
        done += n;
    }
    Ok(done)
}

/// Copies `buf` into the buffer list `segs` from byte `offset` on; returns
/// how many bytes it copied (less than `buf.len()` when the list ends
/// first).
pub fn write_at(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: u64,
    buf: &[u8],
) -> Result<usize, GuestMemoryError> {
    let mut done = 0usize;
    for p in pieces(segs, offset, buf.len() as u64) {
        let n = p.len as usize;
        mem.write_slice(&buf[done..done + n], p.addr)?;
        done += n;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u16 = 2; // VRING_DESC_F_WRITE

    fn mem() -> GuestMemoryMmap {
        // Two regions with a hole between them, and two that touch.
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x2_0000), 0x1_0000),
            (GuestAddress(0x3_0000), 0x1_0000),
        ])
        .unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16) -> Descriptor {
        Descriptor::new(addr, len, flags, 0)
    }

    fn limits(descriptors: usize) -> Limits {
        Limits::descriptors(descriptors)
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn split_by_direction() {
        let m = mem();
        let s = split(
            &m,
            [
                d(0x100, 16, 0),
                d(0x200, 0, 0),
                d(0x300, 8, 0),
                d(0x400, 4, W),
            ],
            &limits(8),
        )
        .unwrap();
        assert_eq!(s.readable, vec![seg(0x100, 16), seg(0x300, 8)]);
        assert_eq!(s.readable_len, 24);
        assert_eq!(s.writable, vec![seg(0x400, 4)]);
        assert_eq!(s.writable_len, 4);
        // Only zero-length descriptors in memory: an empty split, not an error.
        let s = split(&m, [d(0x100, 0, 0), d(0x2_0000, 0, W)], &limits(8)).unwrap();
        assert_eq!(s, Split::default());
    }

    #[test]
    fn malformed_chains() {
        let m = mem();
        let l = limits(4);
        let e = |c: &[Descriptor]| split(&m, c.iter().copied(), &l).unwrap_err();
        assert_eq!(e(&[]), ChainError::Empty);
        assert_eq!(
            e(&[d(0, 1, 0); 5]),
            ChainError::TooManyDescriptors(4),
            "the limit counts every descriptor"
        );
        assert_eq!(
            e(&[d(0, 1, 0), d(0, 0, W), d(0, 1, 0)]),
            ChainError::ReadableAfterWritable,
            "an empty writable descriptor counts"
        );
        for (addr, len) in [
            (0x1_0000, 1),        // the hole
            (0xffff, 2),          // runs into the hole
            (0x2_ffff, 2),        // spans two regions that touch
            (u64::MAX, 1),        // past the address space
            (0x3_0000, u32::MAX), // past the last region
            (0x1_0000, 0),        // empty, but not in memory
            (u64::MAX, 0),
        ] {
            assert_eq!(
                e(&[d(addr, len, 0)]),
                ChainError::OutOfMemory { addr, len },
                "{addr:#x}+{len:#x}"
            );
        }
        let l = Limits {
            descriptors: 8,
            readable_bytes: 10,
            writable_bytes: 4,
        };
        let e = |c: &[Descriptor]| split(&m, c.iter().copied(), &l).unwrap_err();
        assert_eq!(
            e(&[d(0, 6, 0), d(0, 5, 0)]),
            ChainError::ReadableTooLong(10)
        );
        assert_eq!(
            e(&[d(0, 10, 0), d(0, 3, W), d(0, 2, W)]),
            ChainError::WritableTooLong(4)
        );
        assert!(split(&m, [d(0, 10, 0), d(0, 4, W)], &l).is_ok());
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000_0000)]).unwrap();
        let s = split(&m, [d(0, u32::MAX, 0); 3], &limits(3)).unwrap();
        assert_eq!(s.readable_len, 3 * u64::from(u32::MAX));
    }

    #[test]
    fn pieces_at_an_offset() {
        let segs = [seg(0x100, 4), seg(0x200, 0), seg(0x300, 8), seg(0x400, 2)];
        let all = |off, len| pieces(&segs, off, len).collect::<Vec<_>>();
        assert_eq!(
            all(0, 14),
            vec![seg(0x100, 4), seg(0x300, 8), seg(0x400, 2)]
        );
        assert_eq!(all(5, 4), vec![seg(0x301, 4)]);
        assert_eq!(all(4, 9), vec![seg(0x300, 8), seg(0x400, 1)]);
        assert_eq!(all(11, 100), vec![seg(0x307, 1), seg(0x400, 2)]);
        assert_eq!(all(14, 1), vec![]);
        assert_eq!(all(u64::MAX, u64::MAX), vec![]);
        assert_eq!(all(3, 0), vec![]);
        // A segment at the end of the address space ends the walk.
        let top = [seg(u64::MAX, 4)];
        assert_eq!(pieces(&top, 2, 2).count(), 0);
    }

    #[test]
    fn copies_at_an_offset() {
        let m = mem();
        let segs = [seg(0x100, 3), seg(0x2_0000, 5)];
        assert_eq!(write_at(&m, &segs, 2, b"abcdef").unwrap(), 6);
        let mut buf = [0u8; 8];
        assert_eq!(read_at(&m, &segs, 0, &mut buf).unwrap(), 8);
        assert_eq!(&buf, b"\0\0abcdef");
        // Past the end: what fits.
        assert_eq!(write_at(&m, &segs, 6, b"XYZ").unwrap(), 2);
        assert_eq!(read_at(&m, &segs, 5, &mut buf).unwrap(), 3);
        assert_eq!(&buf[..3], b"dXY");
        // Buffers outside memory (not from `split`) are an error.
        let bad = [seg(0x1_0000, 4)];
        assert!(read_at(&m, &bad, 0, &mut buf).is_err());
        assert!(write_at(&m, &bad, 0, b"x").is_err());
    }
}
