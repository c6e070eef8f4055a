//! Saving and restoring an MMIO transport (VM templates).
//!
//! The state is plain data; a snapshot file is untrusted input, so
//! [`MmioTransport::restore`] checks every field a guest could not have
//! produced and every queue, and never panics.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{MmioTransport, TransportError};
use crate::virtio::interrupt::MmioInterrupt;
use crate::virtio::{status, VirtioDevice, VIRTIO_F_VERSION_1};

/// One virtqueue's configuration and position, as saved in a snapshot.
///
/// Mirrors `virtio_queue::QueueState` (which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    pub max_size: u16,
    /// The next available-ring entry the device will read.
    pub next_avail: u16,
    /// The next used-ring entry the device will write.
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<&QueueSnapshot> for QueueState {
    fn from(q: &QueueSnapshot) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// An MMIO transport's registers and queues, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioTransportState {
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    /// The device was running (DRIVER_OK accepted).
    pub activated: bool,
    /// One per device queue, in index order; for a running device the
    /// positions are the device's live ones.
    pub queues: Vec<QueueSnapshot>,
}

/// Every status bit the transport can hold.
const KNOWN_STATUS: u32 = status::ACKNOWLEDGE
    | status::DRIVER
    | status::FEATURES_OK
    | status::DRIVER_OK
    | status::DEVICE_NEEDS_RESET
    | status::FAILED;

/// Every InterruptStatus bit (used buffer, configuration change).
const KNOWN_INTERRUPTS: u32 = 0b11;

impl MmioTransport {
    /// The transport's state. For an activated device the queue positions
    /// (`next_avail`, `next_used`, event idx) come from the device's live
    /// queues ([`VirtioDevice::queue_states`]).
    ///
    /// Take it with the device quiescent (vCPUs and the device's event loop
    /// paused), and the guest memory in the same pause.
    pub fn state(&self) -> MmioTransportState {
        let mut queues: Vec<QueueSnapshot> = self
            .queues
            .iter()
            .map(|q| QueueSnapshot::from(q.state()))
            .collect();
        if self.activated {
            let device = self.device();
            match device.queue_states() {
                Some(live) => {
                    for (index, s) in live {
                        if let Some(q) = queues.get_mut(index) {
                            q.next_avail = s.next_avail;
                            q.next_used = s.next_used;
                            q.event_idx_enabled = s.event_idx_enabled;
                        }
                    }
                }
                None => tracing::error!(
                    device = %device.name(),
                    "activated device reports no queue state; the snapshot has its activation-time queue positions"
                ),
            }
        }
        MmioTransportState {
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            activated: self.activated,
            queues,
        }
    }

    /// Puts a freshly created `device` behind a transport in the saved
    /// `state` (arguments as for [`MmioTransport::new`]).
    ///
    /// The accepted features are acked to the device again. If the device
    /// was running it is activated again, as at DRIVER_OK, with the saved
    /// queues and positions, and each ready queue's `notify` eventfd is
    /// signalled once so the device looks at buffers the driver made
    /// available before the snapshot (a spurious notification is harmless).
    /// `mem` must already hold the snapshot's memory.
    pub fn restore(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<MmioInterrupt>,
        notify: Vec<EventFd>,
        state: &MmioTransportState,
    ) -> Result<MmioTransport, TransportError> {
        let mut t = MmioTransport::new(device, mem, interrupt, notify)?;
        let (name, offered) = {
            let d = t.device();
            (d.name().to_string(), d.features() | VIRTIO_F_VERSION_1)
        };
        let bad = |reason: String| TransportError::SnapshotState {
            device: name.clone(),
            reason,
        };
        check_status(state, offered).map_err(bad)?;
        if state.interrupt_status & !KNOWN_INTERRUPTS != 0 {
            return Err(bad(format!(
                "interrupt status {:#x} has unknown bits",
                state.interrupt_status
            )));
        }
        if state.queues.len() != t.queues.len() {
            return Err(TransportError::SnapshotQueueCount {
                device: name,
                expected: t.queues.len(),
                got: state.queues.len(),
            });
        }
        for (index, (snap, q)) in state.queues.iter().zip(t.queues.iter_mut()).enumerate() {
            let bad_queue = |reason: String| TransportError::SnapshotQueue {
                device: name.clone(),
                index,
                reason,
            };
            if snap.max_size != q.max_size() {
                return Err(bad_queue(format!(
                    "max size {}, the device's is {}",
                    snap.max_size,
                    q.max_size()
                )));
            }
            // Validates the size (a power of two, <= max) and the alignments.
            *q = Queue::try_from(QueueState::from(snap)).map_err(|e| bad_queue(e.to_string()))?;
        }
        t.status = state.status;
        t.device_features_sel = state.device_features_sel;
        t.driver_features_sel = state.driver_features_sel;
        t.driver_features = state.driver_features;
        t.queue_sel = state.queue_sel;
        t.config_generation = state.config_generation;
        if state.status & status::FEATURES_OK != 0 {
            t.device().ack_features(state.driver_features);
        }
        t.interrupt.set_status(state.interrupt_status);
        if state.activated {
            t.activate_device()?;
            for (q, evt) in t.queues.iter().zip(&t.notify) {
                if q.ready() {
                    if let Err(e) = evt.write(1) {
                        tracing::warn!(device = %name, error = %e, "kicking a restored queue");
                    }
                }
            }
        }
        Ok(t)
    }
}

