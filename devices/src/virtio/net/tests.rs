//! Whole-device tests: a net device over a fake backend (a socket pair),
//! driven through its queues on mock memory under a real event manager.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::frame::OFFLOAD_FEATURES;
use super::test_utils::{fake_backend, frame, Guest, Rig, Subscriber, MAC, NEXT};
use super::*;
use crate::bus::BusDevice;
use crate::virtio::interrupt::MmioInterrupt;
use crate::virtio::transport::{MmioTransport, MmioTransportState};
use crate::virtio::{device_type, VirtioDevice, VIRTIO_F_VERSION_1};

const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const ALL_TUN: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO;

fn num_buffers(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[10], bytes[11]])
}

#[test]
fn config_space_and_features() {
    let (b, _host, _) = fake_backend(0);
    let dev = Net::with_backend(Box::new(b), MAC, Some(1400)).unwrap();
    assert_eq!(dev.device_type(), device_type::NET);
    assert_eq!(dev.queue_max_sizes(), &[256, 256]);
    let want = (1 << VIRTIO_NET_F_MAC)
        | (1 << VIRTIO_NET_F_MTU)
        | (1 << VIRTIO_NET_F_STATUS)
        | (1 << VIRTIO_NET_F_MRG_RXBUF);
    assert_eq!(dev.features(), want, "no offloads without tap support");
    let mut c = [0u8; 12];
    dev.read_config(0, &mut c);
    assert_eq!(&c[0..6], &MAC);
    assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([c[10], c[11]]), 1400);
    let mut two = [0u8; 2];
    dev.read_config(10, &mut two);
    assert_eq!(u16::from_le_bytes(two), 1400);
    dev.read_config(12, &mut two);
    assert_eq!(two, [0, 0], "past the end");

    // Offloads only as the tap accepts them; no MTU feature without one.
    let (b, _host, _) = fake_backend(ALL_TUN);
    let dev = Net::with_backend(Box::new(b), MAC, None).unwrap();
    assert_eq!(dev.features() & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
    assert_eq!(dev.features() & (1 << VIRTIO_NET_F_MTU), 0);
    let (b, _host, _) = fake_backend(libc::TUN_F_CSUM);
    let dev = Net::with_backend(Box::new(b), MAC, None).unwrap();
    assert_eq!(
        dev.features() & OFFLOAD_FEATURES,
        (1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_GUEST_CSUM)
    );

    // Bad configuration.
    let (b, _host, _) = fake_backend(0);
    assert!(matches!(
        Net::with_backend(Box::new(b), [1, 0, 0, 0, 0, 1], None),
        Err(NetError::Mac(_))
    ));
    let (b, _host, _) = fake_backend(0);
    assert!(matches!(
        Net::with_backend(Box::new(b), MAC, Some(67)),
        Err(NetError::Mtu(67))
    ));
    assert_eq!(parse_mac("02:00:00:00:00:01"), Some(MAC));
    assert_eq!(format_mac(&MAC), "02:00:00:00:00:01");
    for bad in [
        "02:00:00:00:00",
        "02:00:00:00:00:01:02",
        "2:0:0:0:0:1",
        "zz:00:00:00:00:01",
    ] {
        assert_eq!(parse_mac(bad), None, "{bad}");
    }
}

#[test]
fn offloads_follow_the_guest() {
    let acked = (1 << VIRTIO_NET_F_GUEST_CSUM)
        | (1 << VIRTIO_NET_F_GUEST_TSO4)
        | (1 << VIRTIO_NET_F_CSUM)
        | (1 << VIRTIO_NET_F_HOST_TSO4);
    let rig = Rig::new(ALL_TUN, acked);
    assert_eq!(
        *rig.offloads_set.lock().unwrap(),
        vec![libc::TUN_F_CSUM | libc::TUN_F_TSO4]
    );
    assert_eq!(rig.dev.lock().unwrap().acked_features(), acked);
    // Features the device did not offer are not taken.
    let rig = Rig::new(0, acked | MRG);
    assert_eq!(rig.dev.lock().unwrap().acked_features(), MRG);
    assert_eq!(*rig.offloads_set.lock().unwrap(), vec![0]);
}

