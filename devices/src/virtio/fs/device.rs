//! The virtio-fs device: config space, activation, snapshots and the queue
//! work.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::Backend;
use super::relay::Relay;
use super::request::{
    decide, is_one_way, opcode, read_head, readable_after, strip_setid, walk, write_error_reply,
    Head, Split, Verdict,
};
use super::{validate_tag, FsConfig, FsError, HIPRIO_QUEUE, QUEUE_SIZE, REQUEST_QUEUE, TAG_MAX};
use crate::virtio::vsock::WarnLimiter;
use crate::virtio::{
    device_type, pop_chain, read_config_bytes, ActivateContext, ActivateError, InterruptKind,
    VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};

const NAME: &str = "virtio-fs";
const NUM_QUEUES: usize = 2;
const QUEUE_SIZES: [u16; NUM_QUEUES] = [QUEUE_SIZE; NUM_QUEUES];
/// `struct virtio_fs_config`: `tag[36]` and `num_request_queues: le32`.
const CONFIG_LEN: usize = TAG_MAX + 4;
/// Chains served per queue per event-loop pass; more wait for the next
/// pass (the device kicks itself), so one busy guest cannot hold the loop.
const BATCH: usize = QUEUE_SIZE as usize;

/// What the device holds between DRIVER_OK and reset.
pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// By queue index: hiprio, request.
    pub queues: [Queue; NUM_QUEUES],
    /// The queues' notify eventfds (KVM ioeventfds), by queue index.
    pub notify: [EventFd; NUM_QUEUES],
    relay: Relay,
    /// The driver broke a ring: nothing is served until it resets the
    /// device.
    broken: bool,
}

/// A virtio-fs device's state, as saved in a snapshot (the queues are saved
/// by the transport). The server's inode and handle tables (open host fds)
/// are not state, so a device can be saved only while it has none: not
/// mounted, or mounted with nothing asked of it since the INIT but the
/// root's attributes and the file system's statistics (a template that
/// mounts the share before its snapshot: every VM restored from it finds
/// the share mounted, served from the directory it brings). After a restore
/// the VMM creates the device with [`Fs::from_state`], choosing the
/// directory then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsState {
    pub tag: String,
    pub read_only: bool,
    pub acked_features: u64,
    /// The guest had sent FUSE_INIT (and no DESTROY since), and nothing
    /// but GETATTR and STATFS after it.
    pub mounted: bool,
}

/// A virtio-fs device sharing a host directory (or a template without one).
pub struct Fs {
    share: Share,
    shared_dir: Option<PathBuf>,
    config: [u8; CONFIG_LEN],
    acked_features: u64,
    pub(super) active: Option<Active>,
    /// Signalled on activation and reset: the event loop then brings its
    /// epoll registrations up to date.
    pub(super) control_evt: EventFd,
    /// The notify fds the event loop watches.
    pub(super) registered: Vec<RawFd>,
    /// Notify eventfds of past activations, kept open until the event loop
    /// has taken them out of epoll.
    pub(super) retired: Vec<EventFd>,
}

/// What serving a request needs besides the queues.
struct Share {
    tag: String,
    read_only: bool,
    /// `None` on a template device.
    backend: Option<Backend>,
    /// An INIT reached the server and no DESTROY or reset since.
    mounted: bool,
    /// Since the INIT the guest asked only what leaves no state in the
    /// server or names in the guest's caches (GETATTR, STATFS): the mount
    /// can be saved in a snapshot.
    pristine: bool,
    /// A reset asked for a fresh server; the event loop builds it (the
    /// reset runs on a vCPU thread, whose seccomp filter allows no file
    /// system calls).
    stale: bool,
    warn: WarnLimiter,
}

impl Fs {
    /// Checks the tag and the directory and creates the device (a template
    /// when `shared_dir` is `None`).
    pub fn new(config: FsConfig) -> Result<Fs, FsError> {
        let FsConfig {
            tag,
            shared_dir,
            read_only,
        } = config;
        validate_tag(&tag)?;
        let (shared_dir, backend) = match shared_dir {
            Some(dir) => {
                let dir = canonical_dir(&tag, dir)?;
                let backend = open_backend(&tag, &dir)?;
                (Some(dir), Some(backend))
            }
            None => (None, None),
        };
        let control_evt = EventFd::new(EFD_NONBLOCK).map_err(|source| FsError::Sys {
            tag: tag.clone(),
            what: "creating the control eventfd",
            source,
        })?;
        Ok(Fs {
            config: config_space(&tag),
            share: Share {
                tag,
                read_only,
                backend,
                mounted: false,
                pristine: false,
                stale: false,
                warn: WarnLimiter::default(),
            },
            shared_dir,
            acked_features: 0,
            active: None,
            control_evt,
            registered: Vec::new(),
            retired: Vec::new(),
        })
    }

