//! One pod VM's host directory and the mounts the shim makes in it.
//!
//! ```text
//! <run_dir>/<pod key>/              0700, one per pod (see `pod_dir`)
//!   <incarnation>/                  0700, one per VM of the pod
//!     v.sock                        the VM's vsock socket (+ v.sock_<port>)
//!     monitor.sock                  the VM's counters (0600, `crate::monitor`)
//!     run/<sandbox id>/             the sandbox's own directory
//!     mounts/                       host-private: a bind of itself, shared
//!       <cid>/rootfs                containerd's rootfs mounts
//!       <cid>/mounts/<i>            bind volume i of the spec
//!     shared/                       read-only bind of mounts/ (nosuid,
//!                                   nodev, noexec), a slave of it: the
//!                                   virtio-fs share, what the guest sees
//! ```
//!
//! The guest sees `mounts/` only through `shared/`, read-only: it can write
//! inside a container's rootfs and read-write volumes (mounts of their own,
//! with their own flags, propagated from `mounts/`), and nothing else. It
//! cannot create, rename, link or remove anything the shim walks, and it
//! cannot fill the host's `/run`. Every path operation is on a directory
//! descriptor with one component (`super::sys`), and what to unmount or
//! remove is decided from what this tree recorded in memory, never by
//! listing a directory.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use husk_shim_protos::mount::Mount;

use super::remove::{remove_tree, RemoveError};
use super::sys;
use crate::shim_v2::rootfs::parse_options;
use crate::shim_v2::spec::Volume;

/// The host-private tree, in an incarnation's directory.
pub const MOUNTS: &str = "mounts";
/// Its read-only view, the pod's virtio-fs share.
pub const SHARED: &str = "shared";
/// The sandbox's own directories' parent.
pub const RUN: &str = "run";
/// A container's rootfs, in its directory.
pub const ROOTFS: &str = "rootfs";
/// A container's volumes' directory, in its directory.
pub const VOLUMES: &str = crate::shim_v2::spec::MOUNTS_DIR;

/// Why host file work failed; says on what.
#[derive(Debug, thiserror::Error)]
pub enum HostFsError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}: a source: {source}")]
    Source {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("container {cid} is attached already")]
    Attached { cid: String },
    #[error("container {cid}: the pod VM's directory is released")]
    Released { cid: String },
    #[error(transparent)]
    Remove(#[from] RemoveError),
    #[error("{what}: still mounted; kept")]
    Kept { what: String },
}

impl HostFsError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> HostFsError {
        let what = what.into();
        move |source| HostFsError::Io { what, source }
    }
}

/// What the tree recorded of one container.
#[derive(Debug, Default)]
struct Attached {
    /// Its directory and `rootfs` exist.
    rootfs_dir: bool,
    /// Its `mounts` directory exists.
    volumes_dir: bool,
    /// Volume mount points made (names in `mounts`, and whether each is
    /// a directory), in order.
    volumes: Vec<(String, bool)>,
}

/// A unique name for a VM incarnation's directory (this process's pid and
/// a counter: another shim of the same pod is another process).
fn incarnation() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:x}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One pod VM's directory; [`PodTree::release`] (or drop) unmounts what
/// it mounted and removes it.
pub struct PodTree {
    /// For messages: the pod's id.
    pod: String,
    /// `<run_dir>/<pod key>`.
    pod_dir: PathBuf,
    /// `<pod_dir>/<incarnation>`.
    dir: PathBuf,
    name: String,
    /// The pod directory, the incarnation's, and the root of the `mounts`
    /// bind.
    pod_fd: OwnedFd,
    dir_fd: OwnedFd,
    mounts_fd: OwnedFd,
    /// None once released.
    state: Mutex<Option<HashMap<String, Attached>>>,
}

impl std::fmt::Debug for PodTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTree").field("dir", &self.dir).finish()
    }
}

