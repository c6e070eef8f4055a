//! The virtio-mmio transport (virtio 1.2, 4.2; "modern", version 2).
//!
//! Registers are 32 bits wide; other widths on them are ignored (reads give
//! zero). The status register follows the driver's initialization sequence;
//! out-of-order steps are refused (FEATURES_OK is not latched when the
//! driver asked for features the device lacks or not for VERSION_1), queue
//! registers only take writes between FEATURES_OK and DRIVER_OK, and nothing
//! the guest writes can make the VMM panic.
//!
//! Queue configuration the device cannot honour (a size that is zero, not a
//! power of two or above the queue's maximum, a misaligned ring address) is
//! remembered, not silently replaced: DRIVER_OK with such a queue ready
//! fails activation and sets DEVICE_NEEDS_RESET. So a device only ever runs
//! queues of at most its own maximum size, with rings inside guest memory.
//!
//! Snapshots: [`MmioTransport::state`] and [`MmioTransport::restore`] (in
//! `mmio/snapshot.rs`).

mod snapshot;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::virtio::interrupt::{InterruptKind, MmioInterrupt, VirtioInterrupt};
use crate::virtio::{
    status, ActivateContext, ActivateError, ActiveQueue, VirtioDevice, VIRTIO_F_VERSION_1,
};

/// Size of one device's MMIO window.
pub const MMIO_WINDOW: u64 = 0x1000;
/// QueueNotify's offset (where the VMM puts the ioeventfds).
pub const NOTIFY_OFFSET: u64 = 0x50;

pub use snapshot::{MmioTransportState, QueueSnapshot};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR: u32 = 0x4b53_5548; // "HUSK"
const CONFIG_OFFSET: u64 = 0x100;

/// A device behind virtio-mmio registers.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<MmioInterrupt>,
    notify: Vec<EventFd>,
    queues: Vec<Queue>,
    /// Per queue: what the driver wrote that the queue refused ([`Fault`]
    /// bits), cleared by a valid write of the same register.
    faults: Vec<u8>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    activated: bool,
}

/// Errors building a transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{device}: queue {index} of max size {size}: {reason}")]
    Queue {
        device: String,
        index: usize,
        size: u16,
        reason: String,
    },
    #[error("{device}: {got} notify eventfds for {expected} queues")]
    NotifyCount {
        device: String,
        expected: usize,
        got: usize,
    },
    #[error("{device}: ready queue {index} is unusable: {reason}")]
    QueueUnusable {
        device: String,
        index: usize,
        reason: String,
    },
    #[error("{device}: cloning queue {index}'s notify eventfd: {source}")]
    NotifyClone {
        device: String,
        index: usize,
        source: std::io::Error,
    },
    #[error("activation failed: {0}")]
    Activate(#[source] ActivateError),
    #[error("{device}: snapshot has {got} queues, the device has {expected}")]
    SnapshotQueueCount {
        device: String,
        expected: usize,
        got: usize,
    },
    #[error("{device}: snapshot queue {index}: {reason}")]
    SnapshotQueue {
        device: String,
        index: usize,
        reason: String,
    },
    #[error("{device}: snapshot state: {reason}")]
    SnapshotState { device: String, reason: String },
}

