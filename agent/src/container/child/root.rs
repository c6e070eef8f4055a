//! The child's root file system: a new container's (its rootfs, mounts,
//! `/dev`, pivot_root, masked and read-only paths) or a light sandbox's
//! empty one. Raw calls only, on data built before the clone (see the
//! parent module).
//!
//! Every path inside the rootfs is resolved from the rootfs's descriptor
//! with [`open_in_root`] (RESOLVE_IN_ROOT): an image's symlink (`etc ->
//! /run/husk/pod/...`) resolves as if the rootfs were `/`, so nothing is
//! created or mounted outside it. Missing directories are made one
//! component at a time in the directory resolved before (mkdirat), a
//! missing file with O_CREAT | O_EXCL | O_NOFOLLOW, and mounts land on the
//! resolved descriptor's `/proc/self/fd` link.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::errno;
use super::report::{fail, Step};
use super::tally::{ChildStep, Part, Tally};
use crate::container::in_root::{open_in_root, FdPath};
use crate::container::mounts::{InRoot, MountOp, RootfsPlan};

/// The first `n` components of `t` inside `root` (O_PATH), creating each
/// missing one: a directory, or with `file` the last as an empty file.
/// Err: errno.
///
/// # Safety
/// For the child: raw calls only.
unsafe fn resolve(root: RawFd, t: &InRoot, n: usize, file: bool) -> Result<OwnedFd, i32> {
    let Some(full) = n.checked_sub(1).and_then(|k| t.prefixes.get(k)) else {
        // The root itself.
        // SAFETY: fcntl on an open descriptor; the result is checked.
        let fd = unsafe { libc::fcntl(root, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: a new descriptor nothing else owns.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    };
    // Usually all there: one lookup.
    match open_in_root(root, full, libc::O_PATH) {
        Err(libc::ENOENT) => {}
        done => return done,
    }
    let mut parent: Option<OwnedFd> = None;
    for (k, (prefix, name)) in t.prefixes.iter().zip(&t.names).take(n).enumerate() {
        let fd = match open_in_root(root, prefix, libc::O_PATH) {
            Err(libc::ENOENT) => {
                let dir = parent.as_ref().map_or(root, AsRawFd::as_raw_fd);
                // SAFETY: make `name` in the directory resolved before.
                unsafe { create(dir, name, file && k + 1 == n)? };
                open_in_root(root, prefix, libc::O_PATH)?
            }
            other => other?,
        };
        parent = Some(fd);
    }
    parent.ok_or(libc::ENOENT)
}

/// Creates `name` in `dir`: an empty file or a directory; one that is
/// there already (made meanwhile) is fine.
///
/// # Safety
/// For the child: raw calls only.
unsafe fn create(dir: RawFd, name: &CStr, file: bool) -> Result<(), i32> {
    // SAFETY: (whole block) raw calls on a NUL-terminated name and an open
    // directory descriptor; the results are checked.
    unsafe {
        if file {
            let fd = libc::openat(
                dir,
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o644,
            );
            if fd >= 0 {
                libc::close(fd);
                return Ok(());
            }
        } else if libc::mkdirat(dir, name.as_ptr(), 0o755) == 0 {
            return Ok(());
        }
    }
    match errno() {
        libc::EEXIST => Ok(()),
        e => Err(e),
    }
}

/// The last component's name (empty for the root itself).
fn last_name(t: &InRoot) -> &CStr {
    t.names.last().map_or(c"", |n| n.as_c_str())
}

/// Up to and including pivot_root.
///
/// # Safety
/// For the child.
pub(super) unsafe fn setup_root(r: RawFd, t: &Tally, root: &RootfsPlan) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: (whole block) raw calls on prepared strings and descriptors
    // of ours.
    unsafe {
        t.mount();
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            root.root_propagation,
            std::ptr::null(),
        ) < 0
        {
            fail(r, Step::RootPropagation, 0, errno());
        }
        let rootfs = root.rootfs.as_ptr();
        t.mount();
        if libc::mount(
            rootfs,
            rootfs,
            null,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ) < 0
        {
            fail(r, Step::RootfsBind, 0, errno());
        }
        // The bind's root: every path below is resolved from it.
        let fd = libc::open(rootfs, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if fd < 0 {
            fail(r, Step::RootfsBind, 0, errno());
        }
        let root_fd = OwnedFd::from_raw_fd(fd);
        let rfd = root_fd.as_raw_fd();
        for (i, m) in root.mounts.iter().enumerate() {
            let p = t.part_start();
            spec_mount(r, t, rfd, i, m);
            t.part_end(Part::Mount(i as u16), p);
        }
        let p = t.part_start();
        for (i, d) in root.devices.iter().enumerate() {
            let dir = match resolve(rfd, &d.path, d.path.len().saturating_sub(1), false) {
                Ok(fd) => fd,
                Err(e) => fail(r, Step::Device, i, e),
            };
            let (dir, name) = (dir.as_raw_fd(), last_name(&d.path).as_ptr());
            if libc::mknodat(dir, name, d.mode, d.dev) < 0 {
                match (errno(), &d.bind_from) {
                    (libc::EEXIST, _) => {}
                    (libc::EPERM, Some(from)) => {
                        if let Err(e) = create(dir, last_name(&d.path), true) {
                            fail(r, Step::Device, i, e);
                        }
                        let node = libc::openat(
                            dir,
                            name,
                            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        );
                        if node < 0 {
                            fail(r, Step::Device, i, errno());
                        }
                        let node = OwnedFd::from_raw_fd(node);
                        t.mount();
                        if libc::mount(
                            from.as_ptr(),
                            FdPath::new(node.as_raw_fd()).as_ptr(),
                            null,
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) < 0
                        {
                            fail(r, Step::Device, i, errno());
                        }
                        continue;
                    }
                    (e, _) => fail(r, Step::Device, i, e),
                }
            }
            if (d.uid != 0 || d.gid != 0)
                && libc::fchownat(dir, name, d.uid, d.gid, libc::AT_SYMLINK_NOFOLLOW) < 0
            {
                fail(r, Step::Device, i, errno());
            }
        }
        for (i, (target, link)) in root.symlinks.iter().enumerate() {
            let dir = match resolve(rfd, link, link.len().saturating_sub(1), false) {
                Ok(fd) => fd,
                Err(e) => fail(r, Step::Symlink, i, e),
            };
            if libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), last_name(link).as_ptr()) < 0
                && errno() != libc::EEXIST
            {
                fail(r, Step::Symlink, i, errno());
            }
        }
        t.part_end(Part::Devices, p);
        t.mark(ChildStep::Mounts, 0);
        // pivot_root(".", "."): the old root ends up on top of the new one
        // and is detached at once (no put_old directory needed).
        if libc::fchdir(rfd) < 0 {
            fail(r, Step::PivotRoot, 0, errno());
        }
        drop(root_fd);
        pivot_here(r, t);
        if let Some(flags) = root.post_propagation {
            t.mount();
            if libc::mount(null, c"/".as_ptr(), null, flags, std::ptr::null()) < 0 {
                fail(r, Step::PostPropagation, 0, errno());
            }
        }
        t.mark(ChildStep::PivotRoot, 0);
    }
}

