//! Snapshots: a paused VM's complete state in a directory.
//!
//! ```text
//! DIR/snapshot.json   versioned metadata + vCPU, VM and device state
//! DIR/memory.bin      guest RAM, sparse (holes for untouched pages)
//! ```
//!
//! A snapshot names the husk build that wrote it ([`BUILD_ID`]: a hash of
//! the sources of the crates whose state it holds, computed at build time);
//! any other build refuses it with a clear error instead of misreading it. Every field is checked on
//! load: the file is input like any other.

pub mod cpu;
pub mod memory;

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use husk_devices::legacy::cmos::CmosState;
use husk_devices::legacy::serial::SerialDeviceState;
use husk_devices::virtio::block::BlockState;
use husk_devices::virtio::fs::FsState;
use husk_devices::virtio::net::NetState;
use husk_devices::virtio::transport::mmio::MmioTransportState;
use husk_devices::virtio::vsock::VsockState;
use serde::{Deserialize, Serialize};

pub use cpu::{VcpuState, VmState};

/// The format's name, first field of every snapshot.
pub const FORMAT: &str = "husk-snapshot";
/// Bumped on any incompatible change of the state layout.
pub const FORMAT_VERSION: u32 = 3;
/// The husk version that writes snapshots.
pub const HUSK_VERSION: &str = env!("CARGO_PKG_VERSION");
/// This build's identity: the version and a hash of the sources and
/// manifests of husk-vmm and husk-devices and of the workspace's
/// Cargo.lock (vmm/build.rs). It changes whenever the code that writes or
/// reads snapshot state changes; a snapshot is only accepted by the build
/// whose id it records (`husk_build`). Templates are keyed by it.
pub const BUILD_ID: &str = env!("HUSK_BUILD_ID");
pub const STATE_FILE: &str = "snapshot.json";
pub const MEMORY_FILE: &str = "memory.bin";

/// A virtio-mmio device in a snapshot: where it sat, its own state and its
/// transport's (registers and queues).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSnapshot<S> {
    pub base: u64,
    pub gsi: u32,
    pub device: S,
    pub transport: MmioTransportState,
}

/// The vsock device in a snapshot.
pub type VsockSnapshot = DeviceSnapshot<VsockState>;
/// A virtio-blk disk in a snapshot.
pub type DiskSnapshot = DeviceSnapshot<BlockState>;
/// A virtio-fs share in a snapshot (its directory is given at restore; if
/// the guest had it mounted, it had asked nothing of it but the mount).
pub type ShareSnapshot = DeviceSnapshot<FsState>;
/// A virtio-net device in a snapshot: layout only (MAC, MTU, features,
/// queues); the restored VM names its own tap.
pub type NetSnapshot = DeviceSnapshot<NetState>;

/// Every device's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceStates {
    pub serial: SerialDeviceState,
    pub cmos: CmosState,
    pub vsock: Option<VsockSnapshot>,
    /// In attach order (after vsock), which restore repeats.
    pub disks: Vec<DiskSnapshot>,
    /// After the disks, in attach order.
    pub shares: Vec<ShareSnapshot>,
    /// After the shares, in attach order (absent in snapshots of VMs
    /// without one).
    #[serde(default)]
    pub nets: Vec<NetSnapshot>,
}