impl MmioTransport {
    /// Puts `device` behind MMIO registers. `notify` holds one eventfd per
    /// queue (registered by the VMM as ioeventfds at [`NOTIFY_OFFSET`] with the
    /// queue index as datamatch); `interrupt`'s eventfd is the device's irqfd.
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<MmioInterrupt>,
        notify: Vec<EventFd>,
    ) -> Result<Self, TransportError> {
        let (name, sizes) = {
            let d = lock(&device);
            (d.name().to_string(), d.queue_max_sizes().to_vec())
        };
        if notify.len() != sizes.len() {
            return Err(TransportError::NotifyCount {
                device: name,
                expected: sizes.len(),
                got: notify.len(),
            });
        }
        let queues = sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|e| TransportError::Queue {
                    device: name.clone(),
                    index,
                    size,
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt,
            notify,
            faults: vec![0; queues.len()],
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            activated: false,
        })
    }

    /// The device status register: the driver's bits, and
    /// DEVICE_NEEDS_RESET when activation failed or the running device
    /// asked for a reset (a queue the driver broke).
    pub fn status(&self) -> u32 {
        if self.interrupt.device_needs_reset() {
            self.status | status::DEVICE_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device is running.
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        lock(&self.device)
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Applies a queue register write that `set` may refuse, recording the
    /// refusal as `fault` on the selected queue.
    fn configure_queue(&mut self, fault: u8, set: impl FnOnce(&mut Queue) -> bool) {
        let sel = self.queue_sel as usize;
        let (Some(q), Some(faults)) = (self.queues.get_mut(sel), self.faults.get_mut(sel)) else {
            return;
        };
        if set(q) {
            *faults &= !fault;
        } else {
            *faults |= fault;
        }
    }

    /// Queue registers are writable only while features are negotiated and
    /// the driver is not yet running.
    fn queue_config_allowed(&self) -> bool {
        self.status & status::FEATURES_OK != 0
            && self.status & (status::DRIVER_OK | status::FAILED) == 0
    }

    /// Driver features are writable between DRIVER and FEATURES_OK.
    fn features_writable(&self) -> bool {
        self.status & status::DRIVER != 0 && self.status & status::FEATURES_OK == 0
    }

    fn read_reg(&self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC,
            0x04 => VERSION,
            0x08 => self.device().device_type(),
            0x0c => VENDOR,
            0x10 => {
                let f = self.device().features() | VIRTIO_F_VERSION_1;
                match self.device_features_sel {
                    0 => f as u32,
                    1 => (f >> 32) as u32,
                    _ => 0,
                }
            }
            0x34 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x44 => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 => self.status(),
            0xfc => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            0x14 => self.device_features_sel = v,
            0x20 if self.features_writable() => match self.driver_features_sel {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                1 => {
                    self.driver_features =
                        (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32)
                }
                _ => {}
            },
            0x24 => self.driver_features_sel = v,
            0x30 => self.queue_sel = v,
            0x38 if self.queue_config_allowed() => {
                // Queue validates the size (a power of two, <= max).
                self.configure_queue(Fault::SIZE, |q| {
                    u16::try_from(v).is_ok_and(|size| q.try_set_size(size).is_ok())
                })
            }
            0x44 if self.queue_config_allowed() => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            0x50 => {
                // Normally KVM consumes this write (ioeventfd); without one,
                // forward the notification ourselves.
                if let Some(evt) = self.notify.get(v as usize) {
                    let _ = evt.write(1);
                }
            }
            0x64 => self.interrupt.ack(v),
            0x70 => self.write_status(v),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if self.queue_config_allowed() => {
                // One half of a 64-bit address; Queue checks the alignment.
                let merge = |old: u64| {
                    if offset & 0x4 != 0 {
                        GuestAddress((old & 0xffff_ffff) | (u64::from(v) << 32))
                    } else {
                        GuestAddress((old & !0xffff_ffff) | u64::from(v))
                    }
                };
                match offset & !0x4 {
                    0x80 => self.configure_queue(Fault::DESC, |q| {
                        q.try_set_desc_table_address(merge(q.desc_table())).is_ok()
                    }),
                    0x90 => self.configure_queue(Fault::AVAIL, |q| {
                        q.try_set_avail_ring_address(merge(q.avail_ring())).is_ok()
                    }),
                    _ => self.configure_queue(Fault::USED, |q| {
                        q.try_set_used_ring_address(merge(q.used_ring())).is_ok()
                    }),
                }
            }
            _ => {}
        }
    }

    fn write_status(&mut self, v: u32) {
        use status::*;
        if v == 0 {
            self.reset();
            return;
        }
        let new_bits = v & !self.status;
        // The driver may only add bits, in order (virtio 1.2, 3.1.1).
        if v & self.status != self.status {
            return;
        }
        if new_bits & FAILED != 0 {
            self.status |= FAILED;
            return;
        }
        match new_bits {
            ACKNOWLEDGE if self.status == 0 => self.status = v,
            DRIVER if self.status == ACKNOWLEDGE => self.status = v,
            FEATURES_OK if self.status == ACKNOWLEDGE | DRIVER => {
                let offered = self.device().features() | VIRTIO_F_VERSION_1;
                let acked = self.driver_features;
                if acked & !offered == 0 && acked & VIRTIO_F_VERSION_1 != 0 {
                    self.device().ack_features(acked);
                    self.status = v;
                }
                // Otherwise FEATURES_OK stays clear: the driver reads it back
                // and gives up on the device.
            }
            DRIVER_OK if self.status == ACKNOWLEDGE | DRIVER | FEATURES_OK => {
                self.status = v;
                self.activate();
            }
            _ => {}
        }
    }

    /// DRIVER_OK: hands the ready queues to the device, or flags that the
    /// device needs a reset.
    fn activate(&mut self) {
        match self.activate_device() {
            Ok(()) => tracing::debug!(device = %self.device().name(), "virtio device activated"),
            Err(e) => {
                tracing::warn!(error = %e, "virtio device activation failed; device needs reset");
                self.needs_reset();
            }
        }
    }

    /// Activates the device with copies of the ready queues (indices
    /// included), each with a clone of its notify eventfd.
    fn activate_device(&mut self) -> Result<(), TransportError> {
        let name = self.device().name().to_string();
        let mut queues = Vec::new();
        for (index, (q, evt)) in self.queues.iter().zip(&self.notify).enumerate() {
            if !q.ready() {
                continue;
            }
            let unusable = |reason: String| TransportError::QueueUnusable {
                device: name.clone(),
                index,
                reason,
            };
            let faults = self.faults.get(index).copied().unwrap_or(0);
            if faults != 0 {
                return Err(unusable(Fault::describe(faults, q.max_size())));
            }
            if !q.is_valid(&self.mem) {
                return Err(unusable("its rings are not within guest memory".into()));
            }
            // virtio-queue takes an available ring at 0 for "not set up".
            if q.avail_ring() == 0 {
                return Err(unusable("its available ring is at guest address 0".into()));
            }
            let notify = evt
                .try_clone()
                .map_err(|source| TransportError::NotifyClone {
                    device: name.clone(),
                    index,
                    source,
                })?;
            let queue = Queue::try_from(q.state()).map_err(|e| unusable(e.to_string()))?;
            queues.push(ActiveQueue {
                index,
                queue,
                notify,
            });
        }
        let ctx = ActivateContext {
            mem: self.mem.clone(),
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
            queues,
        };
        self.device()
            .activate(ctx)
            .map_err(TransportError::Activate)?;
        self.activated = true;
        Ok(())
    }

    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        let _ = self.interrupt.trigger(InterruptKind::Config);
    }

    fn reset(&mut self) {
        if self.activated {
            self.device().reset();
            self.activated = false;
        }
        for q in self.queues.iter_mut() {
            q.reset();
        }
        self.faults.fill(0);
        self.status = 0;
        self.driver_features = 0;
        self.driver_features_sel = 0;
        self.device_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.clear();
    }
}

