//! The virtio-net device: config space, features, activation, and the
//! TX/RX work.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::fd::RawFd;
use std::sync::Arc;

use event_manager::EventSet;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::frame::{offered_offloads, parse_rx, parse_tx, set_num_buffers, tun_offloads, RxBuffer};
use super::tap::NetBackend;
use super::{
    format_mac, NetConfig, NetError, NetStats, MAX_BATCH, MAX_FRAME, MIN_MTU, QUEUE_SIZE, RX_QUEUE,
    TX_QUEUE, VNET_HDR_LEN,
};
use crate::virtio::vsock::WarnLimiter;
use crate::virtio::{
    device_type, pop_chain, read_config_bytes, ActivateContext, ActivateError, InterruptKind,
    VirtioDevice, VirtioInterrupt,
};

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];
/// `struct virtio_net_config` up to `mtu`: mac, status,
/// max_virtqueue_pairs, mtu.
const CONFIG_LEN: usize = 12;

/// What the device holds between DRIVER_OK and reset.
pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: [Queue; 2],
    /// The queues' notify eventfds (KVM ioeventfds), by queue index.
    pub notify: [EventFd; 2],
    /// The driver broke a queue: nothing is served until a reset.
    pub broken: bool,
    /// The guest's offloads are not yet the tap's (activation runs on a
    /// vCPU thread; the event loop applies them before it reads a frame).
    pub offload_pending: bool,
}

/// A net device's state, as saved in a snapshot: its layout, never its tap
/// (a restored VM is given its own, [`Net::from_state`]). Frames in flight
/// are not state: one held for RX buffers is lost, as on a wire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    pub mac: [u8; 6],
    pub mtu: Option<u16>,
    /// The features the device offered (the guest negotiated from these).
    pub features: u64,
    pub acked_features: u64,
}

/// What became of a frame offered to the guest's RX buffers.
enum Placed {
    Delivered,
    /// Dropped (counted): the buffers can never hold it.
    Dropped,
    /// Not enough buffers now: the frame waits.
    NoBuffers,
    /// The driver broke the queue.
    Broken,
}

/// A virtio-net device over a [`NetBackend`] (a TAP in the VMM).
pub struct Net {
    /// `net <tap>`, for logs and errors.
    name: String,
    pub(super) backend: Box<dyn NetBackend>,
    mac: [u8; 6],
    mtu: Option<u16>,
    config: [u8; CONFIG_LEN],
    features: u64,
    acked_features: u64,
    pub(super) active: Option<Active>,
    /// Signalled on activation and reset: the event loop then brings its
    /// epoll registrations up to date.
    pub(super) control_evt: EventFd,
    /// What the event loop has registered, by fd.
    pub(super) registered: HashMap<RawFd, EventSet>,
    /// Notify eventfds of past activations, kept open until the event loop
    /// has taken them out of epoll.
    pub(super) retired: Vec<EventFd>,
    /// The frame read from the backend and not yet in guest buffers (its
    /// length in `rx_buf`).
    pub(super) rx_pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    /// The backend was full: TX waits for it to be writable.
    pub(super) tx_blocked: bool,
    /// Reading the backend failed (the tap went away): RX stops rather
    /// than spin on an fd that stays readable with an error.
    rx_failed: bool,
    stats: NetStats,
    warn: WarnLimiter,
}

impl Net {
    /// Opens the tap (or none, [`TapSource::Disconnected`]) and creates
    /// the device.
    ///
    /// [`TapSource::Disconnected`]: super::TapSource::Disconnected
    pub fn new(config: NetConfig) -> Result<Net, NetError> {
        check_mac(&config.mac)?;
        let backend = super::tap::open_backend(&config.tap)?;
        Self::with_backend(backend, config.mac, config.mtu)
    }

