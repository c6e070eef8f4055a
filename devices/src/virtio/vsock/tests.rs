//! Whole-device tests: the device under a real event manager, a guest
//! driver on mock memory, and real Unix sockets on the host side.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::packet::{PacketHeader, HDR_SIZE};
use super::test_utils::{Rig, TestGuest};
use super::*;
use crate::virtio::transport::MmioTransport;
use crate::virtio::VirtioDevice;

pub(super) const GUEST_PORT: u32 = 5000;

pub(super) fn ops(pkts: &[(PacketHeader, Vec<u8>)]) -> Vec<u16> {
    pkts.iter().map(|(h, _)| h.op).collect()
}

pub(super) fn host_listener(rig: &Rig, port: u32) -> UnixListener {
    let mut p = rig.uds().into_os_string();
    p.push(format!("_{port}"));
    UnixListener::bind(PathBuf::from(p)).unwrap()
}

/// Reads what is available now (the stream is non-blocking).
pub(super) fn read_now(s: &mut UnixStream) -> Vec<u8> {
    s.set_nonblocking(true).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
    }
    out
}

pub(super) fn is_eof(s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// A guest-initiated connection to host port 1234: (host side stream, listener).
pub(super) fn guest_connect(rig: &mut Rig, buf_alloc: u32) -> (UnixStream, UnixListener) {
    let listener = host_listener(rig, 1234);
    rig.guest.provide_rx(16, 4096);
    let mut req = rig.guest.hdr(op::REQUEST, GUEST_PORT, 1234);
    req.buf_alloc = buf_alloc;
    let got = rig.exchange(req, &[]);
    assert_eq!(ops(&got), vec![op::RESPONSE]);
    let h = got[0].0;
    assert_eq!((h.src_port, h.dst_port), (1234, GUEST_PORT));
    assert_eq!(h.buf_alloc, CONN_BUF_ALLOC);
    let (host, _) = listener.accept().unwrap();
    (host, listener)
}

/// A host-initiated connection to guest port 1024: (host stream, host-side port).
pub(super) fn host_connect(rig: &mut Rig) -> (UnixStream, u32) {
    rig.guest.provide_rx(16, 4096);
    let mut host = UnixStream::connect(rig.uds()).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    rig.pump();
    let got = rig.guest.recv();
    assert_eq!(ops(&got), vec![op::REQUEST]);
    let req = got[0].0;
    assert_eq!(req.dst_port, 1024);
    assert!(req.src_port >= HOST_PORT_BASE);
    let resp = rig.guest.hdr(op::RESPONSE, 1024, req.src_port);
    assert!(rig.exchange(resp, &[]).is_empty());
    let line = read_now(&mut host);
    assert_eq!(line, format!("OK {}\n", req.src_port).into_bytes());
    (host, req.src_port)
}

#[test]
fn guest_to_host_stream() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 256 * 1024);
    let rw = rig.guest.hdr(op::RW, GUEST_PORT, 1234);
    assert!(rig.exchange(rw, b"hello").is_empty());
    assert_eq!(read_now(&mut host), b"hello");
    host.write_all(b"world").unwrap();
    rig.pump();
    let got = rig.guest.recv();
    assert_eq!(ops(&got), vec![op::RW]);
    assert_eq!(got[0].1, b"world");
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (1234, GUEST_PORT));
    assert_eq!(got[0].0.fwd_cnt, 5, "fwd_cnt counts forwarded guest bytes");
    assert!(
        rig.guest
            .irq
            .queue
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
}

#[test]
fn host_to_guest_handshake_and_data() {
    let mut rig = Rig::new();
    let (mut host, port) = host_connect(&mut rig);
    let rw = rig.guest.hdr(op::RW, 1024, port);
    rig.exchange(rw, b"from guest");
    assert_eq!(read_now(&mut host), b"from guest");
    host.write_all(b"from host").unwrap();
    rig.pump();
    let got = rig.guest.recv();
    assert_eq!(ops(&got), vec![op::RW]);
    assert_eq!(got[0].1, b"from host");
    assert_eq!(got[0].0.src_port, port);
}

