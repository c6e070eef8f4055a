//! The hybrid-vsock backend: maps guest streams to Unix sockets.
//!
//! Owns the host listener (`uds_path`), host handshakes in progress
//! (`CONNECT <port>\n`), the established connections and the queue of
//! packets waiting for guest RX buffers. Every fd it stops using goes to the
//! graveyard first, so the event loop can take it out of epoll before it is
//! closed.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use event_manager::EventSet;

use super::connection::{ConnKey, Connection, Verdict};
use super::packet::PacketHeader;
use super::uds::{connect_nonblocking, parse_connect_line};
use super::{
    op, VsockError, VsockStats, WarnLimiter, CONNECT_TIMEOUT, CONN_BUF_ALLOC, HOST_PORT_BASE,
    MAX_CONNECTIONS, MAX_CONNECT_LINE, VSOCK_HOST_CID, VSOCK_TYPE_STREAM,
};

/// Control packets (RSTs for unknown streams) held beyond which guest TX is
/// paused until the guest gives RX buffers.
const MAX_CTRL_BACKLOG: usize = 1024;

/// A host connection that has not finished its `CONNECT` line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

/// An fd that must leave epoll before it is closed.
pub(super) type Dead = Box<dyn AsRawFd + Send>;

pub(super) struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    by_fd: HashMap<RawFd, ConnKey>,
    handshakes: HashMap<RawFd, Handshake>,
    rxq: VecDeque<ConnKey>,
    ctrl: VecDeque<PacketHeader>,
    graveyard: Vec<Dead>,
    next_local_port: u32,
    /// [`MAX_CONNECTIONS`]; lowered by tests.
    max_connections: usize,
    connect_timeout: Duration,
    warn: WarnLimiter,
}

