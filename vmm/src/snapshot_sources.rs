//! What the controller needs to write a snapshot: the VM, its memory and
//! typed handles to every device.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use husk_devices::legacy::{Cmos, Serial};
use husk_devices::virtio::block::Block;
use husk_devices::virtio::fs::Fs;
use husk_devices::virtio::net::Net;
use husk_devices::virtio::transport::MmioTransport;
use husk_devices::virtio::vsock::Vsock;
use vm_memory::GuestMemoryMmap;

use crate::device_manager::MmioSlot;
use crate::snapshot::{
    self, memory, DeviceSnapshot, DeviceStates, Snapshot, SnapshotError, VcpuState, VmState,
};
use crate::vstate::vm::Vm;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A virtio-mmio device and where it sits.
pub struct DeviceHandles<D> {
    pub slot: MmioSlot,
    pub device: Arc<Mutex<D>>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

impl<D> DeviceHandles<D> {
    /// The device's snapshot, with `state` taken from the device.
    fn snapshot<S>(&self, state: impl FnOnce(&D) -> S) -> DeviceSnapshot<S> {
        // One lock at a time: the transport locks its device itself.
        let device = state(&lock(&self.device));
        let transport = lock(&self.transport).state();
        DeviceSnapshot {
            base: self.slot.base,
            gsi: self.slot.gsi,
            device,
            transport,
        }
    }
}

/// The VM's snapshot-relevant parts.
pub struct SnapshotSources {
    pub vm: Vm,
    pub mem: GuestMemoryMmap,
    pub serial: Arc<Mutex<Serial>>,
    pub cmos: Arc<Mutex<Cmos>>,
    pub vsock: Option<DeviceHandles<Vsock>>,
    pub disks: Vec<DeviceHandles<Block>>,
    pub shares: Vec<DeviceHandles<Fs>>,
    pub nets: Vec<DeviceHandles<Net>>,
}

/// Facts recorded with the state.
pub struct SnapshotFacts {
    pub mem_mib: u64,
    pub vcpus: u8,
    pub pvm_compat: bool,
    pub cmdline: String,
}

/// A snapshot of the paused VM, taken on the event loop, to be written by
/// the requester's thread: the event loop's Landlock domain allows no
/// writes outside the VM's shares (see [`crate::confine`]).
pub struct Captured {
    snap: Snapshot,
    /// The guest memory (shared with the VM, which stays paused and its
    /// event loop waiting until the write is done).
    mem: GuestMemoryMmap,
}

impl Captured {
    /// Writes the snapshot into `dir` (created if missing): the memory
    /// file, then the state file. Returns the bytes of guest memory
    /// written.
    pub fn write(&self, dir: &Path) -> Result<u64, SnapshotError> {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let written = memory::dump(&self.mem, &snapshot::memory_path(dir))?;
        self.snap.write(dir)?;
        Ok(written)
    }
}

impl SnapshotSources {
    /// Takes the state of the paused VM (nothing is written here).
    pub fn capture(
        &self,
        facts: &SnapshotFacts,
        vcpu_states: Vec<VcpuState>,
    ) -> Result<Captured, SnapshotError> {
        // A share the guest used cannot be saved: refuse before writing
        // anything.
        for sh in &self.shares {
            lock(&sh.device).snapshot_check()?;
        }
        let vm = VmState::save(self.vm.fd())?;
        // One lock at a time: the transport locks its device itself.
        let serial = lock(&self.serial).state();
        let cmos = lock(&self.cmos).state();
        let vsock = self.vsock.as_ref().map(|v| v.snapshot(Vsock::state));
        let disks = self
            .disks
            .iter()
            .map(|d| d.snapshot(Block::state))
            .collect();
        let mut shares = Vec::with_capacity(self.shares.len());
        for sh in &self.shares {
            let st = sh.snapshot(Fs::state);
            shares.push(DeviceSnapshot {
                base: st.base,
                gsi: st.gsi,
                device: st.device?,
                transport: st.transport,
            });
        }
        let nets = self.nets.iter().map(|n| n.snapshot(Net::state)).collect();
        let devices = DeviceStates {
            serial,
            cmos,
            vsock,
            disks,
            shares,
            nets,
        };
        let snap = Snapshot {
            format: snapshot::FORMAT.into(),
            format_version: snapshot::FORMAT_VERSION,
            husk_version: snapshot::HUSK_VERSION.into(),
            husk_build: snapshot::BUILD_ID.into(),
            mem_mib: facts.mem_mib,
            vcpus: facts.vcpus,
            pvm_compat: facts.pvm_compat,
            cmdline: facts.cmdline.clone(),
            created_unix_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
            vcpu_states,
            vm,
            devices,
        };
        Ok(Captured {
            snap,
            mem: self.mem.clone(),
        })
    }
}
