//! A guest-side driver for whole-device tests: builds request chains on
//! mock memory and harvests used entries, with the device under a real
//! event manager (no KVM).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Block, BlockConfig, QUEUE_SIZE};
use crate::virtio::test_queue::split;
use crate::virtio::{ActivateContext, ActiveQueue, InterruptKind, VirtioDevice, VirtioInterrupt};

const MEM_SIZE: usize = 0x200_0000;
const BUF_START: u64 = 0x10_0000;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
/// The test image: 1 MiB.
pub const DISK_SECTORS: u64 = 2048;
pub const NEXT: u16 = VRING_DESC_F_NEXT;
pub const WRITE: u16 = VRING_DESC_F_WRITE;
pub const INDIRECT: u16 = 4;

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

/// The driver's view of the request queue.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    buf_next: u64,
    pub notify: EventFd,
    pub irq: Arc<CountingInterrupt>,
}

impl Guest {
    /// A guest and the context that activates a device with its queue.
    pub fn new() -> (Self, ActivateContext) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (queue, (desc, avail, used)) = split(0, QUEUE_SIZE);
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = Arc::new(CountingInterrupt::default());
        let ctx = ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            acked_features: 0,
            queues: vec![ActiveQueue {
                index: 0,
                queue,
                notify: notify.try_clone().unwrap(),
            }],
        };
        let g = Self {
            desc,
            avail,
            used,
            mem,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            buf_next: BUF_START,
            notify,
            irq,
        };
        (g, ctx)
    }

    /// Reserves `len` bytes of buffer space.
    pub fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len).max(1).next_multiple_of(64);
        if self.buf_next + len > MEM_SIZE as u64 {
            self.buf_next = BUF_START;
        }
        let addr = self.buf_next;
        self.buf_next += len;
        addr
    }

    /// Makes a chain of (addr, len, device-writable) buffers available and
    /// kicks; returns its head.
    pub fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, (addr, len, write)) in bufs.iter().enumerate() {
            let idx = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QUEUE_SIZE;
            let mut flags = if *write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 != bufs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            let at = GuestAddress(self.desc + 16 * u64::from(idx));
            self.mem.write_obj(*addr, at).unwrap();
            self.mem.write_obj(*len, GuestAddress(at.0 + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
            self.mem
                .write_obj(self.next_desc, GuestAddress(at.0 + 14))
                .unwrap();
        }
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        self.notify.write(1).unwrap();
        head
    }

    /// Writes descriptor `idx` as given (for chains no driver should make).
    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(self.desc + 16 * u64::from(idx));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }

    /// Reserves `n` descriptor slots for a hand-built chain; returns the first.
    pub fn take_descs(&mut self, n: u16) -> u16 {
        let first = self.next_desc;
        self.next_desc = (self.next_desc + n) % QUEUE_SIZE;
        first
    }

    /// Makes `head` available (whatever it is) and kicks.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % QUEUE_SIZE);
        self.mem
            .write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    /// Writes the available index the driver publishes, and kicks.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .write_obj(idx, GuestAddress(self.avail + 2))
            .unwrap();
        self.notify.write(1).unwrap();
    }

    /// Used entries since the last call: (head, len).
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        let idx: u16 = self.mem.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.last_used != idx {
            let at = self.used + 4 + 8 * u64::from(self.last_used % QUEUE_SIZE);
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }

    /// A request header in guest memory.
    pub fn header(&mut self, type_: u32, sector: u64) -> u64 {
        let h = self.alloc(16);
        let mut raw = [0u8; 16];
        raw[0..4].copy_from_slice(&type_.to_le_bytes());
        raw[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&raw, GuestAddress(h)).unwrap();
        h
    }

    /// A status byte, preset to 0xff so a missing write shows.
    pub fn status(&mut self) -> u64 {
        let s = self.alloc(1);
        self.mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
        s
    }

    pub fn byte(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    pub fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
        b
    }
}

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

static IMAGES: AtomicUsize = AtomicUsize::new(0);

/// A device over a temporary image, under a real event manager.
pub struct Rig {
    pub dev: Arc<Mutex<Block>>,
    pub em: EventManager<Subscriber>,
    pub guest: Guest,
    pub image: PathBuf,
}