#[test]
fn host_data_sent_with_connect_line_is_kept() {
    let mut rig = Rig::new();
    rig.guest.provide_rx(8, 4096);
    let mut host = UnixStream::connect(rig.uds()).unwrap();
    host.write_all(b"CONNECT 77\nearly bytes").unwrap();
    rig.pump();
    let req = rig.guest.recv()[0].0;
    let got = rig.exchange(rig.guest.hdr(op::RESPONSE, 77, req.src_port), &[]);
    assert_eq!(ops(&got), vec![op::RW]);
    assert_eq!(got[0].1, b"early bytes");
}

#[test]
fn host_connections_get_unique_ports() {
    let mut rig = Rig::new();
    rig.guest.provide_rx(8, 4096);
    let mut a = UnixStream::connect(rig.uds()).unwrap();
    let mut b = UnixStream::connect(rig.uds()).unwrap();
    a.write_all(b"CONNECT 1\n").unwrap();
    b.write_all(b"CONNECT 1\n").unwrap();
    rig.pump();
    let got = rig.guest.recv();
    assert_eq!(ops(&got), vec![op::REQUEST, op::REQUEST]);
    assert_ne!(got[0].0.src_port, got[1].0.src_port);
}

#[test]
fn rst_when_nothing_listens() {
    let mut rig = Rig::new();
    rig.guest.provide_rx(4, 4096);
    let got = rig.exchange(rig.guest.hdr(op::REQUEST, GUEST_PORT, 9999), &[]);
    assert_eq!(ops(&got), vec![op::RST]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (9999, GUEST_PORT));
    // Host → guest where the guest refuses: the Unix stream is closed.
    let mut host = UnixStream::connect(rig.uds()).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    rig.pump();
    let req = rig.guest.recv()[0].0;
    assert!(rig
        .exchange(rig.guest.hdr(op::RST, 1024, req.src_port), &[])
        .is_empty());
    assert!(is_eof(&mut host));
}

#[test]
fn bad_connect_lines_close_the_stream() {
    let mut rig = Rig::new();
    rig.guest.provide_rx(4, 4096);
    let mut bad = UnixStream::connect(rig.uds()).unwrap();
    bad.write_all(b"HELLO 5\n").unwrap();
    let mut long = UnixStream::connect(rig.uds()).unwrap();
    long.write_all(&[b'1'; 64]).unwrap();
    rig.pump();
    assert!(is_eof(&mut bad));
    assert!(is_eof(&mut long));
    assert!(rig.guest.recv().is_empty());
}

#[test]
fn handshake_timeouts() {
    let mut rig = Rig::new();
    rig.dev
        .lock()
        .unwrap()
        .muxer
        .set_connect_timeout(Duration::from_millis(100));
    rig.guest.provide_rx(4, 4096);
    // Never sends a line.
    let mut silent = UnixStream::connect(rig.uds()).unwrap();
    // The guest never answers.
    let mut unanswered = UnixStream::connect(rig.uds()).unwrap();
    unanswered.write_all(b"CONNECT 3\n").unwrap();
    rig.pump();
    let req = rig.guest.recv();
    assert_eq!(ops(&req), vec![op::REQUEST]);
    for _ in 0..40 {
        rig.em.run_with_timeout(50).unwrap();
    }
    assert!(is_eof(&mut silent));
    assert!(is_eof(&mut unanswered));
    let got = rig.guest.recv();
    assert_eq!(ops(&got), vec![op::RST]);
    assert_eq!(got[0].0.src_port, req[0].0.src_port);
}

#[test]
fn credit_limits_host_to_guest() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 1000);
    let payload: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    host.write_all(&payload).unwrap();
    let mut received = Vec::new();
    let mut fwd = 0u32;
    for round in 0..5 {
        rig.guest.provide_rx(8, 4096);
        rig.pump();
        let got = rig.guest.recv();
        let bytes: usize = got.iter().map(|(_, d)| d.len()).sum();
        assert_eq!(bytes, 1000, "round {round}: exactly the guest's credit");
        for (h, d) in got {
            assert_eq!(h.op, op::RW);
            received.extend(d);
        }
        // Nothing more without credit.
        rig.pump();
        assert!(rig.guest.recv().is_empty());
        fwd += 1000;
        let mut upd = rig.guest.hdr(op::CREDIT_UPDATE, GUEST_PORT, 1234);
        upd.buf_alloc = 1000;
        upd.fwd_cnt = fwd;
        rig.guest.send(upd, &[]);
    }
    assert_eq!(received, payload);
}

