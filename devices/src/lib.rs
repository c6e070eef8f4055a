//! husk device models.
//!
//! Everything here is testable without KVM: devices see guest port and MMIO
//! accesses through the [`bus::Bus`], raise interrupts through the
//! [`Interrupt`] trait (an irqfd in the VMM, a counter in tests) and never
//! touch `kvm-ioctls`.

pub mod bus;
pub mod counters;
pub mod legacy;
pub mod virtio;

use std::io;
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use counters::Counter;

/// Something a device pulls to raise an edge-triggered interrupt or an event.
///
/// In the VMM this is an `EventFd` registered as an irqfd (the interrupt goes
/// straight from the kernel to the guest) or watched by the event loop.
pub trait Interrupt: Send + Sync {
    /// Raise the interrupt or signal the event.
    fn trigger(&self) -> io::Result<()>;
}

/// An [`Interrupt`] backed by an `EventFd`; counts its triggers.
#[derive(Debug)]
pub struct EventFdTrigger {
    evt: EventFd,
    count: Arc<Counter>,
}

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self {
            evt,
            count: Arc::default(),
        }
    }

    /// The wrapped `EventFd` (to register it as an irqfd or watch it).
    pub fn event_fd(&self) -> &EventFd {
        &self.evt
    }

    /// How many times it was triggered (a handle that outlives it).
    pub fn count(&self) -> Arc<Counter> {
        self.count.clone()
    }

    fn fire(&self) -> io::Result<()> {
        self.count.inc();
        self.evt.write(1)
    }
}

impl Interrupt for EventFdTrigger {
    fn trigger(&self) -> io::Result<()> {
        self.fire()
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.fire()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn an_eventfd_trigger_counts() {
        let t = EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let count = t.count();
        Interrupt::trigger(&t).expect("write");
        vm_superio::Trigger::trigger(&t).expect("write");
        assert_eq!(count.get(), 2);
        assert_eq!(t.event_fd().read().expect("read"), 2);
    }
}