impl PodTree {
    /// Makes a new incarnation's directory under `pod_dir` (made, mode
    /// 0700, if missing) with its `mounts` and read-only `shared` binds.
    pub fn create(pod: &str, pod_dir: &Path) -> Result<PodTree, HostFsError> {
        let shown = pod_dir.display().to_string();
        let name = incarnation();
        let dir = pod_dir.join(&name);
        // An older incarnation's release removes the pod's directory when
        // it finds it empty, which may race this: try again then.
        let mut tries = 0;
        let (pod_fd, dir_fd) = loop {
            tries += 1;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(pod_dir)
                .map_err(HostFsError::io(format!("creating {shown}")))?;
            let pod_fd =
                sys::open_host_dir(pod_dir).map_err(HostFsError::io(format!("opening {shown}")))?;
            match sys::mkdir_at(pod_fd.as_fd(), &name, 0o700) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) && tries < 3 => continue,
                Err(e) => return Err(HostFsError::io(format!("creating {}", dir.display()))(e)),
            }
            match sys::open_dir(pod_fd.as_fd(), &name) {
                Ok(dir_fd) => break (pod_fd, dir_fd),
                Err(e) => {
                    let _ = sys::unlink_at(pod_fd.as_fd(), &name, true);
                    return Err(HostFsError::io(format!("opening {}", dir.display()))(e));
                }
            }
        };
        // The pod's directory is the host's fence around every file of the
        // pod (set-id files in its volumes included): 0700 even when an
        // older shim made it with another mode.
        if let Err(e) = sys::chmod_fd(pod_fd.as_fd(), 0o700) {
            tracing::warn!(pod, dir = %shown, error = %e, "cannot make the pod's directory 0700");
        }
        let mounts_fd = match make_binds(dir_fd.as_fd()) {
            Ok(fd) => fd,
            Err(e) => {
                unmake_binds(dir_fd.as_fd());
                let _ = remove_tree(pod_fd.as_fd(), &name, &dir.display().to_string());
                return Err(HostFsError::io(format!("setting up {}", dir.display()))(e));
            }
        };
        tracing::debug!(pod, dir = %dir.display(), "pod VM directory made");
        Ok(PodTree {
            pod: pod.to_owned(),
            pod_dir: pod_dir.to_owned(),
            dir,
            name,
            pod_fd,
            dir_fd,
            mounts_fd,
            state: Mutex::new(Some(HashMap::new())),
        })
    }

    /// The incarnation's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The incarnation's directory, as a descriptor (the monitor socket
    /// is bound beneath it).
    pub fn dir_fd(&self) -> BorrowedFd<'_> {
        self.dir_fd.as_fd()
    }

    /// The pod's virtio-fs share (read-only view of the container tree).
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join(SHARED)
    }

    /// The parent of the sandbox's own directory.
    pub fn run_dir(&self) -> PathBuf {
        self.dir.join(RUN)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<HashMap<String, Attached>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mounts container `cid`'s rootfs at `<cid>/rootfs`: `mounts`
    /// (containerd's, in order) or else a recursive bind of `fallback`.
    /// On error nothing of `cid` is left.
    pub fn attach_rootfs(
        &self,
        cid: &str,
        mounts: &[Mount],
        fallback: &Path,
    ) -> Result<(), HostFsError> {
        let mut state = self.lock();
        let map = state.as_mut().ok_or_else(|| HostFsError::Released {
            cid: cid.to_owned(),
        })?;
        if map.contains_key(cid) {
            return Err(HostFsError::Attached {
                cid: cid.to_owned(),
            });
        }
        let what = format!("{}/{MOUNTS}/{cid}", self.dir.display());
        sys::mkdir_at(self.mounts_fd.as_fd(), cid, 0o755)
            .map_err(HostFsError::io(format!("creating {what}")))?;
        map.insert(cid.to_owned(), Attached::default());
        let r = self.mount_rootfs(cid, mounts, fallback, map);
        if r.is_err() {
            if let Err(e) = self.detach_locked(cid, map) {
                tracing::warn!(pod = %self.pod, container = cid, error = %e, "undoing a failed rootfs attach");
            }
        }
        r
    }

    fn mount_rootfs(
        &self,
        cid: &str,
        mounts: &[Mount],
        fallback: &Path,
        map: &mut HashMap<String, Attached>,
    ) -> Result<(), HostFsError> {
        let what = format!("{}/{MOUNTS}/{cid}/{ROOTFS}", self.dir.display());
        let cfd = sys::open_dir(self.mounts_fd.as_fd(), cid)
            .map_err(HostFsError::io(format!("opening {what}")))?;
        sys::mkdir_at(cfd.as_fd(), ROOTFS, 0o755)
            .map_err(HostFsError::io(format!("creating {what}")))?;
        if let Some(a) = map.get_mut(cid) {
            a.rootfs_dir = true;
        }
        let target = sys::open_dir(cfd.as_fd(), ROOTFS)
            .map_err(HostFsError::io(format!("opening {what}")))?;
        if mounts.is_empty() {
            return sys::bind_tree(fallback, target.as_fd(), true, sys::BIND_ATTRS).map_err(|e| {
                HostFsError::io(format!("binding {} on {what}", fallback.display()))(e)
            });
        }
        for (i, m) in mounts.iter().enumerate() {
            mount_one(m, target.as_fd(), || sys::open_dir(cfd.as_fd(), ROOTFS)).map_err(|e| {
                HostFsError::io(format!(
                    "rootfs mount {i} ({} {}) on {what}",
                    m.type_, m.source
                ))(e)
            })?;
        }
        Ok(())
    }

    /// Binds `volumes` of container `cid` (attached already) at
    /// `<cid>/mounts/<index>`. On error none of them stays.
    pub fn attach_volumes(&self, cid: &str, volumes: &[Volume]) -> Result<(), HostFsError> {
        if volumes.is_empty() {
            return Ok(());
        }
        let mut state = self.lock();
        let map = state.as_mut().ok_or_else(|| HostFsError::Released {
            cid: cid.to_owned(),
        })?;
        let r = self.mount_volumes(cid, volumes, map);
        if r.is_err() {
            if let Err(e) = self.detach_volumes(cid, map) {
                tracing::warn!(pod = %self.pod, container = cid, error = %e, "undoing a failed volume attach");
            }
        }
        r
    }

    fn mount_volumes(
        &self,
        cid: &str,
        volumes: &[Volume],
        map: &mut HashMap<String, Attached>,
    ) -> Result<(), HostFsError> {
        let dir = format!("{}/{MOUNTS}/{cid}/{VOLUMES}", self.dir.display());
        let Some(a) = map.get_mut(cid) else {
            return Err(HostFsError::Io {
                what: format!("container {cid}"),
                source: io::Error::other("its rootfs is not attached"),
            });
        };
        if a.volumes_dir {
            return Err(HostFsError::Attached {
                cid: cid.to_owned(),
            });
        }
        let cfd = sys::open_dir(self.mounts_fd.as_fd(), cid)
            .map_err(HostFsError::io(format!("opening {dir}")))?;
        sys::mkdir_at(cfd.as_fd(), VOLUMES, 0o755)
            .map_err(HostFsError::io(format!("creating {dir}")))?;
        a.volumes_dir = true;
        let vfd = sys::open_dir(cfd.as_fd(), VOLUMES)
            .map_err(HostFsError::io(format!("opening {dir}")))?;
        for v in volumes {
            let meta = std::fs::metadata(&v.source).map_err(|source| HostFsError::Source {
                what: format!("{}: source {}", v.what, v.source.display()),
                source,
            })?;
            let name = v.index.to_string();
            let target = format!("{dir}/{name}");
            let made = if meta.is_dir() {
                sys::mkdir_at(vfd.as_fd(), &name, 0o755)
            } else {
                // A file (or socket, device...) binds onto a file.
                sys::create_file_at(vfd.as_fd(), &name, 0o644)
            };
            made.map_err(HostFsError::io(format!("{}: creating {target}", v.what)))?;
            a.volumes.push((name.clone(), meta.is_dir()));
            let tfd = sys::open_path(vfd.as_fd(), &name)
                .map_err(HostFsError::io(format!("{}: opening {target}", v.what)))?;
            let ro = if v.read_only {
                libc::MOUNT_ATTR_RDONLY
            } else {
                0
            };
            sys::bind_tree(&v.source, tfd.as_fd(), v.recursive, sys::BIND_ATTRS | ro).map_err(
                HostFsError::io(format!(
                    "{}: binding {} on {target}",
                    v.what,
                    v.source.display()
                )),
            )?;
        }
        Ok(())
    }

    /// Undoes [`attach_rootfs`](Self::attach_rootfs) and
    /// [`attach_volumes`](Self::attach_volumes) of `cid`: unmounts what
    /// was recorded and removes the directories made. What is still
    /// mounted (and its parents) is kept, recorded, and tried again at
    /// [`release`](Self::release).
    pub fn detach(&self, cid: &str) -> Result<(), HostFsError> {
        let mut state = self.lock();
        let Some(map) = state.as_mut() else {
            return Ok(());
        };
        self.detach_locked(cid, map)
    }

    fn detach_locked(
        &self,
        cid: &str,
        map: &mut HashMap<String, Attached>,
    ) -> Result<(), HostFsError> {
        if !map.contains_key(cid) {
            return Ok(());
        }
        self.detach_volumes(cid, map)?;
        let Some(a) = map.get_mut(cid) else {
            return Ok(());
        };
        let what = format!("{}/{MOUNTS}/{cid}", self.dir.display());
        let cfd = match sys::open_dir(self.mounts_fd.as_fd(), cid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                map.remove(cid);
                return Ok(());
            }
            Err(e) => return Err(HostFsError::io(format!("opening {what}"))(e)),
        };
        if a.rootfs_dir {
            sys::umount_at(cfd.as_fd(), ROOTFS)
                .map_err(HostFsError::io(format!("unmounting {what}/{ROOTFS}")))?;
            remove_entry(cfd.as_fd(), ROOTFS, true, &format!("{what}/{ROOTFS}"))?;
            a.rootfs_dir = false;
        }
        drop(cfd);
        remove_entry(self.mounts_fd.as_fd(), cid, true, &what)?;
        map.remove(cid);
        Ok(())
    }

    fn detach_volumes(
        &self,
        cid: &str,
        map: &mut HashMap<String, Attached>,
    ) -> Result<(), HostFsError> {
        let Some(a) = map.get_mut(cid) else {
            return Ok(());
        };
        if !a.volumes_dir {
            return Ok(());
        }
        let dir = format!("{}/{MOUNTS}/{cid}/{VOLUMES}", self.dir.display());
        let cfd = sys::open_dir(self.mounts_fd.as_fd(), cid)
            .map_err(HostFsError::io(format!("opening {dir}")))?;
        let vfd = sys::open_dir(cfd.as_fd(), VOLUMES)
            .map_err(HostFsError::io(format!("opening {dir}")))?;
        while let Some((name, is_dir)) = a.volumes.last().cloned() {
            let target = format!("{dir}/{name}");
            sys::umount_at(vfd.as_fd(), &name)
                .map_err(HostFsError::io(format!("unmounting {target}")))?;
            remove_entry(vfd.as_fd(), &name, is_dir, &target)?;
            a.volumes.pop();
        }
        drop(vfd);
        remove_entry(cfd.as_fd(), VOLUMES, true, &dir)?;
        a.volumes_dir = false;
        Ok(())
    }

    /// Unmounts everything recorded, then the tree's own binds, and
    /// removes the incarnation's directory (and the pod's, when no other
    /// incarnation is there). Idempotent; called once the VM has ended.
    /// A mount still there keeps its directory (never a removal across
    /// a mount point).
    pub fn release(&self) {
        let mut state = self.lock();
        let Some(mut map) = state.take() else {
            return;
        };
        let cids: Vec<String> = map.keys().cloned().collect();
        let mut clean = true;
        for cid in cids {
            if let Err(e) = self.detach_locked(&cid, &mut map) {
                tracing::warn!(pod = %self.pod, container = %cid, error = %e, "releasing a container's host files");
                clean = false;
            }
        }
        unmake_binds(self.dir_fd.as_fd());
        if !clean {
            tracing::warn!(pod = %self.pod, dir = %self.dir.display(), "mounts left; the pod VM's directory is kept");
            return;
        }
        match remove_tree(
            self.pod_fd.as_fd(),
            &self.name,
            &self.dir.display().to_string(),
        ) {
            Ok(()) => {
                // The pod's directory goes with its last incarnation.
                match std::fs::remove_dir(&self.pod_dir) {
                    Ok(()) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::ENOENT)) => {}
                    Err(e) => {
                        tracing::warn!(pod = %self.pod, dir = %self.pod_dir.display(), error = %e, "removing the pod's directory")
                    }
                }
            }
            Err(e) => tracing::warn!(pod = %self.pod, error = %e, "the pod VM's directory is kept"),
        }
    }
}