#[test]
fn guest_to_host_backpressure_loses_nothing() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 256 * 1024);
    let total = CONN_BUF_ALLOC as usize * 3;
    let data: Vec<u8> = (0..total).map(|i| (i * 7) as u8).collect();
    let mut sent = 0usize;
    let mut peer_fwd = 0u32;
    let mut got = Vec::new();
    rig.guest.provide_rx(64, 4096);
    while got.len() < total {
        // Send as much as our credit allows, in 16 KiB packets.
        while sent < total && (sent as u32).wrapping_sub(peer_fwd) + 16384 <= CONN_BUF_ALLOC {
            let chunk = &data[sent..(sent + 16384).min(total)];
            rig.guest
                .send(rig.guest.hdr(op::RW, GUEST_PORT, 1234), chunk);
            sent += chunk.len();
        }
        rig.pump();
        for (h, _) in rig.guest.recv() {
            assert_ne!(h.op, op::RST, "the device reset a well-behaved stream");
            peer_fwd = h.fwd_cnt;
        }
        if rig.guest.rx.outstanding() < 16 {
            rig.guest.provide_rx(32, 4096);
        }
        // A slow reader.
        let mut buf = vec![0u8; 50_000];
        host.set_nonblocking(true).unwrap();
        if let Ok(n) = host.read(&mut buf) {
            got.extend_from_slice(&buf[..n]);
        }
        rig.pump();
    }
    assert_eq!(got.len(), total);
    assert!(got == data, "bytes arrived in order");
}

#[test]
fn guest_overrunning_credit_is_reset() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    let chunk = vec![1u8; 65536];
    // The host never reads: 256 KiB fit in socket + our buffer... then more.
    let mut rst = false;
    for _ in 0..64 {
        let got = rig.exchange(rig.guest.hdr(op::RW, GUEST_PORT, 1234), &chunk);
        if got.iter().any(|(h, _)| h.op == op::RST) {
            rst = true;
            break;
        }
    }
    assert!(rst, "overrunning the advertised buffer resets the stream");
    let _ = read_now(&mut host);
    assert!(is_eof(&mut host));
}

#[test]
fn credit_request_gets_credit_update() {
    let mut rig = Rig::new();
    let (_host, _l) = guest_connect(&mut rig, 4096);
    let got = rig.exchange(rig.guest.hdr(op::CREDIT_REQUEST, GUEST_PORT, 1234), &[]);
    assert_eq!(ops(&got), vec![op::CREDIT_UPDATE]);
    assert_eq!(got[0].0.buf_alloc, CONN_BUF_ALLOC);
}

#[test]
fn host_eof_sends_shutdown_then_guest_close_resets() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    host.write_all(b"last words").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    rig.pump();
    let got = rig.guest.recv();
    assert_eq!(ops(&got), vec![op::RW, op::SHUTDOWN]);
    assert_eq!(got[0].1, b"last words");
    assert_eq!(got[1].0.flags, SHUTDOWN_SEND);
    // The guest can still send; then it closes both ways: RST back.
    rig.exchange(rig.guest.hdr(op::RW, GUEST_PORT, 1234), b"bye");
    assert_eq!(read_now(&mut host), b"bye");
    let mut sd = rig.guest.hdr(op::SHUTDOWN, GUEST_PORT, 1234);
    sd.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    let got = rig.exchange(sd, &[]);
    assert_eq!(ops(&got), vec![op::RST]);
    assert!(is_eof(&mut host));
    assert_eq!(rig.dev.lock().unwrap().muxer.connection_count(), 0);
}

#[test]
fn guest_half_close_and_rst() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    let mut sd = rig.guest.hdr(op::SHUTDOWN, GUEST_PORT, 1234);
    sd.flags = SHUTDOWN_SEND;
    assert!(rig.exchange(sd, &[]).is_empty());
    assert!(is_eof(&mut host), "guest SHUTDOWN SEND → host reads EOF");
    // The other direction still works.
    host.write_all(b"still here").unwrap();
    rig.pump();
    assert_eq!(rig.guest.recv()[0].1, b"still here");
    assert!(rig
        .exchange(rig.guest.hdr(op::RST, GUEST_PORT, 1234), &[])
        .is_empty());
    assert_eq!(rig.dev.lock().unwrap().muxer.connection_count(), 0);
    host.set_nonblocking(true).unwrap();
    assert!(
        host.write_all(&[0u8; 1 << 20]).is_err(),
        "the Unix stream is closed"
    );
}

