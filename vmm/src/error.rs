//! The VMM's errors.

use crate::boot::BootError;
use crate::config::ConfigError;
use crate::vstate::kvm::KvmError;
use crate::vstate::memory::MemoryError;
use crate::vstate::vcpu::VcpuError;
use crate::vstate::vm::VmError;

/// Why a VM could not be started.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    KvmOpen(#[from] KvmError),
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Device(#[from] crate::device_manager::DeviceError),
    #[error("vsock device: {0}")]
    Vsock(#[from] husk_devices::virtio::vsock::VsockError),
    #[error(transparent)]
    Block(#[from] husk_devices::virtio::block::BlockError),
    #[error(transparent)]
    Share(#[from] husk_devices::virtio::fs::FsError),
    #[error(transparent)]
    Net(#[from] husk_devices::virtio::net::NetError),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    SnapshotMemory(#[from] crate::snapshot::memory::MemoryFileError),
    #[error("snapshot state: {0}")]
    CpuState(#[from] crate::snapshot::cpu::CpuStateError),
    #[error("restore: {0}")]
    Restore(String),
    #[error("device bus: {0}")]
    Bus(#[from] husk_devices::bus::BusError),
    #[error("console file {path}: {source}")]
    ConsoleFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("thread {thread}: {source}")]
    Seccomp {
        thread: String,
        #[source]
        source: husk_seccomp::SeccompError,
    },
    #[error("thread {thread}: giving up privileges: {source}")]
    Confine {
        thread: String,
        #[source]
        source: crate::confine::ConfineError,
    },
    #[error("thread {thread}: {what}: {source}")]
    ThreadSetup {
        thread: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    KickHandler(#[from] crate::controller::KickHandlerError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A start failure, naming the VM.
#[derive(Debug, thiserror::Error)]
#[error("VM {vm}: {source}")]
pub struct StartError {
    pub vm: String,
    #[source]
    pub source: VmmError,
}
