//! virtio-net (device id 1) over a TAP interface.
//!
//! Two queues (RX 0, TX 1) of [`QUEUE_SIZE`], no control queue. Every frame
//! on both queues starts with a 12-byte `virtio_net_hdr_v1` (virtio 1.2,
//! 5.1.6: with VERSION_1 the header always has `num_buffers`); the tap is
//! opened with `IFF_VNET_HDR` and `TUNSETVNETHDRSZ` = 12, so headers pass
//! between the guest and the host kernel unchanged, which is what makes
//! checksum and segmentation offloads work without the VMM touching a
//! packet.
//!
//! Features: MAC, MTU (when configured), STATUS (the link is always up),
//! MRG_RXBUF, and the offloads (CSUM, GUEST_CSUM, GUEST/HOST_TSO4/6, and
//! GUEST/HOST_UFO) only when the tap accepts `TUNSETOFFLOAD` with them; at
//! activation the offloads the guest accepted become the tap's
//! (`TUNSETOFFLOAD`, applied by the event loop before it reads a frame).
//!
//! Data path (on the event-loop thread, ioeventfd in, irqfd out, one
//! interrupt per batch):
//! - TX: each chain (header + frame, at most [`MAX_FRAME`] bytes and
//!   [`QUEUE_SIZE`] descriptors) is gathered and written to the tap as one
//!   frame. A full tap (EAGAIN) leaves the chain in the ring and waits for
//!   the tap to be writable.
//! - RX: a frame read from the tap goes into one chain, or with MRG_RXBUF
//!   across as many as it needs (`num_buffers` set in the first). With too
//!   few buffers the frame waits in the device and the tap is not read
//!   until the guest posts more (its RX notify), so nothing is dropped on
//!   the host side; frames that can never fit are dropped and counted.
//!
//! A guest that writes garbage into the queues (bad descriptors, short
//! headers, huge lengths, loops) gets its chains back unused and counted in
//! [`NetStats`]; a ring it broke (a lying index) stops the device until a
//! reset, as for the other devices.
//!
//! Layout: [`frame`] parses chains and maps features (pure, fuzzable),
//! [`tap`] is the backend (the TAP and the [`NetBackend`] trait tests fake),
//! `device` implements [`VirtioDevice`](crate::virtio::VirtioDevice),
//! `event_handler` the event-loop side.
//!
//! Snapshots hold the layout (MAC, MTU, features, queues), never the tap: a
//! restored VM is given its own ([`Net::from_state`]).

mod device;
mod event_handler;
pub mod frame;
pub mod tap;

#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

pub use device::{Net, NetState};
pub use tap::{open_backend, Disconnected, NetBackend, Tap};

/// Queue indices and size.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const QUEUE_SIZE: u16 = 256;

/// `virtio_net_hdr_v1`: the header before every frame on both queues.
pub const VNET_HDR_LEN: usize = 12;
/// The largest frame with its header: a 64 KiB GSO packet, its Ethernet
/// and VLAN headers, and the virtio header (what Linux's virtio-net posts
/// for big buffers).
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65550;
/// The most frames read from the tap (or chains taken from TX) in one
/// event-loop turn, so one busy direction cannot starve the other.
pub const MAX_BATCH: usize = 256;

/// Where the tap comes from.
#[derive(Debug, Clone)]
pub enum TapSource {
    /// Attach to the TAP interface of this name (created before, in the
    /// network namespace the VMM runs in).
    Name(String),
    /// An already-open `/dev/net/tun` fd attached to a TAP (the device
    /// duplicates it).
    Fd(Arc<OwnedFd>),
    /// No backend: the guest sees a link that is up, what it sends is
    /// dropped (and counted), nothing arrives. What a template's net device
    /// is made with, and what a pod without a network gets at restore:
    /// nothing to create on the host, nothing to remove.
    Disconnected,
}

impl PartialEq for TapSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Name(a), Self::Name(b)) => a == b,
            (Self::Fd(a), Self::Fd(b)) => a.as_raw_fd() == b.as_raw_fd(),
            (Self::Disconnected, Self::Disconnected) => true,
            _ => false,
        }
    }
}

impl Eq for TapSource {}

impl std::fmt::Display for TapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => write!(f, "tap {n}"),
            Self::Fd(fd) => write!(f, "tap fd {}", fd.as_raw_fd()),
            Self::Disconnected => write!(f, "no backend"),
        }
    }
}

/// How a net device is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: TapSource,
    /// The guest interface's MAC (config space, VIRTIO_NET_F_MAC).
    pub mac: [u8; 6],
    /// The MTU offered to the guest (VIRTIO_NET_F_MTU), if any.
    pub mtu: Option<u16>,
}

/// The smallest MTU offered (virtio 1.2, 5.1.4.1: at least 68).
pub const MIN_MTU: u16 = 68;

/// Why a net device could not be created or restored.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("net {tap}: opening /dev/net/tun: {source}")]
    OpenTun { tap: String, source: std::io::Error },
    #[error("net {tap}: the interface name is empty, longer than 15 bytes or holds a NUL")]
    BadName { tap: String },
    #[error("net {tap}: {what}: {source}")]
    Sys {
        tap: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("net: MTU {0} is below {MIN_MTU}")]
    Mtu(u16),
    #[error("net: the MAC {0} is multicast or all zeros")]
    Mac(String),
    #[error("net {tap}: the snapshot's device offered features {saved:#x}; this tap supports only {now:#x}")]
    FeaturesLost { tap: String, saved: u64, now: u64 },
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// What the device counted: frames moved, and what it dropped or refused
/// (guest garbage, host errors). Every frame the device drops is counted
/// here; none is dropped silently.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// TX chains returned unsent: malformed, shorter than a header, too
    /// long, outside memory.
    pub tx_bad_chains: u64,
    /// Frames the tap refused (a header the host kernel rejects, an error).
    pub tx_errors: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// RX chains returned unused: malformed, read-only, too small for a
    /// header.
    pub rx_bad_chains: u64,
    /// Frames dropped because the guest's buffers could never hold them
    /// (too small without MRG_RXBUF, or a whole ring too small).
    pub rx_dropped: u64,
    /// Times RX waited for the guest to post buffers.
    pub rx_deferred: u64,
    /// Errors reading the tap.
    pub rx_errors: u64,
    /// Queue interrupts raised.
    pub interrupts: u64,
}
