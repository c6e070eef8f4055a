//! The virtio-vsock device: config space, activation, and the queue work.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::EventSet;
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::muxer::Muxer;
use super::packet::{parse_tx, write_event, RxBuffer};
use super::{
    VsockError, WarnLimiter, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE, TX_QUEUE,
    VIRTIO_VSOCK_EVENT_TRANSPORT_RESET,
};
use crate::virtio::{
    device_type, pop_chain, read_config_bytes, ActivateContext, ActivateError, InterruptKind,
    VirtioDevice, VirtioInterrupt,
};

const NAME: &str = "vsock";
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];

/// What the device holds between DRIVER_OK and reset.
pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: [Queue; 3],
    /// The queues' notify eventfds (KVM ioeventfds), by queue index.
    pub notify: [EventFd; 3],
    /// The driver broke a queue: nothing is served until a reset.
    pub broken: bool,
}

/// A vsock device's state, as saved in a snapshot. Connections are not
/// state: after a restore the VMM creates the device with
/// `Vsock::new(state.guest_cid, path)`, restores its transport (which
/// re-activates the queues), then calls [`Vsock::send_transport_reset`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    pub guest_cid: u64,
}

/// A virtio-vsock device whose host side is a Unix socket (hybrid vsock).
pub struct Vsock {
    guest_cid: u64,
    pub(super) muxer: Muxer,
    pub(super) active: Option<Active>,
    /// Signalled on activation, reset and transport reset: the event loop
    /// then brings its epoll registrations up to date.
    pub(super) control_evt: EventFd,
    pub(super) timer: TimerFd,
    pub(super) timer_armed: bool,
    /// What the event loop has registered, by fd.
    pub(super) registered: HashMap<RawFd, EventSet>,
    pending_transport_reset: bool,
    /// Set when a transport reset event was delivered and the guest has not
    /// yet handed the event buffer back (it does so after resetting its
    /// sockets). Host connections wait meanwhile: one made earlier would be
    /// killed by the guest's reset.
    pub(super) reset_unacked: Option<ResetWait>,
    warn: WarnLimiter,
}

impl Vsock {
    /// Creates the device and binds the host listener at `uds_path` (a stale
    /// socket file there is removed first).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        let control_evt = EventFd::new(EFD_NONBLOCK).map_err(|source| VsockError::Sys {
            what: "creating the control eventfd",
            source,
        })?;
        let timer = TimerFd::new().map_err(|e| VsockError::Sys {
            what: "creating the handshake timer",
            source: std::io::Error::from_raw_os_error(e.errno()),
        })?;
        set_nonblocking(timer.as_raw_fd()).map_err(|source| VsockError::Sys {
            what: "making the handshake timer non-blocking",
            source,
        })?;
        Ok(Self {
            guest_cid,
            muxer: Muxer::new(guest_cid, uds_path)?,
            active: None,
            control_evt,
            timer,
            timer_armed: false,
            registered: HashMap::new(),
            pending_transport_reset: false,
            reset_unacked: None,
            warn: WarnLimiter::default(),
        })
    }

    /// The host listener's path.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// What the device holds now: connections and buffered bytes.
    pub fn stats(&self) -> super::VsockStats {
        self.muxer.stats()
    }

    /// The device's snapshot state (queues are saved by the transport).
    pub fn state(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid,
        }
    }

    /// Tells the guest that every connection is gone (after snapshot
    /// restore): drops all connections and queues a
    /// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET event, delivered now or as soon as
    /// the driver provides an event buffer.
    pub fn send_transport_reset(&mut self) {
        self.muxer.drop_all();
        self.pending_transport_reset = true;
        if self.process_event_queue() {
            self.signal_used();
        }
        self.kick_event_loop();
    }

    pub(super) fn kick_event_loop(&self) {
        if let Err(e) = self.control_evt.write(1) {
            tracing::error!("vsock: signalling the event loop: {e}");
        }
    }

    pub(super) fn signal_used(&self) {
        if let Some(active) = &self.active {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Queue) {
                tracing::error!("vsock: interrupting the guest: {e}");
            }
        }
    }

    /// True once the guest has handed a new event buffer back after the
    /// transport reset (it refills the event queue after handling events).
    pub(super) fn reset_acknowledged(&self) -> bool {
        let (Some(wait), Some(active)) = (&self.reset_unacked, &self.active) else {
            return true;
        };
        active.queues[EVENT_QUEUE]
            .avail_idx(&active.mem, std::sync::atomic::Ordering::Acquire)
            .map(|w| w.0 != wait.avail)
            .unwrap_or(true)
    }

    /// Delivers a pending transport reset event; true if a buffer was used.
    pub(super) fn process_event_queue(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        if !self.pending_transport_reset || active.broken {
            return false;
        }
        let mem = &active.mem;
        let q = &mut active.queues[EVENT_QUEUE];
        let chain = match pop_chain(q, mem) {
            Ok(Some(chain)) => chain,
            Ok(None) => return false,
            Err(e) => {
                broken(active, "event", &e);
                return false;
            }
        };
        let head = chain.head_index();
        let used = match write_event(mem, chain, VIRTIO_VSOCK_EVENT_TRANSPORT_RESET) {
            Ok(n) => {
                self.pending_transport_reset = false;
                let avail = q
                    .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                    .map(|w| w.0)
                    .unwrap_or(0);
                self.reset_unacked = Some(ResetWait {
                    since: std::time::Instant::now(),
                    avail,
                });
                n
            }
            Err(e) => {
                if self.warn.hit() {
                    tracing::warn!("vsock: bad event queue buffer: {e}");
                }
                0
            }
        };
        add_used(active, EVENT_QUEUE, head, used)
    }

    /// Handles the guest's TX packets; true if buffers were used.
    fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut().filter(|a| !a.broken) else {
            return false;
        };
        let mut used_any = false;
        while !self.muxer.backlogged() {
            let chain = match pop_chain(&mut active.queues[TX_QUEUE], &active.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    broken(active, "TX", &e);
                    break;
                }
            };
            let head = chain.head_index();
            let parsed = parse_tx(&active.mem, chain);
            if !add_used(active, TX_QUEUE, head, 0) {
                break;
            }
            used_any = true;
            match parsed {
                Ok(pkt) => self.muxer.on_guest_packet(&pkt.hdr, &pkt.data),
                Err(e) => {
                    if self.warn.hit() {
                        tracing::warn!("vsock: dropping a malformed TX packet: {e}");
                    }
                    // The stream lost data: reset it.
                    if let Some(hdr) = e.header {
                        self.muxer.reset_stream(&hdr);
                    }
                }
            }
        }
        used_any
    }

    /// Fills the guest's RX buffers; true if buffers were used.
    fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut().filter(|a| !a.broken) else {
            return false;
        };
        let mut used_any = false;
        while self.muxer.has_pending_rx() {
            let chain = match pop_chain(&mut active.queues[RX_QUEUE], &active.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    broken(active, "RX", &e);
                    break;
                }
            };
            let head = chain.head_index();
            let buf = match RxBuffer::parse(&active.mem, chain) {
                Ok(buf) => buf,
                Err(e) => {
                    if self.warn.hit() {
                        tracing::warn!("vsock: returning a malformed RX buffer: {e}");
                    }
                    if !add_used(active, RX_QUEUE, head, 0) {
                        break;
                    }
                    used_any = true;
                    continue;
                }
            };
            let Some((hdr, data)) = self.muxer.next_rx_packet(buf.data_capacity()) else {
                active.queues[RX_QUEUE].go_to_previous_position();
                break;
            };
            let used = match buf.write(&active.mem, &hdr, &data) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!("vsock: writing an RX packet: {e}");
                    0
                }
            };
            if !add_used(active, RX_QUEUE, head, used) {
                break;
            }
            used_any = true;
        }
        used_any
    }

    /// Runs TX and RX until neither makes progress; interrupts once.
    pub(super) fn process_queues(&mut self) {
        let mut used_any = false;
        loop {
            let tx = self.process_tx();
            // TX paused on a full control backlog resumes once RX drains it.
            let stalled = self.muxer.backlogged();
            let rx = self.process_rx();
            used_any |= tx | rx;
            if !(stalled && rx) {
                break;
            }
        }
        used_any |= self.process_event_queue();
        if used_any {
            self.signal_used();
        }
    }

    /// Drops queues and connections (device reset from the driver).
    fn deactivate(&mut self) {
        if let Some(active) = self.active.take() {
            for evt in active.notify {
                self.muxer.bury(Box::new(evt));
            }
        }
        self.muxer.drop_all();
        self.pending_transport_reset = false;
        self.reset_unacked = None;
    }
}

