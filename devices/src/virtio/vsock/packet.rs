//! vsock packets over descriptor chains: pure parsing and writing, no I/O.
//!
//! A TX chain is device-readable: a 44-byte header followed by `len` bytes
//! of payload, spread over any number of descriptors (Linux ≥ 6.2 puts both
//! in one). An RX chain is device-writable with room for a header and
//! whatever payload fits. Everything the guest controls (flags, lengths,
//! addresses, loops) is checked; nothing here panics on guest input.

use virtio_queue::DescriptorChain;
use vm_memory::{GuestMemoryError, GuestMemoryMmap};

use super::{MAX_DESCRIPTORS, MAX_PKT_DATA};
use crate::virtio::chain::{read_at, split, write_at, ChainError, Limits, Segment};

/// Size of `struct virtio_vsock_hdr`.
pub const HDR_SIZE: usize = 44;

/// `struct virtio_vsock_hdr` (little endian on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn le16(b: &[u8; HDR_SIZE], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8; HDR_SIZE], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8; HDR_SIZE], at: usize) -> u64 {
    u64::from(le32(b, at)) | (u64::from(le32(b, at + 4)) << 32)
}

impl PacketHeader {
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        Self {
            src_cid: le64(b, 0),
            dst_cid: le64(b, 8),
            src_port: le32(b, 16),
            dst_port: le32(b, 20),
            len: le32(b, 24),
            type_: le16(b, 28),
            op: le16(b, 30),
            flags: le32(b, 32),
            buf_alloc: le32(b, 36),
            fwd_cnt: le32(b, 40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

/// Why a chain is not a valid packet buffer.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("write-only descriptor in a TX chain")]
    WriteOnlyInTx,
    #[error("read-only descriptor in an RX chain")]
    ReadOnlyInRx,
    #[error("chain holds {got} bytes, less than the {HDR_SIZE}-byte header")]
    ShortHeader { got: u64 },
    #[error("payload length {len} exceeds the maximum {MAX_PKT_DATA}")]
    DataTooLong { len: u32 },
    #[error("header announces {len} payload bytes, the chain holds {got}")]
    ShortData { len: u32, got: u64 },
    #[error("payload of {len} bytes does not fit the RX buffer ({room})")]
    NoRoom { len: usize, room: usize },
    #[error("guest memory access: {0}")]
    Memory(#[from] GuestMemoryError),
}

/// A parse failure, with the header when it could be read (so the device
/// can reset that connection).
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct TxError {
    pub header: Option<PacketHeader>,
    pub error: PacketError,
}

/// A packet the guest sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    pub hdr: PacketHeader,
    pub data: Vec<u8>,
}

/// Collects a chain's buffers, all of one direction (an empty descriptor of
/// the other direction is refused too), checked against memory.
fn segments(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    writable: bool,
) -> Result<(Vec<Segment>, u64), PacketError> {
    let mut wrong_way = false;
    let walk = chain.inspect(|d| wrong_way |= d.is_write_only() != writable);
    let split = split(mem, walk, &Limits::descriptors(MAX_DESCRIPTORS));
    match (wrong_way, writable) {
        (true, true) => Err(PacketError::ReadOnlyInRx),
        (true, false) => Err(PacketError::WriteOnlyInTx),
        (false, true) => split
            .map(|s| (s.writable, s.writable_len))
            .map_err(Into::into),
        (false, false) => split
            .map(|s| (s.readable, s.readable_len))
            .map_err(Into::into),
    }
}

/// Ok when a copy of `len` bytes moved them all (`done`), else NoRoom.
fn whole(len: usize, done: usize) -> Result<(), PacketError> {
    if done < len {
        return Err(PacketError::NoRoom { len, room: done });
    }
    Ok(())
}

/// Copies `buf.len()` bytes from byte `offset` of `segs` into `buf`.
fn read_exact_at(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: usize,
    buf: &mut [u8],
) -> Result<(), PacketError> {
    whole(buf.len(), read_at(mem, segs, offset as u64, buf)?)
}

/// Copies `buf` into `segs` from byte `offset` on, whole.
fn write_all_at(
    mem: &GuestMemoryMmap,
    segs: &[Segment],
    offset: usize,
    buf: &[u8],
) -> Result<(), PacketError> {
    whole(buf.len(), write_at(mem, segs, offset as u64, buf)?)
}

/// Parses a TX chain into a header and a copy of its payload.
pub fn parse_tx(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<TxPacket, TxError> {
    let err = |header, error| TxError { header, error };
    let (segs, total) = segments(mem, chain, false).map_err(|e| err(None, e))?;
    if total < HDR_SIZE as u64 {
        return Err(err(None, PacketError::ShortHeader { got: total }));
    }
    let mut raw = [0u8; HDR_SIZE];
    read_exact_at(mem, &segs, 0, &mut raw).map_err(|e| err(None, e))?;
    let hdr = PacketHeader::from_bytes(&raw);
    if hdr.len > MAX_PKT_DATA {
        return Err(err(Some(hdr), PacketError::DataTooLong { len: hdr.len }));
    }
    let room = total - HDR_SIZE as u64;
    if room < u64::from(hdr.len) {
        return Err(err(
            Some(hdr),
            PacketError::ShortData {
                len: hdr.len,
                got: room,
            },
        ));
    }
    let mut data = vec![0u8; hdr.len as usize];
    read_exact_at(mem, &segs, HDR_SIZE, &mut data).map_err(|e| err(Some(hdr), e))?;
    Ok(TxPacket { hdr, data })
}

/// A validated RX chain, ready to receive one packet.
#[derive(Debug)]
pub struct RxBuffer {
    segs: Vec<Segment>,
    total: u64,
}

impl RxBuffer {
    /// Checks that `chain` is all device-writable, in memory, and holds a header.
    pub fn parse(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Self, PacketError> {
        let (segs, total) = segments(mem, chain, true)?;
        if total < HDR_SIZE as u64 {
            return Err(PacketError::ShortHeader { got: total });
        }
        Ok(Self { segs, total })
    }

    /// How many payload bytes fit.
    pub fn data_capacity(&self) -> usize {
        let room = self.total.saturating_sub(HDR_SIZE as u64);
        room.min(u64::from(MAX_PKT_DATA)) as usize
    }

    /// Writes the packet (setting `hdr.len`); returns the used length.
    pub fn write(
        &self,
        mem: &GuestMemoryMmap,
        hdr: &PacketHeader,
        data: &[u8],
    ) -> Result<u32, PacketError> {
        if data.len() > self.data_capacity() {
            return Err(PacketError::NoRoom {
                len: data.len(),
                room: self.data_capacity(),
            });
        }
        let mut hdr = *hdr;
        hdr.len = data.len() as u32;
        let raw = hdr.to_bytes();
        write_all_at(mem, &self.segs, 0, &raw)?;
        write_all_at(mem, &self.segs, HDR_SIZE, data)?;
        Ok((HDR_SIZE + data.len()) as u32)
    }
}

/// Writes a 4-byte event into an event-queue chain; returns the used length.
pub fn write_event(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    event_id: u32,
) -> Result<u32, PacketError> {
    let (segs, total) = segments(mem, chain, true)?;
    if total < 4 {
        return Err(PacketError::NoRoom {
            len: 4,
            room: total as usize,
        });
    }
    let raw = event_id.to_le_bytes();
    write_all_at(mem, &segs, 0, &raw)?;
    Ok(4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const W: u16 = 2; // VRING_DESC_F_WRITE
    const N: u16 = 1; // VRING_DESC_F_NEXT

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    fn d(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
    }

    fn sample() -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1000,
            dst_port: 1024,
            len: 0,
            type_: 1,
            op: 5,
            flags: 0,
            buf_alloc: 4096,
            fwd_cnt: 7,
        }
    }

    fn put_hdr(m: &GuestMemoryMmap, at: u64, len: u32) {
        let mut h = sample();
        h.len = len;
        m.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
    }

    fn tx(m: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<TxPacket, TxError> {
        let vq = MockSplitQueue::new(m, 16);
        let chain = vq.build_desc_chain(descs).unwrap();
        parse_tx(m, chain)
    }

    #[test]
    fn header_roundtrip() {
        let h = sample();
        assert_eq!(PacketHeader::from_bytes(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[30], 5, "op at offset 30");
    }

    #[test]
    fn valid_tx_chains() {
        let m = mem();
        put_hdr(&m, 0x1_0000, 5);
        m.write_slice(b"hello", GuestAddress(0x2_0000)).unwrap();
        // Header + data descriptors.
        let p = tx(&m, &[d(0x1_0000, 44, 0), d(0x2_0000, 5, 0)]).unwrap();
        assert_eq!(p.data, b"hello");
        assert_eq!(p.hdr.src_port, 1000);
        // One descriptor for both (Linux ≥ 6.2).
        m.write_slice(b"hello", GuestAddress(0x1_0000 + 44))
            .unwrap();
        let p = tx(&m, &[d(0x1_0000, 49, 0)]).unwrap();
        assert_eq!(p.data, b"hello");
        // Header split over descriptors, data over three.
        put_hdr(&m, 0x3_0000, 5);
        m.write_slice(b"hel", GuestAddress(0x3_0000 + 44)).unwrap();
        m.write_slice(b"l", GuestAddress(0x5_0000)).unwrap();
        m.write_slice(b"o", GuestAddress(0x6_0000)).unwrap();
        let mut raw = [0u8; 47];
        m.read_slice(&mut raw, GuestAddress(0x3_0000)).unwrap();
        m.write_slice(&raw[20..], GuestAddress(0x4_0000)).unwrap();
        let p = tx(
            &m,
            &[
                d(0x3_0000, 20, 0),
                d(0x4_0000, 27, 0),
                d(0x5_0000, 1, 0),
                d(0x6_0000, 1, 0),
            ],
        )
        .unwrap();
        assert_eq!(p.data, b"hello");
        // No payload.
        put_hdr(&m, 0x1_0000, 0);
        assert!(tx(&m, &[d(0x1_0000, 44, 0)]).unwrap().data.is_empty());
    }

    #[test]
    fn malformed_tx_chains() {
        let m = mem();
        put_hdr(&m, 0x1_0000, 100);
        type Case = (Vec<RawDescriptor>, fn(&PacketError) -> bool, bool);
        let cases: Vec<Case> = vec![
            (
                vec![d(0x1_0000, 44, W)],
                |e| matches!(e, PacketError::WriteOnlyInTx),
                false,
            ),
            (
                vec![d(0x1_0000, 44, 0), d(0x2_0000, 100, W)],
                |e| matches!(e, PacketError::WriteOnlyInTx),
                false,
            ),
            (
                vec![d(0x1_0000, 44, 0), d(0x2_0000, 0, W)],
                |e| matches!(e, PacketError::WriteOnlyInTx),
                false,
            ),
            (
                vec![d(0x1_0000, 43, 0)],
                |e| matches!(e, PacketError::ShortHeader { got: 43 }),
                false,
            ),
            (
                vec![d(0x1_0000, 44, 0), d(0x2_0000, 99, 0)],
                |e| matches!(e, PacketError::ShortData { len: 100, got: 99 }),
                true,
            ),
            (
                vec![d(0x1_0000, 44, 0)],
                |e| matches!(e, PacketError::ShortData { .. }),
                true,
            ),
            (
                vec![d(0x1f_fff0, 44, 0)],
                |e| matches!(e, PacketError::Chain(ChainError::OutOfMemory { .. })),
                false,
            ),
            (
                vec![d(u64::MAX - 10, 44, 0)],
                |e| matches!(e, PacketError::Chain(ChainError::OutOfMemory { .. })),
                false,
            ),
            (
                vec![d(0x1_0000, 44, 0), d(0x30_0000, 100, 0)],
                |e| matches!(e, PacketError::Chain(ChainError::OutOfMemory { .. })),
                false,
            ),
        ];
        for (i, (descs, want, has_hdr)) in cases.into_iter().enumerate() {
            let e = tx(&m, &descs).unwrap_err();
            assert!(want(&e.error), "case {i}: {e}");
            assert_eq!(e.header.is_some(), has_hdr, "case {i}");
        }
        put_hdr(&m, 0x1_0000, MAX_PKT_DATA + 1);
        let e = tx(&m, &[d(0x1_0000, 44, 0), d(0x2_0000, u32::MAX, 0)]).unwrap_err();
        assert!(matches!(
            e.error,
            PacketError::Chain(ChainError::OutOfMemory { .. }) | PacketError::DataTooLong { .. }
        ));
        let e = tx(&m, &[d(0x1_0000, 44, 0), d(0x2_0000, 0x10_0000, 0)]).unwrap_err();
        assert!(matches!(e.error, PacketError::DataTooLong { .. }), "{e}");
    }

    #[test]
    fn looping_chain_terminates() {
        let m = mem();
        put_hdr(&m, 0x1_0000, 0x1000);
        let vq = MockSplitQueue::new(&m, 16);
        // 0 → 1 → 0 → ...
        vq.add_desc_chains(
            &[
                RawDescriptor::from(Descriptor::new(0x1_0000, 44, N, 1)),
                RawDescriptor::from(Descriptor::new(0x2_0000, 16, N, 0)),
            ],
            0,
        )
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.pop_descriptor_chain(&m).unwrap();
        // 16 descriptors at most: 8 × (44 + 16) bytes < 44 + 0x1000.
        let e = parse_tx(&m, chain).unwrap_err();
        assert!(matches!(e.error, PacketError::ShortData { .. }), "{e}");
    }

    #[test]
    fn rx_buffers() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let chain = vq
            .build_desc_chain(&[d(0x1_0000, 44, W), d(0x2_0000, 8, W)])
            .unwrap();
        let buf = RxBuffer::parse(&m, chain).unwrap();
        assert_eq!(buf.data_capacity(), 8);
        let used = buf.write(&m, &sample(), b"abcdefgh").unwrap();
        assert_eq!(used, 52);
        let mut raw = [0u8; HDR_SIZE];
        m.read_slice(&mut raw, GuestAddress(0x1_0000)).unwrap();
        assert_eq!(PacketHeader::from_bytes(&raw).len, 8);
        let mut data = [0u8; 8];
        m.read_slice(&mut data, GuestAddress(0x2_0000)).unwrap();
        assert_eq!(&data, b"abcdefgh");
        assert!(matches!(
            buf.write(&m, &sample(), &[0; 9]),
            Err(PacketError::NoRoom { .. })
        ));
        // Capacity is capped at the maximum packet payload.
        let chain = vq.build_desc_chain(&[d(0x1_0000, 0x10_0000, W)]).unwrap();
        assert_eq!(
            RxBuffer::parse(&m, chain).unwrap().data_capacity(),
            MAX_PKT_DATA as usize
        );
        for (descs, ok) in [
            (vec![d(0x1_0000, 44, 0)], false),
            (vec![d(0x1_0000, 44, W), d(0x2_0000, 8, 0)], false),
            (vec![d(0x1_0000, 44, W), d(0x2_0000, 0, 0)], false),
            (vec![d(0x1_0000, 40, W)], false),
            (vec![d(0x1f_fff0, 64, W)], false),
            (vec![d(0x1_0000, 20, W), d(0x2_0000, 24, W)], true),
        ] {
            let chain = vq.build_desc_chain(&descs).unwrap();
            assert_eq!(RxBuffer::parse(&m, chain).is_ok(), ok, "{descs:?}");
        }
    }

    #[test]
    fn event_buffer() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        let chain = vq.build_desc_chain(&[d(0x1_0000, 8, W)]).unwrap();
        assert_eq!(write_event(&m, chain, 0).unwrap(), 4);
        let chain = vq.build_desc_chain(&[d(0x1_0000, 2, W)]).unwrap();
        assert!(write_event(&m, chain, 0).is_err());
        let chain = vq.build_desc_chain(&[d(0x1_0000, 8, 0)]).unwrap();
        assert!(write_event(&m, chain, 0).is_err());
    }
}
