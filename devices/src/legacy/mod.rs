//! Legacy PC devices a Linux guest expects: 16550 serial console, i8042
//! (for `reboot=k` resets) and the CMOS real-time clock.

pub mod cmos;
pub mod console;
pub mod i8042;
pub mod serial;

pub use cmos::{Cmos, CmosError, CmosState};
pub use console::{ConsoleSink, ConsoleWatch};
pub use i8042::I8042;
pub use serial::{Serial, SerialDeviceState, SerialError};
