//! The VMM threads' privileges (husk-vmm `confine`): every `husk-vcpuN`
//! thread holds no capability, `husk-vmm` exactly the ones the virtio-fs
//! server needs, both with no_new_privs and their seccomp filter, while the
//! host's thread keeps its own. The event loop's Landlock domain still lets
//! the guest use its share, including a file system the host mounts below
//! the share after the VM started, and strips set-id bits there.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use husk_shim::agent_client::{AgentClient, ExecCommand, ExecStatus, MountSource, MountSpec};
use husk_tests::{debug_guest_image, kvm_available, temp_path, test_guest};
use husk_vmm::confine::VMM_CAPS;
use husk_vmm::{ShareConfig, VmConfig, VsockConfig};

const WAIT: Duration = Duration::from_secs(60);

/// The fields of a status file.
fn fields(status: &str) -> BTreeMap<String, String> {
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// `(thread name, status fields)` of this process's `husk-*` threads.
fn husk_threads() -> Vec<(String, BTreeMap<String, String>)> {
    husk_tests::husk_thread_status()
        .into_iter()
        .map(|(name, status)| (name, fields(&status)))
        .collect()
}

fn hex(mask: u64) -> String {
    format!("{mask:016x}")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn each_vmm_thread_holds_only_its_privileges() {
    if !kvm_available("each_vmm_thread_holds_only_its_privileges") {
        return;
    }
    if !is_root() {
        eprintln!(
            "SKIP each_vmm_thread_holds_only_its_privileges: needs root (capabilities to drop)"
        );
        return;
    }
    let share = temp_path("privileges-share");
    std::fs::create_dir_all(&share).unwrap();
    let h = husk_vmm::start(VmConfig {
        name: "privileges".into(),
        kernel: test_guest("spin"),
        mem_mib: 32,
        vcpus: 2,
        shares: vec![ShareConfig {
            tag: "pod".into(),
            shared_dir: Some(share.clone()),
            read_only: false,
        }],
        ..VmConfig::default()
    })
    .expect("VM starts");
    assert!(
        h.console().wait_marker_any("spin: spinning", WAIT),
        "guest never spoke"
    );
    let threads = husk_threads();
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["husk-vcpu0", "husk-vcpu1", "husk-vmm"],
        "{threads:?}"
    );
    let vmm_caps = hex(VMM_CAPS.iter().map(|c| 1u64 << c.index()).sum());
    // CAP_CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER, SETGID, SETUID.
    assert_eq!(vmm_caps, hex(0b1100_1111));
    for (name, f) in &threads {
        let want = if name == "husk-vmm" {
            vmm_caps.clone()
        } else {
            hex(0)
        };
        for set in ["CapEff", "CapPrm", "CapBnd"] {
            assert_eq!(f[set], want, "{name}: {set}");
        }
        assert_eq!(f["CapInh"], hex(0), "{name}: CapInh");
        assert_eq!(f["CapAmb"], hex(0), "{name}: CapAmb");
        assert_eq!(f["NoNewPrivs"], "1", "{name}: no_new_privs");
        assert_eq!(f["Seccomp"], "2", "{name}: seccomp filter mode");
    }
    let me = fields(&std::fs::read_to_string("/proc/thread-self/status").unwrap());
    assert_ne!(
        me["CapEff"],
        hex(0),
        "the host thread keeps its capabilities"
    );
    assert_eq!(me["NoNewPrivs"], "0");
    h.stop().unwrap();
    h.wait(Some(WAIT)).expect("stops");
    drop(h);
    let _ = std::fs::remove_dir_all(&share);
}

fn sh(c: &AgentClient, script: &str) -> String {
    let out = c
        .exec(&ExecCommand::new(["/bin/sh", "-c", script]))
        .unwrap();
    assert_eq!(
        out.status,
        ExecStatus::Exited(0),
        "guest `{script}`: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// mount(2) with C strings.
fn mount(src: &str, target: &std::path::Path, fstype: Option<&str>, flags: libc::c_ulong) {
    let src = CString::new(src).unwrap();
    let target = CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
    let fstype = fstype.map(|t| CString::new(t).unwrap());
    // SAFETY: valid C strings that outlive the call; no data argument.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "mount: {}", std::io::Error::last_os_error());
}

#[test]
fn the_confined_server_serves_its_share_and_mounts_made_below_it_later() {
    if !kvm_available("the_confined_server_serves_its_share_and_mounts_made_below_it_later") {
        return;
    }
    if !is_root() {
        eprintln!("SKIP the_confined_server_serves_its_share_and_mounts_made_below_it_later: needs root (mount)");
        return;
    }
    // This thread gets a private mount namespace, which the VMM threads it
    // starts inherit: the tmpfs below never shows on the host.
    // SAFETY: unshare changes only this thread's namespaces.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNS) }, 0);
    mount(
        "none",
        std::path::Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
    );

    let (kernel, initrd) = debug_guest_image();
    let dir = temp_path("privileges-landlock");
    let _ = std::fs::remove_dir_all(&dir);
    let share = dir.join("share");
    std::fs::create_dir_all(share.join("later")).unwrap();
    std::fs::write(dir.join("outside.txt"), b"host only\n").unwrap();
    let uds = dir.join("vm.sock");
    let h = husk_vmm::start(VmConfig {
        name: "privileges-landlock".into(),
        kernel,
        initrd: Some(initrd),
        console: husk_vmm::ConsoleConfig {
            file: Some(dir.join("console.log")),
            log: false,
        },
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        }),
        shares: vec![ShareConfig {
            tag: "pod".into(),
            shared_dir: Some(share.clone()),
            read_only: false,
        }],
        ..VmConfig::default()
    })
    .unwrap();
    let c = AgentClient::connect(&uds, Duration::from_secs(600)).unwrap();
    // After the event loop's domain was made: a file system below the share.
    mount("tmpfs", &share.join("later"), Some("tmpfs"), 0);
    c.mount(&MountSpec::new(
        MountSource::Share("pod".into()),
        "/mnt/pod",
    ))
    .unwrap();
    let out = sh(
        &c,
        "echo guest > /mnt/pod/f && chmod 4755 /mnt/pod/f && mkdir /mnt/pod/d \
         && chmod 2777 /mnt/pod/d && echo later > /mnt/pod/later/g && cat /mnt/pod/later/g",
    );
    assert_eq!(out, "later\n");
    assert_eq!(std::fs::read(share.join("f")).unwrap(), b"guest\n");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&share.join("f")), 0o755, "chmod 4755 leaves 0755");
    assert_eq!(mode(&share.join("d")), 0o777, "chmod 2777 leaves 0777");
    assert_eq!(std::fs::read(share.join("later/g")).unwrap(), b"later\n");
    // The guest file is on the tmpfs: gone with it.
    let target = CString::new(share.join("later").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; the mount is this thread's namespace's.
    let r = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(r, 0);
    assert!(!share.join("later/g").exists());
    // Nothing reached the directory next to the share.
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("vm.sock") && n != "console.log")
        .collect();
    names.sort();
    assert_eq!(names, ["outside.txt", "share"]);
    c.shutdown().unwrap();
    h.wait(Some(WAIT)).expect("stops");
    drop(h);
    let _ = std::fs::remove_dir_all(&dir);
}
