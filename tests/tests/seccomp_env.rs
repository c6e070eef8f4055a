//! The VMM uses exactly the seccomp mode of its configuration: the process's
//! HUSK_SECCOMP is read only at the binary's edge (the CLI), never at a
//! VM's start. Its own test binary: it sets the variable for the process.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use husk_tests::{kvm_available, test_guest};
use husk_vmm::{ExitReason, SeccompMode, VmConfig};

#[test]
fn a_vm_start_ignores_husk_seccomp() {
    if !kvm_available("a_vm_start_ignores_husk_seccomp") {
        return;
    }
    // A value the old per-launch read refused (and any valid one would
    // have silently replaced the configured mode).
    std::env::set_var("HUSK_SECCOMP", "bogus");
    let cfg = VmConfig {
        name: "seccomp-env".into(),
        kernel: test_guest("hello"),
        mem_mib: 32,
        seccomp: SeccompMode::Enforce,
        ..VmConfig::default()
    };
    let h = husk_vmm::start(cfg).unwrap();
    let o = h.wait(Some(Duration::from_secs(60))).unwrap();
    assert_eq!(o.reason, ExitReason::GuestShutdown);
    // The edge function does read it.
    assert!(SeccompMode::from_env(SeccompMode::Enforce).is_err());
    std::env::set_var("HUSK_SECCOMP", "off");
    assert_eq!(
        SeccompMode::from_env(SeccompMode::Enforce).unwrap(),
        SeccompMode::Off
    );
}
