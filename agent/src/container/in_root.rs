//! Resolving paths inside a container's root from the root's descriptor:
//! openat2 with RESOLVE_IN_ROOT (the root's symlinks, absolute ones
//! included, and `..` stay inside it) and RESOLVE_NO_MAGICLINKS; and naming
//! a descriptor for mount(2) by its `/proc/self/fd` link. Raw calls that
//! neither allocate nor lock: usable in a container's clone child.

use std::ffi::CStr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// errno of the last failed call.
fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// openat2 of `path` below the directory `root`, resolved as if `root` were
/// `/`, without magic links; `flags` plus O_CLOEXEC. Err: errno.
pub(super) fn open_in_root(root: RawFd, path: &CStr, flags: libc::c_int) -> Result<OwnedFd, i32> {
    // SAFETY: open_how is plain integers (non_exhaustive, so built from
    // zeros); zero is "no flags".
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the NUL-terminated path and `how` (of the size
    // passed) for the call's duration; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    // SAFETY: a new descriptor nothing else owns (a descriptor fits an
    // int).
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// `/proc/self/fd/<fd>` NUL-terminated in a buffer of its own: a mount(2)
/// target or source naming exactly what the descriptor names (the magic
/// link is followed to that dentry; mounts on top of it are not).
pub(super) struct FdPath {
    buf: [u8; 32],
}

impl FdPath {
    pub(super) fn new(fd: RawFd) -> Self {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        let mut buf = [0u8; 32];
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let mut n = fd.unsigned_abs();
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for (i, d) in digits[..len].iter().rev().enumerate() {
            buf[PREFIX.len() + i] = *d;
        }
        Self { buf }
    }

    pub(super) fn as_ptr(&self) -> *const libc::c_char {
        self.buf.as_ptr().cast()
    }

    #[cfg(test)]
    fn as_c_str(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_are_decimal() {
        assert_eq!(FdPath::new(0).as_c_str(), c"/proc/self/fd/0");
        assert_eq!(FdPath::new(7).as_c_str(), c"/proc/self/fd/7");
        assert_eq!(
            FdPath::new(i32::MAX).as_c_str(),
            c"/proc/self/fd/2147483647"
        );
    }
}
