//! A whole virtio-blk device over a 64 KiB image, activated on fuzz guest
//! memory and driven through its event loop: the input is the descriptor
//! table, the available heads and the memory behind them (request headers
//! with any type, sector and length).
//!
//! Checks: nothing panics or spins; every chain made available is consumed,
//! or the device asks for a reset (a broken ring); afterwards (after that
//! reset) a good read is served with VIRTIO_BLK_S_OK.
//!
//! Input: flags u8 (bit 0: read-only disk), heads count u8 and the heads
//! (u16 each), descriptor-table byte count u16 and the bytes, then the rest
//! is copied to guest memory at 0x3000.
//!
//! run.sh: -max_len=8192
#![no_main]

use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use husk_devices::virtio::block::{Block, BlockConfig, QUEUE_SIZE};
use husk_devices::virtio::{ActivateContext, ActiveQueue, VirtioDevice};
use husk_fuzz::{guest_memory, pump, scratch_dir, CountingInterrupt, Input, Subscriber, Vring};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DATA: u64 = 0x3000;
const IMAGE_BYTES: u64 = 64 * 1024;
/// Where the final good request lives (the high region).
const GOOD: u64 = husk_fuzz::HIGH_REGION;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();
    let image = scratch_dir("blk").join("disk.img");
    let file = std::fs::File::create(&image).expect("image");
    file.set_len(IMAGE_BYTES).expect("image size");
    drop(file);
    let dev = Block::new(BlockConfig {
        path: image,
        read_only: flags & 1 != 0,
        id: "fuzz".into(),
    })
    .expect("block device");
    let dev = Arc::new(Mutex::new(dev));

    let mem = guest_memory();
    let mut ring = Vring::new(&mem, 0, QUEUE_SIZE);
    let nheads = input.u8();
    for _ in 0..nheads {
        let head = input.u16();
        ring.push_avail(&mem, head);
    }
    let table_len = usize::from(input.u16());
    ring.write_table(&mem, input.bytes(table_len));
    let _ = mem.write_slice(input.rest(), GuestAddress(DATA));
    ring.publish(&mem);

    let notify = EventFd::new(EFD_NONBLOCK).expect("eventfd");
    let irq = Arc::new(CountingInterrupt::default());
    activate(&dev, &mem, &ring, &notify, &irq);
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    let sub: Subscriber = dev.clone();
    em.add_subscriber(sub);
    notify.write(1).expect("kick");
    assert!(pump(&mut em), "the device keeps the event loop busy");

    let mut irq = irq;
    if irq.asked_for_reset() {
        // The input broke the ring (a head outside it): the device stopped.
        // The driver resets it and starts over with a clean ring.
        dev.lock().expect("device lock").reset();
        ring = Vring::new(&mem, 0, QUEUE_SIZE);
        irq = Arc::new(CountingInterrupt::default());
        activate(&dev, &mem, &ring, &notify, &irq);
        assert!(pump(&mut em), "the device keeps the event loop busy");
    }
    let (next_avail, next_used) = position(&dev);
    // Requests may have written into the rings (a guest can point buffers
    // anywhere); only an intact ring must have been consumed in full.
    let published: u16 = mem.read_obj(GuestAddress(ring.avail + 2)).unwrap_or(0);
    if published == ring.avail_idx() {
        assert_eq!(
            next_avail,
            ring.avail_idx(),
            "every available chain is consumed"
        );
    }

    // A good read still works: one chain, the ring made consistent again.
    let (h, d, s) = (GOOD, GOOD + 0x1000, GOOD + 0x2000);
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN.to_le_bytes());
    hdr[8..16].copy_from_slice(&1u64.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(h)).expect("header");
    mem.write_obj(0xffu8, GuestAddress(s)).expect("status");
    ring.set_avail_idx(&mem, next_avail);
    let head = ring.add_chain(
        &mem,
        250,
        &[
            (h, 16, 0),
            (d, 512, husk_fuzz::F_WRITE),
            (s, 1, husk_fuzz::F_WRITE),
        ],
    );
    notify.write(1).expect("kick");
    assert!(pump(&mut em), "the device keeps the event loop busy");
    assert!(!irq.asked_for_reset(), "a good ring needs no reset");
    assert_eq!(
        position(&dev),
        (next_avail.wrapping_add(1), next_used.wrapping_add(1))
    );
    let status: u8 = mem.read_obj(GuestAddress(s)).expect("status");
    assert_eq!(status, 0, "a good read after garbage is served");
    let slot = u64::from(next_used % QUEUE_SIZE);
    let id: u32 = mem
        .read_obj(GuestAddress(ring.used + 4 + 8 * slot))
        .expect("used id");
    let len: u32 = mem
        .read_obj(GuestAddress(ring.used + 8 + 8 * slot))
        .expect("used len");
    assert_eq!((id, len), (u32::from(head), 513));
});

fn activate(
    dev: &Arc<Mutex<Block>>,
    mem: &GuestMemoryMmap,
    ring: &Vring,
    notify: &EventFd,
    irq: &Arc<CountingInterrupt>,
) {
    dev.lock()
        .expect("device lock")
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            acked_features: 0,
            queues: vec![ActiveQueue {
                index: 0,
                queue: ring.queue(QUEUE_SIZE),
                notify: notify.try_clone().expect("eventfd clone"),
            }],
        })
        .expect("activation");
}

/// The device's queue position: (next_avail, next_used).
fn position(dev: &Arc<Mutex<Block>>) -> (u16, u16) {
    let states = dev.lock().expect("device lock").queue_states();
    let (_, s) = states.expect("active")[0];
    (s.next_avail, s.next_used)
}
