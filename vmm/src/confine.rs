//! Per-thread privileges of the VMM threads, set as each thread starts and
//! before its seccomp filter (defense in depth: what a thread can no longer
//! do, a bug in it cannot make it do).
//!
//! The VMM runs inside the shim, usually as root with every capability.
//! Capability sets, no_new_privs and Landlock domains belong to a thread,
//! so each VMM thread gives up what it does not need without touching the
//! shim's other threads:
//!
//! - `husk-vcpuN`: no capability at all (effective, permitted, inheritable,
//!   ambient; the bounding set emptied), no_new_privs, and a Landlock domain
//!   that allows no file system access (it opens nothing after it starts).
//! - `husk-vmm` (the device event loop, the in-process virtio-fs server and
//!   the controller): only [`VMM_CAPS`], which the virtio-fs passthrough
//!   server needs to act as the guest's root on files of any owner
//!   (`CAP_CHOWN` for chown, `CAP_DAC_OVERRIDE` to open, create in and
//!   search directories of any mode, `CAP_DAC_READ_SEARCH` for LINK, whose
//!   `linkat(AT_EMPTY_PATH)` needs it, `CAP_FOWNER` for chmod, utimes and
//!   O_NOATIME on files it does not own, `CAP_SETUID`/`CAP_SETGID` to switch
//!   its effective uid and gid to the guest caller's for creations). Not
//!   `CAP_FSETID`: without it the host kernel clears set-id bits on writes
//!   and chowns, as it would for an unprivileged writer. Not `CAP_MKNOD`
//!   (FIFOs and sockets need none; device nodes are refused). It gets
//!   no_new_privs and a Landlock domain that allows everything beneath each
//!   of its VM's shares (read-only rights for a read-only share) and nothing
//!   else: the files it uses otherwise (disk images, taps, the console, the
//!   vsock listener) are opened before the thread starts; snapshot files are
//!   written by the requester's thread ([`crate::api`]); connecting to
//!   vsock Unix sockets is not a file system access Landlock checks;
//!   fuse-backend-rs's `/proc/self/fd` is opened `O_PATH` (not checked) and
//!   a file reopened through it is checked where it really is, beneath the
//!   share. Landlock rules hold for the whole hierarchy, so file systems the
//!   shim mounts below a share later (rootfs overlays, volumes) are covered.
//!
//! Landlock needs ABI 2 (Linux 5.19: renames and links across directories);
//! on a kernel without it the thread runs without a domain and a warning is
//! logged (best effort). A kernel that has it always enforces it.

use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, ABI,
};

/// The capabilities `husk-vmm` keeps (see the module documentation).
pub const VMM_CAPS: [Capability; 6] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
];

/// The newest Landlock access rights handled (best effort beyond ABI 2).
const LANDLOCK_ABI: ABI = ABI::V5;

