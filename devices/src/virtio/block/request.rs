//! virtio-blk requests over descriptor chains: pure parsing, no I/O.
//!
//! A request is a byte stream split over descriptors (virtio 1.2, 5.2.6):
//! the device-readable part starts with the 16-byte header
//! `{ type: le32, ioprio: le32, sector: le64 }` and, for writes, discard and
//! write-zeroes, carries the data; the device-writable part that follows
//! holds the data of reads and GET_ID, and ends with the 1-byte status.
//! The device makes no assumption on how the driver splits these over
//! descriptors (Linux puts header, each data page and status in their own).
//!
//! Everything the guest controls is checked here: descriptor directions,
//! addresses, lengths, the sector range against the disk (without
//! overflow), and the request size ([`MAX_DATA_BYTES`], [`MAX_DESCRIPTORS`],
//! [`MAX_DISCARD_SEG`]). Nothing panics on guest input; a failure says where
//! the status byte is when it could be found, so the request can still be
//! completed.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap};

use crate::virtio::chain::{pieces, read_at, split, Limits};
pub use crate::virtio::chain::{ChainError, Segment};

/// Bytes per sector: the unit of `sector` and of capacity, whatever `blk_size` says.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Size of `struct virtio_blk_outhdr`.
pub const HDR_SIZE: usize = 16;
/// Size of one `struct virtio_blk_discard_write_zeroes`.
pub const DISCARD_SEG_SIZE: usize = 16;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// The most data descriptors per request; offered as `seg_max`.
pub const SEG_MAX: u32 = 128;
/// The most descriptors in one chain: the data plus header and status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
/// The most data bytes per read or write request (8 MiB). Linux's virtio
/// driver sets no hardware sector limit, so requests are bounded by the
/// guest's `max_sectors_kb` (1280 KiB by default): this leaves room for a
/// guest that raises it, while keeping a single request's work bounded.
/// The device copies through a fixed-size buffer, so nothing is allocated
/// in proportion to it.
pub const MAX_DATA_BYTES: u64 = 8 << 20;
/// The most segments in one DISCARD request; offered as `max_discard_seg`.
pub const MAX_DISCARD_SEG: u32 = 16;
/// The most segments in one WRITE_ZEROES request; offered as
/// `max_write_zeroes_seg` (Linux sends one).
pub const MAX_WRITE_ZEROES_SEG: u32 = 1;
/// The most sectors one discard or write-zeroes segment may cover (1 GiB);
/// offered as `max_discard_sectors` and `max_write_zeroes_sectors`.
pub const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// The `unmap` flag of a write-zeroes segment (reserved for discard).
pub const WRITE_ZEROES_UNMAP: u32 = 1;

/// What a request chain may hold.
const LIMITS: Limits = Limits::descriptors(MAX_DESCRIPTORS);

/// The part of the stream `segs` from byte `start`, `len` bytes long.
fn collect_pieces(segs: &[Segment], start: u64, len: u64) -> Vec<Segment> {
    pieces(segs, start, len).collect()
}

/// One `struct virtio_blk_discard_write_zeroes`, range-checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscardRange {
    pub sector: u64,
    pub num_sectors: u32,
    /// For write-zeroes: the driver allows deallocating the range.
    pub unmap: bool,
}

/// What the request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    /// Read `data` bytes from `sector` into guest memory.
    In {
        sector: u64,
    },
    /// Write `data` bytes from guest memory at `sector`.
    Out {
        sector: u64,
    },
    Flush,
    /// Write the device id into `data` (at most [`ID_BYTES`] of it).
    GetId,
    Discard(Vec<DiscardRange>),
    WriteZeroes(Vec<DiscardRange>),
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    /// The data buffers: device-writable for `In` and `GetId`, readable for
    /// `Out`; empty for the others (their segment lists are parsed).
    pub data: Vec<Segment>,
    /// Total length of `data`.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("the device-readable part holds {got} bytes, less than the {HDR_SIZE}-byte header")]
    ShortHeader { got: u64 },
    #[error("no device-writable status byte at the end of the chain")]
    NoStatus,
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    #[error("data length {0} is not a multiple of {SECTOR_SIZE}")]
    Unaligned(u64),
    #[error("data length {len} exceeds the maximum {max}")]
    TooLong { len: u64, max: u64 },
    #[error("sectors {sector}+{sectors} lie outside the disk ({capacity} sectors)")]
    OutOfDisk {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
    #[error("{0} data bytes where none belong")]
    UnexpectedData(u64),
    #[error("GET_ID needs a device-writable buffer")]
    NoIdBuffer,
    #[error("segment list of {len} bytes: not a non-empty list of at most {max} segments")]
    BadSegmentList { len: u64, max: u32 },
    #[error("segment flags {0:#x} not supported")]
    SegmentFlags(u32),
    #[error("segment of {0} sectors is empty or exceeds {MAX_DISCARD_SECTORS}")]
    SegmentSize(u32),
    #[error("guest memory access: {0}")]
    Memory(String),
}

