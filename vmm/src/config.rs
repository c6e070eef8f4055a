//! What a VM is made of, validated before anything is created.

use std::path::{Path, PathBuf};

use crate::boot::mptable::MAX_CPUS;
pub use husk_seccomp::{SeccompError, SeccompMode};

/// A virtio-blk disk: a raw image, read-only or not, and the serial id the
/// guest sees (`/sys/block/vdX/serial`, what the agent mounts by).
pub use husk_devices::virtio::block::BlockConfig as DiskConfig;

/// A virtio-fs share: a host directory (none in a template: the VM started
/// from it names one), read-only or not, and the tag the guest mounts.
pub use husk_devices::virtio::fs::FsConfig as ShareConfig;

/// A virtio-net device: its TAP (by name, or an open fd), the guest's MAC
/// and the MTU offered.
pub use husk_devices::virtio::net::{NetConfig, TapSource};

/// The longest disk id virtio-blk can report (GET_ID answers 20 bytes).
pub const MAX_DISK_ID: usize = 20;

/// The longest vsock socket path: sun_path holds 108 bytes, with room for
/// the `_<port>` suffix of guest-initiated connections and the NUL.
pub const MAX_VSOCK_PATH: usize = 96;

/// Smallest guest memory accepted.
pub const MIN_MEM_MIB: u64 = 16;
/// Largest guest memory accepted (1 TiB).
pub const MAX_MEM_MIB: u64 = 1 << 20;
/// The line the agent prints once it is ready.
pub const READY_MARKER: &str = "husk-agent ready";

/// Whether to add the PVM compatibility command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PvmCompat {
    /// When `husk check`'s detection says the host is PVM.
    #[default]
    Auto,
    On,
    Off,
}

/// Where the guest console goes.
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    /// A file that receives every byte (created or truncated).
    pub file: Option<PathBuf>,
    /// Also log each line (target `guest_console`).
    pub log: bool,
}

/// The vsock device and its hybrid-vsock Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u32,
    /// Host connections come in here (`CONNECT <port>`); guest connections
    /// to host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// The guest CID husk gives by default.
pub const DEFAULT_GUEST_CID: u32 = 3;

/// A VM to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Names the VM in logs and errors (the pod id, later).
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Arguments added after husk's own command line.
    pub cmdline_extra: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub console: ConsoleConfig,
    pub pvm_compat: PvmCompat,
    /// Ask the agent to power off once ready.
    pub oneshot: bool,
    /// The console line that means "agent ready".
    pub ready_marker: String,
    /// A virtio-vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// virtio-blk disks, in the order the guest sees them (vda, vdb, ...).
    pub disks: Vec<DiskConfig>,
    /// virtio-fs shares, attached after the disks.
    pub shares: Vec<ShareConfig>,
    /// virtio-net devices, attached after the shares (eth0, eth1, ...).
    pub nets: Vec<NetConfig>,
    /// The VMM threads' seccomp filters, exactly (the VMM reads no
    /// environment; a binary resolves `HUSK_SECCOMP` at its edge with
    /// `SeccompMode::from_env`).
    pub seccomp: SeccompMode,
}

impl Default for VmConfig {
    fn default() -> Self {
        Self {
            name: "vm".into(),
            kernel: PathBuf::new(),
            initrd: None,
            cmdline_extra: String::new(),
            mem_mib: 128,
            vcpus: 1,
            console: ConsoleConfig::default(),
            pvm_compat: PvmCompat::Auto,
            oneshot: false,
            ready_marker: READY_MARKER.into(),
            vsock: None,
            disks: Vec::new(),
            shares: Vec::new(),
            nets: Vec::new(),
            seccomp: SeccompMode::Enforce,
        }
    }
}