#[test]
fn host_close_while_guest_sends_resets() {
    let mut rig = Rig::new();
    let (host, _l) = guest_connect(&mut rig, 4096);
    drop(host);
    rig.pump();
    let got = rig.guest.recv();
    assert_eq!(ops(&got), vec![op::SHUTDOWN]);
    let got = rig.exchange(rig.guest.hdr(op::RW, GUEST_PORT, 1234), b"anyone?");
    assert_eq!(ops(&got), vec![op::RST]);
}

#[test]
fn garbage_on_tx_is_survived() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    // Unknown connection → RST; unknown connection RST → nothing.
    let got = rig.exchange(rig.guest.hdr(op::RW, 1, 2), b"x");
    assert_eq!(ops(&got), vec![op::RST]);
    assert!(rig.exchange(rig.guest.hdr(op::RST, 1, 2), &[]).is_empty());
    // Wrong CIDs → dropped silently.
    let mut h = rig.guest.hdr(op::REQUEST, 1, 1234);
    h.src_cid = 99;
    assert!(rig.exchange(h, &[]).is_empty());
    let mut h = rig.guest.hdr(op::REQUEST, 1, 1234);
    h.dst_cid = 7;
    assert!(rig.exchange(h, &[]).is_empty());
    // Wrong type → RST.
    let mut h = rig.guest.hdr(op::REQUEST, 1, 1234);
    h.type_ = 2;
    assert_eq!(ops(&rig.exchange(h, &[])), vec![op::RST]);
    // Short header, write-only descriptor, out-of-range address, data longer
    // than the descriptor: each chain is returned, nothing else happens.
    let a = rig.guest.tx.alloc(64);
    let mem = rig.guest.mem.clone();
    rig.guest.tx.add_chain(&mem, &[(a, 20, false)]);
    rig.guest.tx.add_chain(&mem, &[(a, 64, true)]);
    rig.guest.tx.add_chain(&mem, &[(u64::MAX - 8, 64, false)]);
    let mut h = rig.guest.hdr(op::RW, 7, 8);
    h.len = 1000;
    mem.write_slice(&h.to_bytes(), GuestAddress(a)).unwrap();
    rig.guest.tx.add_chain(&mem, &[(a, 64, false)]);
    // A descriptor loop.
    let first = rig.guest.tx.take_descs(2);
    rig.guest.tx.write_desc(&mem, first, a, 64, 1, first + 1);
    rig.guest.tx.write_desc(&mem, first + 1, a, 64, 1, first);
    rig.guest.tx.publish(&mem, first);
    rig.guest.kick(TX_QUEUE);
    rig.pump();
    assert_eq!(
        rig.guest.tx.used(&mem).len(),
        5 + 6,
        "every chain was returned"
    );
    // The loop reads as a (TTL-bounded) chain holding a valid RW packet for
    // an unknown stream: RST.
    let got = rig.guest.recv();
    assert_eq!(ops(&got), vec![op::RST]);
    assert_eq!((got[0].0.src_port, got[0].0.dst_port), (8, 7));
    // Bad op on the live connection → RST and the Unix stream closes.
    let got = rig.exchange(rig.guest.hdr(99, GUEST_PORT, 1234), &[]);
    assert_eq!(ops(&got), vec![op::RST]);
    assert!(is_eof(&mut host));
    // Still working.
    let (mut host2, _l2) = {
        let listener = UnixListener::bind(format!("{}_4321", rig.uds().display())).unwrap();
        let got = rig.exchange(rig.guest.hdr(op::REQUEST, 6000, 4321), &[]);
        assert_eq!(ops(&got), vec![op::RESPONSE]);
        (listener.accept().unwrap().0, listener)
    };
    rig.exchange(rig.guest.hdr(op::RW, 6000, 4321), b"ok");
    assert_eq!(read_now(&mut host2), b"ok");
}

