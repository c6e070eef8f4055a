//! The system calls of host file work under a pod's directory, each on a
//! directory descriptor and a single path component: nothing here follows a
//! symbolic link or walks a path a guest could have changed.
//!
//! - [`open_dir`] / [`open_path`]: `openat2` with `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`.
//! - [`mkdir_at`], [`create_file_at`], [`unlink_at`]: `*at` calls on a
//!   directory descriptor (`O_EXCL | O_NOFOLLOW` for files).
//! - [`bind_tree`]: `open_tree(OPEN_TREE_CLONE)`, `mount_setattr` on the
//!   detached copy (read-only, nosuid, nodev: recursively for `rbind`) and
//!   `move_mount` onto a target descriptor: a bind is never reachable
//!   before its flags are right.
//! - [`mount_on`]: mount(2) onto `/proc/self/fd/N` of an `O_PATH`
//!   descriptor (overlays, and propagation changes).
//! - [`umount_at`]: `umount2(/proc/self/fd/<dir>/<name>, MNT_DETACH |
//!   UMOUNT_NOFOLLOW)`.
//! - [`mount_id`]: `statx(STATX_MNT_ID)`, to stop walks at mount points.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A single path component: no `/`, not `.` or `..`, not empty, no NUL.
pub fn component(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single path component"),
        ));
    }
    CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} has a NUL byte"),
        )
    })
}

fn path_cstr(p: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has a NUL byte", p.display()),
        )
    })
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: a descriptor the kernel just returned to this call; nothing
    // else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The resolve flags of every lookup here.
const RESOLVE_STRICT: u64 = libc::RESOLVE_BENEATH
    | libc::RESOLVE_NO_SYMLINKS
    | libc::RESOLVE_NO_MAGICLINKS
    | libc::RESOLVE_NO_XDEV;

fn openat2(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    // SAFETY: open_how is plain integers (non_exhaustive, so built from
    // zeros); zero is "no flags".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC | libc::O_NOFOLLOW) as u64;
    how.resolve = resolve;
    // SAFETY: openat2 reads the NUL-terminated name and `how` (of the size
    // passed) for the call's duration; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(fd)
}

/// An `O_PATH` descriptor of the directory `name` in `dir` (no link
/// followed, no mount crossed on the way: the entry itself may be a mount
/// point, whose root is then what is opened).
pub fn open_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let c = component(name)?;
    openat2(
        dir,
        &c,
        libc::O_PATH | libc::O_DIRECTORY,
        // The last component may be a mount point (a rootfs, a bind).
        RESOLVE_STRICT & !libc::RESOLVE_NO_XDEV,
    )
}

/// An `O_PATH` descriptor of the entry `name` in `dir` (a directory or a
/// file; not a symbolic link).
pub fn open_path(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let c = component(name)?;
    openat2(
        dir,
        &c,
        libc::O_PATH,
        RESOLVE_STRICT & !libc::RESOLVE_NO_XDEV,
    )
}

/// A readable descriptor of the directory `name` in `dir`, on the same
/// mount as `dir` (for listing it).
pub fn open_dir_same_mount(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let c = component(name)?;
    openat2(dir, &c, libc::O_RDONLY | libc::O_DIRECTORY, RESOLVE_STRICT)
}

/// `O_PATH` descriptor of an absolute host path that must be a directory
/// and not a symbolic link at its last component (the pod directories'
/// parents: the shim's own configuration).
pub fn open_host_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = path_cstr(path)?;
    // SAFETY: a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    owned(fd.into())
}

/// mkdirat(2) of `name` in `dir`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &str, mode: libc::mode_t) -> io::Result<()> {
    let c = component(name)?;
    // SAFETY: a NUL-terminated name and a directory descriptor.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) })
}

/// Creates the empty file `name` in `dir` (never an existing one, never
/// through a link).
pub fn create_file_at(dir: BorrowedFd<'_>, name: &str, mode: libc::mode_t) -> io::Result<()> {
    let c = component(name)?;
    // SAFETY: a NUL-terminated name and a directory descriptor; the result
    // is checked and closed at once.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    owned(fd.into()).map(drop)
}

/// unlinkat(2) of `name` in `dir` (`AT_REMOVEDIR` for a directory).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &str, is_dir: bool) -> io::Result<()> {
    let c = component(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: a NUL-terminated name and a directory descriptor.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) })
}

/// `/proc/self/fd/N`, the path of an open descriptor.
pub fn fd_path(fd: BorrowedFd<'_>) -> CString {
    // Digits only: no NUL possible.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// mount(2) onto (or, for `MS_REMOUNT` and propagation flags, of) the
/// file `target` is a descriptor of.
pub fn mount_on(
    source: &str,
    target: BorrowedFd<'_>,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let cs = |s: &str| {
        CString::new(s).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} has a NUL byte"))
        })
    };
    let (source, fstype, data) = (cs(source)?, cs(fstype)?, cs(data)?);
    let target = fd_path(target);
    let data_ptr = if data.as_bytes().is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr().cast()
    };
    // SAFETY: every pointer is a valid NUL-terminated string (or null for
    // no data) that outlives the call.
    check(unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    })
}