impl Drop for PodTree {
    fn drop(&mut self) {
        self.release();
    }
}

/// Removes an entry the tree made (a directory, or a volume's file),
/// `Kept` when it is (still) a mount point.
fn remove_entry(
    dir: BorrowedFd<'_>,
    name: &str,
    is_dir: bool,
    shown: &str,
) -> Result<(), HostFsError> {
    match sys::unlink_at(dir, name, is_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Err(HostFsError::Kept {
            what: shown.to_owned(),
        }),
        Err(e) => Err(HostFsError::io(format!("removing {shown}"))(e)),
    }
}

/// The incarnation's binds: `mounts` on itself (shared, so that what is
/// mounted below it later propagates), and `shared`, a read-only,
/// nosuid, nodev, noexec bind of it and its slave (it gets those mounts;
/// nothing goes back). Returns the `mounts` bind's root. Runs before the
/// VM exists: nothing races it.
fn make_binds(dir: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    sys::mkdir_at(dir, MOUNTS, 0o755)?;
    sys::mkdir_at(dir, SHARED, 0o755)?;
    sys::mkdir_at(dir, RUN, 0o700)?;
    let m = sys::open_dir(dir, MOUNTS)?;
    let src = sys::fd_path(m.as_fd());
    sys::mount_on(&src.to_string_lossy(), m.as_fd(), "", libc::MS_BIND, "")?;
    let m = sys::open_dir(dir, MOUNTS)?;
    sys::mount_on("", m.as_fd(), "", libc::MS_SHARED, "")?;
    let s = sys::open_dir(dir, SHARED)?;
    let src = sys::fd_path(m.as_fd());
    sys::mount_on(&src.to_string_lossy(), s.as_fd(), "", libc::MS_BIND, "")?;
    let s = sys::open_dir(dir, SHARED)?;
    sys::mount_on("", s.as_fd(), "", libc::MS_SLAVE, "")?;
    sys::mount_on(
        "",
        s.as_fd(),
        "",
        libc::MS_BIND
            | libc::MS_REMOUNT
            | libc::MS_RDONLY
            | libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC,
        "",
    )?;
    Ok(m)
}