/// A delivered transport reset the guest has not finished handling.
#[derive(Debug, Clone, Copy)]
pub(super) struct ResetWait {
    pub(super) since: std::time::Instant,
    /// The event queue's available index when the event was delivered.
    pub(super) avail: u16,
}

/// The event loop reads the timer only when epoll says it fired, but a
/// re-arm in between resets its count: a blocking read could then hang.
fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an fd we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Returns a chain to the driver; false (and the device broken) when the
/// driver's head was outside the ring.
fn add_used(active: &mut Active, queue: usize, head: u16, len: u32) -> bool {
    match active.queues[queue].add_used(&active.mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            let name = ["RX", "TX", "event"][queue];
            broken(active, name, &e);
            false
        }
    }
}

/// The driver broke a queue: stop serving and ask for a reset.
fn broken(active: &mut Active, queue: &str, e: &virtio_queue::Error) {
    if !active.broken {
        tracing::warn!("vsock: the driver broke the {queue} queue ({e}); the device needs a reset");
    }
    active.broken = true;
    if let Err(e) = active.interrupt.needs_reset() {
        tracing::error!("vsock: interrupting the guest: {e}");
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &str {
        NAME
    }

    fn device_type(&self) -> u32 {
        device_type::VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let count_err = |got| ActivateError::QueueCount {
            device: NAME.to_string(),
            expected: QUEUE_SIZES.len(),
            got,
        };
        let got = ctx.queues.len();
        let mut slots: [Option<(Queue, EventFd)>; 3] = [None, None, None];
        for aq in ctx.queues {
            let slot = slots.get_mut(aq.index).ok_or(count_err(got))?;
            *slot = Some((aq.queue, aq.notify));
        }
        let [Some(rx), Some(tx), Some(ev)] = slots else {
            return Err(count_err(got));
        };
        self.deactivate();
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queues: [rx.0, tx.0, ev.0],
            notify: [rx.1, tx.1, ev.1],
            broken: false,
        });
        tracing::debug!(guest_cid = self.guest_cid, "vsock: activated");
        self.kick_event_loop();
        Ok(())
    }

    fn reset(&mut self) {
        tracing::debug!("vsock: reset");
        self.deactivate();
        self.kick_event_loop();
    }

    fn queue_states(&self) -> Option<Vec<(usize, QueueState)>> {
        let active = self.active.as_ref()?;
        Some(
            active
                .queues
                .iter()
                .map(|q| q.state())
                .enumerate()
                .collect(),
        )
    }
}