#[test]
fn tx_frames_reach_the_tap_with_one_interrupt_per_batch() {
    let mut rig = Rig::new(0, 0);
    let a = frame(60, 1);
    let b = frame(1500, 2);
    let c = frame(9000, 3);
    rig.guest.send(&a, &[]);
    // Header and frame in separate descriptors, and a header split too.
    rig.guest.send(&b, &[12]);
    rig.guest.send(&c, &[5, 12, 4000]);
    rig.pump();
    assert_eq!(rig.host_recv(), vec![a, b, c]);
    let used = rig.guest.tx.used(&rig.guest.mem);
    assert_eq!(used.len(), 3);
    assert!(used.iter().all(|(_, len)| *len == 0));
    assert_eq!(rig.guest.irq.queue.load(Ordering::SeqCst), 1);
    let s = rig.stats();
    assert_eq!((s.tx_frames, s.tx_bytes), (3, 60 + 1500 + 9000));
    assert_eq!(s.interrupts, 1);
}

#[test]
fn rx_single_buffers() {
    let mut rig = Rig::new(0, 0);
    let (h1, b1) = rig.guest.post_rx(&[2048]);
    // A chain of two descriptors: header and data apart.
    let (h2, b2) = rig.guest.post_rx(&[12, 2048]);
    rig.pump();
    let f1 = frame(100, 7);
    let f2 = frame(1514, 8);
    rig.host_send(&f1);
    rig.host_send(&f2);
    rig.pump();
    let used = rig.guest.rx.used(&rig.guest.mem);
    assert_eq!(used, vec![(h1, f1.len() as u32), (h2, f2.len() as u32)]);
    let got1 = rig.guest.read_bufs(&b1, used[0].1);
    let got2 = rig.guest.read_bufs(&b2, used[1].1);
    assert_eq!(num_buffers(&got1), 1);
    assert_eq!(&got1[12..], &f1[12..]);
    assert_eq!(&got2[12..], &f2[12..]);
    assert_eq!(rig.stats().rx_frames, 2);
}

#[test]
fn rx_mergeable_spreads_a_frame_over_chains() {
    let mut rig = Rig::new(0, MRG);
    let posted: Vec<_> = (0..5).map(|_| rig.guest.post_rx(&[1500])).collect();
    rig.pump();
    let f = frame(4000, 9);
    rig.host_send(&f);
    let small = frame(50, 10);
    rig.host_send(&small);
    rig.pump();
    let used = rig.guest.rx.used(&rig.guest.mem);
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(lens, vec![1500, 1500, 1012, 62]);
    assert_eq!(
        used.iter().map(|u| u.0).collect::<Vec<_>>(),
        posted.iter().take(4).map(|p| p.0).collect::<Vec<_>>()
    );
    let mut got = Vec::new();
    for (i, (_, len)) in used.iter().take(3).enumerate() {
        got.extend(rig.guest.read_bufs(&posted[i].1, *len));
    }
    assert_eq!(num_buffers(&got), 3);
    assert_eq!(&got[12..], &f[12..]);
    let last = rig.guest.read_bufs(&posted[3].1, 62);
    assert_eq!(num_buffers(&last), 1);
    assert_eq!(&last[12..], &small[12..]);
    assert_eq!(rig.guest.irq.queue.load(Ordering::SeqCst), 1, "one batch");
}

#[test]
fn rx_waits_for_buffers_and_loses_nothing() {
    let mut rig = Rig::new(0, MRG);
    let frames: Vec<Vec<u8>> = (0..4).map(|i| frame(3000, i)).collect();
    for f in &frames {
        rig.host_send(f);
    }
    rig.pump();
    assert!(rig.guest.rx.used(&rig.guest.mem).is_empty());
    assert!(rig.stats().rx_deferred >= 1);
    assert!(
        !rig.dev.lock().unwrap().wants_rx(),
        "the tap is not watched while a frame waits"
    );
    // Too few buffers for one frame: still waiting, none used.
    rig.guest.post_rx(&[2000]);
    rig.pump();
    assert!(rig.guest.rx.used(&rig.guest.mem).is_empty());
    // Enough for all of them.
    let mut posted = vec![];
    for _ in 0..7 {
        posted.push(rig.guest.post_rx(&[2000]));
    }
    rig.pump();
    let used = rig.guest.rx.used(&rig.guest.mem);
    assert_eq!(used.len(), 8);
    let s = rig.stats();
    assert_eq!((s.rx_frames, s.rx_dropped), (4, 0));
    assert!(used.chunks(2).all(|c| c[0].1 == 2000 && c[1].1 == 1012));
}

