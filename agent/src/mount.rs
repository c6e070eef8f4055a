//! `Mount` and `Unmount`: what they check ([`MountSpec::validate`],
//! [`validate_target`]), how a virtio-blk disk is found by its serial
//! ([`find_disk_by_serial`]), and the mount calls themselves behind
//! [`GuestMounts`], so the service is tested on the host with a fake `/sys`
//! tree and without mounting anything. [`ProcFacts`] is the real
//! implementation: `mkdir -p`, `mount(2)`, `sync(2)` + `umount2(2)`.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use husk_agent_protocol::agent::MountKind;
use thiserror::Error;

use crate::facts::ProcFacts;
use crate::identity::InvalidField;

/// The filesystem type a disk is mounted as when the request names none.
pub const DEFAULT_BLOCK_FSTYPE: &str = "ext4";
/// The filesystem type of a virtio-fs share.
pub const VIRTIOFS_FSTYPE: &str = "virtiofs";
/// The longest virtio-blk serial (`VIRTIO_BLK_ID_BYTES`).
pub const SERIAL_MAX: usize = 20;
/// The longest virtio-fs tag (the config space's `tag[36]`).
pub const TAG_MAX: usize = 36;
/// The longest filesystem type name accepted.
pub const FSTYPE_MAX: usize = 32;
/// The longest options string: mount(2) copies one page of data, NUL
/// included.
pub const OPTIONS_MAX: usize = 4095;
/// The longest path accepted (`PATH_MAX` less the NUL).
pub const PATH_MAX: usize = 4095;

/// One mount(2) call, as [`GuestMounts::mount`] gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountCall {
    /// The block device (`/dev/vdb`) or the virtio-fs tag.
    pub source: String,
    pub target: PathBuf,
    pub fstype: String,
    pub read_only: bool,
    /// mount(2)'s data argument; "" passes none.
    pub options: String,
}

/// How the guest mounts and unmounts.
pub trait GuestMounts: Send + Sync {
    /// Where sysfs is mounted (`/sys` in the guest; a fake tree in tests).
    fn sysfs_root(&self) -> &Path;
    /// Creates `target` and its missing parents.
    fn create_mount_point(&self, target: &Path) -> io::Result<()>;
    /// Mounts as `call` says.
    fn mount(&self, call: &MountCall) -> io::Result<()>;
    /// Flushes dirty data, then unmounts `target`.
    fn unmount(&self, target: &Path) -> io::Result<()>;
}

/// Why a `Mount` or `Unmount` failed. Every message names the device (or
/// tag) and the mount point.
#[derive(Debug, Error)]
pub enum MountError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("no virtio-blk disk with serial {serial:?} (found: {found})")]
    NoDisk { serial: String, found: String },
    #[error("looking for the disk with serial {serial:?}: reading {}: {source}", path.display())]
    Sysfs {
        serial: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("creating mount point {} for {device}: {source}", target.display())]
    MountPoint {
        device: String,
        target: PathBuf,
        source: io::Error,
    },
    #[error("mounting {device}{} on {} as {fstype}: {source}", serial_note(.serial), target.display())]
    Mount {
        device: String,
        serial: Option<String>,
        target: PathBuf,
        fstype: String,
        source: io::Error,
    },
    #[error("unmounting {}: {source}", target.display())]
    Unmount { target: PathBuf, source: io::Error },
}

fn serial_note(serial: &Option<String>) -> String {
    serial
        .as_ref()
        .map(|s| format!(" (serial {s})"))
        .unwrap_or_default()
}

