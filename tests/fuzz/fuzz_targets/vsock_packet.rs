//! A whole virtio-vsock device (hybrid Unix-socket backend in a scratch
//! directory) driven by a script of guest and host actions: structured and
//! raw TX packets, RX and event buffers, host `CONNECT`s, host data and
//! closes, answers to what the device sent, transport resets.
//!
//! Checks: nothing panics or spins; every RX packet is well formed and
//! addressed to the guest; the device never holds more than
//! `CONN_BUF_ALLOC` guest bytes for a stream nor more than
//! `MAX_CONNECTIONS` streams.
//!
//! Input: a sequence of actions, each an opcode byte and its operands (see
//! `step`).
//!
//! run.sh: -max_len=4096
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use event_manager::{EventManager, SubscriberOps};
use husk_devices::virtio::vsock::packet::{PacketHeader, HDR_SIZE};
use husk_devices::virtio::vsock::{
    op, Vsock, CONN_BUF_ALLOC, MAX_CONNECTIONS, QUEUE_SIZE, VSOCK_HOST_CID, VSOCK_TYPE_STREAM,
};
use husk_devices::virtio::{ActivateContext, ActiveQueue, VirtioDevice};
use husk_fuzz::{
    guest_memory, pump, scratch_dir, CountingInterrupt, Input, Subscriber, Vring, F_WRITE,
};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_CID: u64 = 3;
/// The host port a listener serves (guest connections to it succeed).
const LISTENED_PORT: u32 = 1234;
const MAX_STEPS: usize = 48;
/// Largest payload a scripted TX packet carries.
const MAX_SCRIPT_DATA: usize = 8192;
/// Guest memory for RX buffers, and the largest payload room of one.
const RX_AREA: (u64, u64) = (0x2_0000, 0x4_0000);
const MAX_RX_DATA: u32 = 16 * 1024;

/// A bump allocator over a guest memory range, wrapping around.
struct Area {
    start: u64,
    end: u64,
    next: u64,
}

impl Area {
    fn new(start: u64, end: u64) -> Self {
        Self {
            start,
            end,
            next: start,
        }
    }

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
    rings: [Vring; 3],
    next_desc: [u16; 3],
    /// RX chains by head: their buffers, to read packets back.
    rx_chains: Vec<Option<Vec<(u64, u32)>>>,
    tx_bufs: Area,
    rx_bufs: Area,
    ev_bufs: Area,
    notify: Vec<EventFd>,
    /// Headers the device sent, for scripted answers.
    received: Vec<PacketHeader>,
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

    fn send(&mut self, hdr: &PacketHeader, data: &[u8], split: bool) {
        husk_fuzz::trace!("TX {hdr:?} + {} bytes", data.len());
        let h = self.tx_bufs.alloc(HDR_SIZE as u32);
        let _ = self.mem.write_slice(&hdr.to_bytes(), GuestAddress(h));
        let mut bufs = if split {
            vec![(h, 20, 0), (h + 20, HDR_SIZE as u32 - 20, 0)]
        } else {
            vec![(h, HDR_SIZE as u32, 0)]
        };
        if !data.is_empty() {
            let d = self.tx_bufs.alloc(data.len() as u32);
            let _ = self.mem.write_slice(data, GuestAddress(d));
            bufs.push((d, data.len() as u32, 0));
        }
        self.add_chain(1, &bufs);
        self.kick(1);
    }

