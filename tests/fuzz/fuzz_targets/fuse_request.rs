//! A whole virtio-fs device (fuse-backend-rs passthrough over a scratch
//! directory, read-only or not) activated on fuzz guest memory and driven
//! through its event loop: the input is the descriptor table, the available
//! heads of the hiprio or the request queue, and the memory behind them
//! (FUSE requests with any opcode, length, node id and arguments). The
//! input's tail is also fed to the pure request checks (`parse_head`,
//! `decide`) directly.
//!
//! Checks: nothing panics or spins; every chain made available on an intact
//! ring is consumed, or the device asks for a reset; nothing outside the
//! shared directory changes (a sibling file and the scratch directory's
//! entries); afterwards (after that reset) a GETATTR of the root is
//! answered with a FUSE reply for its request.
//!
//! Input: flags u8 (bit 0: read-only share, bit 1: use the hiprio queue),
//! heads count u8 and the heads (u16 each), descriptor-table byte count u16
//! and the bytes, then the rest is copied to guest memory at 0x3000.
//!
//! run.sh: -max_len=8192
#![no_main]

use std::path::Path;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use husk_devices::virtio::fs::request::{decide, parse_head};
use husk_devices::virtio::fs::{Fs, FsConfig, HIPRIO_QUEUE, REQUEST_QUEUE};
use husk_devices::virtio::{ActivateContext, ActiveQueue, VirtioDevice};
use husk_fuzz::{guest_memory, pump, scratch_dir, CountingInterrupt, Input, Subscriber, Vring};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const DATA: u64 = 0x3000;
/// The rings: hiprio at 0 (overlapping DATA's start is fine: the guest can
/// point anything anywhere), the request queue above the input's reach.
const REQUEST_RING: u64 = 0x2_0000;
const RING_SIZE: u16 = 256;
/// Where the final good request lives (the high region).
const GOOD: u64 = husk_fuzz::HIGH_REGION;
const GETATTR: u32 = 3;
const OUTSIDE: &str = "outside.txt";
const OUTSIDE_TEXT: &[u8] = b"not in the share\n";

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.u8();

    // The pure checks, on the raw bytes.
    let tail = &data[data.len().min(1)..];
    if let Ok(head) = parse_head(&tail[..tail.len().min(64)], tail.len() as u64) {
        let _ = decide(&head, flags & 1 != 0, true);
        let _ = decide(&head, false, false);
    }

    let scratch = scratch_dir("fs");
    let share = scratch.join("share");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(share.join("dir")).expect("share");
    std::fs::write(share.join("file"), b"in the share\n").expect("share file");
    let _ = std::os::unix::fs::symlink("../outside.txt", share.join("up"));
    let _ = std::os::unix::fs::symlink(scratch.join(OUTSIDE), share.join("abs"));
    std::fs::write(scratch.join(OUTSIDE), OUTSIDE_TEXT).expect("outside file");
    let dev = Fs::new(FsConfig {
        tag: "fuzz".into(),
        shared_dir: Some(share.clone()),
        read_only: flags & 1 != 0,
    })
    .expect("virtio-fs device");
    let dev = Arc::new(Mutex::new(dev));

    let mem = guest_memory();
    let mut rings = [
        Vring::new(&mem, 0, RING_SIZE),
        Vring::new(&mem, REQUEST_RING, RING_SIZE),
    ];
    let target = if flags & 2 != 0 {
        HIPRIO_QUEUE
    } else {
        REQUEST_QUEUE
    };
    let nheads = input.u8();
    for _ in 0..nheads {
        let head = input.u16();
        rings[target].push_avail(&mem, head);
    }
    let table_len = usize::from(input.u16());
    rings[target].write_table(&mem, input.bytes(table_len));
    let _ = mem.write_slice(input.rest(), GuestAddress(DATA));
    rings[target].publish(&mem);

    let notify = [
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ];
    let mut irq = Arc::new(CountingInterrupt::default());
    activate(&dev, &mem, &rings, &notify, &irq);
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    let sub: Subscriber = dev.clone();
    em.add_subscriber(sub);
    notify[target].write(1).expect("kick");
    assert!(pump(&mut em), "the device keeps the event loop busy");

    if irq.asked_for_reset() {
        // The input broke a ring: the driver resets the device and starts
        // over with clean rings.
        dev.lock().expect("device lock").reset();
        rings = [
            Vring::new(&mem, 0, RING_SIZE),
            Vring::new(&mem, REQUEST_RING, RING_SIZE),
        ];
        irq = Arc::new(CountingInterrupt::default());
        activate(&dev, &mem, &rings, &notify, &irq);
        assert!(pump(&mut em), "the device keeps the event loop busy");
    }
    let (next_avail, next_used) = position(&dev, target);
    let published: u16 = mem
        .read_obj(GuestAddress(rings[target].avail + 2))
        .unwrap_or(0);
    if published == rings[target].avail_idx() {
        assert_eq!(
            next_avail,
            rings[target].avail_idx(),
            "every available chain is consumed"
        );
    }
    assert_outside_untouched(&scratch);

    // A good request still gets its answer on the request queue.
    let (next_avail, next_used) = if target == REQUEST_QUEUE {
        (next_avail, next_used)
    } else {
        position(&dev, REQUEST_QUEUE)
    };
    let (req, reply) = (GOOD, GOOD + 0x1000);
    let unique: u64 = 0x5eed;
    let mut hdr = Vec::with_capacity(56);
    hdr.extend_from_slice(&56u32.to_le_bytes());
    hdr.extend_from_slice(&GETATTR.to_le_bytes());
    hdr.extend_from_slice(&unique.to_le_bytes());
    hdr.extend_from_slice(&1u64.to_le_bytes()); // the root
    hdr.extend_from_slice(&[0u8; 16]); // uid, gid, pid, extlen, padding
    hdr.extend_from_slice(&[0u8; 16]); // fuse_getattr_in
    mem.write_slice(&hdr, GuestAddress(req)).expect("request");
    mem.write_slice(&[0xffu8; 16], GuestAddress(reply))
        .expect("reply");
    let ring = &mut rings[REQUEST_QUEUE];
    ring.set_avail_idx(&mem, next_avail);
    let head = ring.add_chain(&mem, 200, &[(req, 56, 0), (reply, 256, husk_fuzz::F_WRITE)]);
    notify[REQUEST_QUEUE].write(1).expect("kick");
    assert!(pump(&mut em), "the device keeps the event loop busy");
    assert!(!irq.asked_for_reset(), "a good ring needs no reset");
    assert_eq!(
        position(&dev, REQUEST_QUEUE),
        (next_avail.wrapping_add(1), next_used.wrapping_add(1))
    );
    let slot = u64::from(next_used % RING_SIZE);
    let id: u32 = mem
        .read_obj(GuestAddress(ring.used + 4 + 8 * slot))
        .expect("used id");
    let len: u32 = mem
        .read_obj(GuestAddress(ring.used + 8 + 8 * slot))
        .expect("used len");
    assert_eq!(id, u32::from(head));
    assert!(len >= 16, "a FUSE reply header at least ({len})");
    let got_unique: u64 = mem.read_obj(GuestAddress(reply + 8)).expect("unique");
    assert_eq!(got_unique, unique, "the reply answers the request");
    assert_outside_untouched(&scratch);
});

