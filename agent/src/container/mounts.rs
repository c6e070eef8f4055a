//! `mounts`, `/dev`, `linux.maskedPaths` and `linux.readonlyPaths` turned
//! into the exact mount(2) calls the child makes, with every path and
//! option string built here, before the clone.
//!
//! Paths inside the rootfs (mount points, device nodes, `/dev` symlinks)
//! are [`InRoot`]s: the child resolves them from the rootfs's descriptor
//! with every component inside it (the image's symlinks, absolute ones
//! included, cannot lead out), never by the guest's path.

use std::ffi::CString;
use std::os::unix::fs::FileTypeExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, Mount};

use super::error::SpecError;

/// A path inside the container's root, for the child to resolve from the
/// root's descriptor one prefix at a time (openat2 RESOLVE_IN_ROOT),
/// creating what is missing in the directory resolved before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InRoot {
    /// Each prefix, relative to the root: `dev`, `dev/pts`.
    pub prefixes: Vec<CString>,
    /// The last component of each prefix: `dev`, `pts`.
    pub names: Vec<CString>,
}

impl InRoot {
    /// The container path (a normalised absolute path: see
    /// [`container_path`]).
    pub(super) fn new(field: &str, p: &Path) -> Result<Self, SpecError> {
        let mut out = Self::default();
        let mut at = PathBuf::new();
        for comp in p.components() {
            if let Component::Normal(n) = comp {
                at.push(n);
                out.prefixes.push(c_path(field, &at)?);
                out.names.push(c_path(field, Path::new(n))?);
            }
        }
        Ok(out)
    }

    /// The number of components.
    pub fn len(&self) -> usize {
        self.prefixes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty()
    }

    /// The container path, for messages.
    pub fn display(&self) -> String {
        format!(
            "/{}",
            self.prefixes
                .last()
                .map_or(std::borrow::Cow::Borrowed(""), |p| p.to_string_lossy())
        )
    }
}

/// One entry of `mounts`, ready for the child.
#[derive(Debug, Clone)]
pub struct MountOp {
    /// `mounts[i] (destination)`, for error messages.
    pub what: String,
    /// `type:destination` (`bind` for a bind), for the accounting.
    pub label: String,
    /// The destination: missing directories (and for a file bind, the
    /// file) are created as it is resolved.
    pub target: InRoot,
    /// Bind of a file: the target is created as an empty file.
    pub create_file: bool,
    pub source: Option<CString>,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
    pub data: Option<CString>,
    /// A bind with ro/nosuid/...: the flags of the second, remounting call.
    pub remount: Option<libc::c_ulong>,
    /// MS_PRIVATE, MS_SLAVE, ... (with MS_REC): a third call.
    pub propagation: Option<libc::c_ulong>,
}

/// A device node in the container's `/dev`: mknod, or (where mknod is
/// refused) an empty file with the guest's node bind-mounted on it. Missing
/// directories above it (a spec's `/dev/cpu/0/cpuid` needs `/dev/cpu/0`)
/// are made as its path is resolved.
#[derive(Debug, Clone)]
pub struct DevNode {
    pub path: InRoot,
    pub mode: libc::mode_t,
    pub dev: libc::dev_t,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// The guest's node of the same name, for the bind fallback.
    pub bind_from: Option<CString>,
}

/// (target, link path).
pub type Symlink = (CString, InRoot);

/// What the child does under the rootfs before pivot_root.
#[derive(Debug, Clone, Default)]
pub struct RootfsPlan {
    pub rootfs: CString,
    /// Flags for `/` first (MS_REC | MS_SLAVE or MS_PRIVATE).
    pub root_propagation: libc::c_ulong,
    /// Flags for the new `/` after pivot_root (rshared, runbindable), if any.
    pub post_propagation: Option<libc::c_ulong>,
    pub mounts: Vec<MountOp>,
    pub devices: Vec<DevNode>,
    /// (target, link path) symlinks, EEXIST ignored.
    pub symlinks: Vec<Symlink>,
    /// After pivot_root, container paths.
    pub masked: Vec<CString>,
    pub readonly: Vec<CString>,
    pub root_readonly: bool,
}

fn c(field: &str, s: &str) -> Result<CString, SpecError> {
    CString::new(s).map_err(|_| SpecError::new(field, format!("{s:?} contains NUL")))
}

pub(super) fn c_path(field: &str, p: &Path) -> Result<CString, SpecError> {
    c(field, &p.to_string_lossy())
}

