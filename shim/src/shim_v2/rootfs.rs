//! containerd's mount options (`containerd.types.Mount.options`, OCI
//! mount options) as mount(2) flags and data. The mounts themselves are
//! made by `host_fs`.

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
}
