//! virtio-vsock (device id 19) with a hybrid-vsock Unix-socket backend.
//!
//! The host talks to the guest agent only through this device. The backend
//! follows the Firecracker / Cloud Hypervisor "hybrid vsock" convention:
//!
//! - host → guest: a host process connects to the Unix socket `uds_path`,
//!   writes `CONNECT <port>\n`, and reads `OK <host_port>\n` once the guest
//!   accepted; from then on the stream is the connection.
//! - guest → host: a guest connection to CID 2, port `P` is forwarded to the
//!   Unix socket `<uds_path>_P`.
//!
//! Layout: [`packet`] parses and writes descriptor chains (pure, fuzzable),
//! [`connection`] is one stream's state machine with credit-based flow
//! control, [`muxer`] maps connections to Unix sockets, `device` implements
//! [`VirtioDevice`](crate::virtio::VirtioDevice) and the queue processing,
//! `event_handler` the event-loop side.

mod connection;
mod device;
mod event_handler;
mod muxer;
pub mod packet;
mod uds;

#[cfg(test)]
mod snapshot_tests;
#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use device::{Vsock, VsockState};

/// The host's CID: every guest packet must be addressed to it.
pub const VSOCK_HOST_CID: u64 = 2;

/// Queue indices and size.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
pub const QUEUE_SIZE: u16 = 256;

/// `type` of a stream socket packet (the only type supported).
pub const VSOCK_TYPE_STREAM: u16 = 1;

/// Packet operations (virtio 1.2, 5.10.6).
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags: the sender will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

/// The event queue's only event.
pub const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// Receive buffer we advertise per connection (guest → host bytes we hold).
pub const CONN_BUF_ALLOC: u32 = 256 * 1024;
/// Forwarded bytes after which we tell the guest about freed space.
pub const CREDIT_UPDATE_THRESHOLD: u32 = 64 * 1024;
/// Largest payload in one packet (Linux uses 64 KiB too).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// The most descriptors in one TX, RX or event chain (Linux uses one or
/// two): a queue's worth.
pub const MAX_DESCRIPTORS: usize = QUEUE_SIZE as usize;
/// Connections (plus host handshakes in progress) beyond which new ones are refused.
pub const MAX_CONNECTIONS: usize = 1024;
/// Host-side ports for host-initiated connections count up from here.
pub const HOST_PORT_BASE: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line accepted.
pub const MAX_CONNECT_LINE: usize = 32;
/// How long a host handshake (CONNECT line, then the guest's answer) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors creating the device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock: {}: not a Unix socket, refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("vsock: {path}: in use by a live VM (something accepts connections there); refusing to take it over")]
    InUse { path: PathBuf },
    #[error("vsock: {path}: cannot tell whether the socket there is in use: {source}")]
    Probe {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock: removing stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock: binding {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("vsock: {what}: {source}")]
    Sys {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What a vsock device holds now (for logs, tests and the fuzzer's
/// resource-bound checks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Established and connecting streams (at most [`MAX_CONNECTIONS`] with
    /// the handshakes).
    pub connections: usize,
    /// Host connections still sending their `CONNECT` line.
    pub handshakes: usize,
    /// Guest bytes waiting for the Unix sockets, all streams together.
    pub buffered_bytes: usize,
    /// The most one stream holds (at most [`CONN_BUF_ALLOC`]).
    pub max_buffered_bytes: usize,
    /// Control packets (RSTs) waiting for RX buffers.
    pub control_backlog: usize,
}

/// Limits warnings about guest misbehaviour: the first few, then every
/// power of two.
#[derive(Debug, Default)]
pub(crate) struct WarnLimiter {
    count: u64,
}

impl WarnLimiter {
    /// Counts one occurrence; true when it should be logged.
    pub(crate) fn hit(&mut self) -> bool {
        self.count = self.count.saturating_add(1);
        self.count <= 8 || self.count.is_power_of_two()
    }
}
