//! virtio interrupts: the transport's interrupt status bits plus an irqfd.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

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
/// and an eventfd that KVM turns into the device's GSI (irqfd).
pub struct MmioInterrupt {
    status: Arc<AtomicU32>,
    /// The device asked for a reset ([`VirtioInterrupt::needs_reset`]).
    needs_reset: AtomicBool,
    irq: EventFd,
}

impl MmioInterrupt {
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: Arc::new(AtomicU32::new(0)),
            needs_reset: AtomicBool::new(false),
            irq,
        }
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
        self.status.fetch_or(kind.status_bit(), Ordering::SeqCst);
        self.irq.write(1)
    }

    fn needs_reset(&self) -> io::Result<()> {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.trigger(InterruptKind::Config)
    }
}