    /// Checks and records what the device put in RX buffers.
    fn harvest(&mut self) {
        let used = self.rings[0].take_used(&self.mem);
        for (id, len) in used {
            let head = usize::try_from(id).unwrap_or(usize::MAX);
            let bufs = self
                .rx_chains
                .get_mut(head)
                .and_then(Option::take)
                .expect("a used RX head the guest made available");
            if len == 0 {
                // A malformed buffer handed back.
                continue;
            }
            let mut bytes = Vec::new();
            for &(addr, l) in &bufs {
                let mut b = vec![0u8; l as usize];
                let _ = self.mem.read_slice(&mut b, GuestAddress(addr));
                bytes.extend(b);
            }
            husk_fuzz::trace!("RX used head {head} len {len} bufs {bufs:x?}");
            assert!(len as usize <= bytes.len(), "used length past the buffer");
            assert!(len as usize >= HDR_SIZE, "RX packet shorter than a header");
            let raw: [u8; HDR_SIZE] = bytes[..HDR_SIZE].try_into().expect("header bytes");
            let hdr = PacketHeader::from_bytes(&raw);
            husk_fuzz::trace!("  {hdr:?}");
            assert_eq!(hdr.len as usize, len as usize - HDR_SIZE, "RX length");
            assert_eq!((hdr.src_cid, hdr.dst_cid), (VSOCK_HOST_CID, GUEST_CID));
            assert_eq!(hdr.type_, VSOCK_TYPE_STREAM);
            if self.received.len() < 64 {
                self.received.push(hdr);
            }
        }
    }
}

fn guest_listener(dir: &std::path::Path) -> &'static UnixListener {
    static L: OnceLock<UnixListener> = OnceLock::new();
    L.get_or_init(|| {
        let path = dir.join(format!("v.sock_{LISTENED_PORT}"));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(path).expect("guest-side listener");
        l.set_nonblocking(true).expect("nonblocking listener");
        l
    })
}

/// Accepts what guest connections reached the listener.
fn accept_all(l: &UnixListener, into: &mut Vec<UnixStream>) {
    while let Ok((s, _)) = l.accept() {
        let _ = s.set_nonblocking(true);
        if into.len() < 64 {
            into.push(s);
        }
    }
}

struct Host {
    uds: PathBuf,
    streams: Vec<UnixStream>,
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir("vsock");
    let listener = guest_listener(&dir);
    // Streams from the previous run's device are dead: close them.
    accept_all(listener, &mut Vec::new());

    let uds = dir.join("v.sock");
    let dev = Arc::new(Mutex::new(
        Vsock::new(GUEST_CID, uds.clone()).expect("device"),
    ));
    let mem = guest_memory();
    let rings = [
        Vring::new(&mem, 0x0, QUEUE_SIZE),
        Vring::new(&mem, 0x3000, QUEUE_SIZE),
        Vring::new(&mem, 0x6000, QUEUE_SIZE),
    ];
    let notify: Vec<EventFd> = (0..3)
        .map(|_| EventFd::new(EFD_NONBLOCK).expect("eventfd"))
        .collect();
    let queues = rings
        .iter()
        .enumerate()
        .map(|(index, r)| ActiveQueue {
            index,
            queue: r.queue(QUEUE_SIZE),
            notify: notify[index].try_clone().expect("eventfd clone"),
        })
        .collect();
    dev.lock()
        .expect("device lock")
        .activate(ActivateContext {
            mem: mem.clone(),
            interrupt: Arc::new(CountingInterrupt::default()),
            acked_features: 0,
            queues,
        })
        .expect("activation");
    let mut em = EventManager::<Subscriber>::new().expect("event manager");
    let sub: Subscriber = dev.clone();
    em.add_subscriber(sub);
    let mut guest = Guest {
        mem,
        rings,
        next_desc: [0; 3],
        rx_chains: vec![None; usize::from(QUEUE_SIZE)],
        tx_bufs: Area::new(0x1_0000, 0x2_0000),
        rx_bufs: Area::new(RX_AREA.0, RX_AREA.1),
        ev_bufs: Area::new(0x9000, 0xa000),
        notify,
        received: Vec::new(),
    };
    let mut host = Host {
        uds,
        streams: Vec::new(),
    };