/// A deterministic byte pattern for sector `s`.
pub fn pattern(s: u64) -> Vec<u8> {
    (0..512u64)
        .map(|i| (s.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
        .collect()
}

/// FNV-1a.
pub fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Rig {
    /// An activated device over a patterned image.
    pub fn new(read_only: bool) -> Self {
        let image = std::env::temp_dir().join(format!(
            "husk-blk-{}-{}.img",
            std::process::id(),
            IMAGES.fetch_add(1, Ordering::SeqCst)
        ));
        let content: Vec<u8> = (0..DISK_SECTORS).flat_map(pattern).collect();
        std::fs::write(&image, content).unwrap();
        let dev = Arc::new(Mutex::new(
            Block::new(BlockConfig {
                path: image.clone(),
                read_only,
                id: "husk-disk-1".to_string(),
            })
            .unwrap(),
        ));
        let mut em = EventManager::<Subscriber>::new().unwrap();
        em.add_subscriber(dev.clone());
        let (guest, ctx) = Guest::new();
        dev.lock().unwrap().activate(ctx).unwrap();
        let mut rig = Self {
            dev,
            em,
            guest,
            image,
        };
        rig.pump();
        rig
    }

    /// Runs the event loop until it goes idle.
    pub fn pump(&mut self) {
        let mut idle = 0;
        for _ in 0..200 {
            if self.em.run_with_timeout(5).unwrap() == 0 {
                idle += 1;
                if idle == 2 {
                    return;
                }
            } else {
                idle = 0;
            }
        }
    }

    /// Submits a chain, runs the loop, and returns the one used length.
    pub fn run(&mut self, bufs: &[(u64, u32, bool)]) -> u32 {
        let head = self.guest.submit(bufs);
        self.pump();
        let used = self.guest.used();
        assert_eq!(used.len(), 1, "one used entry");
        assert_eq!(used[0].0, head);
        used[0].1
    }

    /// Reads `sectors` sectors at `sector`, data split over two descriptors
    /// when it can be: (status, used length, data).
    pub fn read(&mut self, sector: u64, sectors: u32) -> (u8, u32, Vec<u8>) {
        let h = self.guest.header(VIRTIO_BLK_T_IN, sector);
        let len = sectors * 512;
        let d = self.guest.alloc(len);
        let s = self.guest.status();
        let mut bufs = vec![(h, 16, false)];
        if sectors > 1 {
            bufs.push((d, 512, true));
            bufs.push((d + 512, len - 512, true));
        } else {
            bufs.push((d, len, true));
        }
        bufs.push((s, 1, true));
        let used = self.run(&bufs);
        (self.guest.byte(s), used, self.guest.bytes(d, len as usize))
    }

    /// Writes `data` at `sector`: (status, used length).
    pub fn write(&mut self, sector: u64, data: &[u8]) -> (u8, u32) {
        let h = self.guest.header(VIRTIO_BLK_T_OUT, sector);
        let d = self.guest.alloc(data.len() as u32);
        self.guest.mem.write_slice(data, GuestAddress(d)).unwrap();
        let s = self.guest.status();
        let used = self.run(&[(h, 16, false), (d, data.len() as u32, false), (s, 1, true)]);
        (self.guest.byte(s), used)
    }

    /// A request with a device-readable payload (none when empty).
    pub fn with_payload(&mut self, type_: u32, payload: &[u8]) -> (u8, u32) {
        let h = self.guest.header(type_, 0);
        let s = self.guest.status();
        let mut bufs = vec![(h, 16, false)];
        if !payload.is_empty() {
            let d = self.guest.alloc(payload.len() as u32);
            self.guest
                .mem
                .write_slice(payload, GuestAddress(d))
                .unwrap();
            bufs.push((d, payload.len() as u32, false));
        }
        bufs.push((s, 1, true));
        let used = self.run(&bufs);
        (self.guest.byte(s), used)
    }

    pub fn image_bytes(&self) -> Vec<u8> {
        std::fs::read(&self.image).unwrap()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.image);
    }
}
