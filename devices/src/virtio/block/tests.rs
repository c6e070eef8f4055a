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

use super::test_utils::{checksum, pattern, Guest, Rig, DISK_SECTORS};
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