/// An absolute container path, normalised, with no `..`.
pub(super) fn container_path(field: &str, p: &Path) -> Result<PathBuf, SpecError> {
    if !p.is_absolute() {
        return Err(SpecError::new(
            field,
            format!("{} is not absolute", p.display()),
        ));
    }
    let mut out = PathBuf::from("/");
    for comp in p.components() {
        match comp {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(SpecError::new(
                    field,
                    format!("{} contains ..", p.display()),
                ))
            }
            Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// Parsed `options` of one mount.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Options {
    pub flags: libc::c_ulong,
    pub clear: libc::c_ulong,
    pub propagation: Option<libc::c_ulong>,
    pub data: Vec<String>,
}

/// mount(8) option names and their flags: (name, flag, clears).
const FLAG_OPTIONS: &[(&str, libc::c_ulong, bool)] = &[
    ("async", libc::MS_SYNCHRONOUS, true),
    ("atime", libc::MS_NOATIME, true),
    ("bind", libc::MS_BIND, false),
    ("defaults", 0, false),
    ("dev", libc::MS_NODEV, true),
    ("diratime", libc::MS_NODIRATIME, true),
    ("dirsync", libc::MS_DIRSYNC, false),
    ("exec", libc::MS_NOEXEC, true),
    ("mand", libc::MS_MANDLOCK, false),
    ("noatime", libc::MS_NOATIME, false),
    ("nodev", libc::MS_NODEV, false),
    ("nodiratime", libc::MS_NODIRATIME, false),
    ("noexec", libc::MS_NOEXEC, false),
    ("nomand", libc::MS_MANDLOCK, true),
    ("norelatime", libc::MS_RELATIME, true),
    ("nostrictatime", libc::MS_STRICTATIME, true),
    ("nosuid", libc::MS_NOSUID, false),
    ("nosymfollow", 256, false),
    ("rbind", libc::MS_BIND | libc::MS_REC, false),
    ("relatime", libc::MS_RELATIME, false),
    ("remount", libc::MS_REMOUNT, false),
    ("ro", libc::MS_RDONLY, false),
    ("rw", libc::MS_RDONLY, true),
    ("strictatime", libc::MS_STRICTATIME, false),
    ("suid", libc::MS_NOSUID, true),
    ("symfollow", 256, true),
    ("sync", libc::MS_SYNCHRONOUS, false),
];

/// Propagation names to flags (also `linux.rootfsPropagation`).
pub(super) fn propagation(name: &str) -> Option<libc::c_ulong> {
    Some(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

pub(super) fn parse_options(field: &str, options: &[String]) -> Result<Options, SpecError> {
    let mut o = Options::default();
    for (i, opt) in options.iter().enumerate() {
        if let Some(&(_, flag, clears)) = FLAG_OPTIONS.iter().find(|(n, _, _)| n == opt) {
            if clears {
                o.flags &= !flag;
                o.clear |= flag;
            } else {
                o.flags |= flag;
            }
        } else if let Some(p) = propagation(opt) {
            o.propagation = Some(p);
        } else if matches!(opt.as_str(), "idmap" | "ridmap") {
            return Err(SpecError::new(
                format!("{field}[{i}]"),
                format!("{opt}: idmapped mounts are not supported"),
            ));
        } else if matches!(
            opt.as_str(),
            "rro"
                | "rrw"
                | "rnosuid"
                | "rsuid"
                | "rnodev"
                | "rdev"
                | "rnoexec"
                | "rexec"
                | "rnoatime"
                | "ratime"
                | "rrelatime"
                | "rnorelatime"
                | "rstrictatime"
                | "rnostrictatime"
                | "rnodiratime"
                | "rdiratime"
                | "rnosymfollow"
                | "rsymfollow"
        ) {
            return Err(SpecError::new(
                format!("{field}[{i}]"),
                format!("{opt}: recursive mount attributes are not supported"),
            ));
        } else if opt == "tmpcopyup" {
            crate::log::log_once(&format!("containers: {field}[{i}]: tmpcopyup ignored"));
        } else if opt.contains(',') {
            return Err(SpecError::new(
                format!("{field}[{i}]"),
                format!("{opt:?}: one option per entry"),
            ));
        } else {
            o.data.push(opt.clone());
        }
    }
    Ok(o)
}

/// Flags a bind mount applies in its remount.
const BIND_REMOUNT_FLAGS: libc::c_ulong = libc::MS_RDONLY
    | libc::MS_NOSUID
    | libc::MS_NODEV
    | libc::MS_NOEXEC
    | libc::MS_NOATIME
    | libc::MS_NODIRATIME
    | libc::MS_RELATIME
    | libc::MS_STRICTATIME
    | 256;

/// Context for building mounts: whether the container gets a new cgroup
/// namespace, and its cgroup directory in the guest.
pub(super) struct MountContext<'a> {
    pub new_cgroup_ns: bool,
    pub cgroup_dir: Option<&'a Path>,
}

/// `mounts[i]` to a [`MountOp`]. Returns the op and whether it is a tmpfs on
/// `/dev`.
pub(super) fn mount_op(
    ctx: &MountContext<'_>,
    i: usize,
    m: &Mount,
) -> Result<(MountOp, bool), SpecError> {
    let field = format!("mounts[{i}]");
    let dest = container_path(&format!("{field}.destination"), m.destination())?;
    if dest == Path::new("/") {
        return Err(SpecError::new(
            format!("{field}.destination"),
            "a mount over / is not supported (that is root.path)",
        ));
    }
    if m.uid_mappings().is_some() || m.gid_mappings().is_some() {
        return Err(SpecError::new(
            format!("{field}.uidMappings"),
            "idmapped mounts are not supported",
        ));
    }
    let opts = parse_options(
        &format!("{field}.options"),
        m.options().as_deref().unwrap_or(&[]),
    )?;
    let typ = m.typ().as_deref().unwrap_or("");
    let what = format!("{field} ({})", dest.display());
    let target = InRoot::new(&field, &dest)?;
    let is_bind = typ == "bind" || opts.flags & libc::MS_BIND != 0;
    let kind = if is_bind && typ != "cgroup" {
        "bind"
    } else {
        typ
    };
    let mut op = MountOp {
        what,
        label: format!("{kind}:{}", dest.display()),
        create_file: false,
        source: None,
        target,
        fstype: None,
        flags: opts.flags,
        data: None,
        remount: None,
        propagation: opts.propagation,
    };
    if !opts.data.is_empty() {
        op.data = Some(c(&format!("{field}.options"), &opts.data.join(","))?);
    }
    if is_bind || (typ == "cgroup" && !ctx.new_cgroup_ns) {
        let source = if typ == "cgroup" {
            // No cgroup namespace: the container's own cgroup, bound (as
            // runc does on cgroup v2).
            let Some(dir) = ctx.cgroup_dir else {
                return Err(SpecError::new(
                    format!("{field}.type"),
                    "a cgroup mount needs cgroups, which are off in this agent",
                ));
            };
            op.flags |= libc::MS_BIND | libc::MS_REC;
            dir.to_path_buf()
        } else {
            let Some(src) = m.source() else {
                return Err(SpecError::new(
                    format!("{field}.source"),
                    "a bind mount needs a source",
                ));
            };
            if !src.is_absolute() {
                return Err(SpecError::new(
                    format!("{field}.source"),
                    format!("{} is not absolute", src.display()),
                ));
            }
            src.clone()
        };
        op.flags |= libc::MS_BIND;
        // The container's cgroup directory is made at create, after this
        // plan: it is a directory by then.
        op.create_file = if typ == "cgroup" {
            false
        } else {
            let meta = std::fs::metadata(&source).map_err(|e| {
                SpecError::missing(
                    format!("{field}.source"),
                    format!("{}: {e}", source.display()),
                )
            })?;
            !meta.is_dir()
        };
        op.source = Some(c_path(&format!("{field}.source"), &source)?);
        op.data = None;
        let extra = op.flags & BIND_REMOUNT_FLAGS;
        if extra != 0 {
            op.remount = Some(libc::MS_BIND | libc::MS_REMOUNT | extra);
        }
    } else {
        let fstype = match typ {
            "" => {
                return Err(SpecError::new(
                    format!("{field}.type"),
                    "missing (want proc, tmpfs, bind, ...)",
                ))
            }
            // The guest has cgroup v2 only.
            "cgroup" | "cgroup2" => "cgroup2",
            t => t,
        };
        op.fstype = Some(c(&format!("{field}.type"), fstype)?);
        let source = m
            .source()
            .as_ref()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| fstype.to_owned());
        op.source = Some(c(&format!("{field}.source"), &source)?);
    }
    let dev_tmpfs = dest == Path::new("/dev") && op.fstype.as_deref() == Some(c"tmpfs");
    Ok((op, dev_tmpfs))
}

/// The devices every container gets in a `/dev` tmpfs: (name, major, minor).
const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The `/dev` symlinks: (target, name under /dev).
const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
];

