//! virtio transports.

pub mod mmio;

pub use mmio::{MmioTransport, MmioTransportState, QueueSnapshot, TransportError};
