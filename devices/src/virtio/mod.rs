//! virtio: the device trait, interrupts, and the MMIO transport.
//!
//! A device owns nothing until the driver sets DRIVER_OK: then the transport
//! hands it the guest memory, its interrupt and the ready queues, each with
//! the eventfd that KVM signals when the guest notifies it (ioeventfd).
//! Devices are tested without KVM on mock guest memory (`test_utils` holds
//! the driver's side of a split queue that their tests share).

pub mod block;
pub mod fs;
pub mod interrupt;
pub mod transport;
pub mod vsock;

#[cfg(test)]
mod test_utils;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

pub use interrupt::{InterruptKind, VirtioInterrupt};

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// VIRTIO_F_VERSION_1: the modern interface, which husk requires.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Device ids.
pub mod device_type {
    pub const NET: u32 = 1;
    pub const BLOCK: u32 = 2;
    pub const VSOCK: u32 = 19;
    pub const FS: u32 = 26;
}

/// A queue handed to a device at activation.
pub struct ActiveQueue {
    /// The queue's index in the device.
    pub index: usize,
    pub queue: Queue,
    /// Signalled (by KVM's ioeventfd) when the driver notifies the queue.
    pub notify: EventFd,
}

/// What a device receives when the driver sets DRIVER_OK.
pub struct ActivateContext {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// One entry per queue, in index order.
    pub queues: Vec<ActiveQueue>,
}

/// Why a device could not be activated.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("{device}: expected {expected} queues, the driver readied {got}")]
    QueueCount {
        device: String,
        expected: usize,
        got: usize,
    },
    #[error("{device}: {reason}")]
    Device { device: String, reason: String },
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Names the device in logs and errors.
    fn name(&self) -> &str;
    /// The virtio device id.
    fn device_type(&self) -> u32;
    /// The maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// The feature bits the device offers.
    fn features(&self) -> u64;
    /// The driver's accepted feature bits (a subset of [`features`](Self::features)).
    fn ack_features(&mut self, _acked: u64) {}
    /// Reads `data.len()` bytes of config space at `offset`; out of range reads zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes config space; devices without writable config ignore it.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Takes the queues and starts working.
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// The driver reset the device: drop the queues, stop processing, and be
    /// ready to be activated again.
    fn reset(&mut self);
    /// The live state of the queues the device took at activation, by queue
    /// index (the transport's copies go stale as the device advances
    /// `next_avail`/`next_used`); `None` when not activated. Snapshots read
    /// it, so every device that keeps queues must implement it.
    fn queue_states(&self) -> Option<Vec<(usize, virtio_queue::QueueState)>> {
        None
    }
}

/// Copies `src[offset..]` into `data`, zero-filling what lies outside `src`.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - start);
    data[..n].copy_from_slice(&src[start..start + n]);
}