/// Why a thread could not give up its privileges.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("capabilities: {what}: {source}")]
    Caps {
        what: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("prctl(PR_SET_NO_NEW_PRIVS): {0}")]
    NoNewPrivs(#[source] std::io::Error),
    #[error("Landlock: opening {}: {source}", path.display())]
    LandlockPath {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
    #[error("Landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
}

fn caps_err(what: &'static str) -> impl Fn(caps::errors::CapsError) -> ConfineError {
    move |source| ConfineError::Caps { what, source }
}

/// Leaves the calling thread exactly `keep` (less what it does not have)
/// as its effective and permitted capabilities, none inheritable or
/// ambient, a bounding set of `keep` (when it may change it), and sets
/// no_new_privs when asked. Other threads keep theirs.
pub fn restrict_caps(keep: &[Capability], no_new_privs: bool) -> Result<(), ConfineError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("reading"))?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which
    // goes below. A thread without it has nothing to bound.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(caps_err("reading"))?
    {
        let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("reading"))?;
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(caps_err("bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("inheritable set"))?;
    // Effective first: it must stay within the permitted set.
    caps::set(None, CapSet::Effective, &keep).map_err(caps_err("effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("permitted set"))?;
    if no_new_privs {
        set_no_new_privs()?;
    }
    Ok(())
}

/// `prctl(PR_SET_NO_NEW_PRIVS, 1)` on the calling thread.
pub fn set_no_new_privs() -> Result<(), ConfineError> {
    // SAFETY: prctl with integer arguments changes only this thread's
    // no_new_privs flag; no memory is passed.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(ConfineError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// What the calling thread may reach in the file system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsAccess {
    /// Everything beneath these directories.
    pub read_write: Vec<PathBuf>,
    /// Reading files and directories beneath these.
    pub read_only: Vec<PathBuf>,
}

/// Puts the calling thread (and the threads it starts later) in a Landlock
/// domain where it can reach only `access`. Returns whether the domain is
/// enforced: false (with a warning logged) on a kernel without Landlock ABI
/// 2. Landlock needs no_new_privs or CAP_SYS_ADMIN: no_new_privs is set
/// when asked or when the thread lacks CAP_SYS_ADMIN.
pub fn restrict_fs(access: &FsAccess, no_new_privs: bool) -> Result<bool, ConfineError> {
    let no_new_privs = no_new_privs
        || !caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN)
            .map_err(caps_err("reading"))?;
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let rule = |path: &Path, rights| -> Result<PathBeneath<PathFd>, ConfineError> {
        let fd = PathFd::new(path).map_err(|source| ConfineError::LandlockPath {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(PathBeneath::new(fd, rights))
    };
    let mut rules = Vec::with_capacity(access.read_write.len() + access.read_only.len());
    for p in &access.read_write {
        rules.push(rule(p, all)?);
    }
    for p in &access.read_only {
        rules.push(rule(p, read)?);
    }
    let status = Ruleset::default()
        // ABI 2 or nothing: without LANDLOCK_ACCESS_FS_REFER every rename
        // or link across directories would fail (EXDEV).
        .set_compatibility(CompatLevel::SoftRequirement)
        .handle_access(AccessFs::from_all(ABI::V2))?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)?
        .create()?
        .no_new_privs(no_new_privs)
        .add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>))?
        .restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        tracing::warn!(
            landlock = ?status.landlock,
            "Landlock (ABI 2 or later) is not available: this VMM thread runs without a file system domain"
        );
        return Ok(false);
    }
    Ok(true)
}

/// A vCPU thread: no capabilities, no file system access, and
/// no_new_privs unless `no_new_privs` is false (seccomp off: see
/// [`no_new_privs`]).
pub fn vcpu_thread(no_new_privs: bool) -> Result<(), ConfineError> {
    restrict_fs(&FsAccess::default(), no_new_privs)?;
    restrict_caps(&[], no_new_privs)
}

/// The event-loop thread: [`VMM_CAPS`], only `shares`, and no_new_privs
/// unless `no_new_privs` is false. The Landlock domain comes first:
/// without no_new_privs it needs CAP_SYS_ADMIN, and opening the shares for
/// its rules may need capabilities the thread then drops.
pub fn vmm_thread(shares: &FsAccess, no_new_privs: bool) -> Result<(), ConfineError> {
    restrict_fs(shares, no_new_privs)?;
    restrict_caps(&VMM_CAPS, no_new_privs)
}

