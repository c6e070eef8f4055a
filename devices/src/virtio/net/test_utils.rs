//! Whole-device tests without a tap: a fake backend over a `SOCK_SEQPACKET`
//! socket pair (one frame per message, a real fd for epoll), the guest's
//! two queues on mock memory, and the device under a real event manager.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{Net, NetBackend, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
pub use crate::virtio::test_utils::Subscriber;
use crate::virtio::test_utils::{pump, BufAlloc, CountingInterrupt, SplitQueueDriver};
use crate::virtio::{ActivateContext, ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1};

const MEM_SIZE: usize = 0x400_0000;
pub const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
pub const NEXT: u16 = crate::virtio::test_utils::VRING_DESC_F_NEXT;

/// A socket pair: (device end, host end), both non-blocking.
pub fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into `fds`, which has room for them.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
    // SAFETY: both fds are new and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn io_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads one message from `fd`.
pub fn recv_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    io_result(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

/// Sends `buf` as one message on `fd`.
pub fn send_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads `buf.len()` bytes from `buf`.
    io_result(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

/// The fake tap: frames are messages on a socket pair.
pub struct FakeBackend {
    fd: OwnedFd,
    offloads: u32,
    /// Every TUNSETOFFLOAD the device made.
    pub set: Arc<Mutex<Vec<u32>>>,
}

impl NetBackend for FakeBackend {
    fn name(&self) -> &str {
        "tap fake"
    }

    fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv_fd(self.fd.as_raw_fd(), buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<usize> {
        send_fd(self.fd.as_raw_fd(), frame)
    }

    fn supported_offloads(&self) -> u32 {
        self.offloads
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        if flags & !self.offloads != 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.set.lock().unwrap().push(flags);
        Ok(())
    }
}

/// A fake backend accepting `offloads`, and the host's end of it.
pub fn fake_backend(offloads: u32) -> (FakeBackend, OwnedFd, Arc<Mutex<Vec<u32>>>) {
    let (dev, host) = seqpacket_pair();
    let set = Arc::new(Mutex::new(Vec::new()));
    let b = FakeBackend {
        fd: dev,
        offloads,
        set: set.clone(),
    };
    (b, host, set)
}

/// The guest: memory, RX and TX queues, their notify eventfds.
pub struct Guest {
    pub mem: GuestMemoryMmap,
    pub rx: SplitQueueDriver,
    pub tx: SplitQueueDriver,
    pub bufs: BufAlloc,
    pub notify: [EventFd; 2],
    pub irq: Arc<CountingInterrupt>,
}

impl Guest {
    /// A guest and the context that activates a device with `features`.
    pub fn new(features: u64) -> (Self, ActivateContext) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let (rx, rxq) = SplitQueueDriver::new(0, QUEUE_SIZE);
        let (tx, txq) = SplitQueueDriver::new(0x1_0000, QUEUE_SIZE);
        let notify = [
            EventFd::new(EFD_NONBLOCK).unwrap(),
            EventFd::new(EFD_NONBLOCK).unwrap(),
        ];
        let irq = Arc::new(CountingInterrupt::default());
        let ctx = ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            acked_features: features | VIRTIO_F_VERSION_1,
            queues: vec![
                ActiveQueue {
                    index: RX_QUEUE,
                    queue: rxq,
                    notify: notify[0].try_clone().unwrap(),
                },
                ActiveQueue {
                    index: TX_QUEUE,
                    queue: txq,
                    notify: notify[1].try_clone().unwrap(),
                },
            ],
        };
        let g = Self {
            mem,
            rx,
            tx,
            bufs: BufAlloc::new(0x10_0000, MEM_SIZE as u64),
            notify,
            irq,
        };
        (g, ctx)
    }

    /// Sends `frame` (header included) as one TX chain split at `cuts`.
    pub fn send(&mut self, frame: &[u8], cuts: &[usize]) -> u16 {
        let mut bufs = Vec::new();
        let mut at = 0;
        for &end in cuts.iter().chain([&frame.len()]) {
            let piece = &frame[at..end];
            let a = self.bufs.alloc(piece.len() as u32);
            self.mem.write_slice(piece, GuestAddress(a)).unwrap();
            bufs.push((a, piece.len() as u32, false));
            at = end;
        }
        let head = self.tx.submit(&self.mem, &bufs);
        self.notify[TX_QUEUE].write(1).unwrap();
        head
    }

    /// Posts one RX chain of buffers of these sizes; returns (head, bufs).
    pub fn post_rx(&mut self, sizes: &[u32]) -> (u16, Vec<(u64, u32)>) {
        let bufs: Vec<(u64, u32, bool)> = sizes
            .iter()
            .map(|&l| (self.bufs.alloc(l), l, true))
            .collect();
        let head = self.rx.submit(&self.mem, &bufs);
        self.notify[RX_QUEUE].write(1).unwrap();
        (head, bufs.iter().map(|(a, l, _)| (*a, *l)).collect())
    }

    /// Reads `len` bytes across buffers.
    pub fn read_bufs(&self, bufs: &[(u64, u32)], len: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut left = len as usize;
        for &(a, l) in bufs {
            let n = (l as usize).min(left);
            let mut b = vec![0u8; n];
            self.mem.read_slice(&mut b, GuestAddress(a)).unwrap();
            out.extend(b);
            left -= n;
        }
        out
    }
}

/// A device under an event manager, and its guest and host.
pub struct Rig {
    pub dev: Arc<Mutex<Net>>,
    pub guest: Guest,
    pub host: OwnedFd,
    pub offloads_set: Arc<Mutex<Vec<u32>>>,
    pub em: EventManager<Subscriber>,
}

impl Rig {
    /// A device over a fake backend accepting `offloads`, activated with
    /// the guest features `acked`.
    pub fn new(offloads: u32, acked: u64) -> Self {
        let (backend, host, set) = fake_backend(offloads);
        Self::with_backend(Box::new(backend), host, set, acked)
    }

    /// A device over `backend` (whose other end is `host`), activated with
    /// the guest features `acked`.
    pub fn with_backend(
        backend: Box<dyn NetBackend>,
        host: OwnedFd,
        set: Arc<Mutex<Vec<u32>>>,
        acked: u64,
    ) -> Self {
        let dev = Net::with_backend(backend, MAC, Some(1500)).unwrap();
        let (guest, ctx) = Guest::new(acked);
        let dev = Arc::new(Mutex::new(dev));
        dev.lock().unwrap().activate(ctx).unwrap();
        let mut em = EventManager::<Subscriber>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut rig = Self {
            dev,
            guest,
            host,
            offloads_set: set,
            em,
        };
        rig.pump();
        rig
    }

    pub fn pump(&mut self) {
        pump(&mut self.em);
    }

    /// The host sends a frame (header included) to the guest.
    pub fn host_send(&self, frame: &[u8]) {
        send_fd(self.host.as_raw_fd(), frame).unwrap();
    }

    /// Frames the host received, in order.
    pub fn host_recv(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while let Ok(n) = recv_fd(self.host.as_raw_fd(), &mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    pub fn stats(&self) -> super::NetStats {
        self.dev.lock().unwrap().stats()
    }
}

/// A frame with a zero header and `len` payload bytes of a pattern.
pub fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}
