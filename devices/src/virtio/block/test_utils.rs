//! A guest-side driver for whole-device tests: builds request chains on
//! mock memory and harvests used entries, with the device under a real
//! event manager (no KVM).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Block, BlockConfig, QUEUE_SIZE};
pub use crate::virtio::test_utils::Subscriber;
use crate::virtio::test_utils::{pump, BufAlloc, CountingInterrupt, SplitQueueDriver};
use crate::virtio::{ActivateContext, ActiveQueue, VirtioDevice};

const MEM_SIZE: usize = 0x200_0000;
const BUF_START: u64 = 0x10_0000;
/// The test image: 1 MiB.
pub const DISK_SECTORS: u64 = 2048;
pub const NEXT: u16 = crate::virtio::test_utils::VRING_DESC_F_NEXT;
pub const WRITE: u16 = crate::virtio::test_utils::VRING_DESC_F_WRITE;
pub const INDIRECT: u16 = 4;

/// The driver's view of the request queue.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    queue: SplitQueueDriver,
    bufs: BufAlloc,
    pub notify: EventFd,
    pub irq: Arc<CountingInterrupt>,
}

impl Guest {
    /// A guest and the context that activates a device with its queue.
    pub fn new() -> (Self, ActivateContext) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (driver, queue) = SplitQueueDriver::new(0, QUEUE_SIZE);
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
            mem,
            queue: driver,
            bufs: BufAlloc::new(BUF_START, MEM_SIZE as u64),
            notify,
            irq,
        };
        (g, ctx)
    }

    /// Reserves `len` bytes of buffer space.
    pub fn alloc(&mut self, len: u32) -> u64 {
        self.bufs.alloc(len)
    }

    /// Makes a chain of (addr, len, device-writable) buffers available and
    /// kicks; returns its head.
    pub fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.queue.submit(&self.mem, bufs);
        self.notify.write(1).unwrap();
        head
    }

    /// Used entries since the last call: (head, len).
    pub fn used(&mut self) -> Vec<(u16, u32)> {
        self.queue.used(&self.mem)
    }

    /// Writes descriptor `idx` as given (for chains no driver should make).
    pub fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        self.queue
            .write_desc(&self.mem, idx, addr, len, flags, next);
    }

    /// Reserves `n` descriptor slots for a hand-built chain; returns the first.
    pub fn take_descs(&mut self, n: u16) -> u16 {
        self.queue.take_descs(n)
    }

    /// Makes `head` available (whatever it is) and kicks.
    pub fn publish(&mut self, head: u16) {
        self.queue.make_available(&self.mem, head);
        self.notify.write(1).unwrap();
    }

    /// Writes the available index the driver publishes, and kicks.
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.queue.set_avail_idx(&self.mem, idx);
        self.notify.write(1).unwrap();
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
        pump(&mut self.em);
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
