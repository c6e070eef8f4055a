//! virtio: the device trait, interrupts, and the MMIO transport.
//!
//! A device owns nothing until the driver sets DRIVER_OK: then the transport
//! hands it the guest memory, its interrupt and the ready queues, each with
//! the eventfd that KVM signals when the guest notifies it (ioeventfd).
//! Devices are tested without KVM on mock guest memory (`test_utils` holds
//! the driver's side of a split queue that their tests share).

pub mod block;
pub mod chain;
pub mod fs;
pub mod interrupt;
pub mod net;
pub mod transport;
pub mod vsock;

#[cfg(test)]
mod test_utils;

use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::{InterruptKind, VirtioInterrupt};

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// VIRTIO_F_VERSION_1: the modern interface, which husk requires.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device ids.
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const VSOCK: u32 = 19;
    pub const FS: u32 = 26;
}

/// A queue handed to a device at activation.
pub struct ActiveQueue {
    /// The queue's index in the device.
    pub index: usize,
    pub queue: Queue,
    /// Signalled (by KVM's ioeventfd) when the driver notifies the queue.
    pub notify: EventFd,
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// One entry per queue, in index order.
    pub queues: Vec<ActiveQueue>,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("{device}: expected {expected} queues, the driver readied {got}")]
    QueueCount {
        device: String,
        expected: usize,
        got: usize,
    },
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Names the device in logs and errors.
    fn name(&self) -> &str;
    /// The virtio device id.
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers.
    fn features(&self) -> u64;
    /// The driver's accepted feature bits (a subset of [`features`](Self::features)).
    fn ack_features(&mut self, _acked: u64) {}
    /// Reads `data.len()` bytes of config space at `offset`; out of range reads zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes config space; devices without writable config ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Takes the queues and starts working.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The driver reset the device: drop the queues, stop processing, and be
    /// ready to be activated again.
    fn reset(&mut self);
    /// The live state of the queues the device took at activation, by queue
    /// index (the transport's copies go stale as the device advances
    /// `next_avail`/`next_used`); `None` when not activated. Snapshots read
    /// it, so every device that keeps queues must implement it.
    fn queue_states(&self) -> Option<Vec<(usize, virtio_queue::QueueState)>> {
        None
    }
}

/// The next chain the driver made available, if any. `Err` when the driver
/// broke the ring (its available index is more than a ring ahead of the
/// device): the device stops serving and asks for a reset
/// ([`VirtioInterrupt::needs_reset`]) instead of guessing.
///
/// The walk of a chain is bounded by virtio-queue: at most the queue size
/// descriptors, plus one indirect table of at most 65535, and 4 GiB in all.
pub fn pop_chain<'a>(
    queue: &mut Queue,
    mem: &'a GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'a GuestMemoryMmap>>, virtio_queue::Error> {
    Ok(queue.iter(mem)?.next())
}

/// Copies `src[offset..]` into `data`, zero-filling what lies outside `src`.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - start);
    data[..n].copy_from_slice(&src[start..start + n]);
}

/// Split virtqueues for device tests.
#[cfg(test)]
pub(crate) mod test_queue {
    use virtio_queue::{Queue, QueueT};

    /// Ring addresses: (descriptor table, available ring, used ring).
    pub type Rings = (u64, u64, u64);

    /// A ready queue of `size` whose rings lie back to back from `base`.
    ///
    /// (virtio-queue 0.17's `MockSplitQueue::create` puts the used ring
    /// `size` bytes after the available ring instead of `2 * size + 6`, so
    /// the rings overlap once more than `size / 2` chains are in flight.)
    pub fn split(base: u64, size: u16) -> (Queue, Rings) {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size)).next_multiple_of(4);
        let mut q = Queue::new(size).expect("a valid queue size");
        q.try_set_desc_table_address(vm_memory::GuestAddress(desc))
            .expect("aligned");
        q.try_set_avail_ring_address(vm_memory::GuestAddress(avail))
            .expect("aligned");
        q.try_set_used_ring_address(vm_memory::GuestAddress(used))
            .expect("aligned");
        q.set_ready(true);
        (q, (desc, avail, used))
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::QueueT;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::pop_chain;
    use super::test_queue::split;

    const NEXT: u16 = 1;
    const INDIRECT: u16 = 4;

    fn desc(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(at)).unwrap();
    }

    /// What the devices rely on from virtio-queue: a chain walk ends after
    /// the queue size (ring loops), the table size (indirect loops), a
    /// nested indirect table, or 4 GiB; a lying available index is an
    /// error, not a long walk.
    #[test]
    fn chain_walks_are_bounded() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
        let (mut q, (d, avail, _)) = split(0, 16);
        let publish = |mem: &GuestMemoryMmap, slot: u16, head: u16| {
            mem.write_obj(head, GuestAddress(avail + 4 + 2 * u64::from(slot)))
                .unwrap();
            mem.write_obj(slot + 1, GuestAddress(avail + 2)).unwrap();
        };
        // 0 → 1 → 0 → ...: the queue size.
        desc(&mem, d, 0x10_0000, 1, NEXT, 1);
        desc(&mem, d + 16, 0x10_0000, 1, NEXT, 0);
        publish(&mem, 0, 0);
        assert_eq!(pop_chain(&mut q, &mem).unwrap().unwrap().count(), 16);
        // An indirect table of 1000 entries, each linked to itself: 1000.
        let table = 0x20_0000;
        for i in 0..1000u16 {
            desc(&mem, table + 16 * u64::from(i), 0x10_0000, 1, NEXT, i);
        }
        desc(&mem, d + 32, table, 16 * 1000, INDIRECT, 0);
        publish(&mem, 1, 2);
        assert_eq!(pop_chain(&mut q, &mem).unwrap().unwrap().count(), 1000);
        // A table longer than 65535 entries is refused outright.
        desc(&mem, d + 32, table, 16 * 65536, INDIRECT, 0);
        publish(&mem, 2, 2);
        assert_eq!(pop_chain(&mut q, &mem).unwrap().unwrap().count(), 0);
        // An indirect entry inside an indirect table ends the walk.
        desc(&mem, table, table, 16, INDIRECT, 0);
        desc(&mem, d + 32, table, 16, INDIRECT, 0);
        publish(&mem, 3, 2);
        assert_eq!(pop_chain(&mut q, &mem).unwrap().unwrap().count(), 0);
        // More than 4 GiB in all ends the walk.
        desc(&mem, d + 48, 0, 0x8000_0000, NEXT, 4);
        desc(&mem, d + 64, 0, 0x8000_0000, 0, 0);
        publish(&mem, 4, 3);
        assert_eq!(pop_chain(&mut q, &mem).unwrap().unwrap().count(), 1);
        // Nothing more available, then an index more than a ring ahead.
        assert!(pop_chain(&mut q, &mem).unwrap().is_none());
        mem.write_obj(5u16 + 17, GuestAddress(avail + 2)).unwrap();
        assert!(matches!(
            pop_chain(&mut q, &mem),
            Err(virtio_queue::Error::InvalidAvailRingIndex)
        ));
        assert_eq!(q.next_avail(), 5);
    }
}
