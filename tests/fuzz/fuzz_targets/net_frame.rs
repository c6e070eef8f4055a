//! A whole virtio-net device over a fake tap (a `SOCK_SEQPACKET` socket
//! pair: one frame per message), activated on fuzz memory with fuzzed
//! features and driven through its event loop by a script: raw TX chains
//! (any address, length, flags, links, head), well-formed TX frames split
//! anywhere, RX chains of any shape (read-only, short, empty, outside
//! memory), and host frames of any length (shorter than a vnet header up
//! to the largest).
//!
//! Checks: nothing panics or spins (the event loop goes idle); every frame
//! that reaches the host is a whole one (header included, at most
//! `MAX_FRAME`); every used RX length fits its chain; a frame the device
//! delivers carries `num_buffers` equal to the used entries it took (1
//! without MRG_RXBUF); every host frame is delivered, dropped and counted,
//! or still waiting; unless the guest broke a ring, a good frame each way
//! goes through at the end.
//!
//! Input: a features byte, then actions, each an opcode byte and its
//! operands (see `step`).
//!
//! run.sh: -max_len=4096
#![no_main]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use husk_devices::virtio::net::{
    Net, NetBackend, MAX_FRAME, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN,
};
use husk_devices::virtio::{ActivateContext, ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1};
use husk_fuzz::{guest_memory, pump, CountingInterrupt, Input, Subscriber, Vring, F_WRITE};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MAX_STEPS: usize = 48;
const MRG_RXBUF: u64 = 1 << 15;
const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
/// Guest memory for TX frames and RX buffers.
const TX_AREA: (u64, u64) = (0x1_0000, 0x2_0000);
const RX_AREA: (u64, u64) = (0x2_0000, 0x4_0000);

