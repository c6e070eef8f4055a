//! The virtio-blk device: config space, activation, and the request work.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::request::{
    parse_request, DiscardRange, Request, RequestKind, Segment, ID_BYTES, MAX_DISCARD_SECTORS,
    MAX_DISCARD_SEG, MAX_WRITE_ZEROES_SEG, SECTOR_SHIFT, SECTOR_SIZE, SEG_MAX,
};
use super::{BlockConfig, BlockError, QUEUE_SIZE};
use crate::virtio::vsock::WarnLimiter;
use crate::virtio::{
    device_type, pop_chain, read_config_bytes, ActivateContext, ActivateError, InterruptKind,
    VirtioDevice, VirtioInterrupt,
};

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Size of the bounce buffer between the image and guest memory.
const IO_CHUNK: usize = 64 * 1024;
/// `struct virtio_blk_config` up to `write_zeroes_may_unmap` and its padding.
const CONFIG_LEN: usize = 60;
/// Discard granularity offered to the driver, in sectors (4 KiB, the usual
/// host filesystem block).
const DISCARD_ALIGNMENT: u32 = 8;

/// What the device holds between DRIVER_OK and reset.
pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queue: Queue,
    /// The queue's notify eventfd (a KVM ioeventfd).
    pub notify: EventFd,
    /// The driver broke the queue: nothing is served until a reset.
    pub broken: bool,
}

/// A block device's state, as saved in a snapshot (the queue is saved by
/// the transport). Requests are served synchronously, so none is in flight
/// at a snapshot. After a restore the VMM creates the device with
/// [`Block::from_state`], which checks the image still has the same size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {
    pub disk_path: String,
    pub read_only: bool,
    pub id: String,
    pub capacity_sectors: u64,
}

/// The image and the I/O on it.
struct Disk {
    path: PathBuf,
    file: File,
    read_only: bool,
    id: String,
    capacity: u64,
    buf: Vec<u8>,
    /// Cleared once the host says it does not support the mode.
    punch_hole: bool,
    zero_range: bool,
}

