//! virtio interrupts: the transport's interrupt status bits plus an irqfd.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::counters::InterruptCounts;

/// Why the device interrupts the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptKind {
    /// A used ring was updated.
    Queue,
    /// The configuration changed (or the device needs a reset).
    Config,
}

impl InterruptKind {
    /// The MMIO InterruptStatus bit.
    pub fn status_bit(self) -> u32 {
        match self {
            InterruptKind::Queue => 1,
            InterruptKind::Config => 2,
        }
    }
}

/// Raises a device's interrupt.
pub trait VirtioInterrupt: Send + Sync {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()>;

    /// The device met an error only a reset clears (the driver broke a
    /// queue): the transport shows DEVICE_NEEDS_RESET and the driver gets a
    /// configuration-change interrupt (virtio 1.2, 2.1.2).
    fn needs_reset(&self) -> io::Result<()> {
        self.trigger(InterruptKind::Config)
    }
}

/// The MMIO transport's interrupt: status bits the driver reads and acks,
/// and an eventfd that KVM turns into the device's GSI (irqfd). Counts
/// what it raises, by kind.
pub struct MmioInterrupt {
    status: Arc<AtomicU32>,
    /// The device asked for a reset ([`VirtioInterrupt::needs_reset`]).
    needs_reset: AtomicBool,
    irq: EventFd,
    counts: Arc<InterruptCounts>,
}

impl MmioInterrupt {
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            needs_reset: AtomicBool::new(false),
            irq,
            counts: Arc::default(),
        }
    }

    /// The interrupts raised so far, by kind (a handle that outlives this
    /// object and holds no eventfd).
    pub fn counts(&self) -> Arc<InterruptCounts> {
        self.counts.clone()
    }

    /// Whether the device asked for a reset since the last [`clear`](Self::clear).
    pub fn device_needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the InterruptStatus register to `bits` (snapshot restore).
    pub fn set_status(&self, bits: u32) {
        self.status.store(bits, Ordering::SeqCst);
    }

    /// Clears everything (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// The irqfd.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) -> io::Result<()> {
        match kind {
            InterruptKind::Queue => self.counts.queue.inc(),
            InterruptKind::Config => self.counts.config.inc(),
        }
        self.status.fetch_or(kind.status_bit(), Ordering::SeqCst);
        self.irq.write(1)
    }

    fn needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(InterruptKind::Config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    #[test]
    fn counts_each_kind_it_raises() {
        let i = MmioInterrupt::new(EventFd::new(EFD_NONBLOCK).expect("eventfd"));
        let counts = i.counts();
        for _ in 0..3 {
            i.trigger(InterruptKind::Queue).expect("trigger");
        }
        i.needs_reset().expect("needs reset");
        // Acks and resets clear the status, not the counts.
        i.ack(3);
        i.clear();
        assert_eq!((counts.queue.get(), counts.config.get()), (3, 1));
        assert_eq!(i.irq().read().expect("read"), 4);
        drop(i);
        assert_eq!(counts.queue.get(), 3);
    }
}
