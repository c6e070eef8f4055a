//! virtio-blk (device id 2) over a raw disk image.
//!
//! One request queue of [`QUEUE_SIZE`]. The device offers FLUSH, SEG_MAX
//! and BLK_SIZE (512); DISCARD and WRITE_ZEROES for a writable disk, RO for
//! a read-only one (which answers writes, discards and write-zeroes with
//! VIRTIO_BLK_S_IOERR all the same).
//! Reads and writes go to the image with `pread`/`pwrite` through a bounded
//! buffer; FLUSH is `fdatasync` before the status is written; DISCARD and
//! WRITE_ZEROES use `fallocate` (punch hole / zero range) where the host
//! filesystem supports it, and write zeroes otherwise.
//!
//! Layout: [`request`] parses descriptor chains (pure, fuzzable), `device`
//! implements [`VirtioDevice`](crate::virtio::VirtioDevice) and the I/O,
//! `event_handler` the event-loop side.
//!
//! Requests are served synchronously on the event-loop thread: a slow disk
//! delays the other devices on that loop.

mod device;
mod event_handler;
pub mod request;

#[cfg(test)]
mod test_utils;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use device::{Block, BlockState};

/// The request queue's size.
pub const QUEUE_SIZE: u16 = 256;

/// How a block device is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The raw disk image (a regular file or a block device).
    pub path: PathBuf,
    /// Open the image read-only and offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes).
    pub id: String,
}

/// Why a block device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("opening the disk image {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("finding the size of the disk image {}: {source}", path.display())]
    Size {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("disk image {}: the id {id:?} is {len} bytes, more than 20", path.display())]
    IdTooLong {
        path: PathBuf,
        id: String,
        len: usize,
    },
    #[error("disk image {}: it holds {now} sectors, the snapshot says {saved}", path.display())]
    CapacityChanged { path: PathBuf, saved: u64, now: u64 },
    #[error("disk image {}: {what}: {source}", path.display())]
    Sys {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
}
