//! The pod's sandbox (the agent's pause) gives its app containers no way
//! into the guest (review finding #4): in a `shareProcessNamespace` pod
//! the pause is PID 1 of the containers' pid namespace, and a root
//! container with CAP_SYS_PTRACE may walk `/proc/1/root`. That root is an
//! empty read-only tmpfs in a mount namespace of the pause's own: not the
//! guest's root, not `/run/husk/pod` (every container's rootfs and volumes,
//! on the host-visible share). Through containerd's CRI with the `husk`
//! handler, as `cri_runc.rs` runs it; nothing is left behind. Needs root,
//! /dev/kvm, containerd, the CNI plugins and busybox-static; skips with a
//! SKIP line without them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use husk_tests::cri::{container_config, husk_setup, v1 as api, Cri, CriFixture};
use std::time::Duration;

/// Generous: a first exec in a fresh pod VM pages busybox in over virtio-fs
/// on a loaded emulated host.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);

/// `shareProcessNamespace: true`: the pod's pid namespace is shared.
fn shared_pid() -> Option<api::NamespaceOption> {
    Some(api::NamespaceOption {
        pid: api::NamespaceMode::Pod as i32,
        ..Default::default()
    })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn husk_pause_root_is_empty_to_a_shared_pid_namespace() {
    let test = "husk_pause_root_is_empty_to_a_shared_pid_namespace";
    let Some((shim, opts, cleanup)) = husk_setup(test, "cri-bnd") else {
        return;
    };
    let f = CriFixture::start("husk", Some(&shim), opts).expect("start the CRI fixture");
    let cri = f.cri();
    let mut pod_config = f.pod_config("shared-pid");
    if let Some(linux) = pod_config.linux.as_mut() {
        linux.security_context = Some(api::LinuxSandboxSecurityContext {
            namespace_options: shared_pid(),
            ..Default::default()
        });
    }
    // A new guest image makes its template by a cold boot first (minutes
    // on this emulated host): a longer bound than the fixture's client's.
    let _ = std::fs::create_dir_all(&pod_config.log_directory);
    let slow = Cri::connect(f.containerd().address())
        .unwrap()
        .with_timeout(Duration::from_secs(300));
    let pod_id = slow
        .run_pod_sandbox(&pod_config, "husk")
        .expect("RunPodSandbox");
    // Root (the image has no USER), with CAP_SYS_PTRACE: ptrace access
    // to the pause whatever its credentials.
    let mut config = container_config("prober", &f.busybox, &["sleep", "600"], "prober.log");
    config.linux = Some(api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            namespace_options: shared_pid(),
            capabilities: Some(api::Capability {
                add_capabilities: vec!["SYS_PTRACE".into()],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = cri
        .create_container(&pod_id, &config, &pod_config)
        .expect("CreateContainer");
    cri.start_container(&c).expect("StartContainer");
    let sh = |script: &str| {
        let t = std::time::Instant::now();
        let out = cri
            .exec_sync(&c, &["sh", "-c", script], EXEC_TIMEOUT)
            .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"));
        eprintln!("ExecSync {script:?}: {} ms", t.elapsed().as_millis());
        (text(&out.stdout), text(&out.stderr), out.exit_code)
    };
    // PID 1 is the pod's pause, and this container may look into it.
    let (cmdline, err, rc) = sh("tr '\\0' ' ' < /proc/1/cmdline; grep CapEff /proc/self/status");
    assert_eq!(rc, 0, "{err}");
    assert!(
        cmdline.starts_with("/init husk-pause "),
        "PID 1 is not the pause: {cmdline}"
    );
    // Its root and cwd: empty (`ls -a` lists only . and .., which also
    // shows the walk was allowed: a refused one prints nothing).
    for dir in ["/proc/1/root/", "/proc/1/cwd/"] {
        let (out, err, rc) = sh(&format!("ls -a {dir}"));
        assert_eq!(
            (out.as_str(), rc),
            (".\n..\n", 0),
            "{dir} of the pause: {err}"
        );
    }
    // The share (every container's rootfs and volumes) is not there.
    let (out, err, rc) = sh("ls /proc/1/root/run/husk/pod");
    assert_ne!(rc, 0, "the share is reachable: {out}");
    assert!(err.contains("No such file or directory"), "{err}");
    // Nor can anything be made there.
    let (_, err, rc) = sh("mkdir /proc/1/root/x");
    assert_ne!(rc, 0, "the pause's root is writable");
    assert!(err.contains("Read-only file system"), "{err}");
    // The container's own root is its image, as ever.
    let (out, err, rc) = sh("ls /proc/self/root/bin/busybox");
    assert_eq!(
        (out.as_str(), rc),
        ("/proc/self/root/bin/busybox\n", 0),
        "{err}"
    );
    cri.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    f.assert_no_leaks(Duration::from_secs(10));
    cleanup.assert_no_pod_dirs();
}
