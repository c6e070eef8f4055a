//! Opening /dev/kvm and checking what husk needs from it.

use kvm_ioctls::{Cap, Kvm};

/// KVM API version every modern kernel reports.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities husk cannot run without, with what each is for.
pub const REQUIRED_CAPS: &[(Cap, &str, &str)] = &[
    (Cap::Irqchip, "IRQCHIP", "in-kernel IOAPIC/PIC/LAPIC"),
    (Cap::Pit2, "PIT2", "in-kernel PIT timer"),
    (Cap::Irqfd, "IRQFD", "device interrupts without a VM exit"),
    (
        Cap::Ioeventfd,
        "IOEVENTFD",
        "virtqueue notifications without a trip through the VMM",
    ),
    (
        Cap::UserMemory,
        "USER_MEMORY",
        "guest memory mapped from the VMM",
    ),
    (
        Cap::SetTssAddr,
        "SET_TSS_ADDR",
        "x86 real-mode TSS placement",
    ),
    (
        Cap::ImmediateExit,
        "IMMEDIATE_EXIT",
        "stopping vCPUs promptly",
    ),
];

/// Errors opening KVM.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it? `husk check` tells)")]
    Open(#[source] kvm_ioctls::Error),
    #[error("/dev/kvm reports API version {0}, husk needs {KVM_API_VERSION}")]
    ApiVersion(i32),
    #[error("/dev/kvm lacks KVM_CAP_{name} ({why})")]
    MissingCap {
        name: &'static str,
        why: &'static str,
    },
}

/// Opens /dev/kvm and checks the API version and required capabilities.
pub fn open() -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(KvmError::Open)?;
    let v = kvm.get_api_version();
    if v != KVM_API_VERSION {
        return Err(KvmError::ApiVersion(v));
    }
    for (cap, name, why) in REQUIRED_CAPS {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap { name, why });
        }
    }
    Ok(kvm)
}
