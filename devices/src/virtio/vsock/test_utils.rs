//! A guest-side driver for whole-device tests: places packets into TX
//! chains and harvests RX used entries on mock memory, and a rig that runs
//! the device under a real event manager (no KVM).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{PacketHeader, HDR_SIZE};
use super::{
    Vsock, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VSOCK_HOST_CID, VSOCK_TYPE_STREAM,
};
use crate::bus::BusDevice;
use crate::virtio::interrupt::MmioInterrupt;
use crate::virtio::test_utils::{BufAlloc, CountingInterrupt, SplitQueueDriver};
use crate::virtio::transport::MmioTransport;
use crate::virtio::{ActivateContext, ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1};

pub const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 0x200_0000;

/// A used entry: (head, length, the chain's buffers as (addr, len)).
pub type UsedEntry = (u16, u32, Vec<(u64, u32)>);

/// The driver's view of one split queue, remembering each chain's buffers.
pub struct GuestQueue {
    driver: SplitQueueDriver,
    bufs: BufAlloc,
    /// Head index → the buffers of its chain.
    chains: HashMap<u16, Vec<(u64, u32)>>,
}

impl GuestQueue {
    fn new(base: u64, bufs: (u64, u64)) -> (Self, Queue) {
        let (driver, queue) = SplitQueueDriver::new(base, QUEUE_SIZE);
        let q = Self {
            driver,
            bufs: BufAlloc::new(bufs.0, bufs.1),
            chains: HashMap::new(),
        };
        (q, queue)
    }

    /// Reserves `len` bytes of buffer space.
    pub fn alloc(&mut self, len: u32) -> u64 {
        self.bufs.alloc(len)
    }

    /// Adds a chain of (addr, len, device-writable) buffers; returns its head.
    pub fn add_chain(&mut self, mem: &GuestMemoryMmap, bufs: &[(u64, u32, bool)]) -> u16 {
        let head = self.driver.submit(mem, bufs);
        self.chains
            .insert(head, bufs.iter().map(|(a, l, _)| (*a, *l)).collect());
        head
    }

    pub fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        idx: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        self.driver.write_desc(mem, idx, addr, len, flags, next);
    }

    /// Makes `head` available.
    pub fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.driver.make_available(mem, head);
    }

    /// Publishes any available index (a driver that lost count).
    pub fn set_avail_idx(&mut self, mem: &GuestMemoryMmap, idx: u16) {
        self.driver.set_avail_idx(mem, idx);
    }

    /// Reserves descriptor slots for a hand-built chain.
    pub fn take_descs(&mut self, n: u16) -> u16 {
        self.driver.take_descs(n)
    }

    /// Used entries since the last call: (head, len, buffers).
    pub fn used(&mut self, mem: &GuestMemoryMmap) -> Vec<UsedEntry> {
        self.driver
            .used(mem)
            .into_iter()
            .map(|(head, len)| (head, len, self.chains.remove(&head).unwrap_or_default()))
            .collect()
    }

    pub fn outstanding(&self) -> usize {
        self.chains.len()
    }

    /// Chains made available so far (the avail ring's idx).
    pub fn published(&self) -> u16 {
        self.driver.published()
    }

    /// Used entries harvested so far.
    pub fn harvested(&self) -> u16 {
        self.driver.harvested()
    }

    /// Tells the transport about this queue, as a driver does before DRIVER_OK.
    fn configure(&self, t: &mut MmioTransport, index: u32) {
        let (desc, avail, used) = self.driver.rings();
        for (off, v) in [
            (0x30, u64::from(index)),
            (0x38, u64::from(QUEUE_SIZE)),
            (0x80, desc),
            (0x90, avail),
            (0xa0, used),
        ] {
            mmio_write(t, off, v as u32);
            if off >= 0x80 {
                mmio_write(t, off + 4, (v >> 32) as u32);
            }
        }
        mmio_write(t, 0x44, 1);
    }
}

