//! virtio-net chains and features as pure functions: a TX chain's frame, an
//! RX chain's room, and the mapping between offload features and the TAP's
//! `TUN_F_*` flags. No device state, no I/O: fuzzed by `net_frame`.

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{GuestMemoryError, GuestMemoryMmap};

use super::{MAX_FRAME, QUEUE_SIZE, VNET_HDR_LEN};
use crate::virtio::chain::{self, ChainError, Limits, Segment};

const fn bit(b: u32) -> u64 {
    1 << b
}

/// Checksum offload both ways: the basis of every other offload.
const CSUM_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM) | bit(VIRTIO_NET_F_GUEST_CSUM);
const TSO_FEATURES: u64 = bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6);
const UFO_FEATURES: u64 = bit(VIRTIO_NET_F_GUEST_UFO) | bit(VIRTIO_NET_F_HOST_UFO);

/// Every offload feature the device may offer.
pub const OFFLOAD_FEATURES: u64 = CSUM_FEATURES | TSO_FEATURES | UFO_FEATURES;

/// The offload features to offer for a backend that accepts the `TUN_F_*`
/// flags `tun`: checksums with TUN_F_CSUM, TSO with TSO4 and TSO6 (and
/// CSUM), UFO with UFO (and CSUM). The host-side features (what the guest
/// may send: CSUM, HOST_*) go with the guest-side ones, so a guest gets
/// the same offloads both ways.
pub fn offered_offloads(tun: u32) -> u64 {
    if tun & libc::TUN_F_CSUM == 0 {
        return 0;
    }
    let mut f = CSUM_FEATURES;
    if tun & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) == libc::TUN_F_TSO4 | libc::TUN_F_TSO6 {
        f |= TSO_FEATURES;
    }
    if tun & libc::TUN_F_UFO != 0 {
        f |= UFO_FEATURES;
    }
    f
}

/// The `TUN_F_*` flags for what the guest accepted: what the host may hand
/// the guest (the GUEST_* features; segmentation only with checksums, as
/// virtio 1.2, 5.1.3.1 requires of the driver too).
pub fn tun_offloads(acked: u64) -> u32 {
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut t = libc::TUN_F_CSUM;
    for (feature, flag) in [
        (VIRTIO_NET_F_GUEST_TSO4, libc::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, libc::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, libc::TUN_F_UFO),
    ] {
        if acked & bit(feature) != 0 {
            t |= flag;
        }
    }
    t
}

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("net: {0}")]
    Chain(#[from] ChainError),
    #[error("net: TX chain of {0} bytes is shorter than the {VNET_HDR_LEN}-byte header")]
    ShortTx(u64),
    #[error("net: RX chain has {0} writable bytes, fewer than needed")]
    ShortRx(u64),
}

/// A TX chain: the guest's header and frame, one stream in `segs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxFrame {
    pub segs: Vec<Segment>,
    /// Header and frame, at least [`VNET_HDR_LEN`], at most [`MAX_FRAME`].
    pub len: usize,
}

const TX_LIMITS: Limits = Limits {
    descriptors: QUEUE_SIZE as usize,
    readable_bytes: MAX_FRAME as u64,
    // A TX chain has nothing for the device to write.
    writable_bytes: 0,
};

/// Parses a TX chain: device-readable buffers only, at most
/// [`QUEUE_SIZE`] descriptors and [`MAX_FRAME`] bytes, at least a header.
pub fn parse_tx(
    mem: &GuestMemoryMmap,
    chain: impl IntoIterator<Item = Descriptor>,
) -> Result<TxFrame, FrameError> {
    let s = chain::split(mem, chain, &TX_LIMITS)?;
    if s.readable_len < VNET_HDR_LEN as u64 {
        return Err(FrameError::ShortTx(s.readable_len));
    }
    Ok(TxFrame {
        segs: s.readable,
        // At most MAX_FRAME.
        len: s.readable_len as usize,
    })
}

impl TxFrame {
    /// Copies the frame into `buf` (resized to it).
    pub fn read(&self, mem: &GuestMemoryMmap, buf: &mut Vec<u8>) -> Result<(), GuestMemoryError> {
        buf.resize(self.len, 0);
        let n = chain::read_at(mem, &self.segs, 0, buf)?;
        buf.truncate(n);
        Ok(())
    }
}

/// An RX chain: the room it offers, one stream in `segs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxBuffer {
    pub segs: Vec<Segment>,
    /// Writable bytes (a used length is a u32).
    pub capacity: u32,
}

const RX_LIMITS: Limits = Limits {
    descriptors: QUEUE_SIZE as usize,
    readable_bytes: 0,
    writable_bytes: u32::MAX as u64,
};