/// Mount attributes set on every bind into a pod's tree.
pub const BIND_ATTRS: u64 = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;

/// Binds the host path `source` (recursively with `recursive`) onto the
/// file or directory `target` is a descriptor of, with `attrs`
/// (`MOUNT_ATTR_*`, on every mount of the copy) set before the copy is
/// attached: a read-only bind is never writable where anyone can reach it.
/// The source's own per-mount flags (noexec, atime) are kept.
pub fn bind_tree(
    source: &Path,
    target: BorrowedFd<'_>,
    recursive: bool,
    attrs: u64,
) -> io::Result<()> {
    let src = path_cstr(source)?;
    let rec = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: a NUL-terminated path; the result is checked.
    let tree = owned(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | rec,
        )
    })?;
    // SAFETY: mount_attr is plain integers; zero is "change nothing".
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = attrs;
    let empty = c"";
    let at = libc::AT_EMPTY_PATH as libc::c_uint | rec;
    // SAFETY: the detached tree's descriptor, an empty path and `attr` (of
    // the size passed), all living through the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            at,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(r as libc::c_int)?;
    // SAFETY: two descriptors and empty paths; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    check(r as libc::c_int)
}

/// Sets `attrs` (and clears `clear`) on the one mount whose root `fd` is,
/// with `propagation` (`MS_SHARED`, `MS_SLAVE`, ... or 0).
pub fn set_mount_attrs(
    fd: BorrowedFd<'_>,
    attrs: u64,
    clear: u64,
    propagation: u64,
) -> io::Result<()> {
    // SAFETY: mount_attr is plain integers; zero is "change nothing".
    let mut attr: libc::mount_attr = unsafe { std::mem::zeroed() };
    attr.attr_set = attrs;
    attr.attr_clr = clear;
    attr.propagation = propagation;
    let empty = c"";
    // SAFETY: a descriptor, an empty path and `attr` (of the size passed),
    // living through the call; the result is checked.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH as libc::c_uint,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    check(r as libc::c_int)
}

/// Detaches every mount stacked on the entry `name` of `dir` (lazily: a
/// guest holding a file open keeps nothing busy); never follows a link at
/// `name`. Returns how many were detached; an entry that is no mount point
/// gives 0.
pub fn umount_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<usize> {
    component(name)?;
    let path = CString::new(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut n = 0;
    // A bound: a stack deeper than this is not ours.
    for _ in 0..64 {
        // SAFETY: a NUL-terminated path.
        let r = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
        if r == 0 {
            n += 1;
            continue;
        }
        let e = io::Error::last_os_error();
        // EINVAL: not a mount point (any more).
        if e.raw_os_error() == Some(libc::EINVAL) {
            return Ok(n);
        }
        return Err(e);
    }
    Err(io::Error::other(format!(
        "{name}: more than 64 stacked mounts"
    )))
}

/// statx(2) of `name` in `dir` (an empty name: `dir` itself), not
/// following a link: the mount id and whether it is a directory.
fn statx_mount(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<(u64, bool)> {
    // SAFETY: statx is plain integers.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a descriptor, a NUL-terminated name and a statx to fill, all
    // living through the call; the result is checked.
    check(unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID | libc::STATX_TYPE,
            &mut st,
        )
    })?;
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::other("statx gave no mount id"));
    }
    Ok((
        st.stx_mnt_id,
        u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
    ))
}

/// The mount id of the file `fd` is a descriptor of, and whether it is a
/// directory.
pub fn mount_id(fd: BorrowedFd<'_>) -> io::Result<(u64, bool)> {
    statx_mount(fd, c"", libc::AT_EMPTY_PATH)
}

/// The mount id and type of the entry `name` of `dir`, not following a
/// link (None: it is gone).
pub fn entry_mount_id(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<(u64, bool)>> {
    let c = component(name)?;
    match statx_mount(dir, &c, libc::AT_NO_AUTOMOUNT) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Sets the permission bits of the directory `fd` is an `O_PATH`
/// descriptor of (through its `/proc/self/fd` link: fchmod refuses
/// `O_PATH` descriptors).
pub fn chmod_fd(fd: BorrowedFd<'_>, mode: libc::mode_t) -> io::Result<()> {
    let path = fd_path(fd);
    // SAFETY: a NUL-terminated path.
    check(unsafe { libc::chmod(path.as_ptr(), mode) })
}