    let mut input = Input::new(data);
    for _ in 0..MAX_STEPS {
        if input.is_empty() {
            break;
        }
        step(&mut input, &mut guest, &mut host, &dev);
        husk_fuzz::trace!("  stats {:?}", dev.lock().expect("device lock").stats());
        assert!(pump(&mut em), "the device keeps the event loop busy");
        accept_all(listener, &mut host.streams);
        guest.harvest();
        let stats = dev.lock().expect("device lock").stats();
        assert!(
            stats.max_buffered_bytes <= CONN_BUF_ALLOC as usize,
            "{stats:?}"
        );
        assert!(
            stats.connections + stats.handshakes <= MAX_CONNECTIONS,
            "{stats:?}"
        );
    }
});

fn step(input: &mut Input, guest: &mut Guest, host: &mut Host, dev: &Arc<Mutex<Vsock>>) {
    let action = input.u8() % 9;
    husk_fuzz::trace!("step {action}");
    match action {
        // A TX packet with fuzzed header fields.
        0 => {
            let flags = input.u8();
            let src_port = 5000 + u32::from(input.u8() % 4);
            let dst_port = match input.u8() % 4 {
                0 | 1 => LISTENED_PORT,
                2 => 1024,
                _ => input.u32(),
            };
            let mut hdr = PacketHeader {
                src_cid: GUEST_CID,
                dst_cid: VSOCK_HOST_CID,
                src_port,
                dst_port,
                len: 0,
                type_: VSOCK_TYPE_STREAM,
                op: input.u16(),
                flags: input.u32(),
                buf_alloc: input.u32(),
                fwd_cnt: input.u32(),
            };
            if flags & 1 != 0 {
                hdr.src_cid = input.u64();
                hdr.dst_cid = input.u64();
                hdr.type_ = input.u16();
            }
            let len = usize::from(input.u16()) % (MAX_SCRIPT_DATA + 1);
            let payload = payload(input, len);
            hdr.len = if flags & 2 != 0 {
                input.u32()
            } else {
                payload.len() as u32
            };
            guest.send(&hdr, &payload, flags & 4 != 0);
        }
        // A raw TX chain: up to 8 descriptors of any address, length and
        // flags, linked or not, headed anywhere.
        1 => {
            let n = 1 + input.u8() % 8;
            let first = guest.next_desc[1];
            guest.next_desc[1] = first.wrapping_add(u16::from(n)) % QUEUE_SIZE;
            for i in 0..u16::from(n) {
                let addr = input.u64();
                let len = input.u32();
                let flags = input.u16();
                let next = input.u16();
                guest.rings[1].write_desc(
                    &guest.mem,
                    first.wrapping_add(i),
                    addr,
                    len,
                    flags,
                    next,
                );
            }
            let head = if input.bool() { first } else { input.u16() };
            guest.rings[1].push_avail(&guest.mem, head);
            guest.rings[1].publish(&guest.mem);
            guest.kick(1);
        }
        // RX buffers: good ones of a fuzzed size, or read-only or short.
        2 => {
            let n = 1 + input.u8() % 16;
            let data_len = u32::from(input.u16()) % (MAX_RX_DATA + 1);
            let kind = input.u8() % 8;
            for _ in 0..n {
                // A driver never hands out memory the device still holds.
                let outstanding: u64 = guest
                    .rx_chains
                    .iter()
                    .flatten()
                    .flatten()
                    .map(|(_, l)| u64::from(*l).max(1).next_multiple_of(16))
                    .sum();
                let chains = guest.rx_chains.iter().flatten().count();
                if outstanding + 2 * u64::from(MAX_RX_DATA + 64) > RX_AREA.1 - RX_AREA.0
                    || 2 * (chains + 1) > usize::from(QUEUE_SIZE)
                {
                    break;
                }
                // (Only what a chain uses is allocated: the check above
                // counts what outstanding chains hold.)
                let h = guest.rx_bufs.alloc(HDR_SIZE as u32);
                let bufs: Vec<(u64, u32, u16)> = match kind {
                    0 => vec![(h, HDR_SIZE as u32, 0)],
                    1 => vec![(h, 10, F_WRITE)],
                    2 => vec![
                        (h, HDR_SIZE as u32, F_WRITE),
                        (guest.rx_bufs.alloc(data_len), data_len, 0),
                    ],
                    _ => vec![
                        (h, HDR_SIZE as u32, F_WRITE),
                        (guest.rx_bufs.alloc(data_len), data_len, F_WRITE),
                    ],
                };
                let head = guest.add_chain(0, &bufs);
                husk_fuzz::trace!("RX buffer head {head}: {bufs:x?}");
                guest.rx_chains[usize::from(head)] =
                    Some(bufs.iter().map(|(a, l, _)| (*a, *l)).collect());
            }
            guest.kick(0);
        }
        // An event buffer.
        3 => {
            let a = guest.ev_bufs.alloc(8);
            let len = u32::from(input.u8() % 9);
            guest.add_chain(2, &[(a, len, F_WRITE)]);
            guest.kick(2);
        }
        // A host connection with a CONNECT line, good or not.
        4 => {
            if let Ok(mut s) = UnixStream::connect(&host.uds) {
                let line = match input.u8() % 4 {
                    0 => format!("CONNECT {}\n", input.u32()).into_bytes(),
                    1 => {
                        let n = usize::from(input.u8() % 48);
                        input.bytes(n).to_vec()
                    }
                    _ => b"CONNECT 1024\n".to_vec(),
                };
                let _ = s.write_all(&line);
                let _ = s.set_nonblocking(true);
                if host.streams.len() < 64 {
                    host.streams.push(s);
                }
            }
        }
        // Host data on a stream.
        5 => {
            let i = usize::from(input.u8());
            let len = usize::from(input.u16());
            let bytes = payload(input, len);
            if let Some(s) = pick(&mut host.streams, i) {
                let _ = s.write(&bytes);
            }
        }
        // Host closes a stream (fully, or its write side).
        6 => {
            let i = usize::from(input.u8());
            let half = input.bool();
            if !host.streams.is_empty() {
                let i = i % host.streams.len();
                if half {
                    let _ = host.streams[i].shutdown(std::net::Shutdown::Write);
                } else {
                    host.streams.swap_remove(i);
                }
            }
        }
        // Answer a packet the device sent (RESPONSE to a host REQUEST, data,
        // credit, shutdown, RST...).
        7 => {
            let i = usize::from(input.u8());
            let answer_op = match input.u8() % 8 {
                0 => op::RESPONSE,
                1 => op::RW,
                2 => op::CREDIT_UPDATE,
                3 => op::CREDIT_REQUEST,
                4 => op::SHUTDOWN,
                5 => op::RST,
                6 => op::REQUEST,
                _ => input.u16(),
            };
            let len = usize::from(input.u16()) % (MAX_SCRIPT_DATA + 1);
            let flags = input.u32();
            let buf_alloc = input.u32();
            let fwd_cnt = input.u32();
            let bytes = payload(input, len);
            if guest.received.is_empty() {
                return;
            }
            let to = guest.received[i % guest.received.len()];
            let hdr = PacketHeader {
                src_cid: GUEST_CID,
                dst_cid: VSOCK_HOST_CID,
                src_port: to.dst_port,
                dst_port: to.src_port,
                len: bytes.len() as u32,
                type_: VSOCK_TYPE_STREAM,
                op: answer_op,
                flags,
                buf_alloc,
                fwd_cnt,
            };
            guest.send(&hdr, &bytes, false);
        }
        // The VMM restored a snapshot: every connection goes.
        _ => dev.lock().expect("device lock").send_transport_reset(),
    }
}

fn pick(v: &mut [UnixStream], i: usize) -> Option<&mut UnixStream> {
    if v.is_empty() {
        None
    } else {
        let n = v.len();
        v.get_mut(i % n)
    }
}

/// `len` bytes: the input's next bytes, repeated (or zeros).
fn payload(input: &mut Input, len: usize) -> Vec<u8> {
    let seed = input.bytes(len.min(16)).to_vec();
    if seed.is_empty() {
        return vec![0; len];
    }
    seed.iter().copied().cycle().take(len).collect()
}
