//! The virtio-mmio transport under arbitrary register accesses (any
//! offset, width, order and value), guest memory pokes and device work:
//! queue sizes, ring addresses and status sequences the driver should never
//! write, activation with garbage rings, resets at any point.
//!
//! The device behind it is a generic one that checks what the transport
//! hands it at activation (sizes, readiness, rings in memory; after a whole
//! driver initialization, exactly the queues and sizes the driver wrote)
//! and consumes its queues, or a real virtio-blk device under its event
//! loop.
//!
//! Input: mode u8 (bit 0: virtio-blk), then 7-byte records: kind u8,
//! offset u16, value u32.
//!
//! run.sh: -max_len=2048
#![no_main]

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use husk_devices::bus::BusDevice;
use husk_devices::virtio::block::{Block, BlockConfig};
use husk_devices::virtio::interrupt::MmioInterrupt;
use husk_devices::virtio::transport::MmioTransport;
use husk_devices::virtio::{status, VirtioDevice, VIRTIO_F_VERSION_1};
use husk_fuzz::{guest_memory, pump, scratch_dir, FuzzDevice, Input, Subscriber};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAX_RECORDS: usize = 256;

enum Backend {
    Generic(Arc<Mutex<Option<husk_devices::virtio::ActivateContext>>>),
    Block(Box<EventManager<Subscriber>>),
}

impl Backend {
    fn work(&mut self) {
        match self {
            Backend::Generic(live) => FuzzDevice::drain(live),
            Backend::Block(em) => assert!(pump(em), "the device keeps the event loop busy"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mem = guest_memory();
    let (device, mut backend): (Arc<Mutex<dyn VirtioDevice>>, Backend) = if mode & 1 == 0 {
        let dev = FuzzDevice::new(42, vec![16, 8, 256], (1 << 3) | (1 << 28));
        let live = dev.live.clone();
        (Arc::new(Mutex::new(dev)), Backend::Generic(live))
    } else {
        let image = scratch_dir("mmio").join("disk.img");
        let file = std::fs::File::create(&image).expect("image");
        file.set_len(64 * 1024).expect("image size");
        drop(file);
        let dev = Arc::new(Mutex::new(
            Block::new(BlockConfig {
                path: image,
                read_only: false,
                id: String::new(),
            })
            .expect("block device"),
        ));
        let mut em = EventManager::<Subscriber>::new().expect("event manager");
        let sub: Subscriber = dev.clone();
        em.add_subscriber(sub);
        (dev, Backend::Block(Box::new(em)))
    };
    let queues = device.lock().expect("device lock").queue_max_sizes().len();
    let notify = (0..queues)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let interrupt = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).expect("irq")));
    let mut t = MmioTransport::new(device, mem.clone(), interrupt, notify).expect("transport");

    for _ in 0..MAX_RECORDS {
        if input.is_empty() {
            break;
        }
        let kind = input.u8();
        let offset = input.u16();
        let value = input.u32();
        match kind % 8 {
            0 => {
                let mut b = [0u8; 4];
                t.read(u64::from(offset % 0x200), &mut b);
            }
            1 => t.write(u64::from(offset % 0x200), &value.to_le_bytes()),
            2 => {
                let mut b = [0u8; 8];
                let n = usize::from(kind >> 3) % 9;
                t.read(u64::from(offset), &mut b[..n]);
            }
            3 => {
                let n = usize::from(kind >> 3) % 9;
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&value.to_le_bytes());
                b[4..].copy_from_slice(&value.to_be_bytes());
                t.write(u64::from(offset), &b[..n]);
            }
            4 => {
                // Anywhere in the first 512 KiB, holes included.
                let _ = mem.write_obj(value, GuestAddress(u64::from(offset) << 3));
            }
            5 => backend.work(),
            6 => {
                let sizes = driver_init(&mut t, queues, kind, offset, value);
                if let (Backend::Generic(live), true) = (&backend, t.is_activated()) {
                    // The device runs the queues the driver set up, at the
                    // sizes it wrote (never a size the transport picked).
                    let guard = live.lock().expect("device state");
                    let ctx = guard.as_ref().expect("an activated device has its queues");
                    let got: Vec<(usize, u16)> = ctx
                        .queues
                        .iter()
                        .map(|q| (q.index, q.queue.size()))
                        .collect();
                    assert_eq!(got, sizes, "queues and sizes at activation");
                }
            }
            _ => w(&mut t, 0x70, 0),
        }
        if t.is_activated() {
            assert_ne!(
                t.status() & status::DRIVER_OK,
                0,
                "running without DRIVER_OK"
            );
        }
    }
    backend.work();
});

fn w(t: &mut MmioTransport, offset: u64, v: u32) {
    t.write(offset, &v.to_le_bytes());
}

/// A whole driver initialization with fuzzed queue sizes and ring
/// addresses (so the fuzzer reaches activation often); returns the queues
/// it readied and the sizes it wrote.
fn driver_init(
    t: &mut MmioTransport,
    queues: usize,
    kind: u8,
    offset: u16,
    value: u32,
) -> Vec<(usize, u16)> {
    let mut sizes = Vec::new();
    w(t, 0x70, 0);
    w(t, 0x70, status::ACKNOWLEDGE);
    w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
    w(t, 0x24, 1);
    w(t, 0x20, (VIRTIO_F_VERSION_1 >> 32) as u32);
    w(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
    );
    for q in 0..queues as u32 {
        if kind & (0x10 << (q % 4)) == 0 {
            continue;
        }
        let base = u64::from(value.rotate_left(q * 8)) & 0x7_ffff;
        let size = offset.rotate_left(q * 4) & 0x1ff;
        sizes.push((q as usize, size));
        w(t, 0x30, q);
        w(t, 0x38, u32::from(size));
        w(t, 0x80, base as u32);
        w(t, 0x84, 0);
        w(t, 0x90, (base + 0x1000) as u32);
        w(t, 0x94, 0);
        w(t, 0xa0, (base + 0x2000) as u32);
        w(t, 0xa4, 0);
        w(t, 0x44, 1);
    }
    w(
        t,
        0x70,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    sizes
}
