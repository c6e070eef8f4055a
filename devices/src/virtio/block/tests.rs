//! Whole-device tests: a device over a temporary image, driven through its
//! queue on mock memory under a real event manager.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};

use super::test_utils::{checksum, pattern, Guest, Rig, DISK_SECTORS, INDIRECT, NEXT, WRITE};
use super::{Block, BlockConfig, BlockError, BlockState};
use crate::virtio::{device_type, VirtioDevice};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;

fn ranges(list: &[(u64, u32, u32)]) -> Vec<u8> {
    let mut raw = Vec::new();
    for (s, n, f) in list {
        raw.extend(s.to_le_bytes());
        raw.extend(n.to_le_bytes());
        raw.extend(f.to_le_bytes());
    }
    raw
}

fn expected(sectors: std::ops::Range<u64>) -> Vec<u8> {
    sectors.flat_map(pattern).collect()
}

#[test]
fn config_and_features() {
    let rig = Rig::new(false);
    let dev = rig.dev.lock().unwrap();
    assert_eq!(dev.device_type(), device_type::BLOCK);
    assert_eq!(dev.queue_max_sizes(), &[256]);
    let f = dev.features();
    assert_ne!(f & (1 << VIRTIO_BLK_F_FLUSH), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    assert_ne!(f & (1 << VIRTIO_BLK_F_WRITE_ZEROES), 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), DISK_SECTORS);
    let mut word = [0u8; 4];
    dev.read_config(20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);
    dev.read_config(12, &mut word);
    assert_eq!(u32::from_le_bytes(word), super::request::SEG_MAX);
    // Past the end reads zeros.
    dev.read_config(100, &mut word);
    assert_eq!(word, [0; 4]);
    assert_eq!(dev.queue_states().unwrap().len(), 1);
}

#[test]
fn read_the_image() {
    let mut rig = Rig::new(false);
    let (status, used, data) = rig.read(10, 4);
    assert_eq!(status, OK);
    assert_eq!(used, 4 * 512 + 1);
    assert_eq!(data, expected(10..14));
    // The last sector.
    let (status, _, data) = rig.read(DISK_SECTORS - 1, 1);
    assert_eq!(status, OK);
    assert_eq!(data, pattern(DISK_SECTORS - 1));
    assert!(rig.guest.irq.queue.load(Ordering::SeqCst) >= 2);
}

#[test]
fn write_then_read_back() {
    let mut rig = Rig::new(false);
    // 200 KiB: more than the device's copy buffer.
    let data: Vec<u8> = (0..400u32 * 512)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (status, used) = rig.write(100, &data);
    assert_eq!((status, used), (OK, 1));
    let (status, used, back) = rig.read(100, 400);
    assert_eq!((status, used), (OK, 400 * 512 + 1));
    assert_eq!(checksum(&back), checksum(&data));
    assert_eq!(back, data);
    // Neighbours untouched, and the file holds it.
    assert_eq!(rig.read(99, 1).2, pattern(99));
    assert_eq!(rig.read(500, 1).2, pattern(500));
    let file = rig.image_bytes();
    assert_eq!(file.len() as u64, DISK_SECTORS * 512);
    assert_eq!(&file[100 * 512..500 * 512], &data[..]);
}

#[test]
fn flush_and_get_id() {
    let mut rig = Rig::new(false);
    rig.write(0, &[7u8; 512]);
    assert_eq!(rig.with_payload(VIRTIO_BLK_T_FLUSH, &[]), (OK, 1));

    let h = rig.guest.header(VIRTIO_BLK_T_GET_ID, 0);
    let d = rig.guest.alloc(20);
    rig.guest
        .mem
        .write_slice(&[0xaa; 20], vm_memory::GuestAddress(d))
        .ok();
    let s = rig.guest.status();
    let used = rig.run(&[(h, 16, false), (d, 20, true), (s, 1, true)]);
    assert_eq!(rig.guest.byte(s), OK);
    assert_eq!(used, 21);
    let mut id = b"husk-disk-1".to_vec();
    id.resize(20, 0);
    assert_eq!(rig.guest.bytes(d, 20), id);
}