/// Spec mount `i` (`m`): its target resolved (made) inside the rootfs
/// `rfd`, the mount, its remount and propagation.
///
/// # Safety
/// For the child.
unsafe fn spec_mount(r: RawFd, t: &Tally, rfd: RawFd, i: usize, m: &MountOp) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: (whole block) raw calls on prepared strings and descriptors
    // of ours.
    unsafe {
        let target = match resolve(rfd, &m.target, m.target.len(), m.create_file) {
            Ok(fd) => fd,
            Err(e) if m.create_file => fail(r, Step::CreateFile, i, e),
            Err(e) => fail(r, Step::Mkdir, i, e),
        };
        let data = m
            .data
            .as_ref()
            .map_or(std::ptr::null(), |d| d.as_ptr().cast());
        t.mount();
        if libc::mount(
            ptr(&m.source),
            FdPath::new(target.as_raw_fd()).as_ptr(),
            ptr(&m.fstype),
            m.flags,
            data,
        ) < 0
        {
            fail(r, Step::Mount, i, errno());
        }
        drop(target);
        if m.remount.is_none() && m.propagation.is_none() {
            return;
        }
        // The new mount: the old descriptor names what it covers.
        let top = match open_in_root(rfd, last_prefix(&m.target), libc::O_PATH) {
            Ok(fd) => fd,
            Err(e) => fail(r, Step::Remount, i, e),
        };
        let top_path = FdPath::new(top.as_raw_fd());
        if let Some(flags) = m.remount {
            t.mount();
            if libc::mount(null, top_path.as_ptr(), null, flags, std::ptr::null()) < 0 {
                fail(r, Step::Remount, i, errno());
            }
        }
        if let Some(flags) = m.propagation {
            t.mount();
            if libc::mount(null, top_path.as_ptr(), null, flags, std::ptr::null()) < 0 {
                fail(r, Step::Propagation, i, errno());
            }
        }
    }
}

