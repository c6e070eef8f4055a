//! The 16550A serial port (COM1) on the bus, backed by vm-superio.
//!
//! Every transmitted byte is written synchronously into the [`ConsoleSink`]
//! before the guest's `out` instruction completes, so output is never lost,
//! however fast the guest writes. The transmit-holding-register-empty
//! interrupt is raised after each byte (Linux's 8250 driver waits for it).

use vm_superio::serial::NoEvents;

use crate::bus::BusDevice;
use crate::legacy::ConsoleSink;
use crate::EventFdTrigger;

/// COM1's I/O port base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's port range length.
pub const COM1_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// A serial port on the PIO bus.
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, NoEvents, ConsoleSink>,
    warned: bool,
}

impl Serial {
    /// A 16550A whose interrupt is `irq` and whose output goes to `sink`.
    pub fn new(irq: EventFdTrigger, sink: ConsoleSink) -> Self {
        Self {
            inner: vm_superio::Serial::new(irq, sink),
            warned: false,
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *first = self.inner.read(off);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(off)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if let Err(e) = self.inner.write(off, value) {
            if !self.warned {
                tracing::warn!(device = "serial", error = ?e, "serial write failed");
                self.warned = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::ConsoleWatch;
    use std::sync::Arc;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn transmits_and_raises_thre() {
        let watch = Arc::new(ConsoleWatch::new(["hi"]));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            ConsoleSink::new(None, false, watch.clone()),
        );
        // Enable the THR-empty interrupt (IER bit 1): it fires at once.
        s.write(1, &[0x02]);
        assert_eq!(irq.read().unwrap(), 1);
        // IIR reports THR empty; reading it acknowledges.
        let mut d = [0u8; 1];
        s.read(2, &mut d);
        assert_eq!(d[0] & 0x0f, 0x02);
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert!(irq.read().unwrap() >= 1);
        assert!(watch.marker("hi").is_some());
        // Line status: transmitter empty.
        s.read(5, &mut d);
        assert_eq!(d[0] & 0x60, 0x60);
        // Out-of-range offsets and empty accesses are ignored.
        s.write(1 << 20, &[1]);
        s.write(0, &[]);
    }
}