#[test]
fn rx_frames_that_can_never_fit_are_dropped_and_counted() {
    // Without MRG_RXBUF one buffer must hold a frame.
    let mut rig = Rig::new(0, 0);
    let (head, _) = rig.guest.post_rx(&[200]);
    rig.pump();
    rig.host_send(&frame(500, 1));
    let small = frame(100, 2);
    rig.host_send(&small);
    rig.pump();
    let used = rig.guest.rx.used(&rig.guest.mem);
    assert_eq!(used, vec![(head, small.len() as u32)], "the buffer is kept");
    assert_eq!(rig.stats().rx_dropped, 1);

    // With it, a whole ring of tiny buffers cannot hold a big frame.
    let mut rig = Rig::new(0, MRG);
    for _ in 0..QUEUE_SIZE {
        rig.guest.post_rx(&[16]);
    }
    rig.pump();
    rig.host_send(&frame(60_000, 3));
    rig.host_send(&frame(10, 4));
    rig.pump();
    let used = rig.guest.rx.used(&rig.guest.mem);
    assert_eq!(used.len(), 2, "the small frame in two 16-byte buffers");
    let s = rig.stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1));
}

#[test]
fn garbage_tx_chains_are_returned_and_counted() {
    let mut rig = Rig::new(0, 0);
    let g = &mut rig.guest;
    let a = g.bufs.alloc(64);
    // Shorter than a header.
    g.tx.submit(&g.mem, &[(a, 5, false)]);
    // A device-writable buffer in a TX chain.
    g.tx.submit(&g.mem, &[(a, 12, false), (a, 20, true)]);
    // Outside guest memory.
    g.tx.submit(&g.mem, &[(0xffff_0000_0000, 100, false)]);
    // Longer than any frame.
    g.tx.submit(&g.mem, &[(0x10_0000, (MAX_FRAME + 1) as u32, false)]);
    // A loop: a descriptor that links to itself (the walk ends after a
    // queue's worth, 256 KB here: too long).
    let d = g.tx.take_descs(1);
    g.tx.write_desc(&g.mem, d, a, 1000, NEXT, d);
    g.tx.make_available(&g.mem, d);
    // Then a good one.
    let good = frame(60, 5);
    g.send(&good, &[]);
    rig.pump();
    let got = rig.host_recv();
    assert_eq!(got.len(), 1, "only the good frame is sent");
    assert_eq!(got[0], good);
    let used = rig.guest.tx.used(&rig.guest.mem);
    assert_eq!(used.len(), 6, "every chain returned");
    let s = rig.stats();
    assert_eq!((s.tx_bad_chains, s.tx_frames), (5, 1));
    assert_eq!(rig.guest.irq.needs_reset.load(Ordering::SeqCst), 0);
}

#[test]
fn garbage_rx_chains_are_returned_and_counted() {
    let mut rig = Rig::new(0, MRG);
    let g = &mut rig.guest;
    let a = g.bufs.alloc(64);
    let bad_ro = g.rx.submit(&g.mem, &[(a, 2048, false)]);
    let bad_short = g.rx.submit(&g.mem, &[(a, 11, true)]);
    let (good, bufs) = g.post_rx(&[2048]);
    rig.pump();
    let f = frame(200, 6);
    rig.host_send(&f);
    rig.pump();
    let used = rig.guest.rx.used(&rig.guest.mem);
    assert_eq!(
        used,
        vec![(bad_ro, 0), (bad_short, 0), (good, f.len() as u32)]
    );
    assert_eq!(&rig.guest.read_bufs(&bufs, 212)[12..], &f[12..]);
    assert_eq!(rig.stats().rx_bad_chains, 2);

    // A bad chain in the middle of a frame drops that frame with its
    // buffers (a frame's used entries must be consecutive).
    let (h1, _) = rig.guest.post_rx(&[1000]);
    let g = &mut rig.guest;
    let bad = g.rx.submit(&g.mem, &[(0xffff_0000_0000, 1000, true)]);
    let (h3, _) = g.post_rx(&[2000]);
    rig.pump();
    rig.host_send(&frame(1500, 7));
    rig.pump();
    let used = rig.guest.rx.used(&rig.guest.mem);
    assert_eq!(used, vec![(h1, 0), (bad, 0)]);
    let s = rig.stats();
    assert_eq!((s.rx_dropped, s.rx_frames), (1, 1));
    // The next frame goes on normally.
    rig.host_send(&frame(1500, 8));
    rig.pump();
    assert_eq!(rig.guest.rx.used(&rig.guest.mem), vec![(h3, 1512)]);
}