/// Whether the VMM threads set no_new_privs: with their seccomp filters
/// (installing one sets it anyway), not with `SeccompMode::Off`, the
/// debugging mode that leaves the threads' kernel-facing flags as the
/// shim's (capabilities and Landlock still apply).
pub fn no_new_privs(mode: husk_seccomp::SeccompMode) -> bool {
    mode != husk_seccomp::SeccompMode::Off
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::sync::mpsc;

    use super::*;

    fn status_field(name: &str) -> String {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:\t")))
            .unwrap()
            .trim()
            .to_string()
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no arguments and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn caps_and_no_new_privs_are_per_thread() {
        if !is_root() {
            eprintln!("SKIP: needs root (capabilities to drop)");
            return;
        }
        let before = status_field("CapEff");
        let (eff, prm, inh, bnd, nnp) = std::thread::spawn(|| {
            restrict_caps(&VMM_CAPS, true).unwrap();
            (
                status_field("CapEff"),
                status_field("CapPrm"),
                status_field("CapInh"),
                status_field("CapBnd"),
                status_field("NoNewPrivs"),
            )
        })
        .join()
        .unwrap();
        let want: u64 = VMM_CAPS.iter().map(|c| 1u64 << c.index()).sum();
        let want = format!("{want:016x}");
        assert_eq!((eff.as_str(), prm.as_str()), (want.as_str(), want.as_str()));
        assert_eq!(bnd, want);
        assert_eq!(inh, "0000000000000000");
        assert_eq!(nnp, "1");
        assert_eq!(
            status_field("CapEff"),
            before,
            "the test thread kept its own"
        );
        let eff = std::thread::spawn(|| {
            restrict_caps(&[], false).unwrap();
            (status_field("CapEff"), status_field("NoNewPrivs"))
        })
        .join()
        .unwrap();
        assert_eq!(eff, ("0000000000000000".into(), "0".into()));
    }

    /// Opens `path` with `flags` (O_CREAT: mode 0644); the errno on failure.
    fn open(path: &Path, flags: i32) -> Result<(), i32> {
        let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid C string; the fd returned is closed below.
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
        }
        // SAFETY: `fd` was just opened here and is not used again.
        unsafe { libc::close(fd) };
        Ok(())
    }

    /// A thread in a Landlock domain with one share reaches nothing
    /// outside it, whatever path it uses, and reaches a file system mounted
    /// below the share after the domain was made.
    #[test]
    fn landlock_confines_the_thread_to_its_shares() {
        if !is_root() {
            eprintln!("SKIP: needs root (mounting a tmpfs below the share)");
            return;
        }
        let scratch =
            vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/husk-landlock-").unwrap();
        let share = scratch.as_path().join("share");
        let outside = scratch.as_path().join("outside");
        std::fs::create_dir_all(share.join("later")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), b"host").unwrap();
        std::fs::write(share.join("inside"), b"guest").unwrap();
        let (share2, outside2) = (share.clone(), outside.clone());
        // One thread in a private mount namespace mounts; its child thread
        // (same namespace) is confined.
        std::thread::spawn(move || {
            // SAFETY: unshare/mount change only this thread's mount
            // namespace (a private copy); the strings are valid C strings.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0);
                let root = CString::new("/").unwrap();
                let none = CString::new("none").unwrap();
                assert_eq!(
                    libc::mount(
                        none.as_ptr(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null()
                    ),
                    0
                );
            }
            let (ready_tx, ready) = mpsc::channel::<()>();
            let (mounted_tx, mounted) = mpsc::channel::<()>();
            let confined = std::thread::spawn(move || {
                let enforced = restrict_fs(
                    &FsAccess {
                        read_write: vec![share2.clone()],
                        read_only: vec![],
                    },
                    true,
                )
                .unwrap();
                assert!(enforced, "Landlock must be enforced on this kernel");
                ready_tx.send(()).unwrap();
                let denied = Some(libc::EACCES);
                assert_eq!(open(&share2.join("inside"), libc::O_RDWR), Ok(()));
                assert_eq!(
                    open(&share2.join("new"), libc::O_CREAT | libc::O_WRONLY),
                    Ok(())
                );
                assert_eq!(open(&outside2.join("secret"), libc::O_RDONLY).err(), denied);
                assert_eq!(
                    open(&share2.join("../outside/secret"), libc::O_RDONLY).err(),
                    denied,
                    "a path through the share's parent"
                );
                assert_eq!(
                    open(&outside2.join("planted"), libc::O_CREAT | libc::O_WRONLY).err(),
                    denied
                );
                assert_eq!(open(Path::new("/etc/passwd"), libc::O_RDONLY).err(), denied);
                // A link in the share to the outside leads nowhere either.
                std::os::unix::fs::symlink(outside2.join("secret"), share2.join("link")).unwrap();
                assert_eq!(open(&share2.join("link"), libc::O_RDONLY).err(), denied);
                let e = std::fs::rename(share2.join("new"), outside2.join("moved")).unwrap_err();
                assert!(
                    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EXDEV)),
                    "rename out of the share: {e}"
                );
                // A file system mounted below the share after the domain.
                mounted.recv().unwrap();
                assert_eq!(
                    open(&share2.join("later/file"), libc::O_CREAT | libc::O_WRONLY),
                    Ok(())
                );
            });
            ready.recv().unwrap();
            let dst = CString::new(share.join("later").as_os_str().as_encoded_bytes()).unwrap();
            let tmpfs = CString::new("tmpfs").unwrap();
            // SAFETY: valid C strings; the mount is in this thread's
            // private namespace and goes with it.
            let r = unsafe {
                libc::mount(
                    tmpfs.as_ptr(),
                    dst.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
            mounted_tx.send(()).unwrap();
            confined.join().unwrap();
            // The file is on the tmpfs, not in the directory below it.
            assert!(share.join("later/file").exists());
        })
        .join()
        .unwrap();
        assert!(!scratch.as_path().join("share/later/file").exists());
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"host");
        assert!(!outside.join("planted").exists() && !outside.join("moved").exists());
    }
}