    /// Creates the device over any backend.
    pub fn with_backend(
        backend: Box<dyn NetBackend>,
        mac: [u8; 6],
        mtu: Option<u16>,
    ) -> Result<Net, NetError> {
        check_mac(&mac)?;
        if let Some(m) = mtu.filter(|m| *m < MIN_MTU) {
            return Err(NetError::Mtu(m));
        }
        let control_evt = EventFd::new(EFD_NONBLOCK).map_err(|source| NetError::Sys {
            tap: backend.name().to_string(),
            what: "creating the control eventfd",
            source,
        })?;
        let mut features = (1u64 << VIRTIO_NET_F_MAC)
            | (1u64 << VIRTIO_NET_F_STATUS)
            | (1u64 << VIRTIO_NET_F_MRG_RXBUF)
            | offered_offloads(backend.supported_offloads());
        if mtu.is_some() {
            features |= 1u64 << VIRTIO_NET_F_MTU;
        }
        Ok(Self {
            name: format!("net {}", backend.name()),
            backend,
            mac,
            mtu,
            config: config_space(&mac, mtu),
            features,
            acked_features: 0,
            active: None,
            control_evt,
            registered: HashMap::new(),
            retired: Vec::new(),
            rx_pending: None,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: Vec::with_capacity(MAX_FRAME),
            tx_blocked: false,
            rx_failed: false,
            stats: NetStats::default(),
            warn: WarnLimiter::default(),
        })
    }

    /// Re-creates a device from its snapshot state over a new backend,
    /// which must support every feature the device offered.
    pub fn from_state(state: &NetState, backend: Box<dyn NetBackend>) -> Result<Net, NetError> {
        let mut dev = Self::with_backend(backend, state.mac, state.mtu)?;
        if state.features & !dev.features != 0 {
            return Err(NetError::FeaturesLost {
                tap: dev.backend.name().to_string(),
                saved: state.features,
                now: dev.features,
            });
        }
        dev.features = state.features;
        dev.acked_features = state.acked_features & state.features;
        Ok(dev)
    }

    /// The device's snapshot state (queues are saved by the transport).
    pub fn state(&self) -> NetState {
        NetState {
            mac: self.mac,
            mtu: self.mtu,
            features: self.features,
            acked_features: self.acked_features,
        }
    }