/// A failed request's cause, for the log.
#[derive(Debug, thiserror::Error)]
enum IoError {
    #[error("disk: {0}")]
    Disk(#[from] io::Error),
    #[error("guest memory: {0}")]
    Memory(#[from] GuestMemoryError),
    #[error("write to a read-only disk")]
    ReadOnly,
}

/// A virtio-blk device over a raw image.
pub struct Block {
    /// `block <id>` (or `block <path>` without an id), for logs and errors.
    name: String,
    disk: Disk,
    config: [u8; CONFIG_LEN],
    features: u64,
    acked_features: u64,
    pub(super) active: Option<Active>,
    /// Signalled on activation and reset: the event loop then brings its
    /// epoll registrations up to date.
    pub(super) control_evt: EventFd,
    /// The notify fd the event loop watches, if any.
    pub(super) registered: Option<RawFd>,
    /// Notify eventfds of past activations, kept open until the event loop
    /// has taken them out of epoll.
    pub(super) retired: Vec<EventFd>,
    warn: WarnLimiter,
}

impl Block {
    /// Opens the image (read-only when asked) and creates the device.
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let BlockConfig {
            path,
            read_only,
            id,
        } = config;
        if id.len() > ID_BYTES {
            return Err(BlockError::IdTooLong {
                len: id.len(),
                path,
                id,
            });
        }
        let mut file = match OpenOptions::new().read(true).write(!read_only).open(&path) {
            Ok(f) => f,
            Err(source) => return Err(BlockError::Open { path, source }),
        };
        // Seeking works for block devices too, whose metadata length is 0.
        let bytes = match file.seek(SeekFrom::End(0)) {
            Ok(n) => n,
            Err(source) => return Err(BlockError::Size { path, source }),
        };
        let capacity = bytes >> SECTOR_SHIFT;
        if !bytes.is_multiple_of(SECTOR_SIZE) {
            tracing::warn!(
                path = %path.display(),
                "block: the image size is not a multiple of {SECTOR_SIZE}; the last {} bytes are not visible",
                bytes % SECTOR_SIZE
            );
        }
        let control_evt = match EventFd::new(EFD_NONBLOCK) {
            Ok(e) => e,
            Err(source) => {
                return Err(BlockError::Sys {
                    path,
                    what: "creating the control eventfd",
                    source,
                })
            }
        };
        let mut features = (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX)
            | (1u64 << VIRTIO_BLK_F_BLK_SIZE);
        if read_only {
            features |= 1u64 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1u64 << VIRTIO_BLK_F_DISCARD) | (1u64 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        let name = if id.is_empty() {
            format!("block {}", path.display())
        } else {
            format!("block {id}")
        };
        Ok(Self {
            name,
            config: config_space(capacity),
            disk: Disk {
                path,
                file,
                read_only,
                id,
                capacity,
                buf: vec![0; IO_CHUNK],
                punch_hole: true,
                zero_range: true,
            },
            features,
            acked_features: 0,
            active: None,
            control_evt,
            registered: None,
            retired: Vec::new(),
            warn: WarnLimiter::default(),
        })
    }

    /// Re-creates a device from its snapshot state; the image must still
    /// hold the same number of sectors.
    pub fn from_state(state: &BlockState) -> Result<Block, BlockError> {
        let dev = Self::new(BlockConfig {
            path: PathBuf::from(&state.disk_path),
            read_only: state.read_only,
            id: state.id.clone(),
        })?;
        if dev.disk.capacity != state.capacity_sectors {
            return Err(BlockError::CapacityChanged {
                path: dev.disk.path.clone(),
                saved: state.capacity_sectors,
                now: dev.disk.capacity,
            });
        }
        Ok(dev)
    }

    /// The device's snapshot state.
    pub fn state(&self) -> BlockState {
        BlockState {
            disk_path: self.disk.path.to_string_lossy().into_owned(),
            read_only: self.disk.read_only,
            id: self.disk.id.clone(),
            capacity_sectors: self.disk.capacity,
        }
    }

    /// The image's path.
    pub fn path(&self) -> &Path {
        &self.disk.path
    }

    /// The disk's size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity
    }

    pub fn read_only(&self) -> bool {
        self.disk.read_only
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub(super) fn kick_event_loop(&self) {
        if let Err(e) = self.control_evt.write(1) {
            tracing::error!("block: signalling the event loop: {e}");
        }
    }

    /// Serves every available request; interrupts once if any was used.
    /// A queue the driver broke (an available index more than a ring ahead,
    /// a head outside the ring) stops the device until the driver resets it.
    pub(super) fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken {
            return;
        }
        let mem = &active.mem;
        let mut used_any = false;
        let mut broken = None;
        loop {
            let chain = match pop_chain(&mut active.queue, mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            };
            let head = chain.head_index();
            let used = match parse_request(mem, chain, self.disk.capacity) {
                Ok(req) => {
                    let (status, data) = match self.disk.execute(mem, &req) {
                        Ok(n) => (VIRTIO_BLK_S_OK as u8, n),
                        Err(e) => {
                            if self.warn.hit() {
                                tracing::warn!(
                                    path = %self.disk.path.display(),
                                    "block: request {:?} failed: {e}",
                                    req.kind
                                );
                            }
                            (VIRTIO_BLK_S_IOERR as u8, 0)
                        }
                    };
                    write_status(mem, req.status, status);
                    data + 1
                }
                Err(e) => {
                    if self.warn.hit() {
                        tracing::warn!("block: bad request: {e}");
                    }
                    match e.status {
                        Some(at) => {
                            write_status(mem, at, e.error.status_code());
                            1
                        }
                        None => 0,
                    }
                }
            };
            if let Err(e) = active.queue.add_used(mem, head, used) {
                broken = Some(e);
                break;
            }
            used_any = true;
        }
        if used_any {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Queue) {
                tracing::error!("block: interrupting the guest: {e}");
            }
        }
        if let Some(e) = broken {
            tracing::warn!(
                path = %self.disk.path.display(),
                "block: the driver broke the request queue ({e}); the device needs a reset"
            );
            active.broken = true;
            if let Err(e) = active.interrupt.needs_reset() {
                tracing::error!("block: interrupting the guest: {e}");
            }
        }
    }

    /// Drops the queue (device reset from the driver); its notify eventfd
    /// waits in `retired` until the event loop unregisters it.
    fn deactivate(&mut self) {
        if let Some(active) = self.active.take() {
            self.retired.push(active.notify);
        }
    }
}

