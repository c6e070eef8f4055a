//! The chains the server reads: described again by the device, in memory the
//! guest cannot reach.
//!
//! fuse-backend-rs builds its `Reader`/`Writer` from a descriptor chain and
//! reads the in-header from guest memory itself. Handing it the guest's
//! chain would let a guest rewrite, from another vCPU, the descriptors
//! after [`walk`](super::request::walk) bounded them, or the opcode after
//! [`decide`](super::request::decide) let it through (a WRITE to a
//! read-only share posing as a READ). So the device copies the start of the
//! request ([`HEAD_BYTES`](super::request::HEAD_BYTES)) into a private
//! region, writes a descriptor table of its own — that copy, then the rest of
//! the validated buffers — and pops it from a private queue. The private
//! region is added to a copy of the guest memory map (the guest regions are
//! shared, not copied) above the guest's last address; it is never mapped
//! into the guest. Request payloads (a WRITE's data, names) are still read
//! from guest memory: what a guest changes there is only its own data.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueState, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestRegionMmap};

use super::request::{Segment, HEAD_BYTES};
use super::MAX_DESCRIPTORS;

/// The private queue's size: room for every validated buffer and the head
/// copy (a power of two).
const RELAY_QUEUE_SIZE: u16 = 2048;
const _: () = assert!(RELAY_QUEUE_SIZE as usize > MAX_DESCRIPTORS);
/// The private region's layout.
const DESC_OFF: u64 = 0;
const AVAIL_OFF: u64 = 16 * RELAY_QUEUE_SIZE as u64;
const USED_OFF: u64 = AVAIL_OFF + 0x2000;
const HEAD_OFF: u64 = USED_OFF + 0x5000;
const REGION_SIZE: usize = 0x10000;
const _: () = assert!(AVAIL_OFF + 6 + 2 * RELAY_QUEUE_SIZE as u64 <= USED_OFF);
const _: () = assert!(USED_OFF + 6 + 8 * RELAY_QUEUE_SIZE as u64 <= HEAD_OFF);
const _: () = assert!(HEAD_OFF + HEAD_BYTES as u64 <= REGION_SIZE as u64);

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;

/// Why the private queue could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no address above guest memory for the private region")]
    NoRoom,
    #[error("mapping the private region: {0}")]
    Map(String),
    #[error("setting up the private queue: {0}")]
    Queue(String),
    #[error("{0} buffers do not fit the private queue")]
    TooManyBuffers(usize),
    #[error("writing the private queue: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("the private queue yielded no chain")]
    NoChain,
}

/// A private descriptor table and queue over the guest memory map plus one
/// private region.
pub(super) struct Relay {
    mem: GuestMemoryMmap,
    queue: Queue,
    base: u64,
}

impl Relay {
    /// Sets up the private region above `guest`'s memory.
    pub fn new(guest: &GuestMemoryMmap) -> Result<Relay, RelayError> {
        let base = guest
            .last_addr()
            .raw_value()
            .checked_add(1)
            .and_then(|a| a.checked_next_multiple_of(0x1000))
            .filter(|a| a.checked_add(REGION_SIZE as u64).is_some())
            .ok_or(RelayError::NoRoom)?;
        let region = GuestRegionMmap::from_range(GuestAddress(base), REGION_SIZE, None)
            .map_err(|e| RelayError::Map(e.to_string()))?;
        let mem = guest
            .insert_region(Arc::new(region))
            .map_err(|e| RelayError::Map(e.to_string()))?;
        let queue = Queue::try_from(QueueState {
            max_size: RELAY_QUEUE_SIZE,
            next_avail: 0,
            next_used: 0,
            event_idx_enabled: false,
            size: RELAY_QUEUE_SIZE,
            ready: true,
            desc_table: base + DESC_OFF,
            avail_ring: base + AVAIL_OFF,
            used_ring: base + USED_OFF,
        })
        .map_err(|e| RelayError::Queue(e.to_string()))?;
        Ok(Relay { mem, queue, base })
    }