fn mmio_write(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// The guest: memory, its three queues and their notify eventfds.
pub struct TestGuest {
    pub mem: GuestMemoryMmap,
    pub rx: GuestQueue,
    pub tx: GuestQueue,
    pub ev: GuestQueue,
    notify: Vec<EventFd>,
    pub irq: Arc<CountingInterrupt>,
}

impl TestGuest {
    pub fn new() -> (Self, ActivateContext) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rx, rxq) = GuestQueue::new(0, (0x10_0000, 0x90_0000));
        let (tx, txq) = GuestQueue::new(0x1_0000, (0x90_0000, 0x110_0000));
        let (ev, evq) = GuestQueue::new(0x2_0000, (0x110_0000, 0x120_0000));
        let notify: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let irq = Arc::new(CountingInterrupt::default());
        let queues = [rxq, txq, evq]
            .into_iter()
            .enumerate()
            .map(|(index, queue)| ActiveQueue {
                index,
                queue,
                notify: notify[index].try_clone().unwrap(),
            })
            .collect();
        let ctx = ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            acked_features: 0,
            queues,
        };
        (
            Self {
                mem,
                rx,
                tx,
                ev,
                notify,
                irq,
            },
            ctx,
        )
    }

    /// Clones of the queues' notify eventfds (for a transport).
    pub fn notify_clones(&self) -> Vec<EventFd> {
        self.notify.iter().map(|e| e.try_clone().unwrap()).collect()
    }

    /// New notify eventfds (a restored VM has new ioeventfds); returns clones.
    pub fn renew_notify(&mut self) -> Vec<EventFd> {
        self.notify = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        self.notify_clones()
    }

    /// Drives `t` through the driver's initialization with this guest's
    /// queues, up to DRIVER_OK.
    pub fn driver_init(&self, t: &mut MmioTransport) {
        use crate::virtio::status::*;
        mmio_write(t, 0x70, ACKNOWLEDGE);
        mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER);
        mmio_write(t, 0x24, 1);
        mmio_write(t, 0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
        mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
        for (index, q) in [&self.rx, &self.tx, &self.ev].into_iter().enumerate() {
            q.configure(t, index as u32);
        }
        mmio_write(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
        assert!(t.is_activated(), "the transport activated the device");
    }

    pub fn kick(&self, queue: usize) {
        self.notify[queue].write(1).unwrap();
    }

    /// A stream header from the guest (src = guest, dst = host).
    pub fn hdr(&self, op: u16, src_port: u32, dst_port: u32) -> PacketHeader {
        PacketHeader {
            src_cid: GUEST_CID,
            dst_cid: VSOCK_HOST_CID,
            src_port,
            dst_port,
            type_: VSOCK_TYPE_STREAM,
            op,
            buf_alloc: 256 * 1024,
            ..Default::default()
        }
    }

    /// Queues one TX packet (header descriptor + data descriptor) and kicks.
    pub fn send(&mut self, mut hdr: PacketHeader, data: &[u8]) {
        hdr.len = data.len() as u32;
        let h = self.tx.alloc(HDR_SIZE as u32);
        self.mem
            .write_slice(&hdr.to_bytes(), GuestAddress(h))
            .unwrap();
        let mut bufs = vec![(h, HDR_SIZE as u32, false)];
        if !data.is_empty() {
            let d = self.tx.alloc(data.len() as u32);
            self.mem.write_slice(data, GuestAddress(d)).unwrap();
            bufs.push((d, data.len() as u32, false));
        }
        self.tx.add_chain(&self.mem, &bufs);
        self.kick(TX_QUEUE);
    }

    /// Gives the device `n` RX buffers with room for `data_len` payload bytes.
    pub fn provide_rx(&mut self, n: usize, data_len: u32) {
        for _ in 0..n {
            let h = self.rx.alloc(HDR_SIZE as u32);
            let d = self.rx.alloc(data_len);
            self.rx.add_chain(
                &self.mem,
                &[(h, HDR_SIZE as u32, true), (d, data_len, true)],
            );
        }
        self.kick(RX_QUEUE);
    }

    /// Gives the device one event buffer.
    pub fn provide_event(&mut self) {
        let a = self.ev.alloc(8);
        self.ev.add_chain(&self.mem, &[(a, 8, true)]);
        self.kick(EVENT_QUEUE);
    }

    /// Packets the device put into RX buffers since the last call.
    pub fn recv(&mut self) -> Vec<(PacketHeader, Vec<u8>)> {
        let mut out = Vec::new();
        for (_, len, bufs) in self.rx.used(&self.mem) {
            let mut bytes = Vec::new();
            for (addr, l) in bufs {
                let mut b = vec![0u8; l as usize];
                self.mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
                bytes.extend(b);
            }
            bytes.truncate(len as usize);
            assert!(
                bytes.len() >= HDR_SIZE,
                "RX used length {len} shorter than a header"
            );
            let raw: [u8; HDR_SIZE] = bytes[..HDR_SIZE].try_into().unwrap();
            let hdr = PacketHeader::from_bytes(&raw);
            let data = bytes[HDR_SIZE..].to_vec();
            assert_eq!(hdr.len as usize, data.len());
            assert_eq!(hdr.src_cid, VSOCK_HOST_CID);
            assert_eq!(hdr.dst_cid, GUEST_CID);
            out.push((hdr, data));
        }
        out
    }
}

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// A device under a real event manager, as the VMM wires it.
pub struct Rig {
    pub dev: Arc<Mutex<Vsock>>,
    pub em: EventManager<Subscriber>,
    pub guest: TestGuest,
    pub dir: PathBuf,
}

