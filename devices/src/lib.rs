//! husk device models.
//!
//! Everything here is testable without KVM: devices see guest port and MMIO
//! accesses through the [`bus::Bus`], raise interrupts through the
//! [`Interrupt`] trait (an irqfd in the VMM, a counter in tests) and never
//! touch `kvm-ioctls`.

pub mod bus;
pub mod legacy;
pub mod virtio;

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Something a device pulls to raise an edge-triggered interrupt or an event.
///
/// In the VMM this is an `EventFd` registered as an irqfd (the interrupt goes
/// straight from the kernel to the guest) or watched by the event loop.
pub trait Interrupt: Send + Sync {
    /// Raise the interrupt or signal the event.
    fn trigger(&self) -> io::Result<()>;
}

/// An [`Interrupt`] backed by an `EventFd`.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The wrapped `EventFd` (to register it as an irqfd or watch it).
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl Interrupt for EventFdTrigger {
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