fn write_status(mem: &GuestMemoryMmap, at: GuestAddress, status: u8) {
    if let Err(e) = mem.write_obj(status, at) {
        tracing::error!("block: writing a request status: {e}");
    }
}

/// `struct virtio_blk_config` (little endian).
fn config_space(capacity: u64) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &capacity.to_le_bytes());
    put(12, &SEG_MAX.to_le_bytes());
    put(20, &(SECTOR_SIZE as u32).to_le_bytes());
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEG.to_le_bytes());
    put(44, &DISCARD_ALIGNMENT.to_le_bytes());
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(52, &MAX_WRITE_ZEROES_SEG.to_le_bytes());
    // write_zeroes_may_unmap: a write-zeroes with the unmap flag may punch.
    put(56, &[1]);
    c
}

/// True when `e` says the host does not support an fallocate mode.
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::ENODEV | libc::EINVAL)
    )
}

impl Disk {
    /// Runs a parsed request; returns the bytes written to guest buffers.
    fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request) -> Result<u32, IoError> {
        let writes = matches!(
            req.kind,
            RequestKind::Out { .. } | RequestKind::Discard(_) | RequestKind::WriteZeroes(_)
        );
        if writes && self.read_only {
            return Err(IoError::ReadOnly);
        }
        match &req.kind {
            RequestKind::In { sector } => {
                self.read(mem, &req.data, sector << SECTOR_SHIFT)?;
                // Bounded by MAX_DATA_BYTES.
                Ok(req.data_len as u32)
            }
            RequestKind::Out { sector } => {
                self.write(mem, &req.data, sector << SECTOR_SHIFT)?;
                Ok(0)
            }
            RequestKind::Flush => {
                if !self.read_only {
                    self.file.sync_data()?;
                }
                Ok(0)
            }
            RequestKind::GetId => {
                let mut id = [0u8; ID_BYTES];
                id[..self.id.len()].copy_from_slice(self.id.as_bytes());
                let mut done = 0usize;
                for seg in &req.data {
                    let n = seg.len as usize;
                    mem.write_slice(&id[done..done + n], seg.addr)?;
                    done += n;
                }
                Ok(done as u32)
            }
            RequestKind::Discard(ranges) => {
                for r in ranges {
                    self.discard(r)?;
                }
                Ok(0)
            }
            RequestKind::WriteZeroes(ranges) => {
                for r in ranges {
                    self.write_zeroes(r)?;
                }
                Ok(0)
            }
        }
    }

    fn read(&mut self, mem: &GuestMemoryMmap, data: &[Segment], off: u64) -> Result<(), IoError> {
        for (addr, file_off, n) in chunks(data, off) {
            let buf = &mut self.buf[..n];
            self.file.read_exact_at(buf, file_off)?;
            mem.write_slice(buf, addr)?;
        }
        Ok(())
    }

    fn write(&mut self, mem: &GuestMemoryMmap, data: &[Segment], off: u64) -> Result<(), IoError> {
        for (addr, file_off, n) in chunks(data, off) {
            let buf = &mut self.buf[..n];
            mem.read_slice(buf, addr)?;
            self.file.write_all_at(buf, file_off)?;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, off: u64, len: u64) -> io::Result<()> {
        let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
        let off = libc::off_t::try_from(off).map_err(|_| invalid())?;
        let len = libc::off_t::try_from(len).map_err(|_| invalid())?;
        // SAFETY: fallocate on a file we own; no memory is passed.
        if unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, len) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Deallocates the range with a hole; `Ok(false)` when the host cannot.
    fn punch(&mut self, off: u64, len: u64) -> io::Result<bool> {
        if !self.punch_hole {
            return Ok(false);
        }
        match self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off,
            len,
        ) {
            Ok(()) => Ok(true),
            Err(e) if unsupported(&e) => {
                tracing::debug!(path = %self.path.display(), "block: no hole punching: {e}");
                self.punch_hole = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn discard(&mut self, r: &DiscardRange) -> io::Result<()> {
        let (off, len) = byte_range(r);
        if !self.punch(off, len)? {
            self.fill_zeroes(off, len)?;
        }
        Ok(())
    }

    fn write_zeroes(&mut self, r: &DiscardRange) -> io::Result<()> {
        let (off, len) = byte_range(r);
        if self.zero_range {
            match self.fallocate(
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                len,
            ) {
                Ok(()) => return Ok(()),
                Err(e) if unsupported(&e) => {
                    tracing::debug!(path = %self.path.display(), "block: no zero range: {e}");
                    self.zero_range = false;
                }
                Err(e) => return Err(e),
            }
        }
        // Without the unmap flag the range must stay allocated.
        if r.unmap && self.punch(off, len)? {
            return Ok(());
        }
        self.fill_zeroes(off, len)
    }

    fn fill_zeroes(&mut self, mut off: u64, len: u64) -> io::Result<()> {
        let end = off + len;
        self.buf.fill(0);
        while off < end {
            let n = (end - off).min(IO_CHUNK as u64) as usize;
            self.file.write_all_at(&self.buf[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }
}

/// A segment's byte range (within the disk: checked by the parser).
fn byte_range(r: &DiscardRange) -> (u64, u64) {
    (
        r.sector << SECTOR_SHIFT,
        u64::from(r.num_sectors) << SECTOR_SHIFT,
    )
}

impl VirtioDevice for Block {
    fn name(&self) -> &str {
        &self.name
    }

    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, acked: u64) {
        self.acked_features = acked & self.features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let mut queues = ctx.queues.into_iter();
        let (Some(aq), None) = (queues.next(), queues.next()) else {
            return Err(ActivateError::QueueCount {
                device: self.name.clone(),
                expected: 1,
                got,
            });
        };
        if aq.index != 0 {
            return Err(ActivateError::QueueCount {
                device: self.name.clone(),
                expected: 1,
                got,
            });
        }
        self.deactivate();
        self.acked_features = ctx.acked_features & self.features;
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queue: aq.queue,
            notify: aq.notify,
            broken: false,
        });
        tracing::debug!(path = %self.disk.path.display(), "block: activated");
        self.kick_event_loop();
        Ok(())
    }

    fn reset(&mut self) {
        tracing::debug!(path = %self.disk.path.display(), "block: reset");
        self.deactivate();
        self.acked_features = 0;
        self.kick_event_loop();
    }

    fn queue_states(&self) -> Option<Vec<(usize, QueueState)>> {
        let active = self.active.as_ref()?;
        Some(vec![(0, active.queue.state())])
    }
}

/// Splits the data segments of a request starting at disk offset `off` into
/// pieces of at most `IO_CHUNK` bytes: (guest address, disk offset, length).
fn chunks(data: &[Segment], off: u64) -> impl Iterator<Item = (GuestAddress, u64, usize)> + '_ {
    let mut file_off = off;
    data.iter()
        .flat_map(|seg| {
            let len = u64::from(seg.len);
            (0..len).step_by(IO_CHUNK).map(move |done| {
                (
                    seg.addr.0 + done,
                    (len - done).min(IO_CHUNK as u64) as usize,
                )
            })
        })
        .map(move |(addr, n)| {
            let here = file_off;
            file_off += n as u64;
            (GuestAddress(addr), here, n)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hosts without fallocate modes get zeroes written instead.
    #[test]
    fn zero_fill_fallback() {
        let path =
            std::env::temp_dir().join(format!("husk-blk-fallback-{}.img", std::process::id()));
        std::fs::write(&path, vec![0xabu8; 256 * 1024]).unwrap();
        let mut dev = Block::new(BlockConfig {
            path: path.clone(),
            read_only: false,
            id: String::new(),
        })
        .unwrap();
        dev.disk.zero_range = false;
        dev.disk.punch_hole = false;
        let range = |sector, num_sectors| DiscardRange {
            sector,
            num_sectors,
            unmap: true,
        };
        // 160 sectors: more than one copy buffer.
        dev.disk.write_zeroes(&range(1, 160)).unwrap();
        dev.disk.discard(&range(300, 2)).unwrap();
        let file = std::fs::read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(file.len(), 256 * 1024);
        let zero = |s: usize, n: usize| &file[s * 512..(s + n) * 512];
        assert!(zero(0, 1).iter().all(|b| *b == 0xab));
        assert!(zero(1, 160).iter().all(|b| *b == 0));
        assert!(zero(161, 139).iter().all(|b| *b == 0xab));
        assert!(zero(300, 2).iter().all(|b| *b == 0));
        assert!(zero(302, 210).iter().all(|b| *b == 0xab));
    }
}
