//! One vsock stream and its Unix socket: state, buffering and credit-based
//! flow control (virtio 1.2, 5.10.6.3).
//!
//! guest → host: the guest may have at most [`CONN_BUF_ALLOC`] bytes in
//! flight; what the Unix socket does not take at once waits in `tx_buf`
//! (so it never exceeds that) and `fwd_cnt` counts what it took. A guest
//! that overruns its credit is reset.
//!
//! host → guest: the Unix socket is read only when an RX buffer is being
//! filled, and never for more than the guest's advertised credit, so no
//! host data is ever buffered here.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use event_manager::EventSet;

use super::packet::PacketHeader;
use super::{
    op, CONN_BUF_ALLOC, CREDIT_UPDATE_THRESHOLD, SHUTDOWN_RCV, SHUTDOWN_SEND, VSOCK_HOST_CID,
    VSOCK_TYPE_STREAM,
};

/// Identifies a stream: (host port, guest port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ConnKey {
    pub local_port: u32,
    pub peer_port: u32,
}

/// What the muxer must do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    /// Send RST to the guest and drop the connection.
    Reset,
    /// Drop the connection without telling the guest (it sent RST).
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    Connecting {
        deadline: Instant,
    },
    Established,
}

/// Control packets waiting for an RX buffer.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    request: bool,
    response: bool,
    credit_update: bool,
    shutdown: bool,
}

pub(super) struct Connection {
    stream: UnixStream,
    key: ConnKey,
    guest_cid: u64,
    state: State,
    pending: Pending,
    /// Queued in the muxer's RX list.
    pub in_rxq: bool,
    // guest → host
    tx_buf: VecDeque<u8>,
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    guest_shut_send: bool,
    guest_shut_rcv: bool,
    host_write_shut: bool,
    // host → guest
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    tx_cnt: Wrapping<u32>,
    /// epoll said readable and no read has returned WouldBlock since.
    readable: bool,
    host_eof: bool,
    shutdown_sent: bool,
}

impl Connection {
    fn new(stream: UnixStream, key: ConnKey, guest_cid: u64, state: State) -> Self {
        Self {
            stream,
            key,
            guest_cid,
            state,
            pending: Pending::default(),
            in_rxq: false,
            tx_buf: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_shut: false,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            readable: false,
            host_eof: false,
            shutdown_sent: false,
        }
    }

    /// A guest REQUEST we accepted (the Unix connect succeeded): RESPONSE pending.
    pub fn guest_initiated(
        stream: UnixStream,
        key: ConnKey,
        guest_cid: u64,
        req: &PacketHeader,
    ) -> Self {
        let mut c = Self::new(stream, key, guest_cid, State::Established);
        c.update_peer_credit(req);
        c.pending.response = true;
        c
    }

    /// A host `CONNECT`: REQUEST pending, waiting for the guest until `deadline`.
    pub fn host_initiated(
        stream: UnixStream,
        key: ConnKey,
        guest_cid: u64,
        deadline: Instant,
    ) -> Self {
        let mut c = Self::new(stream, key, guest_cid, State::Connecting { deadline });
        c.pending.request = true;
        c
    }

