//! Mounting containerd's rootfs mounts (`containerd.types.Mount`: an
//! overlay from the snapshotter, or a bind) on the host, under the pod's
//! shared directory, where the guest sees them through the pod's virtio-fs
//! share. The shim runs in a mount namespace of its own, so these mounts
//! go away with it however it ends.

use std::ffi::CString;
use std::io;
use std::path::Path;

use husk_shim_protos::mount::Mount;

/// mount(2) flags and data from a mount's options, as containerd (and
/// mount(8)) read them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountOptions {
    pub flags: libc::c_ulong,
    /// Propagation to set after the mount (MS_SHARED, MS_SLAVE, ...).
    pub propagation: libc::c_ulong,
    pub data: Vec<String>,
}

/// Parses `options` the way containerd's `mount.Mount` does.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions::default();
    for opt in options {
        let (clear, flag): (bool, libc::c_ulong) = match opt.as_str() {
            "async" => (true, libc::MS_SYNCHRONOUS),
            "atime" => (true, libc::MS_NOATIME),
            "bind" => (false, libc::MS_BIND),
            "defaults" => (false, 0),
            "dev" => (true, libc::MS_NODEV),
            "diratime" => (true, libc::MS_NODIRATIME),
            "dirsync" => (false, libc::MS_DIRSYNC),
            "exec" => (true, libc::MS_NOEXEC),
            "mand" => (false, libc::MS_MANDLOCK),
            "noatime" => (false, libc::MS_NOATIME),
            "nodev" => (false, libc::MS_NODEV),
            "nodiratime" => (false, libc::MS_NODIRATIME),
            "noexec" => (false, libc::MS_NOEXEC),
            "nomand" => (true, libc::MS_MANDLOCK),
            "norelatime" => (true, libc::MS_RELATIME),
            "nostrictatime" => (true, libc::MS_STRICTATIME),
            "nosuid" => (false, libc::MS_NOSUID),
            "rbind" => (false, libc::MS_BIND | libc::MS_REC),
            "relatime" => (false, libc::MS_RELATIME),
            "remount" => (false, libc::MS_REMOUNT),
            "ro" => (false, libc::MS_RDONLY),
            "rw" => (true, libc::MS_RDONLY),
            "strictatime" => (false, libc::MS_STRICTATIME),
            "suid" => (true, libc::MS_NOSUID),
            "sync" => (false, libc::MS_SYNCHRONOUS),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let rec = if opt.starts_with('r') {
                    libc::MS_REC
                } else {
                    0
                };
                let p = match opt.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                o.propagation = p | rec;
                continue;
            }
            _ => {
                o.data.push(opt.clone());
                continue;
            }
        };
        if clear {
            o.flags &= !flag;
        } else {
            o.flags |= flag;
        }
    }
    o
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} has a NUL byte")))
}

fn sys_mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let source = cstr(source)?;
    let target_c = cstr(&target.to_string_lossy())?;
    let fstype = cstr(fstype)?;
    let data = cstr(data)?;
    let data_ptr = if data.as_bytes().is_empty() {
        std::ptr::null()
    } else {
        data.as_ptr().cast()
    };
    // SAFETY: every pointer is a valid NUL-terminated string (or null for
    // no data) that outlives the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            flags,
            data_ptr,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts `m` on `target` (a directory that exists).
pub fn mount_one(m: &Mount, target: &Path) -> io::Result<()> {
    let o = parse_options(&m.options);
    let data = o.data.join(",");
    // A page is what mount(2) takes; containerd shortens long overlay
    // lowerdirs by chdir tricks, which a threaded process cannot do.
    if data.len() >= 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("mount options of {} bytes (at most 4095)", data.len()),
        ));
    }
    let bind = o.flags & libc::MS_BIND != 0;
    let fstype = if bind { "" } else { m.type_.as_str() };
    let first = if bind {
        o.flags & !libc::MS_RDONLY
    } else {
        o.flags
    };
    sys_mount(&m.source, target, fstype, first, &data)?;
    // A bind ignores all but MS_BIND/MS_REC: read-only and the other
    // flags take a remount.
    let wanted = o.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT);
    if bind && wanted != 0 {
        sys_mount(
            "",
            target,
            "",
            libc::MS_BIND | libc::MS_REMOUNT | wanted,
            "",
        )?;
    }
    if o.propagation != 0 {
        sys_mount("", target, "", o.propagation, "")?;
    }
    Ok(())
}

