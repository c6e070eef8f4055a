//! Pieces every whole-device test needs (no KVM): an interrupt that counts,
//! the driver's side of a split queue on mock memory, a bump allocator for
//! guest buffers, and a pump for the event loop.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::virtio::test_queue::split;
use crate::virtio::{InterruptKind, VirtioInterrupt};

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;

/// Counts queue interrupts and requests for a device reset.
#[derive(Default)]
pub struct CountingInterrupt {
    pub queue: AtomicUsize,
    /// Calls of [`VirtioInterrupt::needs_reset`].
    pub needs_reset: AtomicUsize,
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        if kind == InterruptKind::Queue {
            self.queue.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn needs_reset(&self) -> std::io::Result<()> {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// The driver's view of one split queue: writes descriptor chains and
/// available entries, reads used entries.
pub struct SplitQueueDriver {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

impl SplitQueueDriver {
    /// A queue of `size` with its rings back to back from `base` (laid out
    /// by [`split`]), and the device's side of it.
    pub fn new(base: u64, size: u16) -> (Self, Queue) {
        let (queue, (desc, avail, used)) = split(base, size);
        let driver = Self {
            size,
            desc,
            avail,
            used,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        };
        (driver, queue)
    }

    /// The ring addresses: (descriptor table, available ring, used ring).
    pub fn rings(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// Chains made available so far (the available ring's index).
    pub fn published(&self) -> u16 {
        self.avail_idx
    }

    /// Used entries harvested so far.
    pub fn harvested(&self) -> u16 {
        self.last_used
    }

    /// The address just past the rings (where the next queue may go).
    pub fn end(&self) -> u64 {
        self.used + 6 + 8 * u64::from(self.size)
    }

    /// Makes a chain of (addr, len, device-writable) buffers available;
    /// returns its head. The caller kicks.
    pub fn submit(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, write)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % self.size;
            let mut flags = if *write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 != bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(mem, idx, *addr, *len, flags, self.next_desc);
        }
        self.make_available(mem, head);
        head
    }

    /// Writes descriptor `idx` as given (for chains no well-behaved driver
    /// would build).
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = GuestAddress(self.desc + 16 * u64::from(idx));
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Reserves `n` descriptor slots for a hand-built chain; returns the
    /// first.
    pub fn take_descs(&mut self, n: u16) -> u16 {
        let first = self.next_desc;
        self.next_desc = (self.next_desc + n) % self.size;
        first
    }

    /// Writes the available index the driver publishes (any value).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        mem.write_obj(idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Puts `head` in the available ring.
    pub fn make_available(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Used entries since the last call: (head, len).
    pub fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u16, u32)> {
        let idx: u16 = mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != idx {
            let at = self.used + 4 + 8 * u64::from(self.last_used % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

/// Hands out guest buffer space from `[start, end)`, wrapping around.
pub struct BufAlloc {
    start: u64,
    end: u64,
    next: u64,
}

impl BufAlloc {
    pub fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end,
            next: start,
        }
    }

    /// Reserves `len` bytes (64-byte aligned).
    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len).max(1).next_multiple_of(64);
        if self.next + len > self.end {
            self.next = self.start;
        }
        let addr = self.next;
        self.next += len;
        addr
    }
}

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Runs the event loop until it goes idle.
pub fn pump(em: &mut EventManager<Subscriber>) {
    let mut idle = 0;
    for _ in 0..200 {
        if em.run_with_timeout(5).unwrap() == 0 {
            idle += 1;
            if idle == 2 {
                return;
            }
        } else {
            idle = 0;
        }
    }
}