/// Parses an RX chain: device-writable buffers only, at most
/// [`QUEUE_SIZE`] descriptors, at least `min` bytes.
pub fn parse_rx(
    mem: &GuestMemoryMmap,
    chain: impl IntoIterator<Item = Descriptor>,
    min: usize,
) -> Result<RxBuffer, FrameError> {
    let s = chain::split(mem, chain, &RX_LIMITS)?;
    if s.writable_len < min as u64 || s.writable_len == 0 {
        return Err(FrameError::ShortRx(s.writable_len));
    }
    Ok(RxBuffer {
        segs: s.writable,
        // At most u32::MAX by the limits.
        capacity: s.writable_len as u32,
    })
}

impl RxBuffer {
    /// Writes `data` at the start of the buffer; returns the bytes written
    /// (less than `data` when the buffer is smaller).
    pub fn write(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<u32, GuestMemoryError> {
        // At most `capacity`, a u32.
        chain::write_at(mem, &self.segs, 0, data).map(|n| n as u32)
    }
}

/// Sets `num_buffers` in a frame's `virtio_net_hdr_v1` (bytes 10..12).
pub fn set_num_buffers(frame: &mut [u8], n: u16) {
    if let Some(b) = frame.get_mut(10..12) {
        b.copy_from_slice(&n.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    const W: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x2_0000)]).unwrap()
    }

    #[test]
    fn offload_mapping() {
        assert_eq!(offered_offloads(0), 0);
        assert_eq!(
            offered_offloads(libc::TUN_F_TSO4 | libc::TUN_F_TSO6),
            0,
            "no segmentation without checksums"
        );
        assert_eq!(offered_offloads(libc::TUN_F_CSUM), CSUM_FEATURES);
        assert_eq!(
            offered_offloads(libc::TUN_F_CSUM | libc::TUN_F_TSO4),
            CSUM_FEATURES,
            "TSO only with both families"
        );
        let all = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;
        assert_eq!(offered_offloads(all), OFFLOAD_FEATURES);
        // The guest's side decides the tap's flags; host-side features
        // need none.
        assert_eq!(tun_offloads(OFFLOAD_FEATURES), all);
        assert_eq!(
            tun_offloads(CSUM_FEATURES | TSO_FEATURES),
            all & !libc::TUN_F_UFO
        );
        assert_eq!(tun_offloads(bit(VIRTIO_NET_F_GUEST_CSUM)), libc::TUN_F_CSUM);
        assert_eq!(
            tun_offloads(TSO_FEATURES | bit(VIRTIO_NET_F_CSUM)),
            0,
            "no GUEST_CSUM, no offloads"
        );
        assert_eq!(
            tun_offloads(bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO6)),
            libc::TUN_F_CSUM | libc::TUN_F_TSO6
        );
        assert_eq!(tun_offloads(bit(VIRTIO_NET_F_HOST_TSO4)), 0);
    }

    #[test]
    fn tx_chains() {
        let m = mem();
        let d = |a, l, f| Descriptor::new(a, l, f, 0);
        let f = parse_tx(&m, [d(0x100, 12, 0), d(0x200, 60, 0)]).unwrap();
        assert_eq!(f.len, 72);
        let mut buf = Vec::new();
        f.read(&m, &mut buf).unwrap();
        assert_eq!(buf.len(), 72);
        assert_eq!(
            parse_tx(&m, [d(0x100, 11, 0)]),
            Err(FrameError::ShortTx(11))
        );
        assert_eq!(
            parse_tx(&m, [d(0x100, 12, 0), d(0x200, 4, W)]),
            Err(FrameError::Chain(ChainError::WritableTooLong(0)))
        );
        assert_eq!(
            parse_tx(&m, [d(0x100, MAX_FRAME as u32 + 1, 0)]),
            Err(FrameError::Chain(ChainError::ReadableTooLong(
                MAX_FRAME as u64
            )))
        );
        assert!(matches!(
            parse_tx(&m, [d(0x1_fff0, 32, 0)]),
            Err(FrameError::Chain(ChainError::OutOfMemory { .. }))
        ));
        assert_eq!(
            parse_tx(&m, std::iter::repeat_n(d(0, 1, 0), 257)),
            Err(FrameError::Chain(ChainError::TooManyDescriptors(256)))
        );
    }

    #[test]
    fn rx_chains() {
        let m = mem();
        let d = |a, l, f| Descriptor::new(a, l, f, 0);
        let b = parse_rx(&m, [d(0x100, 8, W), d(0x200, 8, W)], 12).unwrap();
        assert_eq!(b.capacity, 16);
        assert_eq!(b.write(&m, &[7u8; 20]).unwrap(), 16);
        assert_eq!(
            parse_rx(&m, [d(0x100, 11, W)], 12),
            Err(FrameError::ShortRx(11))
        );
        assert_eq!(
            parse_rx(&m, [d(0x100, 0, W)], 0),
            Err(FrameError::ShortRx(0))
        );
        assert_eq!(
            parse_rx(&m, [d(0x100, 12, 0)], 12),
            Err(FrameError::Chain(ChainError::ReadableTooLong(0)))
        );
        let mut frame = [0u8; 14];
        set_num_buffers(&mut frame, 0x0102);
        assert_eq!(&frame[10..12], &[2, 1]);
        set_num_buffers(&mut frame[..5], 3);
    }
}