/// Undoes [`make_binds`] (what of it was made).
fn unmake_binds(dir: BorrowedFd<'_>) {
    for name in [SHARED, MOUNTS] {
        if let Err(e) = sys::umount_at(dir, name) {
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!(mount = name, error = %e, "unmounting a pod VM's bind");
            }
        }
    }
}

/// Mounts one of containerd's rootfs mounts on `target` (a directory
/// descriptor); `reopen` opens the new top of the stack (for a
/// propagation change).
fn mount_one(
    m: &Mount,
    target: BorrowedFd<'_>,
    reopen: impl Fn() -> io::Result<OwnedFd>,
) -> io::Result<()> {
    let o = parse_options(&m.options);
    if o.flags & libc::MS_BIND != 0 {
        let mut attrs = sys::BIND_ATTRS;
        for (ms, attr) in [
            (libc::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
            (libc::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
        ] {
            if o.flags & ms != 0 {
                attrs |= attr;
            }
        }
        let recursive = o.flags & libc::MS_REC != 0;
        sys::bind_tree(Path::new(&m.source), target, recursive, attrs)?;
    } else {
        let data = o.data.join(",");
        // A page is what mount(2) takes; containerd shortens long overlay
        // lowerdirs by chdir tricks, which a threaded process cannot do.
        if data.len() >= 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("mount options of {} bytes (at most 4095)", data.len()),
            ));
        }
        let flags = o.flags | libc::MS_NOSUID | libc::MS_NODEV;
        sys::mount_on(&m.source, target, &m.type_, flags, &data)?;
    }
    if o.propagation != 0 {
        let top = reopen()?;
        sys::mount_on("", top.as_fd(), "", o.propagation, "")?;
    }
    Ok(())
}