    /// What the device counted.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub(super) fn kick_event_loop(&self) {
        if let Err(e) = self.control_evt.write(1) {
            tracing::error!("{}: signalling the event loop: {e}", self.name);
        }
    }

    /// Whether the event loop should wait for frames from the backend.
    pub(super) fn wants_rx(&self) -> bool {
        self.active.as_ref().is_some_and(|a| !a.broken)
            && self.rx_pending.is_none()
            && !self.rx_failed
    }

    /// Gives the backend the offloads the guest accepted, once per
    /// activation.
    fn apply_offloads(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if !active.offload_pending {
            return;
        }
        active.offload_pending = false;
        let flags = tun_offloads(self.acked_features);
        if let Err(e) = self.backend.set_offload(flags) {
            tracing::error!("{}: TUNSETOFFLOAD {flags:#x}: {e}", self.name);
        }
    }

    /// Sends the guest's TX frames; true if buffers were used.
    fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut().filter(|a| !a.broken) else {
            return false;
        };
        if self.tx_blocked {
            return false;
        }
        let mut used_any = false;
        for turn in 0.. {
            if turn == MAX_BATCH {
                // Come back after the other work of this turn.
                if let Err(e) = active.notify[TX_QUEUE].write(1) {
                    tracing::error!("{}: re-arming TX: {e}", self.name);
                }
                break;
            }
            let chain = match pop_chain(&mut active.queues[TX_QUEUE], &active.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    broken(&self.name, active, "TX", &e);
                    break;
                }
            };
            let head = chain.head_index();
            match parse_tx(&active.mem, chain) {
                Ok(frame) => {
                    if let Err(e) = frame.read(&active.mem, &mut self.tx_buf) {
                        self.stats.tx_bad_chains += 1;
                        if self.warn.hit() {
                            tracing::warn!("{}: reading a TX frame: {e}", self.name);
                        }
                    } else {
                        match self.backend.send(&self.tx_buf) {
                            Ok(_) => {
                                self.stats.tx_frames += 1;
                                self.stats.tx_bytes += (self.tx_buf.len() - VNET_HDR_LEN) as u64;
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                                // The chain stays for when the tap has room.
                                active.queues[TX_QUEUE].go_to_previous_position();
                                self.tx_blocked = true;
                                break;
                            }
                            Err(e) => {
                                self.stats.tx_errors += 1;
                                if self.warn.hit() {
                                    tracing::warn!("{}: the tap refused a frame: {e}", self.name);
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    self.stats.tx_bad_chains += 1;
                    if self.warn.hit() {
                        tracing::warn!("{}: dropping a malformed TX chain: {e}", self.name);
                    }
                }
            }
            if !add_used(&self.name, active, TX_QUEUE, head, 0) {
                break;
            }
            used_any = true;
        }
        used_any
    }

    /// Moves frames from the backend into the guest's RX buffers; true if
    /// buffers were used.
    fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut().filter(|a| !a.broken) else {
            return false;
        };
        let mergeable = self.acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mut used_any = false;
        for _ in 0..MAX_BATCH {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.backend.recv(&mut self.rx_buf) {
                    Ok(n) if n >= VNET_HDR_LEN => n,
                    Ok(n) => {
                        self.stats.rx_errors += 1;
                        if self.warn.hit() {
                            tracing::warn!("{}: a {n}-byte read from the tap", self.name);
                        }
                        continue;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.stats.rx_errors += 1;
                        self.rx_failed = true;
                        tracing::error!("{}: reading the tap: {e}; RX stops", self.name);
                        break;
                    }
                },
            };
            self.rx_pending = Some(len);
            let frame = &mut self.rx_buf[..len];
            let (placed, used) = place_frame(
                &self.name,
                active,
                frame,
                mergeable,
                &mut self.stats,
                &mut self.warn,
            );
            used_any |= used;
            match placed {
                Placed::Delivered => {
                    self.rx_pending = None;
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (len - VNET_HDR_LEN) as u64;
                }
                Placed::Dropped => {
                    self.rx_pending = None;
                    self.stats.rx_dropped += 1;
                }
                Placed::NoBuffers => {
                    self.stats.rx_deferred += 1;
                    break;
                }
                Placed::Broken => break,
            }
        }
        used_any
    }

    /// Runs TX and RX; interrupts once if any buffer was used.
    pub(super) fn process_queues(&mut self) {
        self.apply_offloads();
        let used = self.process_tx() | self.process_rx();
        if used {
            if let Some(active) = &self.active {
                self.stats.interrupts += 1;
                if let Err(e) = active.interrupt.trigger(InterruptKind::Queue) {
                    tracing::error!("{}: interrupting the guest: {e}", self.name);
                }
            }
        }
    }

    /// Drops the queues (device reset from the driver); their notify
    /// eventfds wait in `retired` until the event loop unregisters them.
    fn deactivate(&mut self) {
        if let Some(active) = self.active.take() {
            self.retired.extend(active.notify);
        }
        if self.rx_pending.take().is_some() {
            self.stats.rx_dropped += 1;
        }
        self.tx_blocked = false;
    }
}