/// A VM to restore from a snapshot directory.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub name: String,
    pub snapshot_dir: PathBuf,
    pub console: ConsoleConfig,
    /// The restored VM's own hybrid-vsock socket (required when the
    /// snapshot has a vsock device).
    pub vsock_uds: Option<PathBuf>,
    /// When given, the snapshot must have this much memory / these vCPUs.
    pub mem_mib: Option<u64>,
    pub vcpus: Option<u8>,
    /// Images for the snapshot's disks, in order, replacing the paths it
    /// recorded (each must hold as many sectors as the original). Empty:
    /// reopen the recorded paths.
    pub disks: Vec<PathBuf>,
    /// The host directory for each of the snapshot's virtio-fs shares, by
    /// tag; a share not named here has none (the guest cannot mount it).
    pub shares: Vec<(String, PathBuf)>,
    /// A TAP for each of the snapshot's net devices, in order (a template's
    /// net device is layout only: each restored VM gets its own tap).
    pub nets: Vec<TapSource>,
    /// The VMM threads' seccomp filters, exactly (the environment is not
    /// read here: the binary resolves `HUSK_SECCOMP` at its edge, see
    /// `husk_seccomp::SeccompMode::from_env`).
    pub seccomp: SeccompMode,
}

/// Invalid configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("memory {mib} MiB is out of range ({MIN_MEM_MIB}..={MAX_MEM_MIB} MiB)")]
    Memory { mib: u64 },
    #[error("vCPU count {0} is out of range (1..={MAX_CPUS})")]
    Vcpus(u8),
    #[error("no kernel image given")]
    NoKernel,
    #[error("vsock guest CID {0} is reserved (use 3 or more)")]
    GuestCid(u32),
    #[error("vsock socket path {0:?} is too long for a Unix socket (with a port suffix)")]
    VsockPath(PathBuf),
    #[error("disk {id:?}: {reason}")]
    Disk { id: String, reason: &'static str },
    #[error("virtio-fs share {tag:?}: {reason}")]
    Share { tag: String, reason: &'static str },
    #[error("net device {index} ({tap}): {reason}")]
    Net {
        index: usize,
        tap: String,
        reason: &'static str,
    },
    #[error("the VM name must be 1..=64 characters without '/' or control characters: {0:?}")]
    Name(String),
    #[error("no snapshot directory given")]
    NoSnapshotDir,
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(|c| c == '/' || c.is_control()) {
        return Err(ConfigError::Name(name.to_string()));
    }
    Ok(())
}

fn validate_mem(mib: u64) -> Result<(), ConfigError> {
    if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&mib) {
        return Err(ConfigError::Memory { mib });
    }
    Ok(())
}

fn validate_vcpus(n: u8) -> Result<(), ConfigError> {
    if n == 0 || n > MAX_CPUS {
        return Err(ConfigError::Vcpus(n));
    }
    Ok(())
}

/// sun_path holds 108 bytes; leave room for "_<port>" and the NUL.
fn validate_vsock_path(p: &Path) -> Result<(), ConfigError> {
    if p.as_os_str().is_empty() || p.as_os_str().len() > MAX_VSOCK_PATH {
        return Err(ConfigError::VsockPath(p.to_path_buf()));
    }
    Ok(())
}

/// Share tags: each one once.
fn validate_tags<'a>(tags: impl Iterator<Item = &'a str>) -> Result<(), ConfigError> {
    let mut seen = Vec::new();
    for tag in tags {
        if seen.contains(&tag) {
            return Err(ConfigError::Share {
                tag: tag.to_string(),
                reason: "two shares have this tag",
            });
        }
        seen.push(tag);
    }
    Ok(())
}

impl RestoreConfig {
    /// Checks the configuration without touching the host (the snapshot's
    /// own contents are checked when it is read).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name(&self.name)?;
        if self.snapshot_dir.as_os_str().is_empty() {
            return Err(ConfigError::NoSnapshotDir);
        }
        if let Some(p) = &self.vsock_uds {
            validate_vsock_path(p)?;
        }
        if let Some(m) = self.mem_mib {
            validate_mem(m)?;
        }
        if let Some(n) = self.vcpus {
            validate_vcpus(n)?;
        }
        for (i, d) in self.disks.iter().enumerate() {
            if d.as_os_str().is_empty() {
                return Err(ConfigError::Disk {
                    id: format!("#{i}"),
                    reason: "no image path",
                });
            }
        }
        for (tag, dir) in &self.shares {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::Share {
                    tag: tag.clone(),
                    reason: "no directory",
                });
            }
        }
        validate_tags(self.shares.iter().map(|(t, _)| t.as_str()))
    }
}