use vm_memory::Bytes;

#[test]
fn read_only_refuses_writes() {
    let mut rig = Rig::new(true);
    let before = rig.image_bytes();
    {
        let dev = rig.dev.lock().unwrap();
        assert!(dev.read_only());
        let f = dev.features();
        assert_ne!(f & (1 << VIRTIO_BLK_F_RO), 0);
        assert_eq!(f & (1 << VIRTIO_BLK_F_DISCARD), 0);
    }
    assert_eq!(rig.write(0, &[1u8; 1024]), (IOERR, 1));
    let list = ranges(&[(0, 8, 0)]);
    assert_eq!(rig.with_payload(VIRTIO_BLK_T_DISCARD, &list), (IOERR, 1));
    assert_eq!(
        rig.with_payload(VIRTIO_BLK_T_WRITE_ZEROES, &list),
        (IOERR, 1)
    );
    // Reads and flushes work.
    assert_eq!(rig.read(0, 2).2, expected(0..2));
    assert_eq!(rig.with_payload(VIRTIO_BLK_T_FLUSH, &[]), (OK, 1));
    assert_eq!(rig.image_bytes(), before);
}

#[test]
fn discard_and_write_zeroes_read_back_zeroes() {
    let mut rig = Rig::new(false);
    let list = ranges(&[(16, 16, 0), (64, 8, 0)]);
    assert_eq!(rig.with_payload(VIRTIO_BLK_T_DISCARD, &list), (OK, 1));
    assert_eq!(rig.read(16, 16).2, vec![0u8; 16 * 512]);
    assert_eq!(rig.read(64, 8).2, vec![0u8; 8 * 512]);
    assert_eq!(rig.read(15, 1).2, pattern(15));
    assert_eq!(rig.read(32, 1).2, pattern(32));

    for flags in [0, 1] {
        let start = 200 + 100 * u64::from(flags);
        let list = ranges(&[(start, 10, flags)]);
        assert_eq!(rig.with_payload(VIRTIO_BLK_T_WRITE_ZEROES, &list), (OK, 1));
        assert_eq!(rig.read(start, 10).2, vec![0u8; 10 * 512]);
        assert_eq!(rig.read(start - 1, 1).2, pattern(start - 1));
        assert_eq!(rig.read(start + 10, 1).2, pattern(start + 10));
    }
    // The image keeps its size.
    assert_eq!(rig.image_bytes().len() as u64, DISK_SECTORS * 512);
    // Out of range: IOERR; discard with the unmap flag: UNSUPP.
    let list = ranges(&[(DISK_SECTORS - 1, 2, 0)]);
    assert_eq!(rig.with_payload(VIRTIO_BLK_T_DISCARD, &list), (IOERR, 1));
    let list = ranges(&[(0, 1, 1)]);
    assert_eq!(rig.with_payload(VIRTIO_BLK_T_DISCARD, &list), (UNSUPP, 1));
}