/// The default devices and symlinks of a `/dev` tmpfs, then `linux.devices`.
pub(super) fn devices(
    dev_tmpfs: bool,
    spec_devices: &[LinuxDevice],
) -> Result<(Vec<DevNode>, Vec<Symlink>), SpecError> {
    let mut nodes = Vec::new();
    let mut links = Vec::new();
    if dev_tmpfs {
        for (name, major, minor) in DEFAULT_DEVICES {
            let guest = Path::new("/dev").join(name);
            nodes.push(DevNode {
                path: InRoot::new("linux.devices", &guest)?,
                mode: libc::S_IFCHR | 0o666,
                dev: libc::makedev(*major, *minor),
                uid: 0,
                gid: 0,
                bind_from: std::fs::metadata(&guest)
                    .ok()
                    .filter(|m| m.file_type().is_char_device())
                    .map(|_| c_path("linux.devices", &guest))
                    .transpose()?,
            });
        }
        for (target, name) in DEV_SYMLINKS {
            links.push((
                c("linux.devices", target)?,
                InRoot::new("linux.devices", &Path::new("/dev").join(name))?,
            ));
        }
        if Path::new("/proc/kcore").exists() {
            links.push((
                c("linux.devices", "/proc/kcore")?,
                InRoot::new("linux.devices", Path::new("/dev/core"))?,
            ));
        }
    }
    for (i, d) in spec_devices.iter().enumerate() {
        let field = format!("linux.devices[{i}]");
        let path = container_path(&format!("{field}.path"), d.path())?;
        if !path.starts_with("/dev") {
            return Err(SpecError::new(
                format!("{field}.path"),
                format!("{} is not under /dev", path.display()),
            ));
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
            LinuxDeviceType::B => libc::S_IFBLK,
            LinuxDeviceType::P => libc::S_IFIFO,
            other => {
                return Err(SpecError::new(
                    format!("{field}.type"),
                    format!("{other:?} cannot be created"),
                ))
            }
        };
        let (major, minor) = (
            u32::try_from(d.major())
                .map_err(|_| SpecError::new(format!("{field}.major"), "negative"))?,
            u32::try_from(d.minor())
                .map_err(|_| SpecError::new(format!("{field}.minor"), "negative"))?,
        );
        let in_root = InRoot::new(&format!("{field}.path"), &path)?;
        nodes.retain(|n| n.path != in_root);
        nodes.push(DevNode {
            path: in_root,
            mode: kind | (d.file_mode().unwrap_or(0o666) & 0o7777),
            dev: libc::makedev(major, minor),
            uid: d.uid().unwrap_or(0),
            gid: d.gid().unwrap_or(0),
            bind_from: None,
        });
    }
    Ok((nodes, links))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A spec device in a subdirectory of /dev (ctr --privileged passes
    /// the host's /dev/cpu/0/cpuid) gets its directories made first.
    #[test]
    fn nested_devices_get_their_directories() {
        let d: LinuxDevice =
            serde_json::from_str(r#"{"path":"/dev/cpu/0/cpuid","type":"c","major":203,"minor":0}"#)
                .unwrap();
        let (nodes, _) = devices(true, &[d]).unwrap();
        let n = nodes.last().unwrap();
        assert_eq!(n.path.display(), "/dev/cpu/0/cpuid");
        let dirs: Vec<&str> = n
            .path
            .prefixes
            .iter()
            .map(|c| c.to_str().unwrap())
            .collect();
        assert_eq!(dirs, ["dev", "dev/cpu", "dev/cpu/0", "dev/cpu/0/cpuid"]);
        let names: Vec<&str> = n.path.names.iter().map(|c| c.to_str().unwrap()).collect();
        assert_eq!(names, ["dev", "cpu", "0", "cpuid"]);
        assert_eq!(nodes[0].path.display(), "/dev/null");
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(
            "o",
            &[
                "nosuid",
                "noexec",
                "ro",
                "rw",
                "rslave",
                "mode=755",
                "size=65536k",
            ]
            .map(String::from),
        )
        .unwrap();
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_NOEXEC);
        assert_eq!(o.propagation, Some(libc::MS_SLAVE | libc::MS_REC));
        assert_eq!(o.data, ["mode=755", "size=65536k"]);
        let e = parse_options("mounts[3].options", &["ro".into(), "idmap".into()]).unwrap_err();
        assert_eq!(e.field, "mounts[3].options[1]");
    }

    #[test]
    fn container_paths_are_normalised_and_kept_inside() {
        assert_eq!(
            container_path("f", Path::new("/a/./b/")).unwrap(),
            Path::new("/a/b")
        );
        assert!(container_path("f", Path::new("/a/../../etc")).is_err());
        assert!(container_path("f", Path::new("relative")).is_err());
        assert!(InRoot::new("f", Path::new("/")).unwrap().is_empty());
        assert_eq!(
            InRoot::new("f", Path::new("/dev/pts")).unwrap().prefixes,
            [c"dev".to_owned(), c"dev/pts".to_owned()]
        );
    }
}
