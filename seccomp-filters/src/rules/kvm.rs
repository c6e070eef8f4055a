//! KVM ioctl request numbers, computed like the kernel's `_IO*` macros from
//! kvm-bindings' struct sizes (kvm-ioctls keeps its own constants private).
//! The unit tests pin them to the values in `<linux/kvm.h>`.

use std::mem::size_of;

use kvm_bindings::{
    kvm_clock_data, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs, kvm_pit_state2,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};

const KVMIO: u64 = 0xae;
const IOC_NONE: u64 = 0;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}
const fn io(nr: u64) -> u64 {
    ioc(IOC_NONE, nr, 0)
}
const fn ior(nr: u64, size: usize) -> u64 {
    ioc(IOC_READ, nr, size)
}
const fn iowr(nr: u64, size: usize) -> u64 {
    ioc(IOC_READ | IOC_WRITE, nr, size)
}

// vCPU fd.
pub const KVM_RUN: u64 = io(0x80);
pub const KVM_GET_REGS: u64 = ior(0x81, size_of::<kvm_regs>());
pub const KVM_GET_SREGS: u64 = ior(0x83, size_of::<kvm_sregs>());
pub const KVM_GET_MSRS: u64 = iowr(0x88, size_of::<kvm_msrs>());
pub const KVM_GET_FPU: u64 = ior(0x8c, size_of::<kvm_fpu>());
pub const KVM_GET_LAPIC: u64 = ior(0x8e, size_of::<kvm_lapic_state>());
pub const KVM_GET_MP_STATE: u64 = ior(0x98, size_of::<kvm_mp_state>());
pub const KVM_GET_VCPU_EVENTS: u64 = ior(0x9f, size_of::<kvm_vcpu_events>());
pub const KVM_GET_XSAVE: u64 = ior(0xa4, size_of::<kvm_xsave>());
pub const KVM_GET_XCRS: u64 = ior(0xa6, size_of::<kvm_xcrs>());

// VM fd.
pub const KVM_GET_IRQCHIP: u64 = iowr(0x62, size_of::<kvm_irqchip>());
pub const KVM_GET_CLOCK: u64 = ior(0x7c, size_of::<kvm_clock_data>());
pub const KVM_GET_PIT2: u64 = ior(0x9f, size_of::<kvm_pit_state2>());

// System fd: on no thread's list (the tests use it as a forbidden ioctl).
pub const KVM_CREATE_VM: u64 = io(0x01);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_match_linux_kvm_h() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_CREATE_VM, 0xae01);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_GET_MSRS, 0xc008_ae88);
        assert_eq!(KVM_GET_FPU, 0x81a0_ae8c);
        assert_eq!(KVM_GET_LAPIC, 0x8400_ae8e);
        assert_eq!(KVM_GET_MP_STATE, 0x8004_ae98);
        assert_eq!(KVM_GET_VCPU_EVENTS, 0x8040_ae9f);
        assert_eq!(KVM_GET_XSAVE, 0x9000_aea4);
        assert_eq!(KVM_GET_XCRS, 0x8188_aea6);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
        assert_eq!(KVM_GET_CLOCK, 0x8030_ae7c);
        assert_eq!(KVM_GET_PIT2, 0x8070_ae9f);
    }
}