#[test]
fn bad_requests_complete_and_the_device_keeps_working() {
    let mut rig = Rig::new(false);
    let before = rig.image_bytes();
    // Unknown type.
    assert_eq!(rig.with_payload(0x1234, &[]), (UNSUPP, 1));
    // Write-only header.
    let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
    let s = rig.guest.status();
    assert_eq!(rig.run(&[(h, 16, true), (s, 1, true)]), 1);
    assert_eq!(rig.guest.byte(s), IOERR);
    // Unaligned write.
    assert_eq!(rig.write(0, &[9u8; 100]), (IOERR, 1));
    // Past the end, and overflowing.
    assert_eq!(rig.write(DISK_SECTORS, &[9u8; 512]), (IOERR, 1));
    assert_eq!(rig.write(u64::MAX, &[9u8; 512]), (IOERR, 1));
    let (status, used, _) = rig.read(DISK_SECTORS - 1, 2);
    assert_eq!((status, used), (IOERR, 1));
    // No status descriptor: completed with length 0, nothing written.
    let h = rig.guest.header(VIRTIO_BLK_T_OUT, 0);
    let d = rig.guest.alloc(512);
    assert_eq!(rig.run(&[(h, 16, false), (d, 512, false)]), 0);
    // A chain pointing outside guest memory.
    let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
    let s = rig.guest.status();
    assert_eq!(
        rig.run(&[(h, 16, false), (0x1_0000_0000, 512, true), (s, 1, true)]),
        1
    );
    assert_eq!(rig.guest.byte(s), IOERR);
    // Garbage header bytes.
    let g = rig.guest.alloc(16);
    rig.guest
        .mem
        .write_slice(&[0xff; 16], vm_memory::GuestAddress(g))
        .unwrap();
    let s = rig.guest.status();
    assert_eq!(rig.run(&[(g, 16, false), (s, 1, true)]), 1);
    assert_eq!(rig.guest.byte(s), UNSUPP);

    assert_eq!(rig.image_bytes(), before);
    // Still working.
    assert_eq!(rig.write(1, &[5u8; 512]), (OK, 1));
    assert_eq!(rig.read(1, 1).2, vec![5u8; 512]);
}

#[test]
fn several_requests_in_one_kick() {
    let mut rig = Rig::new(false);
    let mut statuses = Vec::new();
    let mut heads = Vec::new();
    for i in 0..8u64 {
        let h = rig.guest.header(VIRTIO_BLK_T_IN, i);
        let d = rig.guest.alloc(512);
        let s = rig.guest.status();
        heads.push(
            rig.guest
                .submit(&[(h, 16, false), (d, 512, true), (s, 1, true)]),
        );
        statuses.push((s, d, i));
    }
    rig.pump();
    let used = rig.guest.used();
    assert_eq!(used.iter().map(|u| u.0).collect::<Vec<_>>(), heads);
    assert!(used.iter().all(|u| u.1 == 513));
    for (s, d, i) in statuses {
        assert_eq!(rig.guest.byte(s), OK);
        assert_eq!(rig.guest.bytes(d, 512), pattern(i));
    }
}

#[test]
fn reset_and_reactivate() {
    let mut rig = Rig::new(false);
    assert_eq!(rig.read(3, 1).2, pattern(3));
    rig.dev.lock().unwrap().reset();
    rig.pump();
    assert!(rig.dev.lock().unwrap().queue_states().is_none());
    // A new driver, new queue and notify eventfd.
    let (guest, ctx) = Guest::new();
    rig.guest = guest;
    rig.dev.lock().unwrap().activate(ctx).unwrap();
    rig.pump();
    assert_eq!(rig.read(4, 1).2, pattern(4));
    let states = rig.dev.lock().unwrap().queue_states().unwrap();
    assert_eq!(states[0].0, 0);
    assert_eq!(states[0].1.next_avail, 1);
    assert_eq!(states[0].1.next_used, 1);
}

#[test]
fn state_roundtrip() {
    let rig = Rig::new(true);
    let state = rig.dev.lock().unwrap().state();
    assert_eq!(state.capacity_sectors, DISK_SECTORS);
    assert!(state.read_only);
    assert_eq!(state.id, "husk-disk-1");
    let json = serde_json::to_string(&state).unwrap();
    let back: BlockState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
    let dev = Block::from_state(&back).unwrap();
    assert_eq!(dev.state(), state);
    // A resized image is refused.
    std::fs::write(&rig.image, vec![0u8; 4096]).unwrap();
    assert!(matches!(
        Block::from_state(&back),
        Err(BlockError::CapacityChanged { saved, now: 8, .. }) if saved == DISK_SECTORS
    ));
    // Unknown fields are refused.
    let bad = json.replace('}', ",\"x\":1}");
    assert!(serde_json::from_str::<BlockState>(&bad).is_err());
}

