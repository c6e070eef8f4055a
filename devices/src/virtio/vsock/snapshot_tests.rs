//! Snapshot and restore of a running vsock device, as the VMM does it: the
//! transport and device state are saved, a new device is built on the same
//! guest memory, its transport restored, and a transport reset sent.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::test_utils::{Rig, Subscriber};
use super::tests::{host_connect, is_eof, ops, read_now, GUEST_PORT};
use super::*;
use crate::virtio::interrupt::MmioInterrupt;
use crate::virtio::transport::{MmioTransport, MmioTransportState};
use crate::virtio::VirtioDevice;

#[test]
fn restored_vsock_resets_transport_and_accepts_new_connections() {
    let (mut rig, transport, _intr) = Rig::with_transport();
    // Traffic before the snapshot: a host → guest connection with data both
    // ways, a guest → host one, and an event buffer the driver keeps posted.
    let (mut host, port) = host_connect(&mut rig);
    rig.exchange(rig.guest.hdr(op::RW, 1024, port), b"before");
    assert_eq!(read_now(&mut host), b"before");
    let listener =
        std::os::unix::net::UnixListener::bind(format!("{}_1234", rig.uds().display())).unwrap();
    let got = rig.exchange(rig.guest.hdr(op::REQUEST, GUEST_PORT, 1234), &[]);
    assert_eq!(ops(&got), vec![op::RESPONSE]);
    let (_g2h, _) = listener.accept().unwrap();
    rig.guest.provide_event();
    rig.pump();

    // Snapshot (the VMM pauses vCPUs and the event loop first).
    let tstate = transport.state();
    let vstate = rig.dev.lock().unwrap().state();
    assert_eq!(vstate, VsockState { guest_cid: 3 });
    assert!(tstate.activated);
    let tx = &tstate.queues[TX_QUEUE];
    assert_eq!(
        tx.next_avail,
        rig.guest.tx.published(),
        "the device's live index"
    );
    assert_eq!(tx.next_used, rig.guest.tx.published());
    let rx = &tstate.queues[RX_QUEUE];
    assert_eq!(rx.next_used, rig.guest.rx.harvested());
    assert!(
        rx.next_avail < rig.guest.rx.published(),
        "RX buffers still posted"
    );
    let ev = &tstate.queues[EVENT_QUEUE];
    assert_eq!((ev.next_avail, ev.next_used), (0, 0));
    // Through the snapshot file.
    let tstate: MmioTransportState =
        serde_json::from_str(&serde_json::to_string(&tstate).unwrap()).unwrap();
    let vstate: VsockState =
        serde_json::from_str(&serde_json::to_string(&vstate).unwrap()).unwrap();

    // The old VMM goes away: its streams close.
    drop(transport);
    rig.em = EventManager::<Subscriber>::new().unwrap();
    // The old device must be gone before the restored one binds the same
    // path (a live socket is not taken over): `rig.dev` holds the last
    // reference, so park a device elsewhere in the field first.
    rig.dev = Arc::new(Mutex::new(
        Vsock::new(vstate.guest_cid, rig.dir.join("parked.sock")).unwrap(),
    ));
    rig.dev = Arc::new(Mutex::new(
        Vsock::new(vstate.guest_cid, rig.dir.join("v.sock")).unwrap(),
    ));
    assert!(is_eof(&mut host));

    // Restore on the same memory, with new ioeventfds and irqfd.
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let intr = Arc::new(MmioInterrupt::new(irq.try_clone().unwrap()));
    let notify = rig.guest.renew_notify();
    let restored = MmioTransport::restore(
        rig.dev.clone(),
        rig.guest.mem.clone(),
        intr.clone(),
        notify,
        &tstate,
    )
    .unwrap();
    assert!(restored.is_activated());
    rig.dev.lock().unwrap().send_transport_reset();
    rig.em.add_subscriber(rig.dev.clone());
    rig.pump();
    assert_eq!(restored.state(), {
        let mut s = tstate.clone();
        s.queues[EVENT_QUEUE].next_avail = 1;
        s.queues[EVENT_QUEUE].next_used = 1;
        s.interrupt_status = 1;
        s
    });

    // The event lands in the buffer posted before the snapshot.
    let mem = rig.guest.mem.clone();
    let used = rig.guest.ev.used(&mem);
    assert_eq!(used.len(), 1);
    let mut id = [0u8; 4];
    mem.read_slice(&mut id, GuestAddress(used[0].2[0].0))
        .unwrap();
    assert_eq!(u32::from_le_bytes(id), VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
    assert_eq!(intr.status() & 1, 1);
    assert!(irq.read().unwrap() >= 1, "the guest was interrupted");
    assert!(
        rig.guest.recv().is_empty(),
        "no RST for the dropped streams"
    );

    // Until the guest has handled the reset (it hands a new event buffer
    // back), host connections wait: one accepted now would die with the
    // guest's reset of its sockets.
    let mut early = UnixStream::connect(rig.dev.lock().unwrap().uds_path()).unwrap();
    early.write_all(b"CONNECT 1024\n").unwrap();
    rig.pump();
    assert!(
        rig.guest.recv().is_empty(),
        "no REQUEST before the reset is handled"
    );
    drop(early);
    rig.guest.provide_event();
    rig.pump();
    let _ = rig.guest.recv();

    // A new host → guest connection; its REQUEST lands in an RX buffer
    // posted before the snapshot.
    let rx_before = rig.guest.rx.harvested();
    let (mut host, port) = host_connect(&mut rig);
    assert_eq!(rig.guest.rx.harvested(), rx_before.wrapping_add(1));
    rig.exchange(rig.guest.hdr(op::RW, 1024, port), b"after");
    assert_eq!(read_now(&mut host), b"after");
    host.write_all(b"back").unwrap();
    rig.pump();
    assert_eq!(rig.guest.recv()[0].1, b"back");
    // The host's listener for guest connections keeps working.
    let got = rig.exchange(rig.guest.hdr(op::REQUEST, GUEST_PORT + 1, 1234), &[]);
    assert_eq!(ops(&got), vec![op::RESPONSE]);
    let (mut g2h, _) = listener.accept().unwrap();
    rig.exchange(rig.guest.hdr(op::RW, GUEST_PORT + 1, 1234), b"g2h");
    assert_eq!(read_now(&mut g2h), b"g2h");
    let live = rig.dev.lock().unwrap().queue_states().unwrap();
    assert_eq!(live[TX_QUEUE].1.next_avail, rig.guest.tx.published());
}

#[test]
fn queue_states_follow_the_device() {
    let mut rig = Rig::new();
    rig.guest.provide_rx(2, 4096);
    rig.pump();
    let before = rig.dev.lock().unwrap().queue_states().unwrap();
    assert_eq!(
        before.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    rig.exchange(rig.guest.hdr(op::REQUEST, GUEST_PORT, 9), &[]);
    let after = rig.dev.lock().unwrap().queue_states().unwrap();
    assert_eq!(
        after[TX_QUEUE].1.next_avail,
        before[TX_QUEUE].1.next_avail + 1
    );
    assert_eq!(
        after[RX_QUEUE].1.next_used,
        before[RX_QUEUE].1.next_used + 1,
        "the RST"
    );
    rig.dev.lock().unwrap().reset();
    assert!(rig.dev.lock().unwrap().queue_states().is_none());
}

#[test]
fn state_json_round_trip() {
    let st = VsockState { guest_cid: 42 };
    let json = serde_json::to_string(&st).unwrap();
    assert_eq!(json, r#"{"guest_cid":42}"#);
    assert_eq!(serde_json::from_str::<VsockState>(&json).unwrap(), st);
    assert!(serde_json::from_str::<VsockState>(r#"{"guest_cid":3,"x":1}"#).is_err());
}