    /// Re-creates a device from its snapshot state, sharing `shared_dir`
    /// (`None`: a template again, which a mounted share cannot be).
    pub fn from_state(state: &FsState, shared_dir: Option<PathBuf>) -> Result<Fs, FsError> {
        if state.mounted && shared_dir.is_none() {
            return Err(FsError::MountedNoDir {
                tag: state.tag.clone(),
            });
        }
        let mut dev = Fs::new(FsConfig {
            tag: state.tag.clone(),
            shared_dir,
            read_only: state.read_only,
        })?;
        dev.acked_features = state.acked_features & dev.features();
        // The guest's FUSE session goes on: the new server's root (imported
        // at creation) is the node the guest knows, and it knows no other.
        dev.share.mounted = state.mounted;
        dev.share.pristine = state.mounted;
        Ok(dev)
    }

    /// Whether the device can be snapshotted: not once the guest used a
    /// mounted share beyond its root's attributes. Call it before pausing
    /// for a snapshot to fail early.
    pub fn snapshot_check(&self) -> Result<(), FsError> {
        if self.share.mounted && !self.share.pristine {
            return Err(FsError::Mounted {
                tag: self.share.tag.clone(),
            });
        }
        Ok(())
    }

    /// The device's snapshot state; refused once the guest used the share.
    pub fn state(&self) -> Result<FsState, FsError> {
        self.snapshot_check()?;
        Ok(FsState {
            tag: self.share.tag.clone(),
            read_only: self.share.read_only,
            acked_features: self.acked_features,
            mounted: self.share.mounted,
        })
    }

    pub fn tag(&self) -> &str {
        &self.share.tag
    }

    /// The canonical shared directory; `None` for a template.
    pub fn shared_dir(&self) -> Option<&Path> {
        self.shared_dir.as_deref()
    }

    pub fn read_only(&self) -> bool {
        self.share.read_only
    }

    /// Whether the guest has mounted the share (sent FUSE_INIT, and no
    /// DESTROY or device reset since).
    pub fn mounted(&self) -> bool {
        self.share.mounted
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    pub(super) fn kick_event_loop(&self) {
        if let Err(e) = self.control_evt.write(1) {
            tracing::error!(tag = %self.share.tag, "virtio-fs: signalling the event loop: {e}");
        }
    }

    /// After a reset: drops the old server (closing the guest's open host
    /// files) and builds a fresh one. Runs on the event loop.
    pub(super) fn refresh_backend(&mut self) {
        if !self.share.stale {
            return;
        }
        self.share.stale = false;
        self.share.backend = None;
        if let Some(dir) = &self.shared_dir {
            match open_backend(&self.share.tag, dir) {
                Ok(b) => self.share.backend = Some(b),
                Err(e) => tracing::error!("{e}; the share answers ENODEV until restored"),
            }
        }
    }

    /// Serves the available requests of both queues; interrupts once if any
    /// was used.
    pub(super) fn process_queues(&mut self) {
        self.refresh_backend();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken {
            return;
        }
        let mut used_any = false;
        let mut broken = None;
        'queues: for index in [HIPRIO_QUEUE, REQUEST_QUEUE] {
            let mut served = 0usize;
            while served < BATCH {
                let chain = match pop_chain(&mut active.queues[index], &active.mem) {
                    Ok(Some(chain)) => chain,
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some((index, e));
                        break 'queues;
                    }
                };
                let head = chain.head_index();
                let used = self
                    .share
                    .serve_chain(&active.mem, &mut active.relay, chain);
                if let Err(e) = active.queues[index].add_used(&active.mem, head, used) {
                    broken = Some((index, e));
                    break 'queues;
                }
                used_any = true;
                served += 1;
            }
            if served == BATCH {
                // More may be waiting: come back on the next pass.
                if let Err(e) = active.notify[index].write(1) {
                    tracing::error!(tag = %self.share.tag, "virtio-fs: re-kicking queue {index}: {e}");
                }
            }
        }
        if used_any {
            if let Err(e) = active.interrupt.trigger(InterruptKind::Queue) {
                tracing::error!(tag = %self.share.tag, "virtio-fs: interrupting the guest: {e}");
            }
        }
        if let Some((index, e)) = broken {
            tracing::warn!(
                tag = %self.share.tag,
                "virtio-fs: the driver broke queue {index} ({e}); the device needs a reset"
            );
            active.broken = true;
            if let Err(e) = active.interrupt.needs_reset() {
                tracing::error!(tag = %self.share.tag, "virtio-fs: interrupting the guest: {e}");
            }
        }
    }

    /// Drops the queues (device reset from the driver); their notify
    /// eventfds wait in `retired` until the event loop unregisters them.
    fn deactivate(&mut self) {
        if let Some(active) = self.active.take() {
            self.retired.extend(active.notify);
        }
    }
}