impl VmConfig {
    /// Checks the configuration without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name(&self.name)?;
        validate_mem(self.mem_mib)?;
        validate_vcpus(self.vcpus)?;
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 {
                return Err(ConfigError::GuestCid(v.guest_cid));
            }
            validate_vsock_path(&v.uds_path)?;
        }
        for (i, d) in self.disks.iter().enumerate() {
            let bad = |reason| {
                Err(ConfigError::Disk {
                    id: d.id.clone(),
                    reason,
                })
            };
            if d.id.is_empty() || d.id.len() > MAX_DISK_ID {
                return bad("the id must be 1..=20 bytes");
            }
            if !d.id.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
                return bad("the id must be printable ASCII without spaces or commas");
            }
            if d.path.as_os_str().is_empty() {
                return bad("no image path");
            }
            if self.disks[..i].iter().any(|o| o.id == d.id) {
                return bad("two disks have this id");
            }
        }
        validate_tags(self.shares.iter().map(|s| s.tag.as_str()))?;
        for (index, n) in self.nets.iter().enumerate() {
            let bad = |reason| {
                Err(ConfigError::Net {
                    index,
                    tap: n.tap.to_string(),
                    reason,
                })
            };
            if n.mac[0] & 1 != 0 || n.mac == [0; 6] {
                return bad("the MAC is multicast or all zeros");
            }
            if n.mtu
                .is_some_and(|m| m < husk_devices::virtio::net::MIN_MTU)
            {
                return bad("the MTU is below 68");
            }
            if matches!(&n.tap, TapSource::Name(t) if t.is_empty() || t.len() > 15) {
                return bad("the tap name must be 1..=15 bytes");
            }
            if self.nets[..index].iter().any(|o| o.mac == n.mac) {
                return bad("two net devices have this MAC");
            }
        }
        Ok(())
    }

    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let ok = VmConfig {
            kernel: "/k".into(),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = |f: fn(&mut VmConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert_eq!(bad(|c| c.mem_mib = 8), ConfigError::Memory { mib: 8 });
        assert_eq!(bad(|c| c.vcpus = 0), ConfigError::Vcpus(0));
        assert_eq!(bad(|c| c.vcpus = 255), ConfigError::Vcpus(255));
        assert_eq!(bad(|c| c.kernel = "".into()), ConfigError::NoKernel);
        assert!(matches!(
            bad(|c| c.name = "a/b".into()),
            ConfigError::Name(_)
        ));
        let disk = |id: &str| DiskConfig {
            path: "/img".into(),
            read_only: false,
            id: id.into(),
        };
        let mut two = ok.clone();
        two.disks = vec![disk("root"), disk("data")];
        assert_eq!(two.validate(), Ok(()));
        for bad_disks in [
            vec![disk("")],
            vec![disk("x".repeat(21).as_str())],
            vec![disk("a b")],
            vec![disk("a,b")],
            vec![disk("same"), disk("same")],
        ] {
            let mut c = ok.clone();
            c.disks = bad_disks;
            assert!(matches!(c.validate(), Err(ConfigError::Disk { .. })));
        }
    }

    #[test]
    fn restore_validation() {
        let ok = RestoreConfig {
            name: "pod-1".into(),
            snapshot_dir: "/templates/t".into(),
            console: ConsoleConfig::default(),
            vsock_uds: Some("/run/husk/pod-1.sock".into()),
            mem_mib: Some(128),
            vcpus: Some(1),
            disks: vec!["/img/a".into()],
            nets: vec![],
            shares: vec![
                ("data".into(), "/srv/data".into()),
                ("logs".into(), "/srv/logs".into()),
            ],
            seccomp: SeccompMode::Enforce,
        };
        assert_eq!(ok.validate(), Ok(()));
        let none = RestoreConfig {
            vsock_uds: None,
            mem_mib: None,
            vcpus: None,
            disks: vec![],
            shares: vec![],
            nets: vec![],
            ..ok.clone()
        };
        assert_eq!(none.validate(), Ok(()));
        let bad = |f: fn(&mut RestoreConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().unwrap_err()
        };
        assert!(matches!(
            bad(|c| c.name = String::new()),
            ConfigError::Name(_)
        ));
        assert!(matches!(
            bad(|c| c.name = "a/b".into()),
            ConfigError::Name(_)
        ));
        assert!(matches!(
            bad(|c| c.name = "x".repeat(65)),
            ConfigError::Name(_)
        ));
        assert_eq!(
            bad(|c| c.snapshot_dir = "".into()),
            ConfigError::NoSnapshotDir
        );
        let long = PathBuf::from(format!("/{}", "s".repeat(MAX_VSOCK_PATH)));
        let e = {
            let mut c = ok.clone();
            c.vsock_uds = Some(long.clone());
            c.validate().unwrap_err()
        };
        assert_eq!(e, ConfigError::VsockPath(long));
        assert!(matches!(
            bad(|c| c.vsock_uds = Some("".into())),
            ConfigError::VsockPath(_)
        ));
        assert_eq!(bad(|c| c.mem_mib = Some(8)), ConfigError::Memory { mib: 8 });
        assert_eq!(bad(|c| c.vcpus = Some(0)), ConfigError::Vcpus(0));
        assert!(matches!(
            bad(|c| c.disks = vec!["".into()]),
            ConfigError::Disk { .. }
        ));
        assert!(matches!(
            bad(|c| c.shares.push(("data".into(), "/other".into()))),
            ConfigError::Share {
                reason: "two shares have this tag",
                ..
            }
        ));
        // `restore` checks it first, before reading the snapshot.
        let mut c = ok.clone();
        c.name = "a/b".into();
        let e = crate::builder::restore(c).err().unwrap();
        assert!(
            matches!(e.source, crate::VmmError::Config(ConfigError::Name(_))),
            "{e}"
        );
        assert!(matches!(
            bad(|c| c.shares = vec![("data".into(), "".into())]),
            ConfigError::Share {
                reason: "no directory",
                ..
            }
        ));
    }

    #[test]
    fn net_validation() {
        let net = |tap: &str, mac: [u8; 6], mtu| NetConfig {
            tap: TapSource::Name(tap.into()),
            mac,
            mtu,
        };
        let mac = [2, 0, 0, 0, 0, 1];
        let mut c = VmConfig {
            kernel: "/k".into(),
            nets: vec![net("tap0", mac, Some(1500))],
            ..Default::default()
        };
        assert_eq!(c.validate(), Ok(()));
        for (bad, reason) in [
            (
                net("tap0", [1, 0, 0, 0, 0, 1], None),
                "the MAC is multicast or all zeros",
            ),
            (
                net("tap0", [0; 6], None),
                "the MAC is multicast or all zeros",
            ),
            (net("tap0", mac, Some(67)), "the MTU is below 68"),
            (net("", mac, None), "the tap name must be 1..=15 bytes"),
            (
                net("a-very-long-tap0", mac, None),
                "the tap name must be 1..=15 bytes",
            ),
        ] {
            c.nets = vec![bad];
            assert!(
                matches!(c.validate(), Err(ConfigError::Net { index: 0, reason: r, .. }) if r == reason),
                "{reason}"
            );
        }
        c.nets = vec![net("tap0", mac, None), net("tap1", mac, None)];
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Net {
                index: 1,
                reason: "two net devices have this MAC",
                ..
            })
        ));
    }
}
