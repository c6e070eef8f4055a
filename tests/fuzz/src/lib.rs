//! What the fuzz targets share: a reader that turns fuzz bytes into values,
//! guest memory, a guest-side split-queue driver, an interrupt that counts,
//! an event-loop pump and a scratch directory.
//!
//! Decoding is forgiving on purpose: a short input reads as zeros, so every
//! byte string is a valid input and libFuzzer's mutations stay meaningful.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber};
use husk_devices::virtio::{
    ActivateContext, ActivateError, InterruptKind, VirtioDevice, VirtioInterrupt,
};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Reads little-endian values off the front of the fuzz input; past the
/// end everything reads as zero.
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(usize::MAX)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
}

/// Guest memory of the targets: 256 KiB at 0, a hole, then 64 KiB at
/// [`HIGH_REGION`] (so ranges can run off the end or across the hole).
pub const LOW_SIZE: usize = 0x4_0000;
pub const HIGH_REGION: u64 = 0x5_0000;
pub const HIGH_SIZE: usize = 0x1_0000;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), LOW_SIZE),
        (GuestAddress(HIGH_REGION), HIGH_SIZE),
    ])
    .expect("fuzz guest memory")
}

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;
pub const F_INDIRECT: u16 = 4;

/// A split virtqueue as the driver sees it: the descriptor table at `base`,
/// the available ring at `base + 0x1000`, the used ring at `base + 0x2000`
/// (room for 256 entries each).
pub struct Vring {
    pub size: u16,
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    avail_idx: u16,
    last_used: u16,
}

/// Bytes a [`Vring`] takes in guest memory.
pub const VRING_SPAN: u64 = 0x3000;

impl Vring {
    /// A ring of `size` entries at `base`; zeroes its rings.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let r = Self {
            size,
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            avail_idx: 0,
            last_used: 0,
        };
        // Fresh memory is zero already; this keeps a reused ring honest.
        let _ = mem.write_slice(&[0u8; 0x3000], GuestAddress(base));
        r
    }

    /// The device's queue for this ring (ready, size and addresses set).
    pub fn queue(&self, max_size: u16) -> Queue {
        let mut q = Queue::new(max_size).expect("a valid max queue size");
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// Writes descriptor `idx` (modulo the size).
    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(idx % self.size.max(1));
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }

    /// Copies raw descriptor-table bytes from the input (at most the table).
    pub fn write_table(&self, mem: &GuestMemoryMmap, raw: &[u8]) {
        let n = raw.len().min(16 * usize::from(self.size));
        let _ = mem.write_slice(&raw[..n], GuestAddress(self.desc));
    }

    /// Puts `head` in the next available slot (not yet visible).
    pub fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = u64::from(self.avail_idx % self.size.max(1));
        let _ = mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
    }

    /// Publishes the available index.
    pub fn publish(&self, mem: &GuestMemoryMmap) {
        let _ = mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2));
    }

    /// Sets the published available index to anything (a lying driver).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.avail_idx = idx;
        self.publish(mem);
    }

    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Writes a chain of (addr, len, flags) at descriptors `first..`,
    /// linking them, and makes it available; returns the head.
    pub fn add_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        first: u16,
        bufs: &[(u64, u32, u16)],
    ) -> u16 {
        let size = self.size.max(1);
        for (i, (addr, len, flags)) in bufs.iter().enumerate() {
            let idx = first.wrapping_add(i as u16) % size;
            let next = first.wrapping_add(i as u16 + 1) % size;
            let last = i + 1 == bufs.len();
            let flags = if last {
                flags & !F_NEXT
            } else {
                flags | F_NEXT
            };
            self.write_desc(mem, idx, *addr, *len, flags, next);
        }
        let head = first % size;
        self.push_avail(mem, head);
        self.publish(mem);
        head
    }

    /// The used index the device published.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap_or(0)
    }

    /// Used entries since the last call: (id, len).
    pub fn take_used(&mut self, mem: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx = self.used_idx(mem);
        let mut out = Vec::new();
        while self.last_used != idx && out.len() <= usize::from(self.size) {
            let at = self.used + 4 + 8 * u64::from(self.last_used % self.size.max(1));
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(u32::MAX);
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(u32::MAX);
            out.push((id, len));
            self.last_used = self.last_used.wrapping_add(1);
        }
        out
    }
}

/// An interrupt that counts what it was asked to raise.
#[derive(Default)]
pub struct CountingInterrupt {
    pub queue: AtomicUsize,
    pub config: AtomicUsize,
    /// The device asked for a reset (DEVICE_NEEDS_RESET).
    pub needs_reset: AtomicUsize,
}

