//! Arbitrary descriptor tables and available rings, walked by virtio-queue
//! and fed to every chain parser: virtio-blk requests, vsock TX packets, RX
//! and event buffers, virtio-fs's split of a request chain (the shared
//! `virtio::chain::split`), virtio-queue's Reader/Writer.
//!
//! Checks: nothing panics; a chain yields at most queue size + 65535
//! descriptors (the ring walk is TTL-bounded, an indirect table holds at
//! most 65535 entries); whatever a parser accepts lies in guest memory and
//! within the device's size limits.
//!
//! Input: size u16, next_avail u16, avail_idx u16, heads count u8 and the
//! heads (u16 each), descriptor-table byte count u16 and the bytes, then
//! everything else is copied to guest memory at 0x3000 (headers, data,
//! indirect tables).
//!
//! run.sh: -max_len=8192
#![no_main]

use husk_devices::virtio::block::request::{parse_request, MAX_DATA_BYTES, MAX_DESCRIPTORS};
use husk_devices::virtio::chain::Segment;
use husk_devices::virtio::fs;
use husk_devices::virtio::vsock::packet::{parse_tx, write_event, PacketHeader, RxBuffer};
use husk_devices::virtio::vsock::MAX_PKT_DATA;
use husk_fuzz::{guest_memory, Input, Vring};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

const DATA: u64 = 0x3000;
/// A 1 MiB disk.
const CAPACITY: u64 = 2048;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mem = guest_memory();
    let size = input.u16();
    let next_avail = input.u16();
    let avail_idx = input.u16();
    let ring_size = if size.is_power_of_two() && size <= 256 {
        size
    } else {
        256
    };
    let mut ring = Vring::new(&mem, 0, ring_size);
    let nheads = input.u8();
    for _ in 0..nheads {
        let head = input.u16();
        ring.push_avail(&mem, head);
    }
    let table_len = usize::from(input.u16());
    ring.write_table(&mem, input.bytes(table_len));
    let _ = mem.write_slice(input.rest(), GuestAddress(DATA));
    // The published index is the input's (it may lie), the queue starts at
    // the input's next_avail.
    ring.set_avail_idx(&mem, avail_idx);

    let mut q = ring.queue(256);
    // An invalid size is refused and the queue keeps its own.
    let _ = q.try_set_size(size);
    q.set_next_avail(next_avail);
    if !q.is_valid(&mem) {
        return;
    }
    let qsize = q.size();
    let Ok(iter) = q.iter(&mem) else {
        // The available index is more than a ring ahead: refused.
        return;
    };
    let mut chains = 0usize;
    let mut heads = Vec::new();
    for chain in iter {
        chains += 1;
        assert!(
            chains <= usize::from(qsize),
            "more chains than the ring holds"
        );
        heads.push(chain.head_index());
        let walked = chain.clone().count();
        assert!(
            walked <= usize::from(qsize) + usize::from(u16::MAX),
            "a chain of {walked} descriptors"
        );

        if let Ok(req) = parse_request(&mem, chain.clone(), CAPACITY) {
            assert!(req.data_len <= MAX_DATA_BYTES || req.data.is_empty());
            assert!(req.data.len() <= MAX_DESCRIPTORS);
            let sum: u64 = req.data.iter().map(|s| u64::from(s.len)).sum();
            assert_eq!(sum, req.data_len);
            for s in &req.data {
                assert!(mem.check_range(s.addr, s.len as usize));
            }
            assert!(mem.check_range(req.status, 1));
        }
        if let Ok(pkt) = parse_tx(&mem, chain.clone()) {
            assert!(pkt.data.len() <= MAX_PKT_DATA as usize);
            assert_eq!(pkt.data.len(), pkt.hdr.len as usize);
        }
        if let Ok(buf) = RxBuffer::parse(&mem, chain.clone()) {
            let cap = buf.data_capacity();
            assert!(cap <= MAX_PKT_DATA as usize);
            let payload = vec![0x5a; cap.min(4096)];
            let used = buf
                .write(&mem, &PacketHeader::default(), &payload)
                .expect("a parsed RX buffer takes what it says fits");
            assert_eq!(used as usize, 44 + payload.len());
        }
        let _ = write_event(&mem, chain.clone(), 0);
        if let Ok(split) = fs::request::walk(&mem, chain.clone()) {
            let descs = split.readable.len() + split.writable.len();
            assert!(descs <= fs::MAX_DESCRIPTORS);
            assert!(split.readable_len <= u64::from(fs::MAX_REQUEST_BYTES));
            assert!(split.writable_len <= u64::from(fs::MAX_REPLY_BYTES));
            assert_eq!(in_one_region(&mem, &split.readable), split.readable_len);
            assert_eq!(in_one_region(&mem, &split.writable), split.writable_len);
        }
        reader_writer(&mem, chain);
    }
    for head in heads {
        // A head outside the ring is refused, not written.
        let _ = q.add_used(&mem, head, 0);
    }
});

/// The bytes of `segs`, each of which must be non-empty and lie inside one
/// region of `mem`.
fn in_one_region(mem: &GuestMemoryMmap, segs: &[Segment]) -> u64 {
    for s in segs {
        assert!(s.len > 0);
        let region = mem.find_region(s.addr).expect("a segment in memory");
        let end = s.addr.raw_value() - region.start_addr().raw_value() + u64::from(s.len);
        assert!(end <= region.len(), "a segment across regions");
    }
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// virtio-queue's own byte-stream view of a chain (what virtio-fs uses).
fn reader_writer(mem: &GuestMemoryMmap, chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>) {
    use std::io::{Read, Write};
    if let Ok(mut r) = chain.clone().reader(mem) {
        let mut buf = [0u8; 512];
        let _ = r.read(&mut buf);
    }
    if let Ok(mut w) = chain.writer(mem) {
        let _ = w.write(&[0xa5; 512]);
    }
}
