//! Snapshots: a paused VM's complete state in a directory.
//!
//! ```text
//! DIR/snapshot.json   versioned metadata + vCPU, VM and device state
//! DIR/memory.bin      guest RAM, sparse (holes for untouched pages)
//! ```
//!
//! A snapshot names the husk version that wrote it; another build refuses
//! it with a clear error instead of misreading it. Every field is checked on
//! load: the file is input like any other.

pub mod cpu;
pub mod memory;

use std::path::{Path, PathBuf};

use husk_devices::legacy::cmos::CmosState;
use husk_devices::legacy::serial::SerialDeviceState;
use husk_devices::virtio::transport::mmio::MmioTransportState;
use husk_devices::virtio::vsock::VsockState;
use serde::{Deserialize, Serialize};

pub use cpu::{VcpuState, VmState};

/// The format's name, first field of every snapshot.
pub const FORMAT: &str = "husk-snapshot";
/// Bumped on any incompatible change of the state layout.
pub const FORMAT_VERSION: u32 = 1;
/// The build that writes snapshots.
pub const HUSK_VERSION: &str = env!("CARGO_PKG_VERSION");
pub const STATE_FILE: &str = "snapshot.json";
pub const MEMORY_FILE: &str = "memory.bin";

/// The vsock device in a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockSnapshot {
    pub base: u64,
    pub gsi: u32,
    pub device: VsockState,
    pub transport: MmioTransportState,
}

/// Every device's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStates {
    pub serial: SerialDeviceState,
    pub cmos: CmosState,
    pub vsock: Option<VsockSnapshot>,
}

/// A whole snapshot (minus memory).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: String,
    pub format_version: u32,
    pub husk_version: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub pvm_compat: bool,
    pub cmdline: String,
    pub created_unix_ns: u128,
    pub vcpu_states: Vec<VcpuState>,
    pub vm: VmState,
    pub devices: DeviceStates,
}

/// Errors reading or writing snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("snapshot {path} is not a husk snapshot or is corrupt: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("snapshot {path} was written by husk {found} (format {found_format}); this is husk {HUSK_VERSION} (format {FORMAT_VERSION}): make a new template with this build")]
    Version {
        path: String,
        found: String,
        found_format: u32,
    },
    #[error("snapshot {path} is for {found}; {wanted} was asked for")]
    Mismatch {
        path: String,
        found: String,
        wanted: String,
    },
    #[error(transparent)]
    Memory(#[from] memory::MemoryFileError),
    #[error("snapshot: {0}")]
    Cpu(#[from] cpu::CpuStateError),
    #[error("snapshot: the VM must be paused first")]
    NotPaused,
}

/// The files of a snapshot directory.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

pub fn memory_path(dir: &Path) -> PathBuf {
    dir.join(MEMORY_FILE)
}

impl Snapshot {
    /// Writes the state file (atomically: a temporary then rename).
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = state_path(dir);
        let p = path.display().to_string();
        let json = serde_json::to_vec(self).map_err(|e| SnapshotError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        let tmp = dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&tmp, json)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|source| SnapshotError::Io { path: p, source })
    }

    /// Reads and checks the state file of `dir`.
    pub fn read(dir: &Path) -> Result<Self, SnapshotError> {
        let path = state_path(dir);
        let p = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| SnapshotError::Io {
            path: p.clone(),
            source,
        })?;
        // Check the header before the body, so an old snapshot gets a
        // version error rather than a parse error.
        #[derive(Deserialize)]
        struct Header {
            format: String,
            format_version: u32,
            husk_version: String,
        }
        let h: Header = serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if h.format != FORMAT {
            return Err(SnapshotError::Corrupt {
                path: p,
                reason: format!("format is {:?}", h.format),
            });
        }
        if h.format_version != FORMAT_VERSION || h.husk_version != HUSK_VERSION {
            return Err(SnapshotError::Version {
                path: p,
                found: h.husk_version,
                found_format: h.format_version,
            });
        }
        let s: Snapshot = serde_json::from_slice(&bytes).map_err(|e| SnapshotError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        s.check(&p)?;
        Ok(s)
    }

    fn check(&self, p: &str) -> Result<(), SnapshotError> {
        let corrupt = |reason: String| SnapshotError::Corrupt {
            path: p.to_string(),
            reason,
        };
        if !(crate::config::MIN_MEM_MIB..=crate::config::MAX_MEM_MIB).contains(&self.mem_mib) {
            return Err(corrupt(format!("memory size {} MiB", self.mem_mib)));
        }
        if self.vcpus == 0 || usize::from(self.vcpus) != self.vcpu_states.len() {
            return Err(corrupt(format!(
                "{} vCPUs with {} vCPU states",
                self.vcpus,
                self.vcpu_states.len()
            )));
        }
        for (i, v) in self.vcpu_states.iter().enumerate() {
            if usize::from(v.id) != i {
                return Err(corrupt(format!("vCPU state {i} has id {}", v.id)));
            }
        }
        Ok(())
    }

    /// Checks that the snapshot fits what the caller asked for.
    pub fn expect_shape(
        &self,
        dir: &Path,
        mem_mib: Option<u64>,
        vcpus: Option<u8>,
    ) -> Result<(), SnapshotError> {
        let p = state_path(dir).display().to_string();
        if let Some(m) = mem_mib.filter(|m| *m != self.mem_mib) {
            return Err(SnapshotError::Mismatch {
                path: p,
                found: format!("{} MiB of memory", self.mem_mib),
                wanted: format!("{m} MiB"),
            });
        }
        if let Some(v) = vcpus.filter(|v| *v != self.vcpus) {
            return Err(SnapshotError::Mismatch {
                path: p,
                found: format!("{} vCPUs", self.vcpus),
                wanted: format!("{v} vCPUs"),
            });
        }
        Ok(())
    }
}
