//! Sandbox starts that fail: each gives a clear error naming the sandbox
//! and what failed, and leaves nothing behind (no thread, descriptor,
//! mapping, socket or directory). Test guests (tests/guests) stand in for a
//! guest whose agent never answers or that dies before it does.
//!
//! One test in this binary: it counts the process's threads and files.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use husk_shim::sandbox::store::TemplateStore;
use husk_shim::sandbox::template_build::VmTemplateBuilder;
use husk_shim::sandbox::{build_id, GuestSpec, Sandbox, SandboxConfig, SandboxErrorKind, Source};
use husk_tests::{census, kvm_available, settle_to, temp_path, test_guest};
use husk_vmm::{ConsoleConfig, PvmCompat, SeccompMode};

fn guest(kernel: &Path, initrd: &Path) -> GuestSpec {
    GuestSpec {
        kernel: kernel.to_path_buf(),
        initrd: initrd.to_path_buf(),
        cmdline_extra: String::new(),
        mem_mib: 32,
        vcpus: 1,
        pvm_compat: PvmCompat::Off,
    }
}

fn quiet(mut cfg: SandboxConfig) -> SandboxConfig {
    cfg.console = ConsoleConfig {
        file: None,
        log: false,
    };
    cfg
}

/// Starts `cfg`, expects an error, and returns its text.
fn fails(cfg: SandboxConfig) -> (String, SandboxErrorKind) {
    let id = cfg.id.clone();
    let e = Sandbox::start(quiet(cfg)).unwrap_err();
    assert_eq!(e.sandbox, id);
    let text = e.to_string();
    assert!(text.starts_with(&format!("sandbox {id}: ")), "{text}");
    (text, *e.kind)
}

#[test]
fn failed_starts_say_why_and_leave_nothing() {
    if !kvm_available("failed_starts_say_why_and_leave_nothing") {
        return;
    }
    let dir = temp_path("sandbox-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let run = dir.join("run");
    let initrd = dir.join("initrd");
    std::fs::write(&initrd, b"not used by the test guests").unwrap();
    let baseline = census();

    // A missing kernel: cold boot, and from the store.
    let missing = dir.join("no-such-vmlinux");
    let (text, _) = fails(SandboxConfig::new(
        "missing-kernel",
        &run,
        Source::Boot(guest(&missing, &initrd)),
    ));
    assert!(text.contains("no-such-vmlinux"), "{text}");
    let store = TemplateStore::open(dir.join("store"), build_id()).unwrap();
    let builder = VmTemplateBuilder {
        boot_timeout: Duration::from_secs(5),
        seccomp: SeccompMode::Enforce,
    };
    let (text, kind) = fails(SandboxConfig::new(
        "missing-kernel-store",
        &run,
        Source::Store {
            guest: guest(&missing, &initrd),
            store: store.clone(),
            builder: builder.clone(),
        },
    ));
    assert!(text.contains("no-such-vmlinux"), "{text}");
    assert!(matches!(kind, SandboxErrorKind::Template(_)), "{kind:?}");

    // A corrupt template directory.
    let bad = dir.join("bad-template");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("snapshot.json"), b"{\"format\":\"husk-snapshot\"").unwrap();
    let (text, _) = fails(SandboxConfig::new(
        "corrupt-template",
        &run,
        Source::TemplateDir(bad.clone()),
    ));
    assert!(
        text.contains("corrupt") && text.contains("snapshot.json"),
        "{text}"
    );

    // A guest that runs but has no agent: the VM runs (its vCPUs entered
    // KVM_RUN) and the start fails at the deadline.
    let spin = test_guest("spin");
    let mut cfg = SandboxConfig::new("no-agent", &run, Source::Boot(guest(&spin, &initrd)));
    cfg.agent_timeout = Some(Duration::from_secs(3));
    let t = Instant::now();
    let (text, kind) = fails(cfg);
    assert!(matches!(kind, SandboxErrorKind::AgentTimeout(_)), "{text}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());

    // A guest that dies before its agent answers: reported at once, with
    // its console, not at the deadline.
    let panic = test_guest("panic");
    let mut cfg = SandboxConfig::new("dies", &run, Source::Boot(guest(&panic, &initrd)));
    cfg.agent_timeout = Some(Duration::from_secs(120));
    let t = Instant::now();
    let (text, kind) = fails(cfg);
    assert!(
        matches!(kind, SandboxErrorKind::EndedBeforeReady { .. }),
        "{text}"
    );
    assert!(text.contains("test guest panics on purpose"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());

    // The same from the store: making the template fails, and says why.
    let (text, kind) = fails(SandboxConfig::new(
        "no-agent-store",
        &run,
        Source::Store {
            guest: guest(&spin, &initrd),
            store: store.clone(),
            builder,
        },
    ));
    assert!(matches!(kind, SandboxErrorKind::Template(_)), "{text}");
    assert!(text.contains("never answered"), "{text}");
    assert!(store.list().unwrap().is_empty());

    // An id that cannot name a directory.
    let (text, kind) = fails(SandboxConfig::new(
        "../escape",
        &run,
        Source::Boot(guest(&spin, &initrd)),
    ));
    assert!(matches!(kind, SandboxErrorKind::InvalidConfig(_)), "{text}");

    if let Err(now) = settle_to(&baseline, Duration::from_secs(10)) {
        panic!("left behind: {now:?}\nbaseline: {baseline:?}");
    }
    let left: Vec<_> = std::fs::read_dir(&run)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    let store_left: Vec<_> = std::fs::read_dir(dir.join("store"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n != ".locks")
        .collect();
    assert!(store_left.is_empty(), "{store_left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
