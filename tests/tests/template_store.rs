//! The template store on the real guest:
//! - two processes asking for a new key at once make it once (this test
//!   binary runs itself twice as the two processes);
//! - a template in use is never rewritten: a sandbox restored from it keeps
//!   answering while a corrupt copy is replaced by a new template, and its
//!   mapping still holds the old (now unlinked) memory file.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use husk_shim::sandbox::store::TemplateStore;
use husk_shim::sandbox::template_build::VmTemplateBuilder;
use husk_shim::sandbox::{build_id, template_spec, GuestSpec, Sandbox, SandboxConfig, Source};
use husk_tests::{guest_image, kvm_available, temp_path};
use husk_vmm::{ConsoleConfig, PvmCompat, SeccompMode};

const TEST: &str = "two_processes_make_one_template_and_one_in_use_outlives_its_rebuild";
/// Set in the two child processes: the store's root.
const CHILD_ENV: &str = "HUSK_TEST_TEMPLATE_STORE_CHILD";

fn guest() -> GuestSpec {
    let (kernel, initrd) = guest_image();
    GuestSpec {
        kernel,
        initrd,
        cmdline_extra: "husk.test=store".into(),
        mem_mib: 128,
        vcpus: 1,
        pvm_compat: PvmCompat::Auto,
    }
}

fn builder() -> VmTemplateBuilder {
    VmTemplateBuilder {
        boot_timeout: Duration::from_secs(600),
        seccomp: SeccompMode::Enforce,
    }
}

/// One of the two processes: asks the store for the guest's template.
fn child(root: &Path) {
    let store = TemplateStore::open(root, build_id()).unwrap();
    let spec = template_spec(&guest(), &[], &[], &[]).unwrap();
    let t = store.get_or_create(&spec, &builder()).unwrap();
    println!("RESULT created={} key={}", t.created, t.key);
}

fn sandbox(root: &Path, run: &Path, id: &str) -> Sandbox {
    let mut cfg = SandboxConfig::new(
        id,
        run,
        Source::Store {
            guest: guest(),
            store: TemplateStore::open(root, build_id()).unwrap(),
            builder: builder(),
        },
    );
    cfg.console = ConsoleConfig {
        file: None,
        log: false,
    };
    Sandbox::start(cfg).unwrap()
}

#[test]
fn two_processes_make_one_template_and_one_in_use_outlives_its_rebuild() {
    if let Some(root) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&root));
        return;
    }
    if !kvm_available(TEST) {
        return;
    }
    let dir = temp_path("template-store");
    std::fs::create_dir_all(&dir).unwrap();
    let root = dir.join("store");

    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, &root)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut results = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "child failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split("RESULT ").nth(1))
            .unwrap_or_else(|| panic!("no RESULT line in\n{stdout}"))
            .to_string();
        results.push(line);
    }
    eprintln!("{results:?}");
    let made = results
        .iter()
        .filter(|r| r.contains("created=true"))
        .count();
    assert_eq!(made, 1, "{results:?}");
    let key = results[0].split("key=").nth(1).unwrap().to_string();
    assert!(results[1].ends_with(&format!("key={key}")), "{results:?}");

    // A sandbox from that template, then the template goes bad and the
    // next user has it made again while the first sandbox runs.
    let run = dir.join("run");
    let first = sandbox(&root, &run, "in-use");
    assert!(first.start_info().restored && !first.start_info().template_created);
    let tdir = root.join(&key);
    let memory = tdir.join("memory.bin");
    let before = first.agent().guest_info().unwrap();
    let old_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&memory).unwrap());
    let mut state = std::fs::read(tdir.join("snapshot.json")).unwrap();
    state.extend_from_slice(b"\n");
    std::fs::write(tdir.join("snapshot.json"), state).unwrap();

    let second = sandbox(&root, &run, "after-rebuild");
    assert!(
        second.start_info().template_created,
        "the corrupt template was rebuilt"
    );
    assert_eq!(
        second.start_info().template_key.as_deref(),
        Some(key.as_str())
    );
    // The first sandbox never noticed: it answers, from the same boot, and
    // its memory is the old file, unlinked but whole.
    let after = first.agent().guest_info().unwrap();
    assert_eq!(after.boot_id, before.boot_id);
    assert!(after.uptime_seconds >= before.uptime_seconds);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let old_mapping = maps.lines().find(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(4) == Some(&old_ino.to_string().as_str()) && l.ends_with("memory.bin (deleted)")
    });
    assert!(
        old_mapping.is_some(),
        "no mapping of the old memory.bin (inode {old_ino}) in\n{maps}"
    );
    let new_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&memory).unwrap());
    assert_ne!(new_ino, old_ino, "a new file, never the old one rewritten");
    let o = first.stop(Duration::from_secs(60)).unwrap();
    assert!(!o.reason.is_guest_crash(), "{}", o.reason);
    second.stop(Duration::from_secs(60)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
