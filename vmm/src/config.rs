//! What a VM is made of, validated before anything is created.

use std::path::PathBuf;

use crate::boot::mptable::MAX_CPUS;
pub use husk_seccomp::{SeccompError, SeccompMode};

/// A virtio-blk disk: a raw image, read-only or not, and the serial id the
/// guest sees (`/sys/block/vdX/serial`, what the agent mounts by).
pub use husk_devices::virtio::block::BlockConfig as DiskConfig;

/// A virtio-fs share: a host directory (none in a template: the VM started
/// from it names one), read-only or not, and the tag the guest mounts.
pub use husk_devices::virtio::fs::FsConfig as ShareConfig;

/// The longest disk id virtio-blk can report (GET_ID answers 20 bytes).
pub const MAX_DISK_ID: usize = 20;

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
            seccomp: SeccompMode::Enforce,
        }
    }
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
    #[error("the VM name must be 1..=64 characters without '/' or control characters: {0:?}")]
    Name(String),
}

impl VmConfig {
    /// Checks the configuration without touching the host.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty()
            || self.name.len() > 64
            || self.name.chars().any(|c| c == '/' || c.is_control())
        {
            return Err(ConfigError::Name(self.name.clone()));
        }
        if !(MIN_MEM_MIB..=MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(ConfigError::Memory { mib: self.mem_mib });
        }
        if self.vcpus == 0 || self.vcpus > MAX_CPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if let Some(v) = &self.vsock {
            if v.guest_cid < 3 {
                return Err(ConfigError::GuestCid(v.guest_cid));
            }
            // sun_path holds 108 bytes; leave room for "_<port>" and the NUL.
            if v.uds_path.as_os_str().is_empty() || v.uds_path.as_os_str().len() > 96 {
                return Err(ConfigError::VsockPath(v.uds_path.clone()));
            }
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
        for (i, sh) in self.shares.iter().enumerate() {
            if self.shares[..i].iter().any(|o| o.tag == sh.tag) {
                return Err(ConfigError::Share {
                    tag: sh.tag.clone(),
                    reason: "two shares have this tag",
                });
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
}
