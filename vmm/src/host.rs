//! What kind of virtualization this host offers.

use std::path::Path;

/// How /dev/kvm runs guests here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtKind {
    /// Hardware virtualization: the CPU has VMX (Intel) or SVM (AMD).
    Hardware { flag: &'static str },
    /// Nested KVM through the PVM module (`kvm_pvm`), without VMX/SVM: the
    /// guest kernel needs husk's PVM compatibility command line.
    Pvm,
    /// Neither could be determined.
    Unknown,
}

impl std::fmt::Display for VirtKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VirtKind::Hardware { flag } => write!(f, "hardware ({flag})"),
            VirtKind::Pvm => write!(f, "PVM (nested, kvm_pvm; no VMX/SVM)"),
            VirtKind::Unknown => write!(f, "unknown (no VMX/SVM flag, no kvm_pvm module)"),
        }
    }
}

/// The hardware virtualization flag in /proc/cpuinfo text, if any.
pub fn cpu_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    for line in cpuinfo.lines() {
        let Some(flags) = line.strip_prefix("flags") else {
            continue;
        };
        for f in flags.split_whitespace() {
            match f {
                "vmx" => return Some("vmx"),
                "svm" => return Some("svm"),
                _ => {}
            }
        }
    }
    None
}

/// Classifies the host from /proc/cpuinfo and whether `kvm_pvm` is loaded.
pub fn classify(cpuinfo: &str, pvm_loaded: bool, hw_module_loaded: bool) -> VirtKind {
    match (cpu_virt_flag(cpuinfo), pvm_loaded) {
        // kvm_pvm can sit beside kvm_intel; /dev/kvm then belongs to whichever
        // registered: prefer hardware only when its module is loaded.
        (Some(flag), true) if hw_module_loaded => VirtKind::Hardware { flag },
        (_, true) => VirtKind::Pvm,
        (Some(flag), false) => VirtKind::Hardware { flag },
        (None, false) => VirtKind::Unknown,
    }
}

/// Probes this host.
pub fn detect() -> VirtKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let pvm = Path::new("/sys/module/kvm_pvm").exists();
    let hw =
        Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists();
    classify(&cpuinfo, pvm, hw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse\n";
        let plain = "processor\t: 0\nflags\t\t: fpu vme sse hypervisor\n";
        assert_eq!(
            classify(intel, false, true),
            VirtKind::Hardware { flag: "vmx" }
        );
        assert_eq!(classify(plain, true, false), VirtKind::Pvm);
        assert_eq!(classify(intel, true, false), VirtKind::Pvm);
        assert_eq!(
            classify(intel, true, true),
            VirtKind::Hardware { flag: "vmx" }
        );
        assert_eq!(classify(plain, false, false), VirtKind::Unknown);
        assert_eq!(cpu_virt_flag("flags : svm"), Some("svm"));
        // "vmx" inside another word does not count.
        assert_eq!(cpu_virt_flag("flags : vmx_ept"), None);
    }
}
