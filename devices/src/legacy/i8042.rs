//! The i8042 keyboard controller, only as far as Linux needs it: status reads
//! on port 0x64 and the CPU reset command (0xfe) that `reboot=k` sends. The
//! reset is reported through an event, which the VMM turns into a VM exit.
//!
//! Snapshots: no state worth saving (a fresh `I8042::new` is equivalent).

use crate::bus::BusDevice;
use crate::EventFdTrigger;

/// Base port (data port 0x60; status/command is 0x64, offset 4).
pub const I8042_BASE: u64 = 0x60;
/// Length of the claimed range (0x60..=0x64).
pub const I8042_LEN: u64 = 5;

/// i8042 on the PIO bus.
pub struct I8042 {
    inner: vm_superio::I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// An i8042 that signals `reset` when the guest asks for a CPU reset.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            inner: vm_superio::I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
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
            tracing::warn!(device = "i8042", error = ?e, "i8042 reset event failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reset_command_signals() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        let mut status = [0xffu8];
        dev.read(4, &mut status);
        assert_eq!(status[0] & 0x02, 0, "input buffer must read as empty");
        assert!(evt.read().is_err(), "no reset yet");
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