impl Share {
    /// Serves one chain; returns the used length.
    fn serve_chain(
        &mut self,
        mem: &GuestMemoryMmap,
        relay: &mut Relay,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let layout = match walk(mem, chain) {
            Ok(l) => l,
            Err(e) => {
                if self.warn.hit() {
                    tracing::warn!(tag = %self.tag, "virtio-fs: bad chain, dropped: {e}");
                }
                return 0;
            }
        };
        let mut head = match read_head(mem, &layout) {
            Ok(h) => h,
            Err(e) => {
                if self.warn.hit() {
                    tracing::warn!(tag = %self.tag, "virtio-fs: bad request: {e}");
                }
                return match e.unique() {
                    Some(unique) => self.reply(mem, &layout, unique, libc::EINVAL),
                    None => 0,
                };
            }
        };
        let op = head.header.opcode;
        let unique = head.header.unique;
        if !matches!(op, opcode::INIT | opcode::GETATTR | opcode::STATFS) {
            self.pristine = false;
        }
        let backend = match decide(&head, self.read_only, self.backend.is_some()) {
            Verdict::Drop => return 0,
            Verdict::Reply(errno) => {
                tracing::trace!(tag = %self.tag, op, errno, "virtio-fs: answered by the device");
                return self.reply(mem, &layout, unique, errno);
            }
            Verdict::Serve => match &self.backend {
                Some(b) => b,
                None => return self.reply(mem, &layout, unique, libc::ENODEV),
            },
        };
        let cleared = strip_setid(&mut head);
        if cleared != 0 {
            tracing::debug!(tag = %self.tag, op, cleared = format_args!("{cleared:#o}"), "virtio-fs: set-id bits stripped");
        }
        match serve(backend, relay, &layout, &head) {
            Ok(n) => match op {
                opcode::INIT => {
                    self.mounted = true;
                    self.pristine = true;
                    super::init::amend_init_reply(mem, &layout.readable, &layout.writable, n);
                    n
                }
                opcode::DESTROY => {
                    self.mounted = false;
                    // fuse-backend-rs writes DESTROY's reply header but
                    // reports 0 bytes: write it again and count it.
                    self.reply(mem, &layout, unique, 0)
                }
                _ => n,
            },
            Err(e) => {
                if self.warn.hit() {
                    tracing::warn!(tag = %self.tag, op, "virtio-fs: request failed: {e}");
                }
                if op == opcode::INIT {
                    // The server may have imported the root: be safe.
                    self.mounted = true;
                    self.pristine = false;
                }
                if is_one_way(op) {
                    0
                } else {
                    self.reply(mem, &layout, unique, e.errno())
                }
            }
        }
    }

    /// Answers a request with `errno` (0: success without a body); returns
    /// the used length (0 when there is no room for the answer).
    fn reply(&mut self, mem: &GuestMemoryMmap, layout: &Split, unique: u64, errno: i32) -> u32 {
        match write_error_reply(mem, &layout.writable, layout.writable_len, unique, errno) {
            Ok(n) => n,
            Err(e) => {
                if self.warn.hit() {
                    tracing::warn!(tag = %self.tag, errno, "virtio-fs: cannot answer a request: {e}");
                }
                0
            }
        }
    }
}