#[test]
fn a_broken_ring_asks_for_a_reset() {
    let mut rig = Rig::new(0, 0);
    rig.guest.tx.set_avail_idx(&rig.guest.mem, 1000);
    rig.guest.notify[TX_QUEUE].write(1).unwrap();
    rig.pump();
    assert_eq!(rig.guest.irq.needs_reset.load(Ordering::SeqCst), 1);
    // Nothing more is served, nothing spins.
    rig.guest.post_rx(&[2048]);
    rig.host_send(&frame(10, 1));
    rig.pump();
    assert!(rig.guest.rx.used(&rig.guest.mem).is_empty());
    rig.dev.lock().unwrap().reset();
    assert!(rig.dev.lock().unwrap().queue_states().is_none());
}

#[test]
fn tx_waits_when_the_tap_is_full() {
    let mut rig = Rig::new(0, 0);
    let f = frame(60_000, 1);
    for _ in 0..64 {
        rig.guest.send(&f, &[]);
    }
    rig.pump();
    let sent = rig.stats().tx_frames;
    assert!(
        sent < 64,
        "the socket took all {sent}: no back-pressure seen"
    );
    assert!(rig.dev.lock().unwrap().tx_blocked);
    assert_eq!(
        rig.guest.tx.used(&rig.guest.mem).len() as u64,
        sent,
        "unsent chains stay in the ring"
    );
    let mut got = 0;
    for _ in 0..64 {
        got += rig.host_recv().len();
        rig.pump();
        if got == 64 {
            break;
        }
    }
    assert_eq!(got, 64, "every frame arrived, none dropped");
    assert_eq!(rig.stats().tx_errors, 0);
}

/// The driver's MMIO writes of its initialization, queues and features.
fn driver_init(t: &mut MmioTransport, g: &Guest, features: u64) {
    use crate::virtio::status::*;
    let w = |t: &mut MmioTransport, off: u64, v: u32| t.write(off, &v.to_le_bytes());
    w(t, 0x70, ACKNOWLEDGE);
    w(t, 0x70, ACKNOWLEDGE | DRIVER);
    w(t, 0x24, 0);
    w(t, 0x20, features as u32);
    w(t, 0x24, 1);
    w(t, 0x20, (features >> 32) as u32);
    w(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK);
    for (index, q) in [&g.rx, &g.tx].into_iter().enumerate() {
        let (desc, avail, used) = q.rings();
        w(t, 0x30, index as u32);
        w(t, 0x38, u32::from(QUEUE_SIZE));
        for (off, v) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
            w(t, off, v as u32);
            w(t, off + 4, (v >> 32) as u32);
        }
        w(t, 0x44, 1);
    }
    w(t, 0x70, ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(t.is_activated());
}

