//! Sandboxes on the real guest, from the template store: three at once in
//! one process (the first use of the key makes the template once, the
//! others wait for it), each with its own share and identity; the exit
//! notifier fires when a guest powers off and when one crashes; `stop`
//! and drop leave no thread, descriptor, socket, file or mapping.
//!
//! One test in this binary: it counts the process's threads and files.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_shim::agent_client::{ExecCommand, ExecStatus};
use husk_shim::sandbox::store::TemplateStore;
use husk_shim::sandbox::template_build::VmTemplateBuilder;
use husk_shim::sandbox::{build_id, GuestSpec, Sandbox, SandboxConfig, ShareMount, Source};
use husk_tests::{census, debug_guest_image, kvm_available, settle_to, temp_path};
use husk_vmm::{ConsoleConfig, ExitReason, PvmCompat, SeccompMode, ShareConfig};

fn source(store: &Path) -> Source {
    let (kernel, initrd) = debug_guest_image();
    Source::Store {
        guest: GuestSpec {
            kernel,
            initrd,
            cmdline_extra: String::new(),
            mem_mib: 128,
            vcpus: 1,
            pvm_compat: PvmCompat::Auto,
        },
        store: TemplateStore::open(store, build_id()).unwrap(),
        builder: VmTemplateBuilder {
            boot_timeout: Duration::from_secs(600),
            seccomp: SeccompMode::Enforce,
        },
    }
}

fn config(dir: &Path, i: usize) -> SandboxConfig {
    let share = dir.join(format!("share{i}"));
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("whoami"), format!("sandbox {i}\n")).unwrap();
    let mut cfg = SandboxConfig::new(
        format!("pod-{i}"),
        dir.join("run"),
        source(&dir.join("store")),
    );
    cfg.shares = vec![ShareConfig {
        tag: "data".into(),
        shared_dir: Some(share),
        read_only: false,
    }];
    // Mounted in the template already: each restored VM has it, served
    // from its own directory.
    cfg.share_mounts = vec![ShareMount::new("data", "/mnt/data")];
    cfg.console = ConsoleConfig {
        file: Some(dir.join(format!("console{i}.log"))),
        log: false,
    };
    cfg
}

fn sh(sb: &Sandbox, script: &str) -> String {
    let mut cmd = ExecCommand::new(["sh", "-c", script]);
    cmd.timeout = Duration::from_secs(60);
    let out = sb.agent().exec(&cmd).unwrap();
    assert_eq!(
        out.status,
        ExecStatus::Exited(0),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sandboxes_from_the_store_notify_their_end_and_leave_nothing() {
    if !kvm_available("sandboxes_from_the_store_notify_their_end_and_leave_nothing") {
        return;
    }
    let dir = temp_path("sandboxes");
    std::fs::create_dir_all(&dir).unwrap();
    let baseline = census();

    // Three first users of one key, at once.
    let starts: Vec<_> = (0..3)
        .map(|i| {
            let cfg = config(&dir, i);
            std::thread::spawn(move || Sandbox::start(cfg))
        })
        .collect();
    let sandboxes: Vec<Sandbox> = starts
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    let made = sandboxes
        .iter()
        .filter(|s| s.start_info().template_created)
        .count();
    assert_eq!(made, 1, "one of them makes the template, the others wait");
    let key = sandboxes[0].start_info().template_key.clone().unwrap();
    for s in &sandboxes {
        let info = s.start_info();
        assert!(info.restored, "{}: {info:?}", s.id());
        assert_eq!(info.template_key.as_deref(), Some(key.as_str()));
        eprintln!("{}: {info:?}", s.id());
    }

    // Each has its own identity and its own share.
    let mut ids: Vec<&str> = sandboxes.iter().map(|s| s.instance_id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    for (i, s) in sandboxes.iter().enumerate() {
        let g = s.agent().guest_info().unwrap();
        assert_eq!(g.hostname, format!("pod-{i}"));
        assert_eq!(g.instance_id, s.instance_id());
        assert_eq!(sh(s, "cat /mnt/data/whoami"), format!("sandbox {i}\n"));
    }

    let mut it = sandboxes.into_iter();
    let (a, b, c) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());

    // A guest that powers off: its notifier fires.
    let na = a.exit_notifier().unwrap();
    assert!(!na.has_ended());
    a.agent().unmount("/mnt/data").unwrap();
    a.agent().shutdown().unwrap();
    assert!(
        na.wait(Some(Duration::from_secs(60))),
        "no exit notification"
    );
    assert_eq!(a.outcome().unwrap().reason, ExitReason::GuestShutdown);

    // A guest that crashes (a memory cgroup OOM with panic_on_oom=2 panics
    // the kernel): its notifier fires too.
    let nb = b.exit_notifier().unwrap();
    let crash = ExecCommand::new([
        "sh",
        "-c",
        "echo 2 > /proc/sys/vm/panic_on_oom && mkdir /sys/fs/cgroup/boom && \
         echo +memory > /sys/fs/cgroup/cgroup.subtree_control && \
         echo 1M > /sys/fs/cgroup/boom/memory.max && echo $$ > /sys/fs/cgroup/boom/cgroup.procs && \
         dd if=/dev/zero of=/dev/null bs=16M count=1",
    ]);
    // The call fails: the guest dies under it.
    let _ = b.agent().exec(&crash);
    assert!(
        nb.wait(Some(Duration::from_secs(120))),
        "no exit notification"
    );
    let reason = b.outcome().unwrap().reason;
    assert!(reason.is_guest_crash(), "{reason}");

    // stop() with a deadline, on a guest that has a share mounted.
    let t = std::time::Instant::now();
    let o = c.stop(Duration::from_secs(60)).unwrap();
    // The host stops the VM once the agent (synced) answers, unless the
    // guest's power-off won the race.
    assert!(
        matches!(
            o.reason,
            ExitReason::HostRequest | ExitReason::GuestShutdown
        ),
        "{}",
        o.reason
    );
    eprintln!("stop took {:.2} s", t.elapsed().as_secs_f64());

    drop((a, na));
    drop((b, nb));
    // Nothing is left: no thread, descriptor, mapping, socket or directory.
    if let Err(now) = settle_to(&baseline, Duration::from_secs(10)) {
        panic!("left behind: {now:?}\nbaseline: {baseline:?}");
    }
    let run: Vec<PathBuf> = std::fs::read_dir(dir.join("run"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(run.is_empty(), "{run:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