fn io_result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn recv_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
    io_result(unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

fn send_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: send reads `buf.len()` bytes from `buf`.
    io_result(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

/// The fake tap: the device's end of the socket pair.
struct Fake {
    fd: OwnedFd,
    offloads: u32,
}

impl NetBackend for Fake {
    fn name(&self) -> &str {
        "tap fuzz"
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
        assert_eq!(flags & !self.offloads, 0, "offloads the tap never offered");
        Ok(())
    }
}

fn pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: socketpair writes two fds into `fds`.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "socketpair");
    // SAFETY: both fds are new and owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A bump allocator over a guest memory range, wrapping around.
struct Area {
    start: u64,
    end: u64,
    next: u64,
}

impl Area {
    fn alloc(&mut self, len: u32) -> u64 {
        let len = u64::from(len).max(1).next_multiple_of(16);
        if self.next + len > self.end {
            self.next = self.start;
        }
        let at = self.next;
        self.next += len;
        at
    }
}

struct Guest {
    mem: GuestMemoryMmap,
    rings: [Vring; 2],
    next_desc: [u16; 2],
    /// RX chains by head: their buffers' total length.
    rx_room: Vec<Option<u64>>,
    /// RX chains by head: the guest memory their buffers take.
    rx_mem: Vec<Vec<(u64, u64)>>,
    /// Used RX entries not yet checked as a frame: (head, len).
    rx_partial: Vec<(u32, u32)>,
    tx_bufs: Area,
    rx_bufs: Area,
    notify: [EventFd; 2],
    mergeable: bool,
    /// Frames the guest received whole.
    delivered: u64,
    /// The guest published a made-up RX index: the device may be handed
    /// the same buffers twice, and what lands in them is the guest's
    /// problem; only the bounds are checked from then on.
    rx_lied: bool,
    /// The same for TX: stale ring entries may come before the end's frame.
    tx_lied: bool,
}

impl Guest {
    fn kick(&self, q: usize) {
        let _ = self.notify[q].write(1);
    }

    fn add_chain(&mut self, q: usize, bufs: &[(u64, u32, u16)]) -> u16 {
        let first = self.next_desc[q];
        self.next_desc[q] = first.wrapping_add(bufs.len() as u16) % QUEUE_SIZE;
        self.rings[q].add_chain(&self.mem, first, bufs)
    }

    /// Checks what the device put in RX buffers.
    fn harvest(&mut self) {
        for (id, len) in self.rings[RX_QUEUE].take_used(&self.mem) {
            let room = usize::try_from(id)
                .ok()
                .and_then(|h| self.rx_room.get_mut(h))
                .and_then(Option::take);
            if let Some(room) = room {
                assert!(u64::from(len) <= room, "used length past the chain");
            }
            if let Some(m) = usize::try_from(id)
                .ok()
                .and_then(|h| self.rx_mem.get_mut(h))
            {
                m.clear();
            }
            if self.rx_lied {
                continue;
            }
            if len == 0 {
                // A chain handed back unused (its frame, if any, dropped).
                self.rx_partial.clear();
                continue;
            }
            self.rx_partial.push((id, len));
            // `num_buffers` sits in the first chain's header.
            let (first, first_len) = self.rx_partial[0];
            assert!(
                first_len as usize >= VNET_HDR_LEN,
                "a frame without its header"
            );
            let n = self.num_buffers(first);
            if !self.mergeable {
                assert_eq!(n, 1, "num_buffers without MRG_RXBUF");
            }
            assert!(n >= 1, "num_buffers 0");
            if self.rx_partial.len() >= usize::from(n) {
                assert_eq!(self.rx_partial.len(), usize::from(n), "frame entries");
                self.rx_partial.clear();
                self.delivered += 1;
            }
        }
    }

    /// `num_buffers` of the RX chain `head` (from its first descriptor).
    fn num_buffers(&self, head: u32) -> u16 {
        let ring = &self.rings[RX_QUEUE];
        let at = ring.desc + 16 * u64::from(head % u32::from(QUEUE_SIZE));
        let addr: u64 = self.mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len: u32 = self.mem.read_obj(GuestAddress(at + 8)).unwrap_or(0);
        if len < VNET_HDR_LEN as u32 {
            // The harness posts well-formed first buffers only.
            return 0;
        }
        self.mem.read_obj(GuestAddress(addr + 10)).unwrap_or(0)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let features = input.u8();
    let offloads = [0, libc::TUN_F_CSUM, 0x17][usize::from(features >> 4) % 3];
    let (dev_end, host) = pair();
    let dev = Net::with_backend(
        Box::new(Fake {
            fd: dev_end,
            offloads,
        }),
        MAC,
        Some(1500),
    )
    .expect("device");
    let mut acked = VIRTIO_F_VERSION_1;
    if features & 1 != 0 {
        acked |= MRG_RXBUF;
    }
    if features & 2 != 0 {
        // Every offload the device offers.
        acked |= dev.features() & 0x7fff;
    }
    let dev = Arc::new(Mutex::new(dev));
    let mem = guest_memory();
    let rings = [
        Vring::new(&mem, 0x0, QUEUE_SIZE),
        Vring::new(&mem, 0x3000, QUEUE_SIZE),
    ];
    let notify = [
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        EventFd::new(EFD_NONBLOCK).expect("eventfd"),
    ];
    let queues = rings
        .iter()
        .enumerate()
        .map(|(index, r)| ActiveQueue {
            index,
            queue: r.queue(QUEUE_SIZE),
            notify: notify[index].try_clone().expect("eventfd clone"),
        })
        .collect();
    let irq = Arc::new(CountingInterrupt::default());
    dev.lock()
        .expect("device lock")
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: irq.clone(),
            acked_features: acked,
            queues,
        })
        .expect("activation");
    let mergeable = dev.lock().expect("lock").acked_features() & MRG_RXBUF != 0;
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    let sub: Subscriber = dev.clone();
    em.add_subscriber(sub);
    let mut guest = Guest {
        mem,
        rings,
        next_desc: [0; 2],
        rx_room: vec![None; usize::from(QUEUE_SIZE)],
        rx_mem: vec![Vec::new(); usize::from(QUEUE_SIZE)],
        rx_partial: Vec::new(),
        tx_bufs: Area {
            start: TX_AREA.0,
            end: TX_AREA.1,
            next: TX_AREA.0,
        },
        rx_bufs: Area {
            start: RX_AREA.0,
            end: RX_AREA.1,
            next: RX_AREA.0,
        },
        notify,
        mergeable,
        delivered: 0,
        rx_lied: false,
        tx_lied: false,
    };
    let mut host_sent = 0u64;
    let mut buf = vec![0u8; MAX_FRAME + 16];
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        host_sent += step(&mut input, &mut guest, host.as_raw_fd());
        assert!(pump(&mut em), "the device keeps the event loop busy");
        while let Ok(n) = recv_fd(host.as_raw_fd(), &mut buf) {
            assert!(
                (VNET_HDR_LEN..=MAX_FRAME).contains(&n),
                "a {n}-byte frame reached the tap"
            );
        }
        guest.harvest();
        let s = dev.lock().expect("lock").stats();
        assert!(
            s.rx_frames + s.rx_dropped + s.rx_errors <= host_sent,
            "{s:?} of {host_sent}"
        );
    }
    let s = dev.lock().expect("lock").stats();
    assert!(guest.rx_lied || guest.delivered <= s.rx_frames);

    // The end: unless a ring was broken, a good frame each way.
    if irq.asked_for_reset() || guest.tx_lied {
        return;
    }
    while recv_fd(host.as_raw_fd(), &mut buf).is_ok() {}
    let before = s.tx_frames;
    let f = [0u8; 60];
    let a = guest.tx_bufs.alloc(60);
    let _ = guest.mem.write_slice(&f, GuestAddress(a));
    guest.add_chain(TX_QUEUE, &[(a, 60, 0)]);
    guest.kick(TX_QUEUE);
    assert!(pump(&mut em));
    let s = dev.lock().expect("lock").stats();
    if !irq.asked_for_reset() {
        assert_eq!(s.tx_frames, before + 1, "the good frame was sent: {s:?}");
    }
});