/// Puts `frame` into as many RX chains as it needs (one without
/// MRG_RXBUF), committing nothing until it all fits. Returns what became of
/// it and whether used entries were added.
fn place_frame(
    name: &str,
    active: &mut Active,
    frame: &mut [u8],
    mergeable: bool,
    stats: &mut NetStats,
    warn: &mut WarnLimiter,
) -> (Placed, bool) {
    let ring = usize::from(active.queues[RX_QUEUE].size());
    let mut start = active.queues[RX_QUEUE].next_avail();
    let mut taken: Vec<(u16, RxBuffer)> = Vec::new();
    let mut room = 0usize;
    let mut used_any = false;
    while room < frame.len() {
        if !taken.is_empty() && (!mergeable || taken.len() >= ring) {
            // One buffer (or a whole ring of them) is all the guest can
            // give a frame, and it is too small: drop the frame, keep the
            // buffers.
            active.queues[RX_QUEUE].set_next_avail(start);
            if warn.hit() {
                tracing::warn!(
                    "{name}: dropping a {}-byte frame: the guest's RX buffers hold {room}",
                    frame.len()
                );
            }
            return (Placed::Dropped, used_any);
        }
        let chain = match pop_chain(&mut active.queues[RX_QUEUE], &active.mem) {
            Ok(Some(chain)) => chain,
            Ok(None) => {
                active.queues[RX_QUEUE].set_next_avail(start);
                return (Placed::NoBuffers, used_any);
            }
            Err(e) => {
                broken(name, active, "RX", &e);
                return (Placed::Broken, used_any);
            }
        };
        let head = chain.head_index();
        // The first buffer holds the whole header (num_buffers is in it).
        let min = if taken.is_empty() { VNET_HDR_LEN } else { 1 };
        match parse_rx(&active.mem, chain, min) {
            Ok(buf) => {
                room = room.saturating_add(buf.capacity as usize);
                taken.push((head, buf));
            }
            Err(e) => {
                stats.rx_bad_chains += 1;
                if warn.hit() {
                    tracing::warn!("{name}: returning a malformed RX chain: {e}");
                }
                // Back unused; a frame it interrupted is dropped with its
                // buffers (used entries of one frame must be consecutive).
                let dropping = !taken.is_empty();
                let heads: Vec<u16> = taken.drain(..).map(|(h, _)| h).chain([head]).collect();
                for h in heads {
                    if !add_used(name, active, RX_QUEUE, h, 0) {
                        return (Placed::Broken, true);
                    }
                }
                used_any = true;
                if dropping {
                    return (Placed::Dropped, true);
                }
                start = active.queues[RX_QUEUE].next_avail();
                room = 0;
            }
        }
    }
    // `taken` has at most a ring of entries.
    set_num_buffers(frame, taken.len() as u16);
    let mut off = 0usize;
    let mut entries = Vec::with_capacity(taken.len());
    for (head, buf) in &taken {
        let piece = &frame[off..];
        let n = match buf.write(&active.mem, piece) {
            Ok(n) => n,
            Err(e) => {
                // `parse_rx` checked the buffers lie in memory.
                tracing::error!("{name}: writing an RX frame: {e}");
                stats.rx_errors += 1;
                0
            }
        };
        off += (buf.capacity as usize).min(piece.len());
        entries.push((*head, n));
    }
    for (head, n) in entries {
        if !add_used(name, active, RX_QUEUE, head, n) {
            return (Placed::Broken, true);
        }
    }
    (Placed::Delivered, true)
}

/// Returns a chain to the driver; false (and the device broken) when the
/// driver's head was outside the ring.
fn add_used(name: &str, active: &mut Active, queue: usize, head: u16, len: u32) -> bool {
    match active.queues[queue].add_used(&active.mem, head, len) {
        Ok(()) => true,
        Err(e) => {
            broken(name, active, ["RX", "TX"][queue], &e);
            false
        }
    }
}

/// The driver broke a queue: stop serving and ask for a reset.
fn broken(name: &str, active: &mut Active, queue: &str, e: &virtio_queue::Error) {
    if !active.broken {
        tracing::warn!(
            "{name}: the driver broke the {queue} queue ({e}); the device needs a reset"
        );
    }
    active.broken = true;
    if let Err(e) = active.interrupt.needs_reset() {
        tracing::error!("{name}: interrupting the guest: {e}");
    }
}

fn check_mac(mac: &[u8; 6]) -> Result<(), NetError> {
    if mac[0] & 1 != 0 || mac == &[0; 6] {
        return Err(NetError::Mac(format_mac(mac)));
    }
    Ok(())
}

/// `struct virtio_net_config` (little endian) up to `mtu`.
fn config_space(mac: &[u8; 6], mtu: Option<u16>) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    c[0..6].copy_from_slice(mac);
    c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    c[8..10].copy_from_slice(&1u16.to_le_bytes());
    c[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
    c
}

impl VirtioDevice for Net {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, acked: u64) {
        self.acked_features = acked & self.features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let count_err = |got| ActivateError::QueueCount {
            device: self.name.clone(),
            expected: QUEUE_SIZES.len(),
            got,
        };
        let got = ctx.queues.len();
        let mut slots: [Option<(Queue, EventFd)>; 2] = [None, None];
        for aq in ctx.queues {
            let slot = slots.get_mut(aq.index).ok_or(count_err(got))?;
            *slot = Some((aq.queue, aq.notify));
        }
        let [Some(rx), Some(tx)] = slots else {
            return Err(count_err(got));
        };
        self.deactivate();
        self.acked_features = ctx.acked_features & self.features;
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queues: [rx.0, tx.0],
            notify: [rx.1, tx.1],
            broken: false,
            offload_pending: true,
        });
        tracing::debug!(features = self.acked_features, "{}: activated", self.name);
        self.kick_event_loop();
        Ok(())
    }

    fn reset(&mut self) {
        tracing::debug!("{}: reset", self.name);
        self.deactivate();
        self.acked_features = 0;
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