impl MountError {
    /// The ttrpc code the error is answered with.
    pub fn code(&self) -> ttrpc::Code {
        let errno = |e: &io::Error| e.raw_os_error();
        match self {
            Self::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
            Self::NoDisk { .. } => ttrpc::Code::NOT_FOUND,
            // A /dev path that is not there.
            Self::Mount { source, .. } if errno(source) == Some(libc::ENOENT) => {
                ttrpc::Code::NOT_FOUND
            }
            // Nothing there, or not a mount point.
            Self::Unmount { source, .. }
                if matches!(errno(source), Some(libc::ENOENT | libc::EINVAL)) =>
            {
                ttrpc::Code::NOT_FOUND
            }
            Self::Unmount { source, .. } if errno(source) == Some(libc::EBUSY) => {
                ttrpc::Code::FAILED_PRECONDITION
            }
            Self::Sysfs { .. }
            | Self::MountPoint { .. }
            | Self::Mount { .. }
            | Self::Unmount { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// What a `Mount` request's `source` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A virtio-blk disk by its serial.
    Serial(String),
    /// A block device by its path under `/dev`.
    DevPath(String),
    /// A virtio-fs share by its tag.
    Tag(String),
}

/// A checked `Mount` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: MountSource,
    pub target: PathBuf,
    pub fstype: String,
    pub read_only: bool,
    pub options: String,
}

impl MountSpec {
    /// Checks every field; the first bad one is the error.
    pub fn validate(
        kind: Option<MountKind>,
        source: &str,
        target: &str,
        fstype: &str,
        read_only: bool,
        options: &str,
    ) -> Result<Self, InvalidField> {
        let (source, fstype) = match kind {
            Some(MountKind::MOUNT_KIND_BLOCK) => {
                let source = block_source(source)?;
                let fstype = if fstype.is_empty() {
                    DEFAULT_BLOCK_FSTYPE
                } else {
                    validate_fstype(fstype)?
                };
                (source, fstype)
            }
            Some(MountKind::MOUNT_KIND_VIRTIOFS) => {
                let tag = validate_tag(source)?;
                if !fstype.is_empty() && fstype != VIRTIOFS_FSTYPE {
                    return Err(invalid(
                        "fstype",
                        format!("{fstype:?}: a virtio-fs share is always {VIRTIOFS_FSTYPE:?}"),
                    ));
                }
                (MountSource::Tag(tag.to_owned()), VIRTIOFS_FSTYPE)
            }
            Some(MountKind::MOUNT_KIND_UNSPECIFIED) => {
                return Err(invalid("kind", "unspecified: want BLOCK or VIRTIOFS"))
            }
            None => return Err(invalid("kind", "unknown value: want BLOCK or VIRTIOFS")),
        };
        let target = validate_target(target)?;
        validate_options(options)?;
        Ok(Self {
            source,
            target,
            fstype: fstype.to_owned(),
            read_only,
            options: options.to_owned(),
        })
    }
}

fn block_source(source: &str) -> Result<MountSource, InvalidField> {
    const FIELD: &str = "source";
    if source.starts_with('/') {
        let path = validate_path(FIELD, source)?;
        if !path.starts_with("/dev") || path == Path::new("/dev") {
            return Err(invalid(
                FIELD,
                format!("{source:?}: a device path must be under /dev/"),
            ));
        }
        return Ok(MountSource::DevPath(path.display().to_string()));
    }
    if source.is_empty() {
        return Err(invalid(FIELD, "empty: want a disk serial or a /dev/ path"));
    }
    if source.len() > SERIAL_MAX {
        return Err(invalid(
            FIELD,
            format!(
                "serial {source:?} is {} bytes, at most {SERIAL_MAX}",
                source.len()
            ),
        ));
    }
    if let Some(c) = source.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(
            FIELD,
            format!("serial {source:?}: {c:?} is not printable ASCII (space excluded)"),
        ));
    }
    Ok(MountSource::Serial(source.to_owned()))
}

fn validate_tag(tag: &str) -> Result<&str, InvalidField> {
    const FIELD: &str = "source";
    if tag.is_empty() {
        return Err(invalid(FIELD, "empty: want a virtio-fs tag"));
    }
    if tag.len() > TAG_MAX {
        return Err(invalid(
            FIELD,
            format!("tag {tag:?} is {} bytes, at most {TAG_MAX}", tag.len()),
        ));
    }
    if tag.contains('\0') {
        return Err(invalid(FIELD, format!("tag {tag:?} contains NUL")));
    }
    Ok(tag)
}

