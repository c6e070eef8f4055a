//! The real guest image (guest-image/build.sh) boots to the agent's ready
//! marker and shuts down cleanly. Slow on nested PVM hosts (the guest
//! kernel's code is emulated): one test, generous timeout.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use husk_tests::{guest_image, kvm_available, temp_path};
use husk_vmm::{ExitReason, VmConfig, READY_MARKER};

#[test]
fn guest_image_boots_to_agent_ready_and_powers_off() {
    if !kvm_available("guest_image_boots_to_agent_ready_and_powers_off") {
        return;
    }
    let (kernel, initrd) = guest_image();
    let console = temp_path("real-kernel-console");
    let cfg = VmConfig {
        name: "real-kernel".into(),
        kernel,
        initrd: Some(initrd),
        mem_mib: 128,
        oneshot: true,
        console: husk_vmm::ConsoleConfig {
            file: Some(console.clone()),
            log: false,
        },
        ..VmConfig::default()
    };
    let h = husk_vmm::start(cfg).expect("VM starts");
    let o = match h.wait(Some(Duration::from_secs(600))) {
        Some(o) => o,
        None => {
            h.stop().expect("stop");
            let o = h.wait(None).expect("stops");
            panic!(
                "guest did not finish in 600 s; last console lines: {:#?}",
                o.console_tail
            );
        }
    };
    let text = std::fs::read_to_string(&console).expect("console file");
    assert_eq!(o.reason, ExitReason::GuestShutdown, "console:\n{text}");
    assert!(
        o.timeline.ready.is_some(),
        "no ready marker; console:\n{text}"
    );
    let ready = text
        .lines()
        .find(|l| l.contains(READY_MARKER))
        .expect("ready line");
    assert!(ready.contains("kernel 6.1"), "{ready}");
    assert!(
        text.contains("husk-agent: powering off (oneshot)"),
        "{text}"
    );
    assert!(!text.contains("Kernel panic"), "{text}");
    std::fs::remove_file(console).expect("cleanup");
}