    /// Describes a request: `head` (copied here), then `rest` (device
    /// readable), then `writable`. Returns the memory map the chain refers
    /// to and the chain.
    pub fn chain(
        &mut self,
        head: &[u8],
        rest: &[Segment],
        writable: &[Segment],
    ) -> Result<(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>), RelayError> {
        let head = &head[..head.len().min(HEAD_BYTES)];
        let count = 1 + rest.len() + writable.len();
        if count > usize::from(RELAY_QUEUE_SIZE) {
            return Err(RelayError::TooManyBuffers(count));
        }
        let head_addr = GuestAddress(self.base + HEAD_OFF);
        self.mem.write_slice(head, head_addr)?;
        let bufs = std::iter::once((head_addr, head.len() as u32, false))
            .chain(rest.iter().map(|s| (s.addr, s.len, false)))
            .chain(writable.iter().map(|s| (s.addr, s.len, true)));
        for (i, (addr, len, write)) in bufs.enumerate() {
            // `count <= RELAY_QUEUE_SIZE`, so the indices fit.
            let next = (i + 1) as u16;
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < count {
                flags |= VRING_DESC_F_NEXT;
            }
            let desc = Descriptor::new(addr.raw_value(), len, flags, next);
            self.mem
                .write_obj(desc, GuestAddress(self.base + DESC_OFF + 16 * i as u64))?;
        }
        // One chain at a time: avail = next_avail + 1, head at descriptor 0.
        let idx = self.queue.next_avail();
        let slot = u64::from(idx % RELAY_QUEUE_SIZE);
        let avail = self.base + AVAIL_OFF;
        self.mem
            .write_obj(0u16, GuestAddress(avail + 4 + 2 * slot))?;
        self.mem
            .write_obj(idx.wrapping_add(1), GuestAddress(avail + 2))?;
        let chain = self
            .queue
            .pop_descriptor_chain(&self.mem)
            .ok_or(RelayError::NoChain)?;
        Ok((&self.mem, chain))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use fuse_backend_rs::transport::{Reader, VirtioFsWriter};

    use super::*;
    use crate::virtio::fs::request::{readable_after, Split};

    #[test]
    fn the_server_reads_the_copy_not_guest_memory() {
        let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut relay = Relay::new(&guest).unwrap();
        let request: Vec<u8> = (0..160u8).collect();
        guest.write_slice(&request, GuestAddress(0x1000)).unwrap();
        let layout = Split {
            readable: vec![Segment {
                addr: GuestAddress(0x1000),
                len: 160,
            }],
            readable_len: 160,
            writable: vec![Segment {
                addr: GuestAddress(0x2000),
                len: 32,
            }],
            writable_len: 32,
        };
        let rest = readable_after(&layout, HEAD_BYTES);
        for round in 0..3 {
            let (mem, chain) = relay
                .chain(&request[..HEAD_BYTES], &rest, &layout.writable)
                .unwrap();
            // The guest rewrites its request after the device read it.
            guest
                .write_slice(&[0xff; 160], GuestAddress(0x1000))
                .unwrap();
            let mut r = Reader::from_descriptor_chain(mem, chain.clone()).unwrap();
            let mut got = [0u8; 160];
            r.read_exact(&mut got).unwrap();
            assert_eq!(&got[..HEAD_BYTES], &request[..HEAD_BYTES], "round {round}");
            assert_eq!(&got[HEAD_BYTES..], &[0xff; 160 - HEAD_BYTES]);
            let mut w = VirtioFsWriter::new(mem, chain).unwrap();
            assert_eq!(w.available_bytes(), 32);
            w.write_all(&[round; 32]).unwrap();
            let mut reply = [0u8; 32];
            guest.read_slice(&mut reply, GuestAddress(0x2000)).unwrap();
            assert_eq!(reply, [round; 32]);
            guest.write_slice(&request, GuestAddress(0x1000)).unwrap();
        }
    }

    #[test]
    fn many_chains_wrap_the_private_ring() {
        let guest = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let mut relay = Relay::new(&guest).unwrap();
        for _ in 0..70_000u32 {
            let (_, chain) = relay.chain(&[1; 40], &[], &[]).unwrap();
            assert_eq!(chain.count(), 1);
        }
        let too_many = vec![
            Segment {
                addr: GuestAddress(0),
                len: 1
            };
            RELAY_QUEUE_SIZE as usize
        ];
        assert!(matches!(
            relay.chain(&[1; 40], &too_many, &[]),
            Err(RelayError::TooManyBuffers(_))
        ));
    }
}