impl RequestError {
    /// The status byte that answers the request.
    pub fn status_code(&self) -> u8 {
        match self {
            RequestError::Unsupported(_) | RequestError::SegmentFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

impl From<GuestMemoryError> for RequestError {
    fn from(e: GuestMemoryError) -> Self {
        RequestError::Memory(e.to_string())
    }
}

/// A parse failure, with the status byte's address when it was found (the
/// device then completes the request with [`RequestError::status_code`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct ParseError {
    pub status: Option<GuestAddress>,
    pub error: RequestError,
}

/// Checks that `sectors` sectors from `sector` lie on a disk of `capacity`.
fn check_range(sector: u64, sectors: u64, capacity: u64) -> Result<(), RequestError> {
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfDisk {
            sector,
            sectors,
            capacity,
        }),
    }
}

/// Parses a discard or write-zeroes segment list.
fn parse_ranges(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    len: u64,
    max: u32,
    allow_unmap: bool,
    capacity: u64,
) -> Result<Vec<DiscardRange>, RequestError> {
    let bad = RequestError::BadSegmentList { len, max };
    if len == 0
        || !len.is_multiple_of(DISCARD_SEG_SIZE as u64)
        || len / DISCARD_SEG_SIZE as u64 > u64::from(max)
    {
        return Err(bad);
    }
    // len <= 16 * max, small.
    let mut raw = vec![0u8; len as usize];
    read_at(mem, segs, 0, &mut raw)?;
    let mut out = Vec::new();
    for c in raw.chunks_exact(DISCARD_SEG_SIZE) {
        let sector = u64::from_le_bytes(c[0..8].try_into().unwrap_or_default());
        let num_sectors = u32::from_le_bytes(c[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(c[12..16].try_into().unwrap_or_default());
        let allowed = if allow_unmap { WRITE_ZEROES_UNMAP } else { 0 };
        if flags & !allowed != 0 {
            return Err(RequestError::SegmentFlags(flags));
        }
        if num_sectors == 0 || num_sectors > MAX_DISCARD_SECTORS {
            return Err(RequestError::SegmentSize(num_sectors));
        }
        check_range(sector, u64::from(num_sectors), capacity)?;
        out.push(DiscardRange {
            sector,
            num_sectors,
            unmap: flags & WRITE_ZEROES_UNMAP != 0,
        });
    }
    Ok(out)
}

/// Parses a request chain for a disk of `capacity` sectors.
pub fn parse_request(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    capacity: u64,
) -> Result<Request, ParseError> {
    // Walk the whole chain (virtio-queue bounds the walk) to find the
    // status byte, the last byte of the last descriptor when that is
    // device-writable: every failure below can then still be reported.
    let mut descs = Vec::new();
    let mut last = None;
    for desc in chain {
        if descs.len() <= MAX_DESCRIPTORS {
            descs.push(desc);
        }
        last = Some(desc);
    }
    let status = last
        .filter(|d| d.is_write_only() && d.len() > 0)
        .and_then(|d| d.addr().0.checked_add(u64::from(d.len()) - 1))
        .map(GuestAddress)
        .filter(|at| GuestMemory::check_range(mem, *at, 1));
    let err = |error| ParseError { status, error };
    let s = split(mem, descs, &LIMITS).map_err(|e| err(e.into()))?;
    let Some(status) = status else {
        return Err(err(RequestError::NoStatus));
    };
    if s.readable_len < HDR_SIZE as u64 {
        return Err(err(RequestError::ShortHeader {
            got: s.readable_len,
        }));
    }
    let mut hdr = [0u8; HDR_SIZE];
    read_at(mem, &s.readable, 0, &mut hdr).map_err(|e| err(e.into()))?;
    let type_ = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let mut sector_raw = [0u8; 8];
    sector_raw.copy_from_slice(&hdr[8..16]);
    let sector = u64::from_le_bytes(sector_raw);

    let out_len = s.readable_len - HDR_SIZE as u64;
    let in_len = s.writable_len - 1;
    let out_data = || collect_pieces(&s.readable, HDR_SIZE as u64, out_len);
    let in_data = || collect_pieces(&s.writable, 0, in_len);

    let (kind, data, data_len) = match type_ {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
            // Data in the wrong direction (a read's buffer the device may
            // not write, a write's the device should not) is refused.
            let (len, data, wrong_way) = if type_ == VIRTIO_BLK_T_IN {
                (in_len, in_data(), out_len)
            } else {
                (out_len, out_data(), in_len)
            };
            if wrong_way != 0 {
                return Err(err(RequestError::UnexpectedData(wrong_way)));
            }
            if !len.is_multiple_of(SECTOR_SIZE) {
                return Err(err(RequestError::Unaligned(len)));
            }
            if len > MAX_DATA_BYTES {
                return Err(err(RequestError::TooLong {
                    len,
                    max: MAX_DATA_BYTES,
                }));
            }
            check_range(sector, len >> SECTOR_SHIFT, capacity).map_err(err)?;
            let kind = if type_ == VIRTIO_BLK_T_IN {
                RequestKind::In { sector }
            } else {
                RequestKind::Out { sector }
            };
            (kind, data, len)
        }
        VIRTIO_BLK_T_FLUSH => {
            if out_len != 0 || in_len != 0 {
                return Err(err(RequestError::UnexpectedData(out_len + in_len)));
            }
            (RequestKind::Flush, Vec::new(), 0)
        }
        VIRTIO_BLK_T_GET_ID => {
            if out_len != 0 {
                return Err(err(RequestError::UnexpectedData(out_len)));
            }
            if in_len == 0 {
                return Err(err(RequestError::NoIdBuffer));
            }
            let len = in_len.min(ID_BYTES as u64);
            (RequestKind::GetId, collect_pieces(&s.writable, 0, len), len)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = type_ == VIRTIO_BLK_T_DISCARD;
            if in_len != 0 {
                return Err(err(RequestError::UnexpectedData(in_len)));
            }
            let max = if discard {
                MAX_DISCARD_SEG
            } else {
                MAX_WRITE_ZEROES_SEG
            };
            let ranges =
                parse_ranges(mem, &out_data(), out_len, max, !discard, capacity).map_err(err)?;
            let kind = if discard {
                RequestKind::Discard(ranges)
            } else {
                RequestKind::WriteZeroes(ranges)
            };
            (kind, Vec::new(), 0)
        }
        other => return Err(err(RequestError::Unsupported(other))),
    };
    Ok(Request {
        kind,
        data,
        data_len,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::Bytes;

    const W: u16 = 2; // VRING_DESC_F_WRITE
    const CAP: u64 = 2048; // sectors: a 1 MiB disk
    const HDR: u64 = 0x1_0000;
    const DATA: u64 = 0x2_0000;
    const STATUS: u64 = 0x8_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn put_hdr(m: &GuestMemoryMmap, type_: u32, sector: u64) {
        let mut h = [0u8; HDR_SIZE];
        h[0..4].copy_from_slice(&type_.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(HDR)).unwrap();
    }

    fn parse(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Request, ParseError> {
        let vq = MockSplitQueue::new(m, 256);
        let chain = vq.build_desc_chain(descs).unwrap();
        parse_request(m, chain, CAP)
    }

    fn error(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> ParseError {
        parse(m, descs).unwrap_err()
    }

    fn put_ranges(m: &GuestMemoryMmap, ranges: &[(u64, u32, u32)]) -> u32 {
        let mut raw = Vec::new();
        for (s, n, f) in ranges {
            raw.extend(s.to_le_bytes());
            raw.extend(n.to_le_bytes());
            raw.extend(f.to_le_bytes());
        }
        m.write_slice(&raw, GuestAddress(DATA)).unwrap();
        raw.len() as u32
    }

    #[test]
    fn valid_requests() {
        let m = mem();
        put_hdr(&m, VIRTIO_BLK_T_IN, 8);
        let r = parse(&m, &[d(HDR, 16, 0), d(DATA, 1024, W), d(STATUS, 1, W)]).unwrap();
        assert_eq!(r.kind, RequestKind::In { sector: 8 });
        assert_eq!(r.data_len, 1024);
        assert_eq!(
            r.data,
            vec![Segment {
                addr: GuestAddress(DATA),
                len: 1024
            }]
        );
        assert_eq!(r.status, GuestAddress(STATUS));

        // Reading up to the last sector, data over two descriptors.
        put_hdr(&m, VIRTIO_BLK_T_IN, CAP - 2);
        let r = parse(
            &m,
            &[
                d(HDR, 16, 0),
                d(DATA, 512, W),
                d(DATA + 0x1000, 512, W),
                d(STATUS, 1, W),
            ],
        )
        .unwrap();
        assert_eq!(r.data.len(), 2);
        assert_eq!(r.data_len, 1024);

        // A write, header and data in one descriptor, data and status in another.
        put_hdr(&m, VIRTIO_BLK_T_OUT, 0);
        let r = parse(&m, &[d(HDR, 16 + 512, 0), d(STATUS, 1, W)]).unwrap();
        assert_eq!(r.kind, RequestKind::Out { sector: 0 });
        assert_eq!(
            r.data,
            vec![Segment {
                addr: GuestAddress(HDR + 16),
                len: 512
            }]
        );
        // The read's data and status in one writable descriptor.
        put_hdr(&m, VIRTIO_BLK_T_IN, 0);
        let r = parse(&m, &[d(HDR, 16, 0), d(DATA, 513, W)]).unwrap();
        assert_eq!(r.data_len, 512);
        assert_eq!(r.status, GuestAddress(DATA + 512));

        put_hdr(&m, VIRTIO_BLK_T_FLUSH, 0);
        let r = parse(&m, &[d(HDR, 16, 0), d(STATUS, 1, W)]).unwrap();
        assert_eq!(r.kind, RequestKind::Flush);
        assert!(r.data.is_empty());

        put_hdr(&m, VIRTIO_BLK_T_GET_ID, 0);
        let r = parse(&m, &[d(HDR, 16, 0), d(DATA, 20, W), d(STATUS, 1, W)]).unwrap();
        assert_eq!(r.kind, RequestKind::GetId);
        assert_eq!(r.data_len, 20);

        put_hdr(&m, VIRTIO_BLK_T_DISCARD, 0);
        let n = put_ranges(&m, &[(0, 8, 0), (CAP - 8, 8, 0)]);
        let r = parse(&m, &[d(HDR, 16, 0), d(DATA, n, 0), d(STATUS, 1, W)]).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::Discard(vec![
                DiscardRange {
                    sector: 0,
                    num_sectors: 8,
                    unmap: false
                },
                DiscardRange {
                    sector: CAP - 8,
                    num_sectors: 8,
                    unmap: false
                }
            ])
        );

        put_hdr(&m, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        let n = put_ranges(&m, &[(16, 32, WRITE_ZEROES_UNMAP)]);
        let r = parse(&m, &[d(HDR, 16, 0), d(DATA, n, 0), d(STATUS, 1, W)]).unwrap();
        assert_eq!(
            r.kind,
            RequestKind::WriteZeroes(vec![DiscardRange {
                sector: 16,
                num_sectors: 32,
                unmap: true
            }])
        );
    }

    #[test]
    fn malformed_requests() {
        let m = mem();
        put_hdr(&m, VIRTIO_BLK_T_IN, 0);
        let ioerr = VIRTIO_BLK_S_IOERR as u8;
        let st = Some(GuestAddress(STATUS));

        // Short header.
        let e = error(&m, &[d(HDR, 8, 0), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::ShortHeader { got: 8 });
        assert_eq!(e.status, st);
        assert_eq!(e.error.status_code(), ioerr);

        // Write-only header: nothing readable.
        let e = error(&m, &[d(HDR, 16, W), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::ShortHeader { got: 0 });

        // No status: the last descriptor is read-only, or absent.
        let e = error(&m, &[d(HDR, 16, 0), d(STATUS, 1, 0)]);
        assert_eq!(e.error, RequestError::NoStatus);
        assert_eq!(e.status, None);
        let e = error(&m, &[d(HDR, 16, 0)]);
        assert_eq!(e.error, RequestError::NoStatus);
        // An empty writable descriptor does not hold a status byte.
        let e = error(&m, &[d(HDR, 16, 0), d(STATUS, 0, W)]);
        assert_eq!(e.error, RequestError::NoStatus);

        // Readable after writable.
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, 0)]);
        assert_eq!(
            e.error,
            RequestError::Chain(ChainError::ReadableAfterWritable)
        );
        assert_eq!(e.status, None);

        // Data not a multiple of 512, both ways.
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 500, W), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::Unaligned(500));
        assert_eq!(e.status, st);
        put_hdr(&m, VIRTIO_BLK_T_OUT, 0);
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 100, 0), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::Unaligned(100));
        // A write of no data is valid.
        let r = parse(&m, &[d(HDR, 16, 0), d(STATUS, 1, W)]).unwrap();
        assert_eq!(r.data_len, 0);

        // Sector out of range, and sector + length overflowing.
        put_hdr(&m, VIRTIO_BLK_T_IN, CAP - 1);
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 1024, W), d(STATUS, 1, W)]);
        assert!(matches!(e.error, RequestError::OutOfDisk { .. }));
        put_hdr(&m, VIRTIO_BLK_T_IN, CAP);
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]);
        assert!(matches!(e.error, RequestError::OutOfDisk { .. }));
        put_hdr(&m, VIRTIO_BLK_T_IN, u64::MAX);
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]);
        assert!(matches!(e.error, RequestError::OutOfDisk { .. }));

        // Too long.
        put_hdr(&m, VIRTIO_BLK_T_IN, 0);
        let big = (MAX_DATA_BYTES + 512) as u32;
        let e = error(&m, &[d(HDR, 16, 0), d(0x10_0000, big, W), d(STATUS, 1, W)]);
        assert!(matches!(e.error, RequestError::TooLong { .. }));

        // Too many descriptors.
        let mut descs = vec![d(HDR, 16, 0)];
        descs.extend((0..=SEG_MAX).map(|i| d(DATA + 512 * u64::from(i), 512, W)));
        descs.push(d(STATUS, 1, W));
        let e = error(&m, &descs);
        assert_eq!(
            e.error,
            RequestError::Chain(ChainError::TooManyDescriptors(MAX_DESCRIPTORS))
        );

        // Outside guest memory.
        let e = error(
            &m,
            &[d(HDR, 16, 0), d(0xFFF_FE00, 0x1000, W), d(STATUS, 1, W)],
        );
        assert!(matches!(
            e.error,
            RequestError::Chain(ChainError::OutOfMemory { .. })
        ));

        // Unsupported type: UNSUPP.
        put_hdr(&m, 0x55, 0);
        let e = error(&m, &[d(HDR, 16, 0), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::Unsupported(0x55));
        assert_eq!(e.error.status_code(), VIRTIO_BLK_S_UNSUPP as u8);

        // Flush with data.
        put_hdr(&m, VIRTIO_BLK_T_FLUSH, 0);
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::UnexpectedData(512));

        // GET_ID without a buffer.
        put_hdr(&m, VIRTIO_BLK_T_GET_ID, 0);
        let e = error(&m, &[d(HDR, 16, 0), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::NoIdBuffer);
    }

    #[test]
    fn data_in_the_wrong_direction_is_refused() {
        let m = mem();
        let st = Some(GuestAddress(STATUS));
        // A read whose buffer the device may only read.
        put_hdr(&m, VIRTIO_BLK_T_IN, 0);
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 512, 0), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::UnexpectedData(512));
        assert_eq!(e.status, st);
        // A write whose data the device may write (the header too, here).
        put_hdr(&m, VIRTIO_BLK_T_OUT, 0);
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 512, W), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::UnexpectedData(512));
        let e = error(&m, &[d(HDR, 16 + 512, 0), d(DATA, 512, W), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::UnexpectedData(512));
        // GET_ID with readable bytes after the header.
        put_hdr(&m, VIRTIO_BLK_T_GET_ID, 0);
        let e = error(&m, &[d(HDR, 36, 0), d(STATUS, 1, W)]);
        assert_eq!(e.error, RequestError::UnexpectedData(20));
        assert_eq!(e.error.status_code(), VIRTIO_BLK_S_IOERR as u8);
    }

    #[test]
    fn malformed_segment_lists() {
        let m = mem();
        let seg_req = |m: &GuestMemoryMmap, t, ranges: &[(u64, u32, u32)]| {
            put_hdr(m, t, 0);
            let n = put_ranges(m, ranges);
            error(m, &[d(HDR, 16, 0), d(DATA, n, 0), d(STATUS, 1, W)]).error
        };
        // Empty list, partial segment, too many segments.
        put_hdr(&m, VIRTIO_BLK_T_DISCARD, 0);
        let e = error(&m, &[d(HDR, 16, 0), d(STATUS, 1, W)]);
        assert!(matches!(e.error, RequestError::BadSegmentList { .. }));
        let e = error(&m, &[d(HDR, 16, 0), d(DATA, 8, 0), d(STATUS, 1, W)]);
        assert!(matches!(e.error, RequestError::BadSegmentList { .. }));
        let many = vec![(0, 8, 0); MAX_DISCARD_SEG as usize + 1];
        assert!(matches!(
            seg_req(&m, VIRTIO_BLK_T_DISCARD, &many),
            RequestError::BadSegmentList { .. }
        ));
        assert!(matches!(
            seg_req(&m, VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 0), (8, 8, 0)]),
            RequestError::BadSegmentList { .. }
        ));
        // Out of the disk, overflowing, empty, oversized.
        assert!(matches!(
            seg_req(&m, VIRTIO_BLK_T_DISCARD, &[(CAP - 4, 8, 0)]),
            RequestError::OutOfDisk { .. }
        ));
        assert!(matches!(
            seg_req(&m, VIRTIO_BLK_T_DISCARD, &[(u64::MAX - 1, 8, 0)]),
            RequestError::OutOfDisk { .. }
        ));
        assert_eq!(
            seg_req(&m, VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 0, 0)]),
            RequestError::SegmentSize(0)
        );
        assert_eq!(
            seg_req(&m, VIRTIO_BLK_T_DISCARD, &[(0, MAX_DISCARD_SECTORS + 1, 0)]),
            RequestError::SegmentSize(MAX_DISCARD_SECTORS + 1)
        );
        // The unmap flag is reserved for discard: UNSUPP.
        let e = seg_req(&m, VIRTIO_BLK_T_DISCARD, &[(0, 8, WRITE_ZEROES_UNMAP)]);
        assert_eq!(e, RequestError::SegmentFlags(1));
        assert_eq!(e.status_code(), VIRTIO_BLK_S_UNSUPP as u8);
        assert_eq!(
            seg_req(&m, VIRTIO_BLK_T_WRITE_ZEROES, &[(0, 8, 4)]),
            RequestError::SegmentFlags(4)
        );
    }

    #[test]
    fn garbage_never_panics() {
        let m = mem();
        // A simple deterministic generator over random-ish chains.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut h = [0u8; HDR_SIZE];
            for b in h.iter_mut() {
                *b = next() as u8;
            }
            h[0] = [0u8, 1, 4, 8, 11, 13, 99][(next() % 7) as usize];
            h[1..4].fill(0);
            m.write_slice(&h, GuestAddress(HDR)).unwrap();
            let n = 1 + next() % 5;
            let descs: Vec<RawDescriptor> = (0..n)
                .map(|i| {
                    let addr = if i == 0 { HDR } else { DATA + 0x1000 * i };
                    let len = (next() % 2048) as u32;
                    let flags = if next() % 3 == 0 { 0 } else { W };
                    d(addr, len, if i == 0 { next() as u16 & W } else { flags })
                })
                .collect();
            let _ = parse(&m, &descs);
        }
    }
}