/// A whole snapshot (minus memory).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub format: String,
    pub format_version: u32,
    pub husk_version: String,
    /// The [`BUILD_ID`] of the build that wrote it.
    pub husk_build: String,
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
    #[error("snapshot {path} was written by husk {found} build {found_build} (format {found_format}); this is husk {HUSK_VERSION} build {BUILD_ID} (format {FORMAT_VERSION}): make a new template with this build")]
    Version {
        path: String,
        found: String,
        found_build: String,
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
    #[error("snapshot: {0}")]
    Share(#[from] husk_devices::virtio::fs::FsError),
}

/// The files of a snapshot directory.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

pub fn memory_path(dir: &Path) -> PathBuf {
    dir.join(MEMORY_FILE)
}

/// Writes `path` as a new file: `write` fills a temporary file (unique
/// name, created exclusively, in the same directory), which is synced and
/// renamed over `path`, and the directory is synced. An existing file at
/// `path` is never truncated or rewritten: a VM restored from it keeps its
/// mapping of the old inode (an in-place rewrite of a mapped `memory.bin`
/// changes the memory of every VM restored from it, or SIGBUSes them when
/// it shrinks). On failure the temporary file is removed and `path` is
/// untouched. Two files renamed one after the other are not one atomic
/// change: publish whole snapshot directories for that (the template
/// store does).
pub(crate) fn replace_file<T>(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<T>,
) -> io::Result<T> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = write(&mut file)
        .and_then(|t| file.sync_all().map(|()| t))
        .and_then(|t| std::fs::rename(&tmp, path).map(|()| t));
    match written {
        Ok(t) => {
            // The rename is durable once the directory is synced.
            File::open(dir)?.sync_all()?;
            Ok(t)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

impl Snapshot {
    /// Writes the state file: a new file renamed over the old one
    /// ([`replace_file`]), never an in-place rewrite.
    pub fn write(&self, dir: &Path) -> Result<(), SnapshotError> {
        let path = state_path(dir);
        let p = path.display().to_string();
        let json = serde_json::to_vec(self).map_err(|e| SnapshotError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        replace_file(&path, |f| f.write_all(&json))
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
        Self::from_bytes(&bytes, &p)
    }

    /// Parses and checks a state file's contents; `path` names it in errors.
    /// The bytes are untrusted: nothing here panics on them (fuzzed by
    /// `tests/fuzz` target `snapshot_load`).
    pub fn from_bytes(bytes: &[u8], path: &str) -> Result<Self, SnapshotError> {
        let p = path.to_string();
        // Check the header before the body, so an old snapshot gets a
        // version error rather than a parse error.
        #[derive(Deserialize)]
        struct Header {
            format: String,
            format_version: u32,
            husk_version: String,
            // Absent in snapshots of format 2 and older.
            #[serde(default)]
            husk_build: String,
        }
        let h: Header = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Corrupt {
            path: p.clone(),
            reason: e.to_string(),
        })?;
        if h.format != FORMAT {
            return Err(SnapshotError::Corrupt {
                path: p,
                reason: format!("format is {:?}", h.format),
            });
        }
        if h.format_version != FORMAT_VERSION
            || h.husk_version != HUSK_VERSION
            || h.husk_build != BUILD_ID
        {
            return Err(SnapshotError::Version {
                path: p,
                found: h.husk_version,
                found_build: h.husk_build,
                found_format: h.format_version,
            });
        }
        let s: Snapshot = serde_json::from_slice(bytes).map_err(|e| SnapshotError::Corrupt {
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

#[cfg(test)]
mod tests {
    use super::*;
    use husk_devices::virtio::transport::mmio::MmioTransportState;

    fn sample() -> Snapshot {
        let vcpu = VcpuState {
            id: 0,
            regs: Default::default(),
            sregs: Default::default(),
            fpu: cpu::FpuState {
                fpr: vec![[0; 16]; 8],
                fcw: 0x37f,
                fsw: 0,
                ftwx: 0,
                last_opcode: 0,
                last_ip: 0,
                last_dp: 0,
                xmm: vec![[0; 16]; 16],
                mxcsr: 0x1f80,
            },
            xsave: None,
            xcrs: None,
            msrs: vec![(0x10, 5)],
            lapic: Default::default(),
            events: Default::default(),
            mp_state: Default::default(),
        };
        Snapshot {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            husk_version: HUSK_VERSION.into(),
            husk_build: BUILD_ID.into(),
            mem_mib: 64,
            vcpus: 1,
            pvm_compat: false,
            cmdline: "console=ttyS0".into(),
            created_unix_ns: 1,
            vcpu_states: vec![vcpu],
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            devices: DeviceStates {
                serial: SerialDeviceState {
                    baud_divisor_low: 12,
                    baud_divisor_high: 0,
                    interrupt_enable: 0,
                    interrupt_identification: 1,
                    line_control: 3,
                    line_status: 0x60,
                    modem_control: 8,
                    modem_status: 0xb0,
                    scratch: 0,
                    in_buffer: vec![],
                },
                cmos: CmosState {
                    index: 0,
                    nvram: vec![0; 128],
                },
                vsock: Some(VsockSnapshot {
                    base: 0xd000_0000,
                    gsi: 5,
                    device: VsockState { guest_cid: 3 },
                    transport: MmioTransportState {
                        status: 0,
                        device_features_sel: 0,
                        driver_features_sel: 0,
                        driver_features: 0,
                        queue_sel: 0,
                        config_generation: 0,
                        interrupt_status: 0,
                        activated: false,
                        queues: vec![],
                    },
                }),
                disks: vec![],
                shares: vec![],
                nets: vec![],
            },
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-snap-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_build_id_names_this_code() {
        assert!(
            BUILD_ID.starts_with(&format!("{HUSK_VERSION}-")),
            "{BUILD_ID}"
        );
        assert_eq!(BUILD_ID.len(), HUSK_VERSION.len() + 1 + 32, "{BUILD_ID}");
    }

    #[test]
    fn round_trip_and_shape_checks() {
        let d = dir("ok");
        sample().write(&d).unwrap();
        let s = Snapshot::read(&d).unwrap();
        assert_eq!(s.mem_mib, 64);
        assert_eq!(s.vcpu_states[0].msrs, vec![(0x10, 5)]);
        s.expect_shape(&d, Some(64), Some(1)).unwrap();
        let e = s.expect_shape(&d, Some(128), None).unwrap_err().to_string();
        assert!(e.contains("64 MiB") && e.contains("128 MiB"), "{e}");
        assert!(s.expect_shape(&d, None, Some(2)).is_err());
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn other_builds_and_garbage_are_refused() {
        let d = dir("bad");
        let mut s = sample();
        s.husk_version = "0.0.1".into();
        s.write(&d).unwrap();
        let e = Snapshot::read(&d).unwrap_err();
        assert!(matches!(e, SnapshotError::Version { .. }), "{e}");
        assert!(e.to_string().contains("make a new template"));

        // The same version number, another build (other code): refused.
        let mut s = sample();
        s.husk_build = format!("{HUSK_VERSION}-0000000000000000");
        s.write(&d).unwrap();
        let e = Snapshot::read(&d).unwrap_err();
        assert!(matches!(e, SnapshotError::Version { .. }), "{e}");
        assert!(e.to_string().contains(BUILD_ID), "{e}");
        // A snapshot of format 2 (no build id at all): refused as such.
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        v["format_version"] = serde_json::json!(2);
        v.as_object_mut().unwrap().remove("husk_build");
        std::fs::write(state_path(&d), serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(
            Snapshot::read(&d),
            Err(SnapshotError::Version { .. })
        ));

        let mut s = sample();
        s.format_version = FORMAT_VERSION + 1;
        s.write(&d).unwrap();
        assert!(matches!(
            Snapshot::read(&d),
            Err(SnapshotError::Version { .. })
        ));

        std::fs::write(state_path(&d), b"{not json").unwrap();
        assert!(matches!(
            Snapshot::read(&d),
            Err(SnapshotError::Corrupt { .. })
        ));

        let mut s = sample();
        s.vcpus = 2;
        s.write(&d).unwrap();
        let e = Snapshot::read(&d).unwrap_err().to_string();
        assert!(e.contains("2 vCPUs with 1 vCPU states"), "{e}");

        let mut s = sample();
        s.mem_mib = 1;
        s.write(&d).unwrap();
        assert!(matches!(
            Snapshot::read(&d),
            Err(SnapshotError::Corrupt { .. })
        ));

        // An unknown field (a snapshot from a newer layout) is refused.
        let mut v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        v["surprise"] = serde_json::json!(1);
        std::fs::write(state_path(&d), serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(
            Snapshot::read(&d),
            Err(SnapshotError::Corrupt { .. })
        ));

        std::fs::remove_dir_all(&d).unwrap();
        assert!(matches!(Snapshot::read(&d), Err(SnapshotError::Io { .. })));
    }

    #[test]
    fn a_new_state_file_replaces_the_old_one_without_rewriting_it() {
        let d = dir("replace");
        sample().write(&d).unwrap();
        let before = std::fs::read(state_path(&d)).unwrap();
        // A reader holding the old file keeps reading the old contents.
        let mut held = File::open(state_path(&d)).unwrap();
        let mut s = sample();
        s.cmdline = "console=ttyS0 changed".into();
        s.write(&d).unwrap();
        let mut old = Vec::new();
        io::Read::read_to_end(&mut held, &mut old).unwrap();
        assert_eq!(old, before);
        assert_eq!(Snapshot::read(&d).unwrap().cmdline, "console=ttyS0 changed");
        let names: Vec<_> = std::fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn from_bytes_checks_like_read_and_names_the_path() {
        let json = serde_json::to_vec(&sample()).unwrap();
        let s = Snapshot::from_bytes(&json, "t/snapshot.json").unwrap();
        assert_eq!(s.mem_mib, 64);
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"format\":1}",
            &json[..json.len() / 2],
        ] {
            let e = Snapshot::from_bytes(bad, "t/snapshot.json").unwrap_err();
            assert!(e.to_string().contains("t/snapshot.json"), "{e}");
        }
    }
}