    pub fn key(&self) -> ConnKey {
        self.key
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn into_stream(self) -> UnixStream {
        self.stream
    }

    /// The handshake deadline, while waiting for the guest's RESPONSE.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Connecting { deadline } => Some(deadline),
            State::Established => None,
        }
    }

    fn update_peer_credit(&mut self, hdr: &PacketHeader) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
    }

    /// Bytes the guest can still take (0 if its counters make no sense).
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn wants_host_data(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_shut_rcv
            && self.peer_credit() > 0
    }

    /// Whether `next_packet` has something to give.
    pub fn has_pending_rx(&self) -> bool {
        let p = self.pending;
        p.request
            || p.response
            || p.credit_update
            || p.shutdown
            || (self.readable && self.wants_host_data())
    }

    /// The epoll interest for the Unix stream (`None`: not watched).
    pub fn wanted_events(&self) -> Option<EventSet> {
        let mut set = EventSet::empty();
        if !self.readable && self.wants_host_data() {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }

    /// Bytes held for the Unix socket (guest data not yet forwarded); at
    /// most [`CONN_BUF_ALLOC`].
    pub fn buffered(&self) -> usize {
        self.tx_buf.len()
    }

    /// Both directions are finished: the connection should be reset.
    fn is_done(&self) -> bool {
        self.tx_buf.is_empty()
            && self.guest_shut_send
            && (self.guest_shut_rcv || (self.host_eof && self.shutdown_sent))
    }

    fn header(&self, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local_port,
            dst_port: self.key.peer_port,
            len: 0,
            type_: VSOCK_TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: CONN_BUF_ALLOC,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Handles a packet from the guest for this connection.
    pub fn on_guest_packet(&mut self, hdr: &PacketHeader, data: &[u8]) -> Verdict {
        self.update_peer_credit(hdr);
        if let State::Connecting { .. } = self.state {
            return match hdr.op {
                op::RESPONSE => self.establish(),
                op::RST => Verdict::Drop,
                _ => Verdict::Reset,
            };
        }
        match hdr.op {
            op::RW => self.guest_data(data),
            op::CREDIT_UPDATE => Verdict::Keep,
            op::CREDIT_REQUEST => {
                self.pending.credit_update = true;
                Verdict::Keep
            }
            op::SHUTDOWN => {
                self.guest_shut_rcv |= hdr.flags & SHUTDOWN_RCV != 0;
                self.guest_shut_send |= hdr.flags & SHUTDOWN_SEND != 0;
                self.after_flush()
            }
            op::RST => Verdict::Drop,
            // REQUEST on a live connection, RESPONSE when not connecting, unknown ops.
            _ => Verdict::Reset,
        }
    }

    fn establish(&mut self) -> Verdict {
        self.state = State::Established;
        let line = format!("OK {}\n", self.key.local_port);
        // Nothing was written on this fresh stream yet: a short line fits its
        // socket buffer, so anything but a full write means the host is gone.
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => Verdict::Keep,
            Ok(_) | Err(_) => Verdict::Reset,
        }
    }

    fn guest_data(&mut self, data: &[u8]) -> Verdict {
        if self.guest_shut_send {
            return Verdict::Reset;
        }
        let room = (CONN_BUF_ALLOC as usize).saturating_sub(self.tx_buf.len());
        if data.len() > room {
            tracing::warn!(
                local_port = self.key.local_port,
                peer_port = self.key.peer_port,
                len = data.len(),
                room,
                "vsock: guest overran its credit, resetting the connection"
            );
            return Verdict::Reset;
        }
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match write_some(&mut self.stream, data) {
                Ok(n) => written = n,
                Err(_) => return Verdict::Reset,
            }
        }
        self.tx_buf.extend(&data[written..]);
        self.forwarded(written);
        Verdict::Keep
    }

    fn forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.pending.credit_update = true;
        }
    }

    /// Handles the end of guest data once `tx_buf` is flushed.
    fn after_flush(&mut self) -> Verdict {
        if !self.tx_buf.is_empty() {
            return Verdict::Keep;
        }
        if self.guest_shut_send && !self.host_write_shut {
            self.host_write_shut = true;
            // The host may have closed already: nothing left to tell it then.
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.is_done() {
            Verdict::Reset
        } else {
            Verdict::Keep
        }
    }

    /// The Unix stream is writable (or hung up): flush what the guest sent.
    pub fn on_writable(&mut self) -> Verdict {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match write_some(&mut self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.forwarded(n);
                }
                Err(_) => return Verdict::Reset,
            }
        }
        self.after_flush()
    }

    /// The Unix stream is readable (or hung up).
    pub fn on_readable(&mut self) {
        self.readable = true;
    }

    /// The next packet for the guest with at most `max_data` payload bytes.
    /// `Err` means the Unix socket failed: reset the connection.
    pub fn next_packet(&mut self, max_data: usize) -> Result<Option<(PacketHeader, Vec<u8>)>, ()> {
        let pkt = if std::mem::take(&mut self.pending.request) {
            Some((self.header(op::REQUEST), Vec::new()))
        } else if std::mem::take(&mut self.pending.response) {
            Some((self.header(op::RESPONSE), Vec::new()))
        } else if let Some(pkt) = self.read_host(max_data)? {
            Some(pkt)
        } else if std::mem::take(&mut self.pending.shutdown) {
            self.shutdown_sent = true;
            let mut h = self.header(op::SHUTDOWN);
            h.flags = SHUTDOWN_SEND;
            Some((h, Vec::new()))
        } else if self.pending.credit_update {
            Some((self.header(op::CREDIT_UPDATE), Vec::new()))
        } else {
            None
        };
        if pkt.is_some() {
            // Every packet carries fwd_cnt: the guest's view is now current.
            self.pending.credit_update = false;
            self.last_fwd_cnt_sent = self.fwd_cnt;
        }
        Ok(pkt)
    }

    fn read_host(&mut self, max_data: usize) -> Result<Option<(PacketHeader, Vec<u8>)>, ()> {
        if !self.readable || !self.wants_host_data() || max_data == 0 {
            return Ok(None);
        }
        let n = max_data.min(self.peer_credit() as usize);
        let mut buf = vec![0u8; n];
        loop {
            return match self.stream.read(&mut buf) {
                Ok(0) => {
                    self.host_eof = true;
                    self.readable = false;
                    self.pending.shutdown = true;
                    Ok(None)
                }
                Ok(got) => {
                    buf.truncate(got);
                    self.tx_cnt += Wrapping(got as u32);
                    let mut h = self.header(op::RW);
                    h.len = got as u32;
                    Ok(Some((h, buf)))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    Ok(None)
                }
                Err(_) => Err(()),
            };
        }
    }

    /// After a SHUTDOWN went out: both directions may be done now.
    pub fn finished(&self) -> bool {
        self.is_done()
    }
}