/// Queue registers whose last write the queue refused.
struct Fault;

impl Fault {
    const SIZE: u8 = 1;
    const DESC: u8 = 2;
    const AVAIL: u8 = 4;
    const USED: u8 = 8;

    fn describe(faults: u8, max: u16) -> String {
        let mut what = Vec::new();
        if faults & Self::SIZE != 0 {
            what.push(format!(
                "the driver wrote a size that is not a power of two up to {max}"
            ));
        }
        for (bit, ring, align) in [
            (Self::DESC, "descriptor table", 16),
            (Self::AVAIL, "available ring", 2),
            (Self::USED, "used ring", 4),
        ] {
            if faults & bit != 0 {
                what.push(format!("the {ring} address is not {align}-byte aligned"));
            }
        }
        what.join("; ")
    }
}

fn lock(d: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_OFFSET {
            self.device().read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            // Config writes are only meaningful once the driver is set up.
            if self.status & status::DRIVER != 0 {
                self.device().write_config(offset - CONFIG_OFFSET, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::read_config_bytes;
    use virtio_queue::QueueState;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[derive(Default)]
    pub(super) struct Dummy {
        pub activations: Vec<Vec<usize>>,
        /// The queues' states at each activation.
        pub activated_queues: Vec<Vec<(usize, QueueState)>>,
        /// What `queue_states` reports (set at activation; tests move it on).
        pub live: Option<Vec<(usize, QueueState)>>,
        pub resets: usize,
        pub acked: u64,
        pub fail_activate: bool,
        config: [u8; 8],
    }

    struct DummyDev(Arc<Mutex<Dummy>>);

    impl VirtioDevice for DummyDev {
        fn name(&self) -> &str {
            "dummy"
        }
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn features(&self) -> u64 {
            1 << 3
        }
        fn ack_features(&mut self, acked: u64) {
            self.0.lock().unwrap().acked = acked;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            read_config_bytes(&self.0.lock().unwrap().config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut d = self.0.lock().unwrap();
            if let Some(dst) = d
                .config
                .get_mut(offset as usize..offset as usize + data.len())
            {
                dst.copy_from_slice(data);
            }
        }
        fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
            let mut d = self.0.lock().unwrap();
            if d.fail_activate {
                return Err(ActivateError::Device {
                    device: "dummy".into(),
                    reason: "refused".into(),
                });
            }
            d.activations
                .push(ctx.queues.iter().map(|q| q.index).collect());
            let states: Vec<_> = ctx
                .queues
                .iter()
                .map(|q| (q.index, q.queue.state()))
                .collect();
            d.activated_queues.push(states.clone());
            d.live = Some(states);
            Ok(())
        }
        fn reset(&mut self) {
            let mut d = self.0.lock().unwrap();
            d.resets += 1;
            d.live = None;
        }
        fn queue_states(&self) -> Option<Vec<(usize, QueueState)>> {
            self.0.lock().unwrap().live.clone()
        }
    }

    /// What a transport is built from.
    pub(super) struct Parts {
        pub device: Arc<Mutex<dyn VirtioDevice>>,
        pub state: Arc<Mutex<Dummy>>,
        pub mem: GuestMemoryMmap,
        pub interrupt: Arc<MmioInterrupt>,
        pub irq: EventFd,
        pub notify: Vec<EventFd>,
    }

    impl Parts {
        pub fn new() -> Self {
            let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
            let state = Arc::new(Mutex::new(Dummy::default()));
            let irq = EventFd::new(EFD_NONBLOCK).unwrap();
            Self {
                device: Arc::new(Mutex::new(DummyDev(state.clone()))),
                state,
                mem,
                interrupt: Arc::new(MmioInterrupt::new(irq.try_clone().unwrap())),
                irq,
                notify: vec![
                    EventFd::new(EFD_NONBLOCK).unwrap(),
                    EventFd::new(EFD_NONBLOCK).unwrap(),
                ],
            }
        }

        /// Clones of the notify eventfds (to hand to a transport).
        pub fn notify_clones(&self) -> Vec<EventFd> {
            self.notify.iter().map(|e| e.try_clone().unwrap()).collect()
        }
    }

    fn setup() -> (
        MmioTransport,
        Arc<Mutex<Dummy>>,
        Arc<MmioInterrupt>,
        EventFd,
    ) {
        let p = Parts::new();
        let t = MmioTransport::new(p.device, p.mem, p.interrupt.clone(), p.notify).unwrap();
        (t, p.state, p.interrupt, p.irq)
    }

    pub(super) fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    pub(super) fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    pub(super) fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, 0x70, status::ACKNOWLEDGE);
        w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(t, 0x24, 0);
        w(t, 0x20, features as u32);
        w(t, 0x24, 1);
        w(t, 0x20, (features >> 32) as u32);
        w(
            t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    pub(super) fn setup_queue(t: &mut MmioTransport, sel: u32, size: u32, base: u64) {
        w(t, 0x30, sel);
        w(t, 0x38, size);
        w(t, 0x80, base as u32);
        w(t, 0x84, 0);
        w(t, 0x90, (base + 0x1000) as u32);
        w(t, 0x94, 0);
        w(t, 0xa0, (base + 0x2000) as u32);
        w(t, 0xa4, 0);
        w(t, 0x44, 1);
    }

    pub(super) const ALL: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identification_and_features() {
        let (mut t, _, _, _) = setup();
        assert_eq!(r(&mut t, 0x00), MAGIC);
        assert_eq!(r(&mut t, 0x04), 2);
        assert_eq!(r(&mut t, 0x08), 42);
        w(&mut t, 0x14, 0);
        assert_eq!(r(&mut t, 0x10), 1 << 3);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1, "VERSION_1 is offered");
        w(&mut t, 0x14, 7);
        assert_eq!(r(&mut t, 0x10), 0);
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 8);
        w(&mut t, 0x30, 9);
        assert_eq!(r(&mut t, 0x34), 0, "no such queue");
        // Odd widths and misaligned registers are ignored.
        let mut b = [0xffu8; 2];
        t.read(0x00, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(0x70, &[1]);
        assert_eq!(t.status(), 0);
    }

    #[test]
    fn full_negotiation_activates_ready_queues() {
        let (mut t, state, _, _) = setup();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 3));
        assert_eq!(
            t.status(),
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
        );
        assert_eq!(state.lock().unwrap().acked, VIRTIO_F_VERSION_1 | (1 << 3));
        setup_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, 0x70, ALL);
        assert!(t.is_activated());
        assert_eq!(state.lock().unwrap().activations, vec![vec![0]]);
        // Queue registers are frozen once running.
        w(&mut t, 0x30, 1);
        w(&mut t, 0x38, 8);
        w(&mut t, 0x44, 1);
        assert_eq!(r(&mut t, 0x44), 0);
        // Reset.
        w(&mut t, 0x70, 0);
        assert_eq!(t.status(), 0);
        assert_eq!(state.lock().unwrap().resets, 1);
        assert!(!t.is_activated());
        w(&mut t, 0x30, 0);
        assert_eq!(r(&mut t, 0x44), 0, "queues reset");
    }

    #[test]
    fn refuses_bad_feature_sets_and_out_of_order_status() {
        let (mut t, state, _, _) = setup();
        // Features the device does not offer.
        negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 5));
        assert_eq!(t.status() & status::FEATURES_OK, 0);
        w(&mut t, 0x70, 0);
        // Legacy driver (no VERSION_1).
        negotiate(&mut t, 1 << 3);
        assert_eq!(t.status() & status::FEATURES_OK, 0);
        w(&mut t, 0x70, 0);
        // DRIVER_OK straight away.
        w(&mut t, 0x70, ALL);
        assert_eq!(t.status(), 0);
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER_OK);
        assert_eq!(t.status(), status::ACKNOWLEDGE);
        // Clearing bits other than by a reset is refused.
        w(&mut t, 0x70, status::DRIVER);
        assert_eq!(t.status(), status::ACKNOWLEDGE);
        // Queue setup before FEATURES_OK is ignored.
        setup_queue(&mut t, 0, 16, 0x1_0000);
        assert_eq!(r(&mut t, 0x44), 0);
        assert!(state.lock().unwrap().activations.is_empty());
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::FAILED);
        assert_ne!(t.status() & status::FAILED, 0);
    }

    #[test]
    fn invalid_queue_or_failed_activation_needs_reset() {
        let (mut t, state, intr, irq) = setup();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        // A queue outside guest memory.
        setup_queue(&mut t, 0, 16, 0xffff_0000);
        w(&mut t, 0x70, ALL);
        assert!(!t.is_activated());
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
        assert_eq!(intr.status() & 2, 2);
        assert_eq!(irq.read().unwrap(), 1);
        w(&mut t, 0x64, 2);
        assert_eq!(intr.status(), 0);
        w(&mut t, 0x70, 0);
        state.lock().unwrap().fail_activate = true;
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, 0x70, ALL);
        assert!(!t.is_activated());
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn invalid_queue_sizes_are_refused_at_driver_ok() {
        // Queue 0's maximum is 16: zero, not a power of two, above the
        // maximum, and a 32-bit value whose low half would pass.
        for bad in [0, 3, 12, 32, 1 << 15, 0x1_0010] {
            let (mut t, state, _, _) = setup();
            negotiate(&mut t, VIRTIO_F_VERSION_1);
            setup_queue(&mut t, 0, bad, 0x1_0000);
            w(&mut t, 0x70, ALL);
            assert!(!t.is_activated(), "size {bad:#x}");
            assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0, "size {bad:#x}");
            assert!(state.lock().unwrap().activations.is_empty());
        }
        // A later valid write repairs it: the device gets that size.
        let (mut t, state, _, _) = setup();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 3, 0x1_0000);
        w(&mut t, 0x38, 8);
        w(&mut t, 0x70, ALL);
        assert!(t.is_activated());
        assert_eq!(state.lock().unwrap().activated_queues[0][0].1.size, 8);
        // A reset forgets a refused size.
        w(&mut t, 0x70, 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 1, 9, 0x2_0000);
        w(&mut t, 0x70, 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 1, 8, 0x2_0000);
        w(&mut t, 0x70, ALL);
        assert!(t.is_activated());
    }

    #[test]
    fn misaligned_ring_addresses_are_refused_at_driver_ok() {
        for (reg, addr) in [(0x80, 0x1_0008), (0x90, 0x1_1001), (0xa0, 0x1_2002)] {
            let (mut t, state, _, _) = setup();
            negotiate(&mut t, VIRTIO_F_VERSION_1);
            setup_queue(&mut t, 0, 16, 0x1_0000);
            w(&mut t, reg, addr);
            w(&mut t, 0x70, ALL);
            assert!(!t.is_activated(), "register {reg:#x} = {addr:#x}");
            assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
            assert!(state.lock().unwrap().activations.is_empty());
        }
        // Writing the high half never misaligns; a fixed low half clears it.
        let (mut t, state, _, _) = setup();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, 0x80, 0x1_0004);
        w(&mut t, 0x84, 0);
        w(&mut t, 0x80, 0x1_0000);
        w(&mut t, 0x70, ALL);
        assert!(t.is_activated());
        assert_eq!(
            state.lock().unwrap().activated_queues[0][0].1.desc_table,
            0x1_0000
        );
    }

    /// Every register, width and value order the driver should never use:
    /// the transport survives, and a device only ever gets ready queues of
    /// a valid size with rings in guest memory.
    #[test]
    fn garbage_register_accesses() {
        let (mut t, state, _, _) = setup();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let r = next();
            let offset = (r >> 8) % 0x140;
            let width = [1, 2, 3, 4, 8][(r % 5) as usize];
            let value = (next() as u32) & [0xff, 0x1ff, 0xffff, u32::MAX][(r >> 40) as usize % 4];
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&value.to_le_bytes());
            if r & 0x80 != 0 {
                t.read(offset, &mut buf[..width]);
            } else if r & 0x40 != 0 && i % 7 == 0 {
                // Steer towards activation now and then.
                w(&mut t, 0x70, 0);
                negotiate(&mut t, VIRTIO_F_VERSION_1);
                setup_queue(
                    &mut t,
                    (r >> 20) as u32 % 3,
                    value & 0x3f,
                    (r >> 24) & 0xf_f000,
                );
                w(&mut t, 0x70, ALL);
            } else {
                t.write(offset & !3, &buf[..width]);
            }
            if t.is_activated() {
                assert_ne!(t.status() & status::DRIVER_OK, 0);
            }
        }
        let d = state.lock().unwrap();
        assert!(!d.activations.is_empty(), "some sequences activated");
        let max = [16u16, 8];
        for queues in &d.activated_queues {
            for (index, q) in queues {
                assert!(q.ready);
                assert!(q.size.is_power_of_two() && q.size <= max[*index], "{q:?}");
                assert!(q.desc_table % 16 == 0 && q.avail_ring % 2 == 0 && q.used_ring % 4 == 0);
                assert!(
                    q.used_ring + 6 + 8 * u64::from(q.size) <= 0x10_0000,
                    "{q:?}"
                );
            }
        }
    }

    #[test]
    fn device_asking_for_a_reset_shows_until_the_reset() {
        let (mut t, state, intr, irq) = setup();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, 0x70, ALL);
        assert!(t.is_activated());
        // The running device found the driver broke a queue.
        intr.needs_reset().unwrap();
        assert_eq!(r(&mut t, 0x70), ALL | status::DEVICE_NEEDS_RESET);
        assert_eq!(r(&mut t, 0x60) & 2, 2, "configuration change");
        assert_eq!(irq.read().unwrap(), 1);
        // Not a transport state: a restored device finds the ring again.
        assert_eq!(t.state().status, ALL);
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(state.lock().unwrap().resets, 1);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, 0x70, ALL);
        assert_eq!(r(&mut t, 0x70), ALL);
    }

    #[test]
    fn avail_ring_at_zero_is_refused() {
        let (mut t, _state, _, _) = setup();
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, 0x90, 0);
        w(&mut t, 0x70, ALL);
        assert!(!t.is_activated());
        assert_ne!(t.status() & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn config_space_and_notify_fallback() {
        let (mut t, _state, _, _) = setup();
        let mut b = [0u8; 2];
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        t.write(0x102, &[7, 9]);
        t.read(0x102, &mut b);
        assert_eq!(b, [7, 9]);
        assert_eq!(r(&mut t, 0xfc), 1, "config generation moves on writes");
        let mut far = [0xffu8; 4];
        t.read(0x1000, &mut far);
        assert_eq!(far, [0; 4]);
        // QueueNotify without an ioeventfd reaches the queue's eventfd.
        w(&mut t, 0x50, 1);
        assert_eq!(t.notify[1].read().unwrap(), 1);
        w(&mut t, 0x50, 99); // no such queue: ignored
    }
}