impl Rig {
    pub fn new() -> Self {
        let (mut rig, ctx) = Self::inactive();
        rig.dev.lock().unwrap().activate(ctx).unwrap();
        rig.pump();
        rig
    }

    /// The device and the guest, not yet activated.
    fn inactive() -> (Self, ActivateContext) {
        let dir = std::env::temp_dir().join(format!(
            "husk-vsock-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let (dev, em) = Self::device(&dir);
        let (guest, ctx) = TestGuest::new();
        let rig = Self {
            dev,
            em,
            guest,
            dir,
        };
        (rig, ctx)
    }

    /// The device behind an MMIO transport that the guest drove to
    /// DRIVER_OK (the device interrupts through `interrupt`).
    pub fn with_transport() -> (Self, MmioTransport, Arc<MmioInterrupt>) {
        let (mut rig, _ctx) = Self::inactive();
        let interrupt = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let mut t = MmioTransport::new(
            rig.dev.clone(),
            rig.guest.mem.clone(),
            interrupt.clone(),
            rig.guest.notify_clones(),
        )
        .unwrap();
        rig.guest.driver_init(&mut t);
        rig.pump();
        (rig, t, interrupt)
    }

    /// A new device at `dir/v.sock` under a new event manager.
    pub fn device(dir: &Path) -> (Arc<Mutex<Vsock>>, EventManager<Subscriber>) {
        let dev = Arc::new(Mutex::new(
            Vsock::new(GUEST_CID, dir.join("v.sock")).unwrap(),
        ));
        let mut em = EventManager::<Subscriber>::new().unwrap();
        em.add_subscriber(dev.clone());
        (dev, em)
    }

    pub fn uds(&self) -> PathBuf {
        self.dir.join("v.sock")
    }

    /// Runs the event loop until it goes idle.
    pub fn pump(&mut self) {
        let mut idle = 0;
        for _ in 0..500 {
            if self.em.run_with_timeout(5).unwrap() == 0 {
                idle += 1;
                if idle == 3 {
                    return;
                }
            } else {
                idle = 0;
            }
        }
    }

    /// Sends, pumps, and returns what came back.
    pub fn exchange(&mut self, hdr: PacketHeader, data: &[u8]) -> Vec<(PacketHeader, Vec<u8>)> {
        self.guest.send(hdr, data);
        self.pump();
        self.guest.recv()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