/// Nothing but the share and the sibling file in the scratch directory,
/// and the sibling file as it was.
fn assert_outside_untouched(scratch: &Path) {
    let text = std::fs::read(scratch.join(OUTSIDE)).expect("outside file");
    assert_eq!(text, OUTSIDE_TEXT, "a file outside the share changed");
    let mut names: Vec<_> = std::fs::read_dir(scratch)
        .expect("scratch dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["outside.txt", "share"], "entries outside the share");
}

fn activate(
    dev: &Arc<Mutex<Fs>>,
    mem: &GuestMemoryMmap,
    rings: &[Vring; 2],
    notify: &[EventFd; 2],
    irq: &Arc<CountingInterrupt>,
) {
    let queues = (0..2)
        .map(|i| ActiveQueue {
            index: i,
            queue: rings[i].queue(husk_devices::virtio::fs::QUEUE_SIZE),
            notify: notify[i].try_clone().expect("eventfd clone"),
        })
        .collect();
    dev.lock()
        .expect("device lock")
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            acked_features: 0,
            queues,
        })
        .expect("activation");
}

/// A queue's position: (next_avail, next_used).
fn position(dev: &Arc<Mutex<Fs>>, index: usize) -> (u16, u16) {
    let states = dev.lock().expect("device lock").queue_states();
    let (_, s) = states.expect("active")[index];
    (s.next_avail, s.next_used)
}