/// Checks that `state.status` and `activated` are a pair the transport can
/// reach, and that accepted features were acceptable.
fn check_status(state: &MmioTransportState, offered: u64) -> Result<(), String> {
    use status::*;
    let s = state.status;
    if s & !KNOWN_STATUS != 0 {
        return Err(format!("status {s:#x} has unknown bits"));
    }
    // Each initialization step implies the ones before it.
    let steps = [ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK];
    for pair in steps.windows(2) {
        if s & pair[1] != 0 && s & pair[0] == 0 {
            return Err(format!("status {s:#x} skips an initialization step"));
        }
    }
    if s & DEVICE_NEEDS_RESET != 0 && s & DRIVER_OK == 0 {
        return Err(format!("status {s:#x}: needs-reset before DRIVER_OK"));
    }
    // DRIVER_OK without activation is a failed activation, flagged needs-reset.
    let running = s & DRIVER_OK != 0 && s & DEVICE_NEEDS_RESET == 0;
    if running != state.activated {
        return Err(format!(
            "status {s:#x} contradicts activated = {}",
            state.activated
        ));
    }
    if s & FEATURES_OK != 0 {
        let acked = state.driver_features;
        if acked & !offered != 0 || acked & VIRTIO_F_VERSION_1 == 0 {
            return Err(format!(
                "accepted features {acked:#x} are not a VERSION_1 subset of {offered:#x}"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{negotiate, r, setup_queue, w, Parts, ALL};
    use super::*;
    use crate::bus::BusDevice;

    /// Every register a driver can read, for each queue selection (config
    /// space is the device's, not the transport's).
    fn registers(t: &mut MmioTransport) -> Vec<u32> {
        let sel = r(t, 0x30);
        let mut out = Vec::new();
        for q in 0..3 {
            w(t, 0x30, q);
            out.extend((0..0x100).step_by(4).map(|off| r(t, off)));
        }
        w(t, 0x30, sel);
        out
    }

    fn restore(p: &Parts, state: &MmioTransportState) -> Result<MmioTransport, TransportError> {
        MmioTransport::restore(
            p.device.clone(),
            p.mem.clone(),
            p.interrupt.clone(),
            p.notify_clones(),
            state,
        )
    }

    /// Negotiated, both queues configured, not yet DRIVER_OK.
    fn configured() -> (MmioTransport, Parts) {
        let p = Parts::new();
        let mut t = MmioTransport::new(
            p.device.clone(),
            p.mem.clone(),
            p.interrupt.clone(),
            p.notify_clones(),
        )
        .unwrap();
        negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 3));
        setup_queue(&mut t, 0, 16, 0x1_0000);
        setup_queue(&mut t, 1, 4, 0x2_0000);
        t.write(0x104, &[5, 6]); // config generation 1
        w(&mut t, 0x14, 1);
        (t, p)
    }

    /// The same transport, running, with the device 5 buffers further on
    /// queue 0 and an unacknowledged used-buffer interrupt.
    fn running() -> (MmioTransport, Parts) {
        let (mut t, p) = configured();
        w(&mut t, 0x70, ALL);
        assert!(t.is_activated());
        if let Some(live) = p.state.lock().unwrap().live.as_mut() {
            live[0].1.next_avail = 5;
            live[0].1.next_used = 4;
        }
        t.interrupt.set_status(InterruptKind::Queue.status_bit());
        for e in &p.notify {
            let _ = e.read();
        }
        (t, p)
    }

    use crate::virtio::interrupt::InterruptKind;

    #[test]
    fn round_trip_before_activation() {
        let (mut t, _p) = configured();
        let st = t.state();
        assert!(!st.activated);
        assert_eq!(st.queues.len(), 2);
        assert_eq!((st.queues[1].size, st.queues[1].ready), (4, true));
        let q = Parts::new();
        let mut u = restore(&q, &st).unwrap();
        assert_eq!(u.state(), st);
        assert_eq!(registers(&mut t), registers(&mut u));
        assert_eq!(q.state.lock().unwrap().acked, VIRTIO_F_VERSION_1 | (1 << 3));
        assert!(q.state.lock().unwrap().activations.is_empty());
        // The driver carries on where it was: DRIVER_OK activates.
        w(&mut u, 0x70, ALL);
        assert!(u.is_activated());
        assert_eq!(q.state.lock().unwrap().activations, vec![vec![0, 1]]);
        // A fresh transport round-trips too.
        let p = Parts::new();
        let fresh = MmioTransport::new(
            p.device.clone(),
            p.mem.clone(),
            p.interrupt.clone(),
            p.notify_clones(),
        )
        .unwrap();
        let st = fresh.state();
        assert_eq!(restore(&Parts::new(), &st).unwrap().state(), st);
    }

    #[test]
    fn round_trip_after_activation() {
        let (mut t, p) = running();
        let st = t.state();
        assert!(st.activated);
        assert_eq!((st.queues[0].next_avail, st.queues[0].next_used), (5, 4));
        assert_eq!(st.interrupt_status, 1);
        // The transport's own copy is stale; the snapshot is not.
        assert_eq!(t.queues[0].next_avail(), 0);

        let q = Parts::new();
        let mut u = restore(&q, &st).unwrap();
        assert!(u.is_activated());
        {
            let d = q.state.lock().unwrap();
            assert_eq!(d.activations, vec![vec![0, 1]]);
            let got = &d.activated_queues[0];
            let want = &p.state.lock().unwrap().live.clone().unwrap();
            assert_eq!(got, want, "same queues, same positions");
            assert_eq!((got[0].1.next_avail, got[0].1.next_used), (5, 4));
            assert_eq!(d.acked, VIRTIO_F_VERSION_1 | (1 << 3));
        }
        assert_eq!(u.state(), st);
        assert_eq!(registers(&mut t), registers(&mut u));
        assert_eq!(q.interrupt.status(), 1);
        // Each ready queue was kicked once.
        for e in &q.notify {
            assert_eq!(e.read().unwrap(), 1);
        }
        // Reset works as on the original.
        w(&mut u, 0x70, 0);
        assert!(!u.is_activated());
        assert_eq!(q.state.lock().unwrap().resets, 1);
        assert_eq!(u.status(), 0);
    }

    #[test]
    fn failed_activation_state_round_trips() {
        let (mut t, p) = configured();
        p.state.lock().unwrap().fail_activate = true;
        w(&mut t, 0x70, ALL);
        assert!(!t.is_activated());
        let st = t.state();
        assert_ne!(st.status & status::DEVICE_NEEDS_RESET, 0);
        let q = Parts::new();
        let mut u = restore(&q, &st).unwrap();
        assert!(q.state.lock().unwrap().activations.is_empty());
        assert_eq!(registers(&mut t), registers(&mut u));
    }

    fn expect_err(st: &MmioTransportState, what: &str) -> TransportError {
        match restore(&Parts::new(), st) {
            Ok(_) => panic!("{what}: restore accepted a bad state"),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("dummy"), "{what}: {msg}");
                e
            }
        }
    }

    #[test]
    fn hostile_states_are_errors() {
        let (t, _p) = running();
        let good = t.state();

        let mut st = good.clone();
        st.queues.pop();
        assert!(matches!(
            expect_err(&st, "queue count"),
            TransportError::SnapshotQueueCount {
                expected: 2,
                got: 1,
                ..
            }
        ));
        let mut st = good.clone();
        st.queues.push(st.queues[0].clone());
        expect_err(&st, "extra queue");

        let mut st = good.clone();
        st.queues[0].size = 3;
        assert!(matches!(
            expect_err(&st, "size not a power of two"),
            TransportError::SnapshotQueue { index: 0, .. }
        ));
        let mut st = good.clone();
        st.queues[1].size = 0;
        assert!(matches!(
            expect_err(&st, "ready queue of size 0"),
            TransportError::SnapshotQueue { index: 1, .. }
        ));
        let mut st = good.clone();
        st.queues[1].size = 16;
        expect_err(&st, "size above max");
        let mut st = good.clone();
        st.queues[1].max_size = 256;
        expect_err(&st, "max size differs from the device's");
        let mut st = good.clone();
        st.queues[0].desc_table += 1;
        expect_err(&st, "misaligned descriptor table");
        let mut st = good.clone();
        st.queues[0].used_ring = 0x10_0000 - 8;
        assert!(matches!(
            expect_err(&st, "rings outside memory"),
            TransportError::QueueUnusable { index: 0, .. }
        ));

        let mut st = good.clone();
        st.activated = false;
        expect_err(&st, "DRIVER_OK but not activated");
        let mut st = good.clone();
        st.status = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
        expect_err(&st, "activated without DRIVER_OK");
        let mut st = good.clone();
        st.status |= 1 << 9;
        expect_err(&st, "unknown status bit");
        let mut st = good.clone();
        st.status = status::DRIVER;
        st.activated = false;
        expect_err(&st, "skipped step");
        let mut st = good.clone();
        st.driver_features = 1 << 3;
        expect_err(&st, "no VERSION_1");
        let mut st = good.clone();
        st.driver_features |= 1 << 7;
        expect_err(&st, "features not offered");
        let mut st = good.clone();
        st.interrupt_status = 4;
        expect_err(&st, "unknown interrupt bit");

        // The device refuses activation.
        let p = Parts::new();
        p.state.lock().unwrap().fail_activate = true;
        let err = restore(&p, &good).err().unwrap();
        assert!(matches!(err, TransportError::Activate(_)), "{err}");
        // Wrong number of notify eventfds.
        let p = Parts::new();
        let err = MmioTransport::restore(
            p.device.clone(),
            p.mem.clone(),
            p.interrupt.clone(),
            Vec::new(),
            &good,
        )
        .err()
        .unwrap();
        assert!(matches!(err, TransportError::NotifyCount { .. }), "{err}");

        // Any register selector value is fine.
        let mut st = good.clone();
        st.queue_sel = u32::MAX;
        st.device_features_sel = 77;
        st.driver_features_sel = 3;
        st.config_generation = u32::MAX;
        let mut u = restore(&Parts::new(), &st).unwrap();
        assert_eq!(r(&mut u, 0x34), 0);
        assert_eq!(u.state(), st);
    }

    #[test]
    fn scrambled_states_never_panic() {
        let (t, _p) = running();
        let good = t.state();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let mut st = good.clone();
            for _ in 0..1 + next() % 3 {
                let v = next();
                let q = &mut st.queues[(v % 2) as usize];
                match (v >> 8) % 12 {
                    0 => st.status = (v >> 16) as u32 & 0xff,
                    1 => st.activated = !st.activated,
                    2 => st.driver_features = v >> 16,
                    3 => q.size = (v >> 16) as u16,
                    4 => q.max_size = (v >> 16) as u16,
                    5 => q.ready = !q.ready,
                    6 => q.desc_table = v >> 16,
                    7 => q.avail_ring = v >> 20,
                    8 => q.used_ring = v >> 24,
                    9 => q.next_avail = (v >> 16) as u16,
                    10 => q.next_used = (v >> 16) as u16,
                    _ => st.interrupt_status = (v >> 16) as u32 & 7,
                }
            }
            let _ = restore(&Parts::new(), &st);
        }
    }

    #[test]
    fn state_json_round_trip() {
        let (t, _p) = running();
        let st = t.state();
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(
            serde_json::from_str::<MmioTransportState>(&json).unwrap(),
            st
        );
        let q = serde_json::to_string(&st.queues[0]).unwrap();
        assert_eq!(
            serde_json::from_str::<QueueSnapshot>(&q).unwrap(),
            st.queues[0]
        );
        let extra = json.replacen('{', "{\"bogus\":1,", 1);
        assert!(serde_json::from_str::<MmioTransportState>(&extra).is_err());
        let extra = q.replacen('{', "{\"bogus\":1,", 1);
        assert!(serde_json::from_str::<QueueSnapshot>(&extra).is_err());
        // QueueState converts both ways unchanged.
        let qs = QueueState::from(&st.queues[0]);
        assert_eq!(QueueSnapshot::from(qs), st.queues[0]);
    }
}