/// Writes what the socket takes now; `Ok(0)` when it would block.
fn write_some(stream: &mut UnixStream, data: &[u8]) -> io::Result<usize> {
    if data.is_empty() {
        return Ok(0);
    }
    loop {
        return match stream.write(data) {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(peer_buf_alloc: u32) -> (Connection, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let req = PacketHeader {
            buf_alloc: peer_buf_alloc,
            ..Default::default()
        };
        let key = ConnKey {
            local_port: 1,
            peer_port: 2,
        };
        (Connection::guest_initiated(a, key, 3, &req), b)
    }

    fn pkt(op: u16, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            op,
            buf_alloc,
            fwd_cnt,
            ..Default::default()
        }
    }

    #[test]
    fn peer_credit_math() {
        let (mut c, _peer) = conn(100);
        assert_eq!(c.peer_credit(), 100);
        c.tx_cnt = Wrapping(60);
        assert_eq!(c.peer_credit(), 40);
        c.on_guest_packet(&pkt(op::CREDIT_UPDATE, 100, 50), &[]);
        assert_eq!(c.peer_credit(), 90);
        // Counters wrap.
        c.tx_cnt = Wrapping(5);
        c.on_guest_packet(&pkt(op::CREDIT_UPDATE, 100, u32::MAX - 4), &[]);
        assert_eq!(c.peer_credit(), 90);
        // A lying guest (fwd_cnt ahead of what we sent) gets nothing.
        c.on_guest_packet(&pkt(op::CREDIT_UPDATE, 10, 0), &[]);
        assert_eq!(c.peer_credit(), 5);
        c.on_guest_packet(&pkt(op::CREDIT_UPDATE, 1, 0), &[]);
        assert_eq!(c.peer_credit(), 0);
    }

    #[test]
    fn reads_at_most_credit_and_buffer() {
        let (mut c, mut peer) = conn(10);
        assert!(matches!(c.next_packet(4096), Ok(Some((h, _))) if h.op == op::RESPONSE));
        peer.write_all(&[7u8; 100]).unwrap();
        c.on_readable();
        let (h, d) = c.next_packet(4).unwrap().unwrap();
        assert_eq!((h.op, d.len()), (op::RW, 4));
        let (_, d) = c.next_packet(4096).unwrap().unwrap();
        assert_eq!(d.len(), 6, "the rest of the credit");
        assert!(c.next_packet(4096).unwrap().is_none());
        assert!(!c.has_pending_rx());
        assert_eq!(c.wanted_events(), None, "not watched without credit");
        c.on_guest_packet(&pkt(op::CREDIT_UPDATE, 10, 10), &[]);
        assert!(c.has_pending_rx());
    }

    #[test]
    fn guest_data_is_buffered_and_credited() {
        let (mut c, mut peer) = conn(10);
        let _ = c.next_packet(0);
        let chunk = vec![1u8; 64 * 1024];
        let mut sent = 0usize;
        // The socket fills, then our buffer up to CONN_BUF_ALLOC.
        while c.buffered() + chunk.len() <= CONN_BUF_ALLOC as usize {
            assert_eq!(
                c.on_guest_packet(&pkt(op::RW, 10, 0), &chunk),
                Verdict::Keep
            );
            sent += chunk.len();
        }
        assert!(c.buffered() > 0);
        assert!(c.wanted_events().is_some_and(|s| s.contains(EventSet::OUT)));
        assert_eq!(
            c.on_guest_packet(&pkt(op::RW, 10, 0), &chunk),
            Verdict::Reset,
            "credit overrun"
        );
        // Drain on the host side and flush.
        peer.set_nonblocking(true).unwrap();
        let mut got = 0usize;
        let mut buf = vec![0u8; 1 << 16];
        while got < sent {
            match peer.read(&mut buf) {
                Ok(n) => got += n,
                Err(_) => assert_eq!(c.on_writable(), Verdict::Keep),
            }
        }
        assert_eq!(c.buffered(), 0);
        assert_eq!(c.fwd_cnt.0 as usize, sent);
        let (h, _) = c.next_packet(0).unwrap().unwrap();
        assert_eq!((h.op, h.fwd_cnt as usize), (op::CREDIT_UPDATE, sent));
    }

    #[test]
    fn unexpected_ops() {
        let (mut c, _peer) = conn(10);
        assert_eq!(
            c.on_guest_packet(&pkt(op::REQUEST, 10, 0), &[]),
            Verdict::Reset
        );
        assert_eq!(
            c.on_guest_packet(&pkt(op::RESPONSE, 10, 0), &[]),
            Verdict::Reset
        );
        assert_eq!(c.on_guest_packet(&pkt(42, 10, 0), &[]), Verdict::Reset);
        assert_eq!(c.on_guest_packet(&pkt(op::RST, 10, 0), &[]), Verdict::Drop);
        let (a, _b) = UnixStream::pair().unwrap();
        let key = ConnKey {
            local_port: 1 << 30,
            peer_port: 2,
        };
        let mut c = Connection::host_initiated(a, key, 3, Instant::now());
        assert_eq!(c.on_guest_packet(&pkt(op::RW, 10, 0), b"x"), Verdict::Reset);
        assert_eq!(c.wanted_events(), None);
    }
}