fn validate_fstype(fstype: &str) -> Result<&str, InvalidField> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if fstype.len() > FSTYPE_MAX || !fstype.chars().all(ok) {
        return Err(invalid(
            "fstype",
            format!("{fstype:?}: want 1 to {FSTYPE_MAX} of [a-zA-Z0-9._-]"),
        ));
    }
    Ok(fstype)
}

fn validate_options(options: &str) -> Result<(), InvalidField> {
    if options.len() > OPTIONS_MAX {
        return Err(invalid(
            "options",
            format!("{} bytes, at most {OPTIONS_MAX}", options.len()),
        ));
    }
    if options.contains('\0') {
        return Err(invalid("options", "contains NUL"));
    }
    Ok(())
}

/// An absolute path without `..` or NUL, at most [`PATH_MAX`] bytes,
/// normalised (`.` and repeated `/` dropped).
fn validate_path(field: &'static str, path: &str) -> Result<PathBuf, InvalidField> {
    if path.is_empty() {
        return Err(invalid(field, "empty: want an absolute path"));
    }
    if path.contains('\0') {
        return Err(invalid(field, format!("{path:?} contains NUL")));
    }
    if path.len() > PATH_MAX {
        return Err(invalid(
            field,
            format!("{} bytes, at most {PATH_MAX}", path.len()),
        ));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(invalid(field, format!("{path:?} is not an absolute path")));
    }
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                return Err(invalid(field, format!("{path:?} has a `..` component")))
            }
            Component::Prefix(_) => return Err(invalid(field, format!("{path:?}: bad path"))),
        }
    }
    Ok(out)
}

/// A mount point: an absolute path, not `/` itself (see [`validate_path`]).
pub fn validate_target(target: &str) -> Result<PathBuf, InvalidField> {
    let path = validate_path("target", target)?;
    if path == Path::new("/") {
        return Err(invalid("target", "\"/\" is the root filesystem"));
    }
    Ok(path)
}

/// Finds the virtio-blk disk whose serial is `serial`: the `vd*` entry of
/// `<sysfs_root>/block` whose `serial` file reads `serial` (trailing
/// whitespace ignored). Returns its device path, `/dev/<name>`.
pub fn find_disk_by_serial(sysfs_root: &Path, serial: &str) -> Result<PathBuf, MountError> {
    let block = sysfs_root.join("block");
    let sysfs_error = |path: &Path, source| MountError::Sysfs {
        serial: serial.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&block).map_err(|e| sysfs_error(&block, e))? {
        let entry = entry.map_err(|e| sysfs_error(&block, e))?;
        let name = entry.file_name();
        if name.as_bytes().starts_with(b"vd") {
            names.push(name.to_string_lossy().into_owned());
        }
    }
    names.sort();
    let mut found = Vec::with_capacity(names.len());
    for name in names {
        let path = block.join(&name).join("serial");
        match std::fs::read(&path) {
            Ok(bytes) => {
                let have = String::from_utf8_lossy(&bytes).trim_end().to_owned();
                if have == serial {
                    return Ok(Path::new("/dev").join(&name));
                }
                found.push(format!("{name} serial {have:?}"));
            }
            // A disk without a serial attribute.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                found.push(format!("{name} without serial"))
            }
            Err(e) => return Err(sysfs_error(&path, e)),
        }
    }
    Err(MountError::NoDisk {
        serial: serial.to_owned(),
        found: if found.is_empty() {
            "no virtio-blk disks".into()
        } else {
            found.join(", ")
        },
    })
}