/// Removes the socket at `path` if it is stale; refuses a live socket and
/// anything else. (Between the probe and the new bind another process may
/// bind the path: that bind or ours then fails, nothing is taken over.)
fn remove_stale(path: &Path) -> Result<(), VsockError> {
    let probe = |source| VsockError::Probe {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {}
        Ok(_) => {
            return Err(VsockError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        // Gone meanwhile: the path is free.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(probe(e)),
    }
    match connect_nonblocking(path) {
        // Accepted, or a full backlog (EAGAIN): someone listens there.
        Ok(_) => Err(VsockError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(VsockError::InUse {
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .or_else(|e| match e.kind() {
                io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            })
            .map_err(|source| VsockError::RemoveStale {
                path: path.to_path_buf(),
                source,
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(probe(e)),
    }
}

impl Muxer {
    /// Listens on `uds_path`. A socket already there is replaced only when
    /// it is stale (nobody accepts on it: ECONNREFUSED); a live one (a VM's
    /// that still runs) is refused with [`VsockError::InUse`], and anything
    /// that is not a socket with [`VsockError::NotASocket`].
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Self, VsockError> {
        let bind = |path: &PathBuf| {
            UnixListener::bind(path).map_err(|source| VsockError::Bind {
                path: path.clone(),
                source,
            })
        };
        let listener = match bind(&uds_path) {
            Ok(l) => l,
            Err(VsockError::Bind { source, .. }) if source.kind() == io::ErrorKind::AddrInUse => {
                remove_stale(&uds_path)?;
                bind(&uds_path)?
            }
            Err(e) => return Err(e),
        };
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Bind {
                path: uds_path.clone(),
                source,
            })?;
        Ok(Self {
            guest_cid,
            uds_path,
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            handshakes: HashMap::new(),
            rxq: VecDeque::new(),
            ctrl: VecDeque::new(),
            graveyard: Vec::new(),
            next_local_port: first_local_port(),
            max_connections: MAX_CONNECTIONS,
            connect_timeout: CONNECT_TIMEOUT,
            warn: WarnLimiter::default(),
        })
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    #[cfg(test)]
    pub fn set_connect_timeout(&mut self, t: Duration) {
        self.connect_timeout = t;
    }

    #[cfg(test)]
    pub fn set_max_connections(&mut self, n: usize) {
        self.max_connections = n;
    }

    #[cfg(test)]
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// What the muxer holds now.
    pub fn stats(&self) -> VsockStats {
        let buffered = self.conns.values().map(Connection::buffered);
        VsockStats {
            connections: self.conns.len(),
            handshakes: self.handshakes.len(),
            buffered_bytes: buffered.clone().sum(),
            max_buffered_bytes: buffered.max().unwrap_or(0),
            control_backlog: self.ctrl.len(),
        }
    }

    pub fn bury(&mut self, fd: Dead) {
        self.graveyard.push(fd);
    }

    pub fn take_graveyard(&mut self) -> Vec<Dead> {
        std::mem::take(&mut self.graveyard)
    }

    /// Whether `fd` is one of ours (a connection or a handshake).
    pub fn owns(&self, fd: RawFd) -> bool {
        self.by_fd.contains_key(&fd) || self.handshakes.contains_key(&fd)
    }

    /// The epoll interest of every stream fd (`None`: not watched).
    pub fn wanted(&self) -> impl Iterator<Item = (RawFd, Option<EventSet>)> + '_ {
        let hs = self.handshakes.keys().map(|fd| (*fd, Some(EventSet::IN)));
        let conns = self.conns.values().map(|c| (c.fd(), c.wanted_events()));
        hs.chain(conns)
    }

    /// Whether a handshake deadline is pending (the timer must run).
    pub fn needs_timer(&self) -> bool {
        !self.handshakes.is_empty() || self.conns.values().any(|c| c.deadline().is_some())
    }

    /// Drops every connection and handshake without telling the guest.
    pub fn drop_all(&mut self) {
        for (_, hs) in self.handshakes.drain() {
            self.graveyard.push(Box::new(hs.stream));
        }
        for (_, c) in self.conns.drain() {
            self.graveyard.push(Box::new(c.into_stream()));
        }
        self.by_fd.clear();
        self.rxq.clear();
        self.ctrl.clear();
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            tracing::debug!(
                local_port = key.local_port,
                peer_port = key.peer_port,
                "vsock: connection closed"
            );
            self.by_fd.remove(&c.fd());
            self.graveyard.push(Box::new(c.into_stream()));
        }
    }

    fn rst_header(&self, local_port: u32, peer_port: u32) -> PacketHeader {
        PacketHeader {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: VSOCK_TYPE_STREAM,
            op: op::RST,
            buf_alloc: CONN_BUF_ALLOC,
            ..Default::default()
        }
    }

    /// Drops the connection and tells the guest (RST).
    fn reset(&mut self, key: ConnKey) {
        self.remove(key);
        self.ctrl
            .push_back(self.rst_header(key.local_port, key.peer_port));
    }

    fn apply(&mut self, key: ConnKey, verdict: Verdict) {
        match verdict {
            Verdict::Keep => self.touch(key),
            Verdict::Reset => self.reset(key),
            Verdict::Drop => self.remove(key),
        }
    }

    /// Queues the connection for RX if it has something to send.
    fn touch(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get_mut(&key) {
            if !c.in_rxq && c.has_pending_rx() {
                c.in_rxq = true;
                self.rxq.push_back(key);
            }
        }
    }

    fn total(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// Accepts host connections on the listener.
    pub fn accept_host(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(path = %self.uds_path.display(), "vsock: accept: {e}");
                    return;
                }
            };
            // Never registered anywhere, so dropping it here just closes it.
            if self.total() >= self.max_connections {
                tracing::warn!(path = %self.uds_path.display(), "vsock: too many connections, refusing a host connection");
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!("vsock: host connection: {e}");
                continue;
            }
            let deadline = Instant::now() + self.connect_timeout;
            let fd = stream.as_raw_fd();
            self.handshakes.insert(
                fd,
                Handshake {
                    stream,
                    line: Vec::new(),
                    deadline,
                },
            );
        }
    }

    /// Reads a host handshake's `CONNECT` line (byte by byte: what follows
    /// the newline is connection data and stays in the socket).
    fn on_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        let outcome = loop {
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err("closed before CONNECT"),
                Ok(_) if byte[0] == b'\n' => break Ok(parse_connect_line(&hs.line)),
                Ok(_) if hs.line.len() >= MAX_CONNECT_LINE => break Err("CONNECT line too long"),
                Ok(_) => hs.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => break Err("read error"),
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        let port = match outcome {
            Ok(Some(port)) => port,
            Ok(None) | Err(_) => {
                let why = outcome.err().unwrap_or("malformed CONNECT line");
                tracing::debug!(path = %self.uds_path.display(), "vsock: host handshake failed: {why}");
                self.graveyard.push(Box::new(hs.stream));
                return;
            }
        };
        let Some(local_port) = self.alloc_local_port() else {
            self.graveyard.push(Box::new(hs.stream));
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        tracing::debug!(
            local_port,
            peer_port = port,
            "vsock: host connecting to guest"
        );
        let conn = Connection::host_initiated(hs.stream, key, self.guest_cid, hs.deadline);
        self.by_fd.insert(conn.fd(), key);
        self.conns.insert(key, conn);
        self.touch(key);
    }

    fn alloc_local_port(&mut self) -> Option<u32> {
        for _ in 0..=self.max_connections {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(HOST_PORT_BASE);
            if !self.conns.keys().any(|k| k.local_port == port) {
                return Some(port);
            }
        }
        None
    }

    /// An epoll event on a connection or handshake stream.
    pub fn on_stream_event(&mut self, fd: RawFd, set: EventSet) {
        if self.handshakes.contains_key(&fd) {
            self.on_handshake(fd);
            return;
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let broken = set.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if set.contains(EventSet::IN) || broken {
            conn.on_readable();
        }
        let verdict = if set.contains(EventSet::OUT) || broken {
            conn.on_writable()
        } else {
            Verdict::Keep
        };
        self.apply(key, verdict);
    }

    /// Expires handshakes and guest answers that took too long.
    pub fn sweep(&mut self, now: Instant) {
        let late: Vec<RawFd> = self
            .handshakes
            .iter()
            .filter(|(_, hs)| hs.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in late {
            if let Some(hs) = self.handshakes.remove(&fd) {
                tracing::debug!("vsock: host handshake timed out");
                self.graveyard.push(Box::new(hs.stream));
            }
        }
        let late: Vec<ConnKey> = self
            .conns
            .values()
            .filter(|c| c.deadline().is_some_and(|d| d <= now))
            .map(|c| c.key())
            .collect();
        for key in late {
            tracing::debug!(
                peer_port = key.peer_port,
                "vsock: guest did not answer a host connection"
            );
            self.reset(key);
        }
    }

    /// Whether guest TX should pause until RX buffers drain the backlog.
    pub fn backlogged(&self) -> bool {
        self.ctrl.len() >= MAX_CTRL_BACKLOG
    }

    fn guest_warn(&mut self, hdr: &PacketHeader, what: &str) {
        if self.warn.hit() {
            tracing::warn!(
                src_cid = hdr.src_cid,
                dst_cid = hdr.dst_cid,
                src_port = hdr.src_port,
                dst_port = hdr.dst_port,
                op = hdr.op,
                "vsock: guest sent {what}"
            );
        }
    }

    fn orphan_rst(&mut self, hdr: &PacketHeader) {
        if hdr.op != op::RST && self.ctrl.len() < MAX_CTRL_BACKLOG {
            self.ctrl
                .push_back(self.rst_header(hdr.dst_port, hdr.src_port));
        }
    }

    /// Routes a packet from the guest.
    pub fn on_guest_packet(&mut self, hdr: &PacketHeader, data: &[u8]) {
        if hdr.dst_cid != VSOCK_HOST_CID || hdr.src_cid != self.guest_cid {
            self.guest_warn(hdr, "a packet with wrong CIDs (dropped)");
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if hdr.type_ != VSOCK_TYPE_STREAM {
            self.guest_warn(hdr, "a packet of an unsupported type");
            if self.conns.contains_key(&key) {
                self.reset(key);
            } else {
                self.orphan_rst(hdr);
            }
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            let verdict = conn.on_guest_packet(hdr, data);
            self.apply(key, verdict);
            return;
        }
        match hdr.op {
            op::REQUEST => self.guest_connect(key, hdr),
            op::RST => {}
            _ => self.orphan_rst(hdr),
        }
    }

    /// A guest connection request to host port `key.local_port`.
    fn guest_connect(&mut self, key: ConnKey, hdr: &PacketHeader) {
        if self.total() >= self.max_connections {
            self.guest_warn(hdr, "a connection request beyond the connection limit");
            self.orphan_rst(hdr);
            return;
        }
        let mut path = self.uds_path.clone().into_os_string();
        path.push(format!("_{}", key.local_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                tracing::debug!(
                    local_port = key.local_port,
                    peer_port = key.peer_port,
                    "vsock: guest connected"
                );
                let conn = Connection::guest_initiated(stream, key, self.guest_cid, hdr);
                self.by_fd.insert(conn.fd(), key);
                self.conns.insert(key, conn);
                self.touch(key);
            }
            Err(e) => {
                tracing::debug!(path = %Path::new(&path).display(), "vsock: guest connect refused: {e}");
                self.orphan_rst(hdr);
            }
        }
    }

    /// Resets the stream a malformed packet belonged to (if it exists).
    pub fn reset_stream(&mut self, hdr: &PacketHeader) {
        if hdr.dst_cid != VSOCK_HOST_CID || hdr.src_cid != self.guest_cid {
            return;
        }
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if self.conns.contains_key(&key) {
            self.reset(key);
        }
    }

    /// Whether a packet is waiting for an RX buffer.
    pub fn has_pending_rx(&self) -> bool {
        !self.ctrl.is_empty() || !self.rxq.is_empty()
    }

    /// The next packet for the guest, with at most `max_data` payload bytes.
    pub fn next_rx_packet(&mut self, max_data: usize) -> Option<(PacketHeader, Vec<u8>)> {
        if let Some(hdr) = self.ctrl.pop_front() {
            return Some((hdr, Vec::new()));
        }
        // Each queued connection gets one turn per call (round robin).
        for _ in 0..self.rxq.len() {
            let key = self.rxq.pop_front()?;
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rxq = false;
            match conn.next_packet(max_data) {
                Ok(Some(pkt)) => {
                    if conn.finished() {
                        self.remove(key);
                        self.ctrl
                            .push_back(self.rst_header(key.local_port, key.peer_port));
                    } else if conn.has_pending_rx() {
                        conn.in_rxq = true;
                        self.rxq.push_back(key);
                    }
                    return Some(pkt);
                }
                Ok(None) => {
                    // Data-only work that did not fit this buffer stays queued.
                    if conn.has_pending_rx() && max_data == 0 {
                        conn.in_rxq = true;
                        self.rxq.push_back(key);
                    }
                }
                Err(()) => {
                    tracing::debug!(local_port = key.local_port, "vsock: host socket error");
                    self.reset(key);
                    return self.ctrl.pop_front().map(|h| (h, Vec::new()));
                }
            }
        }
        None
    }
}

/// Where a muxer's host-side ports start: a random point in the upper half
/// of the host port range. A VM restored from a snapshot still has the
/// template guest's sockets, some of them closing; a new host connection
/// on the same (host port, guest port) pair as one of those would be
/// answered by the stale socket with a reset. Every muxer counting from the
/// same port made that happen to the first connection after a restore.
fn first_local_port() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most `b.len()` bytes into `b`.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    let r = if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    };
    HOST_PORT_BASE + (r & ((1 << 29) - 1))
}

#[cfg(test)]
mod port_tests {
    use super::*;

    #[test]
    fn muxers_start_their_host_ports_at_different_places() {
        let firsts: Vec<u32> = (0..8).map(|_| first_local_port()).collect();
        assert!(firsts
            .iter()
            .all(|p| (HOST_PORT_BASE..HOST_PORT_BASE + (1 << 29)).contains(p)));
        let mut d = firsts.clone();
        d.sort_unstable();
        d.dedup();
        assert!(d.len() > 1, "{firsts:?}");
    }
}