#[test]
fn malformed_rx_buffers_are_returned() {
    let mut rig = Rig::new();
    let mem = rig.guest.mem.clone();
    let a = rig.guest.rx.alloc(64);
    rig.guest.rx.add_chain(&mem, &[(a, 64, false)]); // read-only
    rig.guest.rx.add_chain(&mem, &[(a, 10, true)]); // too short
    rig.guest.provide_rx(1, 4096);
    rig.guest
        .send(rig.guest.hdr(op::REQUEST, GUEST_PORT, 9), &[]);
    rig.pump();
    let used = rig.guest.rx.used(&mem);
    let lens: Vec<u32> = used.iter().map(|u| u.1).collect();
    assert_eq!(
        lens,
        vec![0, 0, HDR_SIZE as u32],
        "bad buffers skipped, the RST lands in the good one"
    );
}

#[test]
fn many_streams_both_ways() {
    let mut rig = Rig::new();
    let listener = host_listener(&rig, 1234);
    rig.guest.provide_rx(128, 4096);
    let mut hosts = Vec::new();
    for i in 0..20u32 {
        rig.guest
            .send(rig.guest.hdr(op::REQUEST, 7000 + i, 1234), &[]);
    }
    rig.pump();
    assert_eq!(rig.guest.recv().len(), 20);
    for _ in 0..20 {
        hosts.push(listener.accept().unwrap().0);
    }
    for i in 0..20u32 {
        rig.guest.send(
            rig.guest.hdr(op::RW, 7000 + i, 1234),
            format!("m{i}").as_bytes(),
        );
    }
    rig.pump();
    let mut all: Vec<Vec<u8>> = hosts.iter_mut().map(read_now).collect();
    all.sort();
    let mut want: Vec<Vec<u8>> = (0..20).map(|i| format!("m{i}").into_bytes()).collect();
    want.sort();
    assert_eq!(all, want);
    for h in &mut hosts {
        h.write_all(b"pong").unwrap();
    }
    rig.pump();
    let got = rig.guest.recv();
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|(h, d)| h.op == op::RW && d == b"pong"));
}

#[test]
fn reset_drops_connections_and_reactivates() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    rig.dev.lock().unwrap().reset();
    rig.pump();
    assert!(is_eof(&mut host));
    assert_eq!(rig.dev.lock().unwrap().muxer.connection_count(), 0);
    // A fresh driver activates again.
    let (guest, ctx) = TestGuest::new();
    rig.dev.lock().unwrap().activate(ctx).unwrap();
    rig.guest = guest;
    rig.pump();
    let (mut host, _port) = host_connect(&mut rig);
    host.write_all(b"again").unwrap();
    rig.pump();
    assert_eq!(rig.guest.recv()[0].1, b"again");
}

#[test]
fn activate_needs_all_queues() {
    let mut dev = Vsock::new(
        3,
        std::env::temp_dir().join(format!("husk-vsock-act-{}", std::process::id())),
    )
    .unwrap();
    let (_g, mut ctx) = TestGuest::new();
    ctx.queues.pop();
    assert!(dev.activate(ctx).is_err());
    let path = dev.uds_path().to_path_buf();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.queue_max_sizes(), &[256, 256, 256]);
    assert_eq!(dev.features(), 0);
    let mut cfg = [0u8; 8];
    dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 3);
    drop(dev);
    // A stale socket is replaced; a regular file is not.
    let dev = Vsock::new(3, path.clone()).unwrap();
    drop(dev);
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, b"x").unwrap();
    let err = Vsock::new(3, path.clone()).err().unwrap().to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn transport_reset_event() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    rig.guest.provide_event();
    rig.pump();
    rig.dev.lock().unwrap().send_transport_reset();
    rig.pump();
    let mem = rig.guest.mem.clone();
    let used = rig.guest.ev.used(&mem);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 4);
    let mut id = [0u8; 4];
    mem.read_slice(&mut id, GuestAddress(used[0].2[0].0))
        .unwrap();
    assert_eq!(u32::from_le_bytes(id), VIRTIO_VSOCK_EVENT_TRANSPORT_RESET);
    assert!(is_eof(&mut host));
    // No RST: the event said everything is gone.
    assert!(rig.guest.recv().is_empty());
    // Delivered later when no buffer was there.
    rig.dev.lock().unwrap().send_transport_reset();
    rig.pump();
    assert!(rig.guest.ev.used(&mem).is_empty());
    rig.guest.provide_event();
    rig.pump();
    assert_eq!(rig.guest.ev.used(&mem).len(), 1);
}