impl CountingInterrupt {
    pub fn asked_for_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst) > 0
    }
}

impl VirtioInterrupt for CountingInterrupt {
    fn trigger(&self, kind: InterruptKind) -> std::io::Result<()> {
        let c = match kind {
            InterruptKind::Queue => &self.queue,
            InterruptKind::Config => &self.config,
        };
        c.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn needs_reset(&self) -> std::io::Result<()> {
        self.needs_reset.fetch_add(1, Ordering::SeqCst);
        self.trigger(InterruptKind::Config)
    }
}

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Runs the event loop without blocking until it has nothing to do (or a
/// bounded number of rounds: a device that keeps itself busy forever is a
/// hang, which the caller may check for).
pub fn pump(em: &mut EventManager<Subscriber>) -> bool {
    for _ in 0..64 {
        match em.run_with_timeout(0) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => panic!("event loop: {e:?}"),
        }
    }
    false
}

/// Whether `HUSK_FUZZ_TRACE` is set: targets then describe what they do
/// on stderr (to read a crash input: run the target binary on it).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("HUSK_FUZZ_TRACE").is_some())
}

/// Prints to stderr when [`tracing`] is on.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => {
        if $crate::tracing() {
            eprintln!($($arg)*);
        }
    };
}

/// A per-process scratch directory with a short path (Unix socket paths
/// must stay under 108 bytes).
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("hf-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A generic virtio device for transport-level targets: checks what the
/// transport hands it at activation, and on [`FuzzDevice::drain`] consumes
/// every available chain the way a device does (bounded walk, used entry).
pub struct FuzzDevice {
    pub device_type: u32,
    pub queue_sizes: Vec<u16>,
    pub features: u64,
    pub live: Arc<Mutex<Option<ActivateContext>>>,
    config: [u8; 16],
}

impl FuzzDevice {
    pub fn new(device_type: u32, queue_sizes: Vec<u16>, features: u64) -> Self {
        Self {
            device_type,
            queue_sizes,
            features,
            live: Arc::new(Mutex::new(None)),
            config: [0; 16],
        }
    }

    /// Consumes what the driver made available on every active queue.
    pub fn drain(live: &Mutex<Option<ActivateContext>>) {
        let mut guard = live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(ctx) = guard.as_mut() else {
            return;
        };
        let mem = ctx.mem.clone();
        for aq in ctx.queues.iter_mut() {
            let size = aq.queue.size();
            let mut heads = Vec::new();
            if let Ok(iter) = aq.queue.iter(&mem) {
                for chain in iter {
                    let walked = chain.clone().count();
                    assert!(walked <= usize::from(size) + usize::from(u16::MAX));
                    heads.push(chain.head_index());
                    assert!(
                        heads.len() <= usize::from(size),
                        "more chains than the ring holds"
                    );
                }
            }
            for head in heads {
                let _ = aq.queue.add_used(&mem, head, 0);
            }
        }
    }
}

impl VirtioDevice for FuzzDevice {
    fn name(&self) -> &str {
        "fuzz"
    }

    fn device_type(&self) -> u32 {
        self.device_type
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        husk_devices::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if let Some(dst) = start
            .checked_add(data.len())
            .and_then(|end| self.config.get_mut(start..end))
        {
            dst.copy_from_slice(data);
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        // What the transport promises every device.
        let mut last = None;
        for aq in &ctx.queues {
            assert!(last.is_none_or(|l| l < aq.index), "queues in index order");
            last = Some(aq.index);
            let max = *self
                .queue_sizes
                .get(aq.index)
                .expect("a queue the device has");
            let size = aq.queue.size();
            assert!(
                size.is_power_of_two() && size <= max,
                "queue size {size} (max {max})"
            );
            assert!(aq.queue.ready());
            assert!(aq.queue.is_valid(&ctx.mem), "rings within guest memory");
        }
        if ctx.queues.is_empty() {
            return Err(ActivateError::QueueCount {
                device: "fuzz".into(),
                expected: self.queue_sizes.len(),
                got: 0,
            });
        }
        *self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(ctx);
        Ok(())
    }

    fn reset(&mut self) {
        *self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }

    fn queue_states(&self) -> Option<Vec<(usize, virtio_queue::QueueState)>> {
        let guard = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ctx = guard.as_ref()?;
        Some(
            ctx.queues
                .iter()
                .map(|q| (q.index, q.queue.state()))
                .collect(),
        )
    }
}