/// Binds `source` on `target` (an existing file or directory, like
/// `source`), recursively with `recursive`, then read-only with
/// `read_only` (a bind ignores MS_RDONLY: it takes a remount, which keeps
/// the source mount's nosuid/nodev/noexec/atime flags, as runc does).
pub fn bind(source: &Path, target: &Path, recursive: bool, read_only: bool) -> io::Result<()> {
    let rec = if recursive { libc::MS_REC } else { 0 };
    sys_mount(
        &source.to_string_lossy(),
        target,
        "",
        libc::MS_BIND | rec,
        "",
    )?;
    if !read_only {
        return Ok(());
    }
    let kept = match statvfs_flags(target) {
        Ok(f) => f,
        Err(e) => {
            unmount_all(target);
            return Err(e);
        }
    };
    let r = sys_mount(
        "",
        target,
        "",
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | kept,
        "",
    );
    if r.is_err() {
        unmount_all(target);
    }
    r
}

/// The per-mount flags of the mount at `path`, as mount(2) flags.
fn statvfs_flags(path: &Path) -> io::Result<libc::c_ulong> {
    let c = cstr(&path.to_string_lossy())?;
    // SAFETY: zeroed is a valid statvfs (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a statvfs to fill, both
    // living through the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// Mounts the container's rootfs on `target`: `mounts` in order, or a
/// recursive bind of `fallback` when there are none.
pub fn mount_rootfs(mounts: &[Mount], fallback: &Path, target: &Path) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    if mounts.is_empty() {
        let src = fallback.to_string_lossy();
        return sys_mount(&src, target, "", libc::MS_BIND | libc::MS_REC, "");
    }
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            unmount_all(target);
            return Err(io::Error::new(
                e.kind(),
                format!("rootfs mount {i} ({} {}): {e}", m.type_, m.source),
            ));
        }
    }
    Ok(())
}

/// Unmounts everything on `target` (lazily: a guest still holding a file
/// open does not keep the host mount busy).
pub fn unmount_all(target: &Path) {
    let Ok(c) = cstr(&target.to_string_lossy()) else {
        return;
    };
    for _ in 0..16 {
        // SAFETY: a valid NUL-terminated path.
        let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if r != 0 {
            break;
        }
    }
}

/// The mount points at or below `dir` in this mount namespace.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.to_string_lossy().trim_end_matches('/').to_string();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| *mp == prefix || mp.starts_with(&format!("{prefix}/")))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(v: &[&str]) -> MountOptions {
        parse_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn options_like_containerd() {
        let o = opts(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]);
        assert_eq!(o.flags, 0);
        assert_eq!(
            o.data,
            ["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]
        );
        let o = opts(&["rbind", "ro", "nosuid"]);
        assert_eq!(
            o.flags,
            libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY | libc::MS_NOSUID
        );
        let o = opts(&["ro", "rw"]);
        assert_eq!(o.flags, 0);
        let o = opts(&["bind", "rslave"]);
        assert_eq!(o.propagation, libc::MS_SLAVE | libc::MS_REC);
        assert_eq!(o.flags, libc::MS_BIND);
    }

    #[test]
    fn mountinfo_prefixes() {
        // "/" is always a mount point; "/proc" usually.
        assert!(!mounts_below(Path::new("/")).is_empty());
        assert!(mounts_below(Path::new("/nonexistent-husk-dir")).is_empty());
    }
}