/// pivot_root(".", ".") and the old root detached; then `/` is the
/// working directory's mount.
///
/// # Safety
/// For the child.
unsafe fn pivot_here(r: RawFd, t: &Tally) {
    // SAFETY: raw calls on constant paths.
    unsafe {
        // pivot_root and umount2 change the mount table too.
        t.mount();
        t.mount();
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) < 0
            || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) < 0
            || libc::chdir(c"/".as_ptr()) < 0
        {
            fail(r, Step::PivotRoot, 0, errno());
        }
    }
}

/// The options of a light sandbox's root: empty, one inode (its root
/// directory), nothing writable, executable or a device.
const EMPTY_ROOT_DATA: &CStr = c"mode=0555,size=4k,nr_inodes=1";

/// A light sandbox's root: an empty read-only tmpfs. In the new mount
/// namespace (made private first, so nothing below propagates to the
/// agent's), a tmpfs is mounted over `/` itself, so no directory is
/// needed for it; `/..` steps onto that mount (the walk to `..` of the root
/// enters what is mounted on it), and pivot_root puts the old root on top
/// of the tmpfs, where it is detached. Four mount-table calls (rprivate,
/// mount, pivot_root, umount) and two chdirs. What the process needs of
/// the old root (its binary, `/proc` for sysctls) it has opened or done
/// before.
///
/// # Safety
/// For the child.
pub(super) unsafe fn empty_root(r: RawFd, t: &Tally) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: (whole block) raw calls on constant strings.
    unsafe {
        t.mount();
        if libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) < 0
        {
            fail(r, Step::RootPropagation, 0, errno());
        }
        t.mount();
        if libc::mount(
            c"tmpfs".as_ptr(),
            c"/".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            EMPTY_ROOT_DATA.as_ptr().cast(),
        ) < 0
        {
            fail(r, Step::EmptyRoot, 0, errno());
        }
        if libc::chdir(c"/..".as_ptr()) < 0 {
            fail(r, Step::PivotRoot, 0, errno());
        }
        pivot_here(r, t);
    }
}

/// After pivot_root (and sysctls): masked and read-only paths, read-only
/// root. The paths are the container's own now (its root is `/`).
///
/// # Safety
/// For the child.
pub(super) unsafe fn finish_root(r: RawFd, t: &Tally, root: &RootfsPlan) {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: (whole block) raw calls on prepared strings.
    unsafe {
        let p = t.part_start();
        for (i, path) in root.masked.iter().enumerate() {
            t.mount();
            if libc::mount(
                c"/dev/null".as_ptr(),
                path.as_ptr(),
                null,
                libc::MS_BIND,
                std::ptr::null(),
            ) < 0
            {
                match errno() {
                    libc::ENOENT => {}
                    // A directory: an empty read-only tmpfs over it.
                    libc::ENOTDIR => {
                        t.mount();
                        if libc::mount(
                            c"tmpfs".as_ptr(),
                            path.as_ptr(),
                            c"tmpfs".as_ptr(),
                            libc::MS_RDONLY,
                            std::ptr::null(),
                        ) < 0
                        {
                            fail(r, Step::Masked, i, errno());
                        }
                    }
                    e => fail(r, Step::Masked, i, e),
                }
            }
        }
        t.part_end(Part::Masked, p);
        let p = t.part_start();
        for (i, path) in root.readonly.iter().enumerate() {
            t.mount();
            if libc::mount(
                path.as_ptr(),
                path.as_ptr(),
                null,
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) < 0
            {
                match errno() {
                    libc::ENOENT => continue,
                    e => fail(r, Step::Readonly, i, e),
                }
            }
            let flags = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC;
            t.mount();
            if libc::mount(null, path.as_ptr(), null, flags, std::ptr::null()) < 0 {
                fail(r, Step::Readonly, i, errno());
            }
        }
        if root.root_readonly {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            t.mount();
            if libc::mount(null, c"/".as_ptr(), null, flags, std::ptr::null()) < 0 {
                fail(r, Step::RootReadonly, 0, errno());
            }
        }
        t.part_end(Part::Readonly, p);
    }
}

fn ptr(c: &Option<std::ffi::CString>) -> *const libc::c_char {
    c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// The whole path of `t`, relative to the root.
fn last_prefix(t: &InRoot) -> &CStr {
    t.prefixes.last().map_or(c".", |p| p.as_c_str())
}
