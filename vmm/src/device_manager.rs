//! Places virtio-mmio devices: an MMIO window and a GSI each, an irqfd for
//! the interrupt, an ioeventfd per queue for notifications (no trip through
//! the VMM on the hot path), the transport on the MMIO bus, and the
//! `virtio_mmio.device=` command line entry the guest discovers it by.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use husk_devices::bus::Bus;
use husk_devices::counters::InterruptCounts;
use husk_devices::virtio::interrupt::MmioInterrupt;
use husk_devices::virtio::transport::mmio::{
    MmioTransport, MmioTransportState, MMIO_WINDOW, NOTIFY_OFFSET,
};
use husk_devices::virtio::VirtioDevice;
use kvm_ioctls::IoEventAddress;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::boot::layout::{IOAPIC_PINS, MMIO_GAP_START};
use crate::vstate::vm::Vm;

/// First GSI for virtio devices (0-4 belong to the timer, keyboard, cascade
/// and the serial port).
pub const FIRST_VIRTIO_GSI: u32 = 5;

/// A subscriber of the VMM's event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Errors attaching a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{device}: no free interrupt line (at most {} virtio devices)", IOAPIC_PINS as u32 - FIRST_VIRTIO_GSI)]
    NoGsi { device: String },
    #[error("{device}: {what}: {source}")]
    Io {
        device: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{device}: registering {what} with KVM failed: {source}")]
    Kvm {
        device: String,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{device}: {source}")]
    Transport {
        device: String,
        #[source]
        source: husk_devices::virtio::transport::mmio::TransportError,
    },
    #[error("{device}: {source}")]
    Bus {
        device: String,
        #[source]
        source: husk_devices::bus::BusError,
    },
    #[error("{device}: {source}")]
    Vm {
        device: String,
        #[source]
        source: crate::vstate::vm::VmError,
    },
}

/// Where a device was placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub gsi: u32,
}

impl MmioSlot {
    /// The guest kernel command line entry for this slot.
    pub fn cmdline_entry(&self) -> String {
        format!(
            "virtio_mmio.device={}K@{:#x}:{}",
            MMIO_WINDOW >> 10,
            self.base,
            self.gsi
        )
    }
}

/// Allocates slots and attaches virtio devices.
pub struct DeviceManager {
    next_base: u64,
    next_gsi: u32,
    slots: Vec<(String, MmioSlot)>,
    subscribers: Vec<Subscriber>,
    /// Each device's MMIO base and its interrupt's counts.
    interrupts: Vec<(u64, Arc<InterruptCounts>)>,
}

impl Default for DeviceManager {
    fn default() -> Self {
        Self::new()
    }
}

impl DeviceManager {
    pub fn new() -> Self {
        Self {
            next_base: MMIO_GAP_START,
            next_gsi: FIRST_VIRTIO_GSI,
            slots: Vec::new(),
            subscribers: Vec::new(),
            interrupts: Vec::new(),
        }
    }

    /// The next free slot.
    pub fn allocate(&mut self, device: &str) -> Result<MmioSlot, DeviceError> {
        if self.next_gsi >= u32::from(IOAPIC_PINS) {
            return Err(DeviceError::NoGsi {
                device: device.to_string(),
            });
        }
        let slot = MmioSlot {
            base: self.next_base,
            gsi: self.next_gsi,
        };
        self.next_base += MMIO_WINDOW;
        self.next_gsi += 1;
        Ok(slot)
    }

    /// Attaches `device`: slot, irqfd, ioeventfds, transport on `mmio`, and
    /// the device as an event loop subscriber.
    pub fn attach<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        mmio: &mut Bus,
        device: Arc<Mutex<D>>,
    ) -> Result<(MmioSlot, Arc<Mutex<MmioTransport>>), DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        self.attach_inner(vm, mem, mmio, device, None)
    }

    /// [`attach`](Self::attach) for a restored device: the transport comes
    /// back with its saved registers and queues (re-activating the device
    /// when it was running).
    pub fn attach_restored<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        mmio: &mut Bus,
        device: Arc<Mutex<D>>,
        state: &MmioTransportState,
    ) -> Result<(MmioSlot, Arc<Mutex<MmioTransport>>), DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        self.attach_inner(vm, mem, mmio, device, Some(state))
    }

    fn attach_inner<D>(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        mmio: &mut Bus,
        device: Arc<Mutex<D>>,
        state: Option<&MmioTransportState>,
    ) -> Result<(MmioSlot, Arc<Mutex<MmioTransport>>), DeviceError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let (name, queues) = {
            let d = device
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (d.name().to_string(), d.queue_max_sizes().len())
        };
        let io = |what| {
            let device = name.clone();
            move |source| DeviceError::Io {
                device: device.clone(),
                what,
                source,
            }
        };
        let slot = self.allocate(&name)?;
        let irq = EventFd::new(EFD_NONBLOCK).map_err(io("irq eventfd"))?;
        vm.register_irqfd(&irq, slot.gsi)
            .map_err(|source| DeviceError::Vm {
                device: name.clone(),
                source,
            })?;
        let mut notify = Vec::with_capacity(queues);
        for index in 0..queues {
            let evt = EventFd::new(EFD_NONBLOCK).map_err(io("queue eventfd"))?;
            vm.fd()
                .register_ioevent(
                    &evt,
                    &IoEventAddress::Mmio(slot.base + NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(|source| DeviceError::Kvm {
                    device: name.clone(),
                    what: "ioeventfd",
                    source,
                })?;
            notify.push(evt);
        }
        let dyn_dev: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let interrupt = Arc::new(MmioInterrupt::new(irq));
        let counts = interrupt.counts();
        let transport = match state {
            None => MmioTransport::new(dyn_dev, mem.clone(), interrupt, notify),
            Some(st) => MmioTransport::restore(dyn_dev, mem.clone(), interrupt, notify, st),
        }
        .map_err(|source| DeviceError::Transport {
            device: name.clone(),
            source,
        })?;
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(slot.base, MMIO_WINDOW, &name, transport.clone())
            .map_err(|source| DeviceError::Bus {
                device: name.clone(),
                source,
            })?;
        self.subscribers.push(device);
        self.interrupts.push((slot.base, counts));
        tracing::debug!(device = %name, base = format_args!("{:#x}", slot.base), gsi = slot.gsi, "virtio-mmio device attached");
        self.slots.push((name, slot.clone()));
        Ok((slot, transport))
    }

    /// The `virtio_mmio.device=` entries of all attached devices.
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.slots.iter().map(|(_, s)| s.cmdline_entry()).collect()
    }

    /// Each attached device's MMIO base and its interrupt's counts.
    pub fn interrupt_counts(&self) -> Vec<(u64, Arc<InterruptCounts>)> {
        self.interrupts.clone()
    }

    /// Takes the devices' event loop subscribers.
    pub fn take_subscribers(&mut self) -> Vec<Subscriber> {
        std::mem::take(&mut self.subscribers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_and_cmdline() {
        let mut dm = DeviceManager::new();
        let a = dm.allocate("a").unwrap();
        let b = dm.allocate("b").unwrap();
        assert_eq!(
            a,
            MmioSlot {
                base: 0xd000_0000,
                gsi: 5
            }
        );
        assert_eq!(
            b,
            MmioSlot {
                base: 0xd000_1000,
                gsi: 6
            }
        );
        assert_eq!(a.cmdline_entry(), "virtio_mmio.device=4K@0xd0000000:5");
        for _ in 7..24 {
            dm.allocate("x").unwrap();
        }
        assert!(matches!(
            dm.allocate("late"),
            Err(DeviceError::NoGsi { .. })
        ));
    }
}
