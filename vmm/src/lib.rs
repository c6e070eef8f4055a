//! husk's in-process KVM VMM.
//!
//! [`start`] builds a VM from a [`VmConfig`] (guest memory, the kernel and
//! initrd, legacy devices, vCPUs) and runs it on its own threads: one per
//! vCPU (`husk-vcpuN`) and one event loop (`husk-vmm`), each of which
//! gives up the privileges it does not need ([`confine`]: capabilities,
//! no_new_privs, a Landlock domain) and installs its own seccomp filter
//! (husk-seccomp) before it touches guest input: per thread, never
//! process-wide. The returned
//! [`VmmHandle`] is the only way to talk to it, so the containerd shim can own
//! one VMM per pod inside its own process.

pub mod api;
pub mod boot;
pub mod builder;
pub mod config;
pub mod confine;
pub(crate) mod controller;
pub mod device_manager;
pub mod error;
pub mod exit;
#[doc(hidden)]
pub mod fault;
pub mod host;
pub mod runstate;
pub(crate) mod seccomp;
pub mod snapshot;
pub(crate) mod snapshot_sources;
pub mod stats;
pub mod vstate;

pub use api::{ApiError, VmInfo, VmmHandle, VmmRequest, VmmResponse};
pub use builder::{restore, start, start_with, ExtraDevices, RestoreConfig};
pub use config::{
    ConsoleConfig, DiskConfig, NetConfig, PvmCompat, SeccompError, SeccompMode, ShareConfig,
    TapSource, VmConfig, VsockConfig, DEFAULT_GUEST_CID, READY_MARKER,
};
pub use controller::PANIC_MARKER;
pub use error::{StartError, VmmError};
pub use exit::{EmulationFailure, ExitReason};
pub use runstate::{ExitNotifier, Timeline, VmOutcome};
pub use stats::{StatsReader, VmStats};