#[test]
fn hdr_size_is_44() {
    assert_eq!(HDR_SIZE, 44);
}

/// MAX_CONNECTIONS (lowered here): guest requests beyond it get RST, host
/// connections beyond it are closed; a freed slot can be used again.
#[test]
fn connections_beyond_the_limit_are_refused() {
    assert_eq!(MAX_CONNECTIONS, 1024);
    let mut rig = Rig::new();
    rig.dev.lock().unwrap().muxer.set_max_connections(4);
    let listener = host_listener(&rig, 1234);
    rig.guest.provide_rx(32, 4096);
    for i in 0..6u32 {
        rig.guest
            .send(rig.guest.hdr(op::REQUEST, 7000 + i, 1234), &[]);
    }
    rig.pump();
    let got = rig.guest.recv();
    let mut answers: Vec<(u32, u16)> = got.iter().map(|(h, _)| (h.dst_port, h.op)).collect();
    answers.sort();
    assert_eq!(
        answers,
        vec![
            (7000, op::RESPONSE),
            (7001, op::RESPONSE),
            (7002, op::RESPONSE),
            (7003, op::RESPONSE),
            (7004, op::RST),
            (7005, op::RST),
        ]
    );
    assert_eq!(rig.dev.lock().unwrap().stats().connections, 4);
    // A host connection beyond the limit is closed unanswered.
    let mut host = UnixStream::connect(rig.uds()).unwrap();
    host.write_all(b"CONNECT 1024\n").unwrap();
    rig.pump();
    assert!(rig.guest.recv().is_empty());
    assert!(is_eof(&mut host));
    // One closes: a new one fits.
    assert!(rig
        .exchange(rig.guest.hdr(op::RST, 7000, 1234), &[])
        .is_empty());
    let got = rig.exchange(rig.guest.hdr(op::REQUEST, 7006, 1234), &[]);
    assert_eq!(ops(&got), vec![op::RESPONSE]);
    drop(listener);
}

/// A guest that ignores the credit it was given never makes the device hold
/// more than CONN_BUF_ALLOC bytes for the stream: it is reset instead.
#[test]
fn guest_ignoring_credit_is_bounded_by_conn_buf_alloc() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    let chunk = vec![7u8; MAX_PKT_DATA as usize];
    let mut reset = false;
    for _ in 0..32 {
        let got = rig.exchange(rig.guest.hdr(op::RW, GUEST_PORT, 1234), &chunk);
        let stats = rig.dev.lock().unwrap().stats();
        assert!(
            stats.max_buffered_bytes <= CONN_BUF_ALLOC as usize,
            "{stats:?}"
        );
        if ops(&got).contains(&op::RST) {
            reset = true;
            break;
        }
    }
    assert!(reset, "the host never reads: the stream is reset");
    assert_eq!(rig.dev.lock().unwrap().stats(), VsockStats::default());
    let _ = read_now(&mut host);
    assert!(is_eof(&mut host));
}

/// Host data the guest has no room or credit for stays in the Unix socket:
/// the device reads only into a guest RX buffer, never ahead.
#[test]
fn host_data_waits_in_the_socket_not_in_the_device() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    host.set_nonblocking(true).unwrap();
    let mut written = 0usize;
    let block = vec![1u8; 64 * 1024];
    while written < 16 << 20 {
        match host.write(&block) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) => panic!("{e}"),
        }
        rig.pump();
    }
    assert!(written > 4096, "the socket took {written} bytes");
    // Only the advertised credit reached the guest; the rest is the
    // socket's (bounded by the kernel), the device holds none of it.
    let got = rig.guest.recv();
    let bytes: usize = got.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(bytes, 4096);
    assert_eq!(rig.dev.lock().unwrap().stats().buffered_bytes, 0);
}