#[test]
fn snapshot_round_trip_with_a_new_tap() {
    let (b, host, _) = fake_backend(ALL_TUN);
    let dev = Arc::new(Mutex::new(
        Net::with_backend(Box::new(b), MAC, Some(1500)).unwrap(),
    ));
    let (mut guest, _unused) = Guest::new(0);
    let intr = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let notify = guest
        .notify
        .iter()
        .map(|e| e.try_clone().unwrap())
        .collect();
    let mut t = MmioTransport::new(dev.clone(), guest.mem.clone(), intr, notify).unwrap();
    let features =
        VIRTIO_F_VERSION_1 | MRG | (1 << VIRTIO_NET_F_GUEST_CSUM) | (1 << VIRTIO_NET_F_MAC);
    driver_init(&mut t, &guest, features);
    let mut em = EventManager::<Subscriber>::new().unwrap();
    em.add_subscriber(dev.clone());
    crate::virtio::test_utils::pump(&mut em);
    // Traffic before: a frame each way, and RX buffers left posted.
    let before = frame(100, 1);
    guest.send(&before, &[]);
    let (h0, _) = guest.post_rx(&[2048]);
    let (h1, b1) = guest.post_rx(&[2048]);
    crate::virtio::test_utils::pump(&mut em);
    super::test_utils::send_fd(host.as_raw_fd(), &frame(40, 2)).unwrap();
    crate::virtio::test_utils::pump(&mut em);
    assert_eq!(guest.rx.used(&guest.mem), vec![(h0, 52)]);
    let mut buf = [0u8; 200];
    assert_eq!(
        super::test_utils::recv_fd(host.as_raw_fd(), &mut buf).unwrap(),
        112
    );

    // Snapshot, through JSON.
    let tstate = t.state();
    let nstate = dev.lock().unwrap().state();
    assert_eq!(nstate.acked_features, features & !VIRTIO_F_VERSION_1);
    assert_eq!(nstate.mac, MAC);
    let tstate: MmioTransportState =
        serde_json::from_str(&serde_json::to_string(&tstate).unwrap()).unwrap();
    let json = serde_json::to_string(&nstate).unwrap();
    let nstate: NetState = serde_json::from_str(&json).unwrap();
    assert!(serde_json::from_str::<NetState>(&json.replace("}", ",\"x\":1}")).is_err());
    drop((t, em, dev, host));

    // A tap without the offloads the guest was offered cannot take over.
    let (weak, _h, _) = fake_backend(0);
    assert!(matches!(
        Net::from_state(&nstate, Box::new(weak)),
        Err(NetError::FeaturesLost { .. })
    ));
    // Restore over a new tap, with new ioeventfds.
    let (b, host, set) = fake_backend(ALL_TUN);
    let dev = Arc::new(Mutex::new(Net::from_state(&nstate, Box::new(b)).unwrap()));
    assert_eq!(dev.lock().unwrap().features(), nstate.features);
    guest.notify = [
        EventFd::new(EFD_NONBLOCK).unwrap(),
        EventFd::new(EFD_NONBLOCK).unwrap(),
    ];
    let notify = guest
        .notify
        .iter()
        .map(|e| e.try_clone().unwrap())
        .collect();
    let intr = Arc::new(MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    let restored =
        MmioTransport::restore(dev.clone(), guest.mem.clone(), intr, notify, &tstate).unwrap();
    assert!(restored.is_activated());
    let mut em = EventManager::<Subscriber>::new().unwrap();
    em.add_subscriber(dev.clone());
    crate::virtio::test_utils::pump(&mut em);
    assert_eq!(*set.lock().unwrap(), vec![libc::TUN_F_CSUM]);
    assert_eq!(restored.state(), tstate, "nothing moved yet");
    // The buffer posted before the snapshot takes the first frame after.
    let after = frame(300, 3);
    super::test_utils::send_fd(host.as_raw_fd(), &after).unwrap();
    let out = frame(70, 4);
    guest.send(&out, &[12]);
    crate::virtio::test_utils::pump(&mut em);
    assert_eq!(guest.rx.used(&guest.mem), vec![(h1, 312)]);
    assert_eq!(&guest.read_bufs(&b1, 312)[12..], &after[12..]);
    let n = super::test_utils::recv_fd(host.as_raw_fd(), &mut buf).unwrap();
    assert_eq!(&buf[..n], &out[..]);
}

/// Runs `f` on a thread in a network namespace of its own (where the test
/// tap lives and vanishes with it); `None` when the host cannot.
fn in_own_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new
        // network namespace; no memory is passed.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipping: no network namespace of our own: {}",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(f())
    })
    .join()
    .unwrap()
}

/// Brings the interface `name` up; returns its index.
fn link_up(name: &str) -> u32 {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: socket() takes no memory.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    assert!(s >= 0);
    // SAFETY: `s` is a new fd owned by nothing else.
    let s = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
    // SAFETY: all-zero is a valid `ifreq`.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = *b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads an `ifreq`, which `req` is.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    assert_eq!(rc, 0, "SIOCSIFFLAGS: {}", std::io::Error::last_os_error());
    // SAFETY: `cname` is a NUL-terminated string.
    unsafe { libc::if_nametoindex(cname.as_ptr()) }
}

