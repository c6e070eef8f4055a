//! The VMM's seccomp filters are installed per thread: every `husk-vcpuN`
//! and `husk-vmm` thread runs filtered, the host's own threads (the test,
//! later the shim's) do not, not even with NO_NEW_PRIVS; a filtered VM still
//! pauses, snapshots and stops; `SeccompMode::Off` installs nothing.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::time::Duration;

use husk_tests::{kvm_available, temp_path, test_guest};
use husk_vmm::{ExitReason, SeccompMode, VmConfig, VmmRequest, VmmResponse};

const WAIT: Duration = Duration::from_secs(60);

/// `(Seccomp, NoNewPrivs)` of a task's status file.
fn filter_state(status: &str) -> (u32, u32) {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    (field("Seccomp:"), field("NoNewPrivs:"))
}

/// `(thread name, filter state)` of this process's `husk-*` threads.
fn husk_threads() -> Vec<(String, (u32, u32))> {
    husk_tests::husk_thread_status()
        .into_iter()
        .map(|(name, status)| (name, filter_state(&status)))
        .collect()
}

fn spin(mode: SeccompMode) -> husk_vmm::VmmHandle {
    let h = husk_vmm::start(VmConfig {
        name: format!("seccomp-{mode}"),
        kernel: test_guest("spin"),
        mem_mib: 32,
        seccomp: mode,
        ..VmConfig::default()
    })
    .expect("VM starts");
    assert!(
        h.console().wait_marker_any("spin: spinning", WAIT),
        "guest never spoke"
    );
    h
}

#[test]
fn vmm_threads_are_filtered_and_the_host_thread_is_not() {
    if !kvm_available("vmm_threads_are_filtered_and_the_host_thread_is_not") {
        return;
    }
    let h = spin(SeccompMode::Enforce);
    let threads = husk_threads();
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["husk-vcpu0", "husk-vmm"], "{threads:?}");
    for (name, state) in &threads {
        assert_eq!(*state, (2, 1), "{name}: seccomp filter mode, no_new_privs");
    }
    let me = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    assert_eq!(
        filter_state(&me),
        (0, 0),
        "the host thread stays unfiltered"
    );

    // The filtered threads still do their whole job: pause (the vCPU saves
    // its state), snapshot (the event loop writes files), resume, stop.
    let dir = temp_path("seccomp-snapshot");
    assert_eq!(h.request(VmmRequest::Pause).unwrap(), VmmResponse::Paused);
    match h
        .request(VmmRequest::Snapshot { dir: dir.clone() })
        .unwrap()
    {
        VmmResponse::Snapshot { memory_bytes } => assert!(memory_bytes > 0),
        r => panic!("unexpected {r:?}"),
    }
    assert!(dir.join("snapshot.json").exists());
    assert_eq!(h.request(VmmRequest::Resume).unwrap(), VmmResponse::Resumed);
    h.stop().unwrap();
    let o = h.wait(Some(WAIT)).expect("stops");
    assert_eq!(o.reason, ExitReason::HostRequest);
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);

    let h = spin(SeccompMode::Off);
    for (name, state) in husk_threads() {
        assert_eq!(state, (0, 0), "{name} with seccomp off");
    }
    h.stop().unwrap();
}
