//! A start that fails after the vCPU threads were created leaves no vCPU
//! thread (and no guest) behind. Its own test binary: it counts the threads
//! of the whole process.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use husk_tests::{kvm_available, test_guest};
use husk_vmm::VmConfig;

/// The threads of this process whose name starts with `prefix`.
fn threads_named(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim_end().to_string())
        .filter(|c| c.starts_with(prefix))
        .collect()
}

#[test]
fn a_launch_that_fails_late_leaves_no_vcpu_thread() {
    if !kvm_available("a_launch_that_fails_late_leaves_no_vcpu_thread") {
        return;
    }
    let cfg = VmConfig {
        name: "late-failure".into(),
        // Spins forever once it runs: a leaked vCPU would stay.
        kernel: test_guest("spin"),
        mem_mib: 32,
        vcpus: 2,
        ..VmConfig::default()
    };
    husk_vmm::fault::fail_next_launch("late-failure");
    let e = husk_vmm::start(cfg.clone()).err().expect("the start fails");
    assert!(e.to_string().contains("injected fault"), "{e}");
    assert_eq!(threads_named("husk-vcpu"), Vec::<String>::new());
    assert_eq!(threads_named("husk-vmm"), Vec::<String>::new());
    // The same VM starts normally afterwards.
    let h = husk_vmm::start(cfg).unwrap();
    h.stop().unwrap();
    h.wait(Some(std::time::Duration::from_secs(60))).unwrap();
    assert_eq!(threads_named("husk-vcpu"), Vec::<String>::new());
}