/// A raw socket on interface `ifindex` for frames of `ethertype`.
fn packet_socket(ifindex: u32, ethertype: u16) -> std::os::fd::OwnedFd {
    let proto = ethertype.to_be();
    // SAFETY: socket() takes no memory.
    let s = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from(proto),
        )
    };
    assert!(s >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
    // SAFETY: `s` is a new fd owned by nothing else.
    let s = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(s) };
    // SAFETY: all-zero is a valid `sockaddr_ll`.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: bind reads a `sockaddr_ll` of the size given.
    let rc = unsafe {
        libc::bind(
            s.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
    s
}

/// A real TAP (in a namespace of the test's own) passes a frame each way
/// through the device.
#[test]
fn real_tap_passes_frames_both_ways() {
    if !std::path::Path::new("/dev/net/tun").exists() {
        eprintln!("skipping: /dev/net/tun is absent");
        return;
    }
    let done = in_own_netns(|| {
        const ETHERTYPE: u16 = 0x88b5; // local experimental
        let name = "husknet0";
        let tap = match Tap::open(&TapSource::Name(name.into())) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipping: cannot create a tap: {e}");
                return false;
            }
        };
        assert_ne!(
            tap.supported_offloads() & libc::TUN_F_CSUM,
            0,
            "a TAP takes checksum offload"
        );
        let ifindex = link_up(name);
        let sock = packet_socket(ifindex, ETHERTYPE);
        let set = Arc::new(Mutex::new(Vec::new()));
        let (_unused, host) = super::test_utils::seqpacket_pair();
        let mut rig = Rig::with_backend(Box::new(tap), host, set, MRG);
        for _ in 0..16 {
            rig.guest.post_rx(&[2048]);
        }
        rig.pump();

        // Guest → host.
        let eth = |dst: [u8; 6], src: [u8; 6], payload: &[u8]| {
            let mut f = Vec::new();
            f.extend(dst);
            f.extend(src);
            f.extend(ETHERTYPE.to_be_bytes());
            f.extend(payload);
            f
        };
        let out = eth([0xff; 6], MAC, b"husk guest to host, through a real tap");
        let mut with_hdr = vec![0u8; VNET_HDR_LEN];
        with_hdr.extend(&out);
        rig.guest.send(&with_hdr, &[VNET_HDR_LEN]);
        rig.pump();
        let mut buf = vec![0u8; 2048];
        let mut got = None;
        for _ in 0..200 {
            if let Ok(n) = super::test_utils::recv_fd(sock.as_raw_fd(), &mut buf) {
                got = Some(buf[..n].to_vec());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got.as_deref(), Some(&out[..]), "the host saw the frame");

        // Host → guest (the kernel may send its own frames too: IPv6
        // neighbour discovery; look for ours).
        let back = eth(MAC, [2, 0, 0, 0, 0, 2], b"host to guest");
        super::test_utils::send_fd(sock.as_raw_fd(), &back).unwrap();
        let mut found = false;
        for _ in 0..200 {
            rig.pump();
            for (head, len) in rig.guest.rx.used(&rig.guest.mem) {
                let addr = rx_buffer_addr(&rig.guest, head);
                let bytes = rig.guest.read_bufs(&[(addr, 2048)], len);
                if bytes.get(VNET_HDR_LEN..) == Some(&back[..]) {
                    assert_eq!(num_buffers(&bytes), 1);
                    found = true;
                }
            }
            if found {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(found, "the guest got the host's frame: {:?}", rig.stats());
        true
    });
    if done.is_none() {
        eprintln!("skipped: no network namespace");
    }
}

/// The address of the single buffer of RX chain `head` (read back from the
/// descriptor table).
fn rx_buffer_addr(g: &Guest, head: u16) -> u64 {
    let (desc, _, _) = g.rx.rings();
    g.mem
        .read_obj(GuestAddress(desc + 16 * u64::from(head)))
        .unwrap()
}

#[test]
fn disconnected_backend_drops_sends_and_never_reads() {
    use crate::virtio::net::{open_backend, NetConfig, TapSource};
    let mut b = open_backend(&TapSource::Disconnected).unwrap();
    assert_eq!(b.send(&[0u8; 60]).unwrap(), 60);
    let mut buf = [0u8; 64];
    assert_eq!(
        b.recv(&mut buf).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    // A template's device (made with no backend) restores over no backend,
    // and its offloads are ones every tap takes.
    let mac = [0x02, 0, 0, 0, 0, 1];
    let dev = Net::new(NetConfig {
        tap: TapSource::Disconnected,
        mac,
        mtu: None,
    })
    .unwrap();
    let state = dev.state();
    let again = Net::from_state(&state, open_backend(&TapSource::Disconnected).unwrap()).unwrap();
    assert_eq!(again.mac(), mac);
    assert_eq!(TapSource::Disconnected.to_string(), "no backend");
}
