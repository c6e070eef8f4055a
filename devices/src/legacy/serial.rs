//! The 16550A serial port (COM1) on the bus, backed by vm-superio.
//!
//! Every transmitted byte is written synchronously into the [`ConsoleSink`]
//! before the guest's `out` instruction completes, so output is never lost,
//! however fast the guest writes. The transmit-holding-register-empty
//! interrupt is raised after each byte (Linux's 8250 driver waits for it).
//!
//! For snapshots, [`Serial::state`] captures the registers and the receive
//! FIFO as [`SerialDeviceState`]; [`Serial::from_state`] rebuilds the port.

use vm_superio::serial::{NoEvents, SerialState};

use crate::bus::BusDevice;
use crate::legacy::ConsoleSink;
use crate::EventFdTrigger;

/// COM1's I/O port base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's port range length.
pub const COM1_LEN: u64 = 8;
/// COM1's ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// The receive FIFO's capacity in vm-superio 0.8 (its `FIFO_SIZE` is private).
pub const SERIAL_FIFO_SIZE: usize = 64;

/// A serial port's registers and pending input, as saved in a snapshot.
///
/// Mirrors vm-superio's `SerialState` (which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDeviceState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    /// Received bytes the guest has not read yet (at most [`SERIAL_FIFO_SIZE`]).
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for SerialDeviceState {
    fn from(s: SerialState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&SerialDeviceState> for SerialState {
    fn from(s: &SerialDeviceState) -> Self {
        Self {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Why a serial port could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("serial: {len} bytes of pending input exceed the {max}-byte FIFO")]
    FifoOverflow { len: usize, max: usize },
    #[error("serial: restoring state: {0}")]
    Restore(#[source] vm_superio::serial::Error<std::io::Error>),
}

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

    /// The port's registers and pending input.
    pub fn state(&self) -> SerialDeviceState {
        self.inner.state().into()
    }

    /// A port rebuilt from `state`, interrupting through `irq` and writing to
    /// `sink`. An interrupt that was pending when the state was saved (THR
    /// empty or data available, and enabled) is raised again on `irq`.
    pub fn from_state(
        state: &SerialDeviceState,
        irq: EventFdTrigger,
        sink: ConsoleSink,
    ) -> Result<Serial, SerialError> {
        if state.in_buffer.len() > SERIAL_FIFO_SIZE {
            return Err(SerialError::FifoOverflow {
                len: state.in_buffer.len(),
                max: SERIAL_FIFO_SIZE,
            });
        }
        let inner = vm_superio::Serial::from_state(&SerialState::from(state), irq, NoEvents, sink)
            .map_err(SerialError::Restore)?;
        Ok(Self {
            inner,
            warned: false,
        })
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

    fn port() -> (Serial, EventFd, Arc<ConsoleWatch>) {
        let watch = Arc::new(ConsoleWatch::new(["ok"]));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let s = Serial::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            ConsoleSink::new(None, false, watch.clone()),
        );
        (s, irq, watch)
    }

    fn restored(state: &SerialDeviceState) -> (Serial, EventFd, Arc<ConsoleWatch>) {
        let watch = Arc::new(ConsoleWatch::new(["ok"]));
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let s = Serial::from_state(
            state,
            EventFdTrigger::new(irq.try_clone().unwrap()),
            ConsoleSink::new(None, false, watch.clone()),
        )
        .unwrap();
        (s, irq, watch)
    }

    fn reg(s: &mut Serial, off: u64) -> u8 {
        let mut d = [0u8; 1];
        s.read(off, &mut d);
        d[0]
    }

    /// Interrupts raised since the last call (0 if none).
    fn irqs(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    #[test]
    fn state_round_trip() {
        let (mut a, irq_a, _) = port();
        // Divisor latch 0x000c (9600 baud), then 8N1.
        a.write(3, &[0x80]);
        a.write(0, &[0x0c]);
        a.write(1, &[0x00]);
        a.write(3, &[0x03]);
        a.write(4, &[0x0b]); // MCR: DTR, RTS, OUT2
        a.write(7, &[0x5a]); // scratch
        a.write(1, &[0x01]); // IER: received data available
        a.inner.enqueue_raw_bytes(b"abc").unwrap();
        assert_eq!(irqs(&irq_a), 1);

        let st = a.state();
        assert_eq!(st.in_buffer, b"abc");
        assert_eq!(st.scratch, 0x5a);
        let (mut b, irq_b, watch_b) = restored(&st);
        assert_eq!(b.state(), st);
        assert_eq!(irqs(&irq_b), 1, "the pending RX interrupt is raised again");

        // Identical register reads, draining the FIFO on both.
        for off in [1, 2, 3, 4, 5, 6, 7, 0, 5, 0, 0, 5, 2] {
            assert_eq!(reg(&mut a, off), reg(&mut b, off), "register {off}");
        }
        a.write(3, &[0x83]);
        b.write(3, &[0x83]);
        assert_eq!((reg(&mut a, 0), reg(&mut a, 1)), (0x0c, 0x00));
        assert_eq!((reg(&mut b, 0), reg(&mut b, 1)), (0x0c, 0x00));
        a.write(3, &[0x03]);
        b.write(3, &[0x03]);

        // Identical interrupt behaviour from here on.
        for s in [&mut a, &mut b] {
            s.inner.enqueue_raw_bytes(b"z").unwrap();
            s.write(1, &[0x03]); // + THR empty
        }
        let n = irqs(&irq_a);
        assert!(n >= 1);
        assert_eq!(n, irqs(&irq_b));
        for byte in b"ok\n" {
            // Reading IIR acknowledges THR empty; the next byte raises it again.
            assert_eq!(reg(&mut a, 2), reg(&mut b, 2));
            a.write(0, &[*byte]);
            b.write(0, &[*byte]);
            let n = irqs(&irq_a);
            assert_eq!(n, 1);
            assert_eq!(n, irqs(&irq_b));
        }
        assert!(
            watch_b.marker("ok").is_some(),
            "output goes to the new sink"
        );
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn overfull_fifo_is_an_error() {
        let (a, _, _) = port();
        let mut st = a.state();
        st.in_buffer = vec![b'x'; SERIAL_FIFO_SIZE];
        let _ = restored(&st);
        st.in_buffer.push(b'y');
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let err = Serial::from_state(
            &st,
            EventFdTrigger::new(irq),
            ConsoleSink::new(None, false, Arc::new(ConsoleWatch::new(["x"]))),
        )
        .err()
        .unwrap();
        assert!(matches!(
            err,
            SerialError::FifoOverflow { len: 65, max: 64 }
        ));
        assert!(err.to_string().starts_with("serial:"), "{err}");
    }

    #[test]
    fn state_json_round_trip() {
        let (mut a, _, _) = port();
        a.write(7, &[0x11]);
        a.inner.enqueue_raw_bytes(b"in").unwrap();
        let st = a.state();
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(
            serde_json::from_str::<SerialDeviceState>(&json).unwrap(),
            st
        );
        let extra = json.replacen('{', "{\"bogus\":1,", 1);
        assert!(serde_json::from_str::<SerialDeviceState>(&extra).is_err());
    }
}
