//! The KVM VM: interrupt controllers, PIT, memory slots, irqfds.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::layout::KVM_TSS_ADDR;

/// Errors setting up the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM_CREATE_VM failed: {0}")]
    Create(#[source] kvm_ioctls::Error),
    #[error("{what} failed: {source}")]
    Setup {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("memory region {slot} has no host mapping: {reason}")]
    Region { slot: u32, reason: String },
    #[error("registering irqfd for GSI {gsi} failed: {source}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// A KVM VM with its irqchip and PIT.
pub struct Vm {
    fd: VmFd,
}

impl Vm {
    /// Creates the VM, its in-kernel irqchip and PIT, and maps `mem`.
    pub fn new(kvm: &Kvm, mem: &GuestMemoryMmap) -> Result<Self, VmError> {
        let fd = kvm.create_vm().map_err(VmError::Create)?;
        let setup = |what| move |source| VmError::Setup { what, source };
        fd.set_tss_address(KVM_TSS_ADDR)
            .map_err(setup("KVM_SET_TSS_ADDR"))?;
        fd.create_irq_chip().map_err(setup("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(setup("KVM_CREATE_PIT2"))?;
        let vm = Self { fd };
        vm.map_memory(mem)?;
        Ok(vm)
    }

    fn map_memory(&self, mem: &GuestMemoryMmap) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let slot = slot as u32;
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| VmError::Region {
                    slot,
                    reason: e.to_string(),
                })?;
            let r = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the VMM
            // keeps alive for as long as the VM exists (the vCPU threads and the
            // controller hold clones of it); the slot numbers are distinct.
            unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::Setup {
                what: "KVM_SET_USER_MEMORY_REGION",
                source,
            })?;
        }
        Ok(())
    }

    /// Routes writes to `evt` into interrupt line `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(|source| VmError::Irqfd { gsi, source })
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}