/// Mounts as `spec` says through `mounts`; returns what was mounted.
pub fn mount(mounts: &dyn GuestMounts, spec: &MountSpec) -> Result<MountCall, MountError> {
    let (device, serial) = match &spec.source {
        MountSource::Serial(s) => {
            let dev = find_disk_by_serial(mounts.sysfs_root(), s)?;
            (dev.display().to_string(), Some(s.clone()))
        }
        MountSource::DevPath(p) | MountSource::Tag(p) => (p.clone(), None),
    };
    mounts
        .create_mount_point(&spec.target)
        .map_err(|source| MountError::MountPoint {
            device: device.clone(),
            target: spec.target.clone(),
            source,
        })?;
    let call = MountCall {
        source: device,
        target: spec.target.clone(),
        fstype: spec.fstype.clone(),
        read_only: spec.read_only,
        options: spec.options.clone(),
    };
    mounts.mount(&call).map_err(|source| MountError::Mount {
        device: call.source.clone(),
        serial,
        target: call.target.clone(),
        fstype: call.fstype.clone(),
        source,
    })?;
    Ok(call)
}

/// Unmounts `target` (checked by [`validate_target`]) through `mounts`.
pub fn unmount(mounts: &dyn GuestMounts, target: &str) -> Result<PathBuf, MountError> {
    let target = validate_target(target)?;
    mounts
        .unmount(&target)
        .map_err(|source| MountError::Unmount {
            target: target.clone(),
            source,
        })?;
    Ok(target)
}

/// virtio-fs sends FUSE_INIT in the background: mount(2) succeeds even when
/// the host refuses the session (a template's share with no directory
/// yet). A stat of the root waits for INIT's answer; on failure the mount
/// is detached and the error says what happened.
fn check_fuse_session(target: &Path) -> io::Result<()> {
    let Err(e) = std::fs::metadata(target) else {
        return Ok(());
    };
    if let Ok(t) = c_string(target.as_os_str().as_bytes()) {
        // SAFETY: `t` is a valid NUL-terminated string that outlives the call.
        unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    }
    Err(io::Error::new(
        e.kind(),
        format!("the host does not serve this share (no directory behind it yet?): {e}"),
    ))
}

fn c_string(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in an argument"))
}

/// The running system: real mounts (run only in the guest).
impl GuestMounts for ProcFacts {
    fn sysfs_root(&self) -> &Path {
        Path::new("/sys")
    }

    fn create_mount_point(&self, target: &Path) -> io::Result<()> {
        std::fs::create_dir_all(target)
    }

