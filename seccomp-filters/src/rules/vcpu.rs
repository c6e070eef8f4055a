//! vCPU threads (`husk-vcpuN`): KVM_RUN, and the PIO/MMIO exits they
//! dispatch to the device buses (device register reads/writes, a virtio
//! device's activation and reset, the serial console's output).
//!
//! KVM state is *loaded* (boot registers, restore) by the builder on the
//! caller's thread before the vCPU threads start, so no KVM_SET_* ioctl is
//! allowed here; the vCPU only *saves* its state when it parks for a
//! snapshot.

use super::kvm::*;
use super::{allow, ioctls, Rule};

pub fn rules() -> Vec<Rule> {
    vec![
        // Never reached: the refusal filter installed with this one
        // (lib.rs `VCPU_REFUSALS`) answers every openat with EACCES (glibc
        // malloc's one-time read of /proc/sys/vm/overcommit_memory); it is
        // listed so that the errno, not a kill, is the verdict.
        allow(sys!(SYS_openat)),
        ioctls(&[
            // The run loop (vstate/vcpu.rs `Vcpu::run`).
            KVM_RUN,
            // Parking for a pause/snapshot saves the vCPU (snapshot/cpu.rs
            // `VcpuState::save`); an emulation failure reads RIP and CR3 for
            // the report (`Vcpu::internal_error`).
            KVM_GET_REGS,
            KVM_GET_SREGS,
            KVM_GET_FPU,
            KVM_GET_XSAVE,
            KVM_GET_XCRS,
            KVM_GET_MSRS,
            KVM_GET_LAPIC,
            KVM_GET_VCPU_EVENTS,
            KVM_GET_MP_STATE,
        ]),
    ]
}