/// Why a request handed to the server was not answered by it.
#[derive(Debug, thiserror::Error)]
enum ServeFailure {
    #[error("{0}")]
    Relay(#[from] super::relay::RelayError),
    #[error("{0}")]
    Serve(#[from] super::backend::ServeError),
}

impl ServeFailure {
    fn errno(&self) -> i32 {
        match self {
            ServeFailure::Relay(_) => libc::EIO,
            ServeFailure::Serve(e) => e.errno(),
        }
    }
}

fn serve(
    backend: &Backend,
    relay: &mut Relay,
    layout: &Split,
    head: &Head,
) -> Result<u32, ServeFailure> {
    let rest = readable_after(layout, head.len);
    let (mem, chain) = relay.chain(&head.bytes[..head.len], &rest, &layout.writable)?;
    Ok(backend.serve(head.header.opcode, mem, chain)?)
}

/// The canonical form of `dir`, which must be a directory with a UTF-8 path
/// (the server opens its root with `O_NOFOLLOW`, and takes a `String`).
fn canonical_dir(tag: &str, dir: PathBuf) -> Result<PathBuf, FsError> {
    let canonical = match std::fs::canonicalize(&dir) {
        Ok(c) => c,
        Err(source) => {
            return Err(FsError::SharedDir {
                tag: tag.to_string(),
                dir,
                source,
            })
        }
    };
    if !canonical.is_dir() {
        return Err(FsError::NotADirectory {
            tag: tag.to_string(),
            dir,
        });
    }
    if canonical.to_str().is_none() {
        return Err(FsError::NotUtf8 {
            tag: tag.to_string(),
            dir,
        });
    }
    Ok(canonical)
}

fn open_backend(tag: &str, dir: &Path) -> Result<Backend, FsError> {
    let server = |source| FsError::Server {
        tag: tag.to_string(),
        dir: dir.to_path_buf(),
        source,
    };
    // `canonical_dir` checked it is UTF-8.
    let root = dir
        .to_str()
        .ok_or_else(|| server(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    Backend::new(root).map_err(server)
}

/// `struct virtio_fs_config` (little endian).
fn config_space(tag: &str) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    // `validate_tag` bounds it to TAG_MAX bytes.
    let n = tag.len().min(TAG_MAX);
    c[..n].copy_from_slice(&tag.as_bytes()[..n]);
    c[TAG_MAX..].copy_from_slice(&1u32.to_le_bytes());
    c
}

impl VirtioDevice for Fs {
    fn name(&self) -> &str {
        NAME
    }

    fn device_type(&self) -> u32 {
        device_type::FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, acked: u64) {
        self.acked_features = acked & self.features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let got = ctx.queues.len();
        let count_error = || ActivateError::QueueCount {
            device: format!("{NAME} {}", self.share.tag),
            expected: NUM_QUEUES,
            got,
        };
        let mut queues = ctx.queues.into_iter();
        let (Some(hiprio), Some(request), None) = (queues.next(), queues.next(), queues.next())
        else {
            return Err(count_error());
        };
        if hiprio.index != HIPRIO_QUEUE || request.index != REQUEST_QUEUE {
            return Err(count_error());
        }
        let relay = Relay::new(&ctx.mem).map_err(|e| ActivateError::Device {
            device: format!("{NAME} {}", self.share.tag),
            reason: e.to_string(),
        })?;
        self.deactivate();
        self.acked_features = ctx.acked_features & self.features();
        self.active = Some(Active {
            mem: ctx.mem,
            interrupt: ctx.interrupt,
            queues: [hiprio.queue, request.queue],
            notify: [hiprio.notify, request.notify],
            relay,
            broken: false,
        });
        tracing::debug!(tag = %self.share.tag, "virtio-fs: activated");
        self.kick_event_loop();
        Ok(())
    }

    fn reset(&mut self) {
        tracing::debug!(tag = %self.share.tag, "virtio-fs: reset");
        self.deactivate();
        self.acked_features = 0;
        // The guest's FUSE session is gone: its inodes and open files go
        // with the server, which the event loop rebuilds (this is a vCPU
        // thread: no file work here).
        self.share.stale = true;
        self.share.mounted = false;
        self.kick_event_loop();
    }

    fn queue_states(&self) -> Option<Vec<(usize, QueueState)>> {
        let active = self.active.as_ref()?;
        Some(
            active
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| (i, q.state()))
                .collect(),
        )
    }
}