/// A guest that floods packets for unknown streams and gives no RX buffers
/// for the RSTs: the answers queue up to a bound, then TX pauses (its
/// chains wait in the ring) until RX buffers drain them.
#[test]
fn unanswered_control_packets_are_bounded() {
    let mut rig = Rig::new();
    let mem = rig.guest.mem.clone();
    let mut sent = 0u32;
    for _ in 0..6 {
        for _ in 0..200 {
            // Header only: one descriptor, so 256 fit the ring.
            rig.guest.send(rig.guest.hdr(op::RW, 10_000 + sent, 9), &[]);
            sent += 1;
        }
        rig.pump();
        rig.guest.tx.used(&mem);
        let backlog = rig.dev.lock().unwrap().stats().control_backlog;
        assert!(backlog <= 1024, "{backlog} RSTs queued");
    }
    assert_eq!(rig.dev.lock().unwrap().stats().control_backlog, 1024);
    assert!(
        rig.guest.tx.outstanding() > 0,
        "TX paused: chains wait in the ring"
    );
    // RX buffers drain the backlog and TX resumes: every packet answered.
    let mut rsts = 0;
    for _ in 0..20 {
        rig.guest.provide_rx(100, 64);
        rig.pump();
        rsts += rig.guest.recv().len();
        rig.guest.tx.used(&mem);
    }
    assert_eq!(rsts, sent as usize);
    assert_eq!(rig.guest.tx.outstanding(), 0);
}

/// TX chains no driver should make: each is returned, none disturbs a live
/// stream, and the device keeps working.
#[test]
fn garbage_tx_chains_are_returned() {
    let mut rig = Rig::new();
    let (mut host, _l) = guest_connect(&mut rig, 4096);
    let mem = rig.guest.mem.clone();
    let a = rig.guest.tx.alloc(64);
    let h = rig.guest.hdr(op::RW, GUEST_PORT, 1234);
    mem.write_slice(&h.to_bytes(), GuestAddress(a)).unwrap();
    // Zero-length descriptors only.
    rig.guest
        .tx
        .add_chain(&mem, &[(a, 0, false), (a, 0, false)]);
    // Huge lengths: one past guest memory, chains past 4 GiB in all.
    rig.guest.tx.add_chain(&mem, &[(a, u32::MAX, false)]);
    rig.guest
        .tx
        .add_chain(&mem, &[(a, 0x8000_0000, false), (a, 0x8000_0000, false)]);
    // An indirect table whose entry is itself (nested: the walk ends).
    let table = rig.guest.tx.alloc(16);
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&table.to_le_bytes());
    raw[8..12].copy_from_slice(&16u32.to_le_bytes());
    raw[12..14].copy_from_slice(&4u16.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(table)).unwrap();
    let head = rig.guest.tx.take_descs(1);
    rig.guest.tx.write_desc(&mem, head, table, 16, 4, 0);
    rig.guest.tx.publish(&mem, head);
    // An indirect table of 60000 linked, empty descriptors (the walk is
    // bounded by the table; no header: refused).
    let big = 0x40_0000u64;
    let mut table = Vec::with_capacity(16 * 60_000);
    for i in 0..60_000u32 {
        let mut e = [0u8; 16];
        e[0..8].copy_from_slice(&a.to_le_bytes());
        e[12..14].copy_from_slice(&1u16.to_le_bytes());
        e[14..16].copy_from_slice(&((i + 1) as u16).to_le_bytes());
        table.extend(e);
    }
    mem.write_slice(&table, GuestAddress(big)).unwrap();
    let head = rig.guest.tx.take_descs(1);
    rig.guest.tx.write_desc(&mem, head, big, 16 * 60_000, 4, 0);
    rig.guest.tx.publish(&mem, head);
    rig.guest.kick(TX_QUEUE);
    rig.pump();
    rig.guest.tx.used(&mem);
    assert_eq!(
        rig.guest.tx.harvested(),
        rig.guest.tx.published(),
        "every chain was returned"
    );
    assert!(rig.guest.recv().is_empty(), "nothing to answer");
    // A huge length in a valid header for the live stream resets it.
    let mut h = rig.guest.hdr(op::RW, GUEST_PORT, 1234);
    h.len = u32::MAX;
    mem.write_slice(&h.to_bytes(), GuestAddress(a)).unwrap();
    rig.guest.tx.add_chain(&mem, &[(a, 44, false)]);
    rig.guest.kick(TX_QUEUE);
    rig.pump();
    assert_eq!(ops(&rig.guest.recv()), vec![op::RST]);
    assert!(is_eof(&mut host));
    assert_eq!(
        rig.guest
            .irq
            .needs_reset
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    // Still working.
    let (mut host, _l2) = {
        let listener = UnixListener::bind(format!("{}_4321", rig.uds().display())).unwrap();
        let got = rig.exchange(rig.guest.hdr(op::REQUEST, 6000, 4321), &[]);
        assert_eq!(ops(&got), vec![op::RESPONSE]);
        (listener.accept().unwrap().0, listener)
    };
    rig.exchange(rig.guest.hdr(op::RW, 6000, 4321), b"ok");
    assert_eq!(read_now(&mut host), b"ok");
}

