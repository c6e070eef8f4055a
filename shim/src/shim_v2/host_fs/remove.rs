//! Removing a directory tree the shim made, by descriptors: no link is
//! followed, and the walk stops at mount points (an entry on another mount
//! than its directory is never entered or removed: the removal fails and
//! the tree is kept), unlike `remove_dir_all`, which descends into mounts.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use super::sys;

/// How deep a tree of the shim's may be.
const MAX_DEPTH: usize = 16;
/// How many entries one directory of the shim's may hold.
const MAX_ENTRIES: usize = 65_536;

/// Why a tree was kept.
#[derive(Debug, thiserror::Error)]
pub enum RemoveError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is a mount point; the tree is kept")]
    MountPoint { path: String },
    #[error("{path}: deeper or larger than any tree the shim makes; kept")]
    TooLarge { path: String },
}

/// Removes the entry `name` of `parent` and, for a directory, everything
/// below it, never crossing a mount point or following a link. `shown` is
/// the path used in errors. A missing entry is no error.
pub fn remove_tree(parent: BorrowedFd<'_>, name: &str, shown: &str) -> Result<(), RemoveError> {
    let io_err = |path: &str| {
        let path = path.to_owned();
        move |source| RemoveError::Io { path, source }
    };
    let (parent_mnt, _) = sys::mount_id(parent).map_err(io_err(shown))?;
    remove_entry(parent, parent_mnt, name, shown, 0)
}

fn remove_entry(
    parent: BorrowedFd<'_>,
    parent_mnt: u64,
    name: &str,
    shown: &str,
    depth: usize,
) -> Result<(), RemoveError> {
    let io_err = |source| RemoveError::Io {
        path: shown.to_owned(),
        source,
    };
    let Some((mnt, is_dir)) = sys::entry_mount_id(parent, name).map_err(io_err)? else {
        return Ok(());
    };
    if mnt != parent_mnt {
        return Err(RemoveError::MountPoint {
            path: shown.to_owned(),
        });
    }
    if !is_dir {
        return match sys::unlink_at(parent, name, false) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(io_err(e)),
            _ => Ok(()),
        };
    }
    if depth >= MAX_DEPTH {
        return Err(RemoveError::TooLarge {
            path: shown.to_owned(),
        });
    }
    let dir = sys::open_dir_same_mount(parent, name).map_err(io_err)?;
    for child in list(dir.as_fd(), shown)? {
        remove_entry(
            dir.as_fd(),
            mnt,
            &child,
            &format!("{shown}/{child}"),
            depth + 1,
        )?;
    }
    match sys::unlink_at(parent, name, true) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(io_err(e)),
        _ => Ok(()),
    }
}

/// The names in a directory (a descriptor opened for reading), without
/// `.` and `..`.
fn list(dir: BorrowedFd<'_>, shown: &str) -> Result<Vec<String>, RemoveError> {
    let io_err = |source| RemoveError::Io {
        path: shown.to_owned(),
        source,
    };
    // fdopendir takes the descriptor: give it a duplicate.
    let dup = dir.try_clone_to_owned().map_err(io_err)?;
    let raw = dup.as_raw_fd();
    // SAFETY: a directory descriptor this function owns; on success the
    // DIR owns it (and closedir closes it).
    let d = unsafe { libc::fdopendir(raw) };
    if d.is_null() {
        return Err(io_err(io::Error::last_os_error()));
    }
    std::mem::forget(dup);
    let mut names = Vec::new();
    let mut failed = None;
    loop {
        // SAFETY: errno is thread-local; reset to tell an error from the end.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a DIR this function opened and has not closed.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error().unwrap_or(0) != 0 {
                failed = Some(e);
            }
            break;
        }
        // SAFETY: readdir returned an entry whose d_name is NUL-terminated,
        // valid until the next readdir on this DIR.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        if names.len() >= MAX_ENTRIES {
            failed = Some(io::Error::other("too many entries"));
            break;
        }
        match std::str::from_utf8(bytes) {
            Ok(s) => names.push(s.to_owned()),
            Err(_) => {
                failed = Some(io::Error::other("an entry whose name is not UTF-8"));
                break;
            }
        }
    }
    // SAFETY: the DIR opened above, closed once.
    unsafe { libc::closedir(d) };
    match failed {
        Some(e) => Err(io_err(e)),
        None => Ok(names),
    }
}

/// Removes the directory at the absolute host path `dir` with
/// [`remove_tree`] (its last component not followed if a link).
pub fn remove_host_tree(dir: &std::path::Path) -> Result<(), RemoveError> {
    let shown = dir.display().to_string();
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name().and_then(|n| n.to_str()))
    else {
        return Err(RemoveError::Io {
            path: shown,
            source: io::Error::new(io::ErrorKind::InvalidInput, "no parent or a non-UTF-8 name"),
        });
    };
    let parent_fd = match sys::open_host_dir(parent) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(source) => {
            return Err(RemoveError::Io {
                path: shown,
                source,
            })
        }
    };
    remove_tree(parent_fd.as_fd(), name, &shown)
}