#[test]
fn creation_errors_name_the_path() {
    let path = PathBuf::from("/nonexistent/husk/disk.img");
    let e = Block::new(BlockConfig {
        path: path.clone(),
        read_only: false,
        id: String::new(),
    })
    .err()
    .unwrap();
    assert!(matches!(e, BlockError::Open { .. }));
    assert!(e.to_string().contains("/nonexistent/husk/disk.img"), "{e}");
    let e = Block::new(BlockConfig {
        path,
        read_only: false,
        id: "x".repeat(21),
    })
    .err()
    .unwrap();
    assert!(matches!(e, BlockError::IdTooLong { len: 21, .. }), "{e}");
}

/// Publishes a hand-built chain at `head`, runs the loop, and returns the
/// used entries.
fn run_raw(rig: &mut Rig, head: u16) -> Vec<(u16, u32)> {
    rig.guest.publish(head);
    rig.pump();
    rig.guest.used()
}

/// Chains no driver should make: each is completed (with an error status
/// where the chain has a status byte, else with length 0), nothing reaches
/// the image, and the next good request is served.
#[test]
fn guest_garbage_chains_complete_and_the_next_request_is_served() {
    let mut rig = Rig::new(false);
    let before = rig.image_bytes();
    let served = |rig: &mut Rig| {
        let (status, used, data) = rig.read(7, 1);
        assert_eq!((status, used), (OK, 513));
        assert_eq!(data, pattern(7));
    };

    // A descriptor loop: header → status → header → ... (TTL-bounded).
    let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
    let s = rig.guest.status();
    let first = rig.guest.take_descs(2);
    rig.guest.write_desc(first, h, 16, NEXT, first + 1);
    rig.guest.write_desc(first + 1, s, 1, WRITE | NEXT, first);
    assert_eq!(run_raw(&mut rig, first), vec![(first, 1)]);
    assert_eq!(rig.guest.byte(s), IOERR);
    served(&mut rig);

    // Huge lengths: a buffer of almost 4 GiB; chains adding up past 4 GiB
    // (virtio-queue ends the walk there, so the status byte is not seen).
    let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
    let s = rig.guest.status();
    assert_eq!(
        rig.run(&[(h, 16, false), (h, 0xffff_0000, true), (s, 1, true)]),
        1
    );
    assert_eq!(rig.guest.byte(s), IOERR);
    assert_eq!(
        rig.run(&[(h, 16, false), (h, u32::MAX, true), (s, 1, true)]),
        0
    );
    let d = rig.guest.alloc(512);
    let bufs = [
        (h, 16, false),
        (d, 0x8000_0000, true),
        (d, 0x8000_0000, true),
        (s, 1, true),
    ];
    assert_eq!(rig.run(&bufs), 0, "the walk stops at 4 GiB: no status byte");
    served(&mut rig);

    // Bad addresses: past guest memory, and wrapping the address space.
    let s = rig.guest.status();
    assert_eq!(rig.run(&[(u64::MAX - 8, 16, false), (s, 1, true)]), 1);
    assert_eq!(rig.guest.byte(s), IOERR);
    let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(rig.run(&[(h, 16, false), (u64::MAX, 1, true)]), 0);
    served(&mut rig);

    // Wrong directions: a read into a buffer the device may not write, a
    // write from one it may, a status byte the device may not write.
    let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
    let d = rig.guest.alloc(512);
    let s = rig.guest.status();
    assert_eq!(rig.run(&[(h, 16, false), (d, 512, false), (s, 1, true)]), 1);
    assert_eq!(rig.guest.byte(s), IOERR);
    let h = rig.guest.header(VIRTIO_BLK_T_OUT, 0);
    let s = rig.guest.status();
    assert_eq!(rig.run(&[(h, 16, false), (d, 512, true), (s, 1, true)]), 1);
    assert_eq!(rig.guest.byte(s), IOERR);
    let h = rig.guest.header(VIRTIO_BLK_T_OUT, 0);
    let s = rig.guest.status();
    assert_eq!(
        rig.run(&[(h, 16, false), (d, 512, false), (s, 1, false)]),
        0
    );
    assert_eq!(rig.guest.byte(s), 0xff, "no status byte to write");
    served(&mut rig);

    // Zero-length descriptors only.
    let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
    let s = rig.guest.status();
    assert_eq!(rig.run(&[(h, 0, false), (s, 0, true)]), 0);
    assert_eq!(rig.guest.byte(s), 0xff);
    served(&mut rig);

    // An indirect table whose entry points at the table itself, and one
    // that is the queue's own descriptor table: a nested indirect ends
    // the walk, the chain is empty.
    let table = rig.guest.alloc(64);
    let head = rig.guest.take_descs(1);
    rig.guest.write_desc(head, table, 16, INDIRECT, 0);
    let raw = |at: u64, len: u32, flags: u16| {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&at.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d
    };
    rig.guest
        .mem
        .write_slice(&raw(table, 16, INDIRECT), vm_memory::GuestAddress(table))
        .unwrap();
    assert_eq!(run_raw(&mut rig, head), vec![(head, 0)]);
    // (The queue's table is at 0; its entry 0 is the indirect one.)
    rig.guest.write_desc(0, 0, 16 * 256, INDIRECT, 0);
    assert_eq!(run_raw(&mut rig, 0), vec![(0, 0)]);
    served(&mut rig);

    // An indirect table far longer than a request may be: refused whole.
    let n = 1000u64;
    let table = rig.guest.alloc(16 * n as u32);
    let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
    let d = rig.guest.alloc(512);
    let s = rig.guest.status();
    let mut bytes = raw(h, 16, NEXT).to_vec();
    for i in 1..n - 1 {
        let mut e = raw(d, 512, WRITE | NEXT);
        e[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        bytes.extend(e);
    }
    bytes[14..16].copy_from_slice(&1u16.to_le_bytes());
    bytes.extend(raw(s, 1, WRITE));
    rig.guest
        .mem
        .write_slice(&bytes, vm_memory::GuestAddress(table))
        .unwrap();
    let head = rig.guest.take_descs(1);
    rig.guest
        .write_desc(head, table, 16 * n as u32, INDIRECT, 0);
    assert_eq!(run_raw(&mut rig, head), vec![(head, 1)]);
    assert_eq!(rig.guest.byte(s), IOERR);
    served(&mut rig);

    assert_eq!(rig.guest.irq.needs_reset.load(Ordering::SeqCst), 0);
    assert_eq!(rig.image_bytes(), before);
}

/// A ring the driver broke (a head outside it, an available index more
/// than a ring ahead) stops the device and asks for a reset; after one it
/// works again.
#[test]
fn broken_rings_need_a_reset() {
    for breakage in 0..2 {
        let mut rig = Rig::new(false);
        assert_eq!(rig.read(1, 1).0, OK);
        if breakage == 0 {
            assert!(
                run_raw(&mut rig, 256).is_empty(),
                "head 256 of a 256-entry ring"
            );
        } else {
            rig.guest.set_avail_idx(1 + 300);
            rig.pump();
        }
        assert_eq!(rig.guest.irq.needs_reset.load(Ordering::SeqCst), 1);
        // Broken: even a good request waits for the reset.
        let h = rig.guest.header(VIRTIO_BLK_T_IN, 0);
        let d = rig.guest.alloc(512);
        let s = rig.guest.status();
        rig.guest
            .submit(&[(h, 16, false), (d, 512, true), (s, 1, true)]);
        rig.pump();
        assert!(rig.guest.used().is_empty());
        assert_eq!(
            rig.guest.irq.needs_reset.load(Ordering::SeqCst),
            1,
            "asked once"
        );
        rig.dev.lock().unwrap().reset();
        rig.pump();
        let (guest, ctx) = Guest::new();
        rig.guest = guest;
        rig.dev.lock().unwrap().activate(ctx).unwrap();
        rig.pump();
        assert_eq!(rig.read(2, 1).2, pattern(2));
    }
}