/// One scripted action; returns how many frames the host sent.
fn step(input: &mut Input, guest: &mut Guest, host: RawFd) -> u64 {
    let action = input.u8() % 5;
    husk_fuzz::trace!("step {action}");
    match action {
        // A raw TX chain: up to 8 descriptors of any address, length and
        // flags, linked or not, headed anywhere.
        0 => {
            let n = 1 + input.u8() % 8;
            let first = guest.next_desc[TX_QUEUE];
            guest.next_desc[TX_QUEUE] = first.wrapping_add(u16::from(n)) % QUEUE_SIZE;
            for i in 0..u16::from(n) {
                let addr = input.u64();
                let len = input.u32();
                let flags = input.u16();
                let next = input.u16();
                guest.rings[TX_QUEUE].write_desc(
                    &guest.mem,
                    first.wrapping_add(i),
                    addr,
                    len,
                    flags,
                    next,
                );
            }
            let head = if input.bool() { first } else { input.u16() };
            guest.rings[TX_QUEUE].push_avail(&guest.mem, head);
            guest.rings[TX_QUEUE].publish(&guest.mem);
            guest.kick(TX_QUEUE);
        }
        // A well-formed TX frame of a fuzzed length, split at a fuzzed point.
        1 => {
            let len = usize::from(input.u16()) % 0x8000;
            let cut = usize::from(input.u16()) % (len + 1);
            let mut frame = vec![0u8; len];
            let seed = input.bytes(len.min(16));
            for (d, s) in frame.iter_mut().zip(seed) {
                *d = *s;
            }
            let mut bufs = Vec::new();
            for piece in [&frame[..cut], &frame[cut..]] {
                if piece.is_empty() {
                    continue;
                }
                let a = guest.tx_bufs.alloc(piece.len() as u32);
                let _ = guest.mem.write_slice(piece, GuestAddress(a));
                bufs.push((a, piece.len() as u32, 0));
            }
            if bufs.is_empty() {
                bufs.push((guest.tx_bufs.alloc(1), 0, 0));
            }
            guest.add_chain(TX_QUEUE, &bufs);
            guest.kick(TX_QUEUE);
        }
        // RX chains: good ones of a fuzzed size and shape, or bad ones.
        2 => {
            let n = 1 + input.u8() % 16;
            let size = 1 + u32::from(input.u16()) % 0x4000;
            let kind = input.u8() % 8;
            for _ in 0..n {
                let chains = guest.rx_room.iter().flatten().count();
                if chains + 1 >= usize::from(QUEUE_SIZE) / 2 {
                    break;
                }
                let first = if kind == 3 {
                    VNET_HDR_LEN as u32
                } else {
                    size.max(VNET_HDR_LEN as u32)
                };
                let h = guest.rx_bufs.alloc(first);
                let bufs: Vec<(u64, u32, u16)> = match kind {
                    // Read-only.
                    0 => vec![(h, size, 0)],
                    // Too short for a header.
                    1 => vec![(h, size % VNET_HDR_LEN as u32, F_WRITE)],
                    // Outside memory.
                    2 => vec![(0x4_0000 + u64::from(size), size, F_WRITE)],
                    // Two descriptors.
                    3 => vec![
                        (h, VNET_HDR_LEN as u32, F_WRITE),
                        (guest.rx_bufs.alloc(size), size, F_WRITE),
                    ],
                    _ => vec![(h, size.max(VNET_HDR_LEN as u32), F_WRITE)],
                };
                // A driver never hands out memory the device still holds.
                let spans: Vec<(u64, u64)> = bufs
                    .iter()
                    .filter(|b| b.0 >= RX_AREA.0 && b.0 < RX_AREA.1)
                    .map(|b| (b.0, b.0 + u64::from(b.1)))
                    .collect();
                let held = guest.rx_mem.iter().flatten();
                if held
                    .clone()
                    .any(|h| spans.iter().any(|s| s.0 < h.1 && h.0 < s.1))
                {
                    break;
                }
                let room = bufs.iter().map(|b| u64::from(b.1)).sum();
                let head = guest.add_chain(RX_QUEUE, &bufs);
                guest.rx_room[usize::from(head)] = Some(room);
                guest.rx_mem[usize::from(head)] = spans;
            }
            guest.kick(RX_QUEUE);
        }
        // The host sends a frame of any length (a runt included).
        3 => {
            let len = match input.u8() % 4 {
                0 => usize::from(input.u8() % 16),
                1 => usize::from(input.u16()),
                2 => MAX_FRAME - usize::from(input.u8()),
                _ => 60 + usize::from(input.u16() % 1500),
            };
            let mut frame = vec![0u8; len];
            for (d, s) in frame.iter_mut().zip(input.bytes(16)) {
                *d = *s;
            }
            if send_fd(host, &frame).is_ok() {
                return 1;
            }
        }
        // A lying available index on either queue.
        _ => {
            let q = usize::from(input.bool());
            let idx = input.u16();
            guest.rx_lied |= q == RX_QUEUE;
            guest.tx_lied |= q == TX_QUEUE;
            guest.rings[q].set_avail_idx(&guest.mem, idx);
            guest.kick(q);
        }
    }
    0
}