    fn mount(&self, call: &MountCall) -> io::Result<()> {
        let source = c_string(call.source.as_bytes())?;
        let target = c_string(call.target.as_os_str().as_bytes())?;
        let fstype = c_string(call.fstype.as_bytes())?;
        let data = c_string(call.options.as_bytes())?;
        let flags = if call.read_only { libc::MS_RDONLY } else { 0 };
        let data_ptr = if call.options.is_empty() {
            std::ptr::null()
        } else {
            data.as_ptr().cast()
        };
        // SAFETY: every pointer is a valid NUL-terminated string that
        // outlives the call (or null for no data, which mount(2) allows).
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                flags,
                data_ptr,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        if call.fstype == "virtiofs" {
            check_fuse_session(&call.target)?;
        }
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let target = c_string(target.as_os_str().as_bytes())?;
        // SAFETY: sync takes no arguments; `target` is a valid
        // NUL-terminated string that outlives the umount2 call.
        let rc = unsafe {
            libc::sync();
            libc::umount2(target.as_ptr(), 0)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;
    use crate::testing::FakeSysfs;

    fn spec(
        kind: MountKind,
        source: &str,
        target: &str,
        fstype: &str,
    ) -> Result<MountSpec, InvalidField> {
        MountSpec::validate(Some(kind), source, target, fstype, false, "")
    }

    #[test]
    fn block_defaults_to_ext4_and_takes_serials_and_dev_paths() {
        let s = spec(MountKind::MOUNT_KIND_BLOCK, "data-1", "/mnt/./data//", "").unwrap();
        assert_eq!(s.source, MountSource::Serial("data-1".into()));
        assert_eq!(s.target, Path::new("/mnt/data"));
        assert_eq!(s.fstype, "ext4");
        let s = spec(MountKind::MOUNT_KIND_BLOCK, "/dev/vdb", "/mnt", "xfs").unwrap();
        assert_eq!(s.source, MountSource::DevPath("/dev/vdb".into()));
        assert_eq!(s.fstype, "xfs");
    }

    #[test]
    fn virtiofs_is_always_virtiofs() {
        let s = spec(
            MountKind::MOUNT_KIND_VIRTIOFS,
            "rootfs",
            "/run/c/rootfs",
            "",
        )
        .unwrap();
        assert_eq!(s.source, MountSource::Tag("rootfs".into()));
        assert_eq!(s.fstype, "virtiofs");
        let s = spec(
            MountKind::MOUNT_KIND_VIRTIOFS,
            "tag with space",
            "/x",
            "virtiofs",
        );
        assert_eq!(s.unwrap().fstype, "virtiofs");
        let e = spec(MountKind::MOUNT_KIND_VIRTIOFS, "t", "/x", "ext4").unwrap_err();
        assert_eq!(e.field, "fstype");
    }

    #[test]
    fn each_bad_field_is_named() {
        let field = |kind, source: &str, target: &str, fstype: &str, options: &str| {
            MountSpec::validate(kind, source, target, fstype, true, options)
                .unwrap_err()
                .field
        };
        let block = Some(MountKind::MOUNT_KIND_BLOCK);
        let fs = Some(MountKind::MOUNT_KIND_VIRTIOFS);
        assert_eq!(field(None, "s", "/m", "", ""), "kind");
        assert_eq!(
            field(Some(MountKind::MOUNT_KIND_UNSPECIFIED), "s", "/m", "", ""),
            "kind"
        );
        for bad in [
            "",
            "a b",
            "s\0",
            &"s".repeat(21),
            "/etc/passwd",
            "/dev",
            "/dev/../etc",
        ] {
            assert_eq!(field(block, bad, "/m", "", ""), "source", "{bad:?}");
        }
        for bad in ["", "t\0", &"t".repeat(37)] {
            assert_eq!(field(fs, bad, "/m", "", ""), "source", "{bad:?}");
        }
        for bad in [
            "",
            "m",
            "./m",
            "/a/../b",
            "/..",
            "/",
            "//",
            "/m\0",
            &format!("/{}", "a".repeat(4095)),
        ] {
            assert_eq!(field(block, "s", bad, "", ""), "target", "{bad:?}");
        }
        for bad in ["ext 4", "e/x", &"e".repeat(33)] {
            assert_eq!(field(block, "s", "/m", bad, ""), "fstype", "{bad:?}");
        }
        for bad in ["a\0b", &"o".repeat(4096)] {
            assert_eq!(field(block, "s", "/m", "", bad), "options", "{bad:?}");
        }
        // Just fits.
        assert!(MountSpec::validate(block, "s", "/m", "", false, &"o".repeat(4095)).is_ok());
        assert!(MountSpec::validate(block, &"s".repeat(20), "/m", "", false, "").is_ok());
    }

    #[test]
    fn finds_the_disk_by_serial() {
        let sys = FakeSysfs::new("serial");
        sys.disk("vda", Some("root"));
        sys.disk("vdb", Some("data-1\n"));
        sys.disk("vdc", None);
        sys.disk("sda", Some("data-2"));
        assert_eq!(
            find_disk_by_serial(sys.root(), "data-1").unwrap(),
            Path::new("/dev/vdb")
        );
        let e = find_disk_by_serial(sys.root(), "data-2").unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(
            e.to_string(),
            "no virtio-blk disk with serial \"data-2\" (found: vda serial \"root\", \
             vdb serial \"data-1\", vdc without serial)"
        );
    }

    #[test]
    fn no_disks_at_all_and_no_sysfs() {
        let sys = FakeSysfs::new("empty");
        let e = find_disk_by_serial(sys.root(), "x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "no virtio-blk disk with serial \"x\" (found: no virtio-blk disks)"
        );
        let e = find_disk_by_serial(Path::new("/nonexistent-sysfs"), "x").unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INTERNAL);
        assert!(
            e.to_string().starts_with(
                "looking for the disk with serial \"x\": reading /nonexistent-sysfs/block: "
            ),
            "{e}"
        );
    }

    #[test]
    fn codes_follow_errno() {
        let mount_err = |errno| MountError::Mount {
            device: "/dev/vdb".into(),
            serial: Some("d".into()),
            target: "/mnt/data".into(),
            fstype: "ext4".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(mount_err(libc::ENOENT).code(), ttrpc::Code::NOT_FOUND);
        let e = mount_err(libc::EINVAL);
        assert_eq!(e.code(), ttrpc::Code::INTERNAL);
        assert_eq!(
            e.to_string(),
            "mounting /dev/vdb (serial d) on /mnt/data as ext4: Invalid argument (os error 22)"
        );
        let unmount_err = |errno| MountError::Unmount {
            target: "/mnt".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(unmount_err(libc::EINVAL).code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(
            unmount_err(libc::EBUSY).code(),
            ttrpc::Code::FAILED_PRECONDITION
        );
        assert_eq!(unmount_err(libc::EIO).code(), ttrpc::Code::INTERNAL);
    }
}

/// The RPCs over a Unix socket: the service's answers and what it asked of
/// the (fake) guest.
#[cfg(test)]
mod service_tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::time::Duration;

    use husk_agent_protocol::agent::{MountRequest, UnmountRequest};
    use husk_agent_protocol::agent_ttrpc::AgentClient;
    use ttrpc::context;

    use super::*;
    use crate::testing::{FakeFacts, FakeSysfs, UnixAgent};

    fn ctx() -> context::Context {
        context::with_duration(Duration::from_secs(5))
    }

    fn client(agent: &UnixAgent) -> AgentClient {
        AgentClient::new(ttrpc::Client::connect(&agent.address()).unwrap())
    }

    fn request(kind: MountKind, source: &str, target: &str) -> MountRequest {
        MountRequest {
            kind: kind.into(),
            source: source.into(),
            target: target.into(),
            ..Default::default()
        }
    }

    fn status_of(e: ttrpc::Error) -> ttrpc::Status {
        match e {
            ttrpc::Error::RpcStatus(s) => s,
            other => panic!("unexpected error {other:?}"),
        }
    }

    fn sysfs() -> FakeSysfs {
        let sys = FakeSysfs::new("svc");
        sys.disk("vda", Some("root"));
        sys.disk("vdb", Some("data"));
        sys
    }

    #[test]
    fn mounts_a_disk_by_serial_and_unmounts_it() {
        let sys = sysfs();
        let facts = FakeFacts {
            sysfs_root: sys.root().to_owned(),
            ..FakeFacts::default()
        };
        let agent = UnixAgent::start("mount-disk", facts.clone()).unwrap();
        let c = client(&agent);
        let mut req = request(MountKind::MOUNT_KIND_BLOCK, "data", "/mnt/data/");
        req.read_only = true;
        req.options = "noload".into();
        let r = c.mount(ctx(), &req).unwrap();
        assert_eq!(
            (r.device.as_str(), r.target.as_str(), r.fstype.as_str()),
            ("/dev/vdb", "/mnt/data", "ext4")
        );
        assert_eq!(facts.applied().mount_points, [PathBuf::from("/mnt/data")]);
        assert_eq!(
            facts.applied().mounts,
            [MountCall {
                source: "/dev/vdb".into(),
                target: "/mnt/data".into(),
                fstype: "ext4".into(),
                read_only: true,
                options: "noload".into(),
            }]
        );
        let unmount = UnmountRequest {
            target: "/mnt/data".into(),
            ..Default::default()
        };
        c.unmount(ctx(), &unmount).unwrap();
        assert!(facts.applied().mounts.is_empty());
        // Nothing there any more.
        let s = status_of(c.unmount(ctx(), &unmount).unwrap_err());
        assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(
            s.message,
            "unmount: unmounting /mnt/data: Invalid argument (os error 22)"
        );
    }

    #[test]
    fn mounts_a_share_and_a_dev_path() {
        let facts = FakeFacts::default();
        let agent = UnixAgent::start("mount-fs", facts.clone()).unwrap();
        let c = client(&agent);
        let r = c
            .mount(
                ctx(),
                &request(MountKind::MOUNT_KIND_VIRTIOFS, "rootfs", "/run/c1"),
            )
            .unwrap();
        assert_eq!(
            (r.device.as_str(), r.fstype.as_str()),
            ("rootfs", "virtiofs")
        );
        let mut req = request(MountKind::MOUNT_KIND_BLOCK, "/dev/vdc", "/srv");
        req.fstype = "xfs".into();
        let r = c.mount(ctx(), &req).unwrap();
        assert_eq!((r.device.as_str(), r.fstype.as_str()), ("/dev/vdc", "xfs"));
        let mounts = &facts.applied().mounts;
        assert_eq!(mounts[0].source, "rootfs");
        assert_eq!(mounts[0].fstype, "virtiofs");
        assert_eq!(mounts[1].source, "/dev/vdc");
    }

    #[test]
    fn errors_name_the_field_the_device_and_the_mount_point() {
        let sys = sysfs();
        let facts = FakeFacts {
            sysfs_root: sys.root().to_owned(),
            fail_mount: Some(libc::EINVAL),
            ..FakeFacts::default()
        };
        let agent = UnixAgent::start("mount-errors", facts.clone()).unwrap();
        let c = client(&agent);
        let cases = [
            (
                request(MountKind::MOUNT_KIND_UNSPECIFIED, "data", "/mnt"),
                ttrpc::Code::INVALID_ARGUMENT,
                "mount: kind: unspecified: want BLOCK or VIRTIOFS",
            ),
            (
                request(MountKind::MOUNT_KIND_BLOCK, "data", "mnt"),
                ttrpc::Code::INVALID_ARGUMENT,
                "mount: target: \"mnt\" is not an absolute path",
            ),
            (
                request(MountKind::MOUNT_KIND_BLOCK, "data", "/mnt/../etc"),
                ttrpc::Code::INVALID_ARGUMENT,
                "mount: target: \"/mnt/../etc\" has a `..` component",
            ),
            (
                request(MountKind::MOUNT_KIND_BLOCK, "nope", "/mnt"),
                ttrpc::Code::NOT_FOUND,
                "mount: no virtio-blk disk with serial \"nope\" \
                 (found: vda serial \"root\", vdb serial \"data\")",
            ),
            (
                request(MountKind::MOUNT_KIND_BLOCK, "data", "/mnt/data"),
                ttrpc::Code::INTERNAL,
                "mount: mounting /dev/vdb (serial data) on /mnt/data as ext4: \
                 Invalid argument (os error 22)",
            ),
            (
                request(MountKind::MOUNT_KIND_VIRTIOFS, "share", "/mnt/s"),
                ttrpc::Code::INTERNAL,
                "mount: mounting share on /mnt/s as virtiofs: Invalid argument (os error 22)",
            ),
        ];
        for (req, code, message) in cases {
            let s = status_of(c.mount(ctx(), &req).unwrap_err());
            assert_eq!((s.code(), s.message.as_str()), (code, message));
        }
        // An unknown enum value from a newer host.
        let mut req = request(MountKind::MOUNT_KIND_BLOCK, "data", "/mnt");
        req.kind = protobuf::EnumOrUnknown::from_i32(7);
        let s = status_of(c.mount(ctx(), &req).unwrap_err());
        assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert_eq!(
            s.message,
            "mount: kind: unknown value: want BLOCK or VIRTIOFS"
        );
        assert!(facts.applied().mounts.is_empty());

        let s = status_of(
            c.unmount(
                ctx(),
                &UnmountRequest {
                    target: "/".into(),
                    ..Default::default()
                },
            )
            .unwrap_err(),
        );
        assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
        assert_eq!(s.message, "unmount: target: \"/\" is the root filesystem");
    }
}