/// A ring the driver broke (a head outside it, an available index more
/// than a ring ahead) stops the device: the transport shows
/// DEVICE_NEEDS_RESET with a configuration interrupt; after the driver's
/// reset and a new initialization the device works again.
#[test]
fn broken_rings_set_device_needs_reset() {
    use crate::virtio::status::{DEVICE_NEEDS_RESET, DRIVER_OK};
    for (queue, breakage) in [
        (TX_QUEUE, 0),
        (TX_QUEUE, 1),
        (RX_QUEUE, 0),
        (EVENT_QUEUE, 1),
    ] {
        let (mut rig, mut t, intr) = Rig::with_transport();
        let mem = rig.guest.mem.clone();
        let q = match queue {
            TX_QUEUE => &mut rig.guest.tx,
            RX_QUEUE => &mut rig.guest.rx,
            _ => &mut rig.guest.ev,
        };
        if breakage == 0 {
            q.publish(&mem, QUEUE_SIZE);
        } else {
            q.set_avail_idx(&mem, QUEUE_SIZE + 1);
        }
        rig.guest.kick(queue);
        // Something for RX and event queues to do.
        let _listener = host_listener(&rig, 1234);
        rig.guest
            .send(rig.guest.hdr(op::REQUEST, GUEST_PORT, 1234), &[]);
        rig.dev.lock().unwrap().send_transport_reset();
        rig.pump();
        let status = {
            let mut b = [0u8; 4];
            crate::bus::BusDevice::read(&mut t, 0x70, &mut b);
            u32::from_le_bytes(b)
        };
        assert_ne!(
            status & DEVICE_NEEDS_RESET,
            0,
            "queue {queue}, breakage {breakage}"
        );
        assert_ne!(status & DRIVER_OK, 0);
        assert_eq!(intr.status() & 2, 2, "configuration interrupt");
        // The driver resets the device and sets it up again.
        crate::bus::BusDevice::write(&mut t, 0x70, &0u32.to_le_bytes());
        assert_eq!(t.status(), 0);
        let (guest, _ctx) = TestGuest::new();
        rig.guest = guest;
        let notify = rig.guest.notify_clones();
        let mut t =
            MmioTransport::new(rig.dev.clone(), rig.guest.mem.clone(), intr.clone(), notify)
                .unwrap();
        rig.guest.driver_init(&mut t);
        rig.pump();
        assert_eq!(t.status() & DEVICE_NEEDS_RESET, 0);
        let (mut host, _port) = host_connect(&mut rig);
        host.write_all(b"again").unwrap();
        rig.pump();
        assert_eq!(rig.guest.recv()[0].1, b"again");
    }
}

#[test]
fn a_live_socket_is_not_taken_over() {
    let path = std::env::temp_dir().join(format!("husk-vsock-live-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    // A live VM's socket (anything that accepts connections).
    let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let err = Vsock::new(3, path.clone()).err().expect("refused");
    assert!(
        matches!(&err, VsockError::InUse { path: p } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("in use by a live VM"), "{err}");
    // It still owns its path: a client reaches it.
    std::os::unix::net::UnixStream::connect(&path).unwrap();
    live.accept().unwrap();
    // Once it is gone (a socket file nobody listens on), it is stale.
    drop(live);
    let dev = Vsock::new(3, path.clone()).unwrap();
    drop(dev);
    // A directory is refused, not deleted.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    assert!(matches!(
        Vsock::new(3, path.clone()),
        Err(VsockError::NotASocket { .. })
    ));
    assert!(path.is_dir());
    std::fs::remove_dir(&path).unwrap();
}
