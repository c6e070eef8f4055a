//! The `husk` binary: exit codes and messages for bad input, and `husk check`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::PathBuf;
use std::process::{Command, Output};

fn husk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs husk")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str, bytes: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("husk-cli-{}-{name}", std::process::id()));
    std::fs::write(&p, bytes).expect("temp file");
    p
}

/// A minimal valid x86_64 ELF executable (one PT_LOAD at 2 MiB: `hlt; jmp`).
fn tiny_elf() -> Vec<u8> {
    let code = [0xf4u8, 0xeb, 0xfd];
    let mut e = vec![0u8; 64 + 56];
    e[..16].copy_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    e[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e[18..20].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e[20..24].copy_from_slice(&1u32.to_le_bytes());
    e[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // entry
    e[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
    e[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    e[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
    e[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
    let ph = &mut e[64..];
    ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    ph[4..8].copy_from_slice(&5u32.to_le_bytes()); // R+X
    ph[8..16].copy_from_slice(&120u64.to_le_bytes()); // offset
    ph[16..24].copy_from_slice(&0x20_0000u64.to_le_bytes()); // vaddr
    ph[24..32].copy_from_slice(&0x20_0000u64.to_le_bytes()); // paddr
    ph[32..40].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[40..48].copy_from_slice(&(code.len() as u64).to_le_bytes());
    ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
    e.extend_from_slice(&code);
    e
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[test]
fn missing_kernel() {
    let o = husk(&["vm", "run", "--kernel", "/nonexistent/vmlinux"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("/nonexistent/vmlinux") && e.contains("No such file"),
        "{e}"
    );
}

#[test]
fn non_elf_and_bzimage_kernels() {
    if !kvm_usable() {
        eprintln!(
            "SKIP non_elf_and_bzimage_kernels: /dev/kvm absent (kernel checks run after KVM opens)"
        );
        return;
    }
    let junk = temp("junk", b"not a kernel at all");
    let o = husk(&["vm", "run", "--kernel", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not an ELF vmlinux"), "{}", stderr(&o));
    let mut bz = vec![0u8; 0x1000];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    let bz = temp("bzimage", &bz);
    let o = husk(&["vm", "run", "--kernel", bz.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bzImage"), "{}", stderr(&o));
    std::fs::remove_file(junk).unwrap();
    std::fs::remove_file(bz).unwrap();
}

#[test]
fn too_little_memory_and_oversized_initrd() {
    let k = temp("tiny-elf", &tiny_elf());
    let o = husk(&[
        "vm",
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--mem-mib",
        "4",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("memory 4 MiB is out of range"),
        "{}",
        stderr(&o)
    );
    if kvm_usable() {
        let initrd = temp("huge-initrd", &vec![0u8; 20 << 20]);
        let o = husk(&[
            "vm",
            "run",
            "--kernel",
            k.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--mem-mib",
            "16",
        ]);
        assert_eq!(o.status.code(), Some(1));
        let e = stderr(&o);
        assert!(e.contains("does not fit") && e.contains("--mem-mib"), "{e}");
        std::fs::remove_file(initrd).unwrap();
    }
    std::fs::remove_file(k).unwrap();
}

#[test]
fn timeout_stops_a_hung_guest() {
    if !kvm_usable() {
        eprintln!("SKIP timeout_stops_a_hung_guest: /dev/kvm absent");
        return;
    }
    let k = temp("hlt-elf", &tiny_elf());
    let o = husk(&[
        "vm",
        "run",
        "--kernel",
        k.to_str().unwrap(),
        "--mem-mib",
        "16",
        "--timeout",
        "0.5",
    ]);
    assert_eq!(o.status.code(), Some(124), "{}", stderr(&o));
    assert!(stderr(&o).contains("timed out"));
    std::fs::remove_file(k).unwrap();
}

#[test]
fn no_kvm_is_a_clear_error() {
    // Hide /dev/kvm in a private mount namespace (needs root and unshare).
    let k = temp("nokvm-elf", &tiny_elf());
    let script = format!(
        "mount --bind /dev/null /dev/kvm && exec {} vm run --kernel {} --mem-mib 16",
        env!("CARGO_BIN_EXE_husk"),
        k.display()
    );
    let o = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .env("RUST_LOG", "warn")
        .output();
    match o {
        Ok(o)
            if !String::from_utf8_lossy(&o.stderr).contains("unshare failed")
                && o.status.code() != Some(32) =>
        {
            assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
            let e = stderr(&o);
            assert!(e.contains("/dev/kvm"), "{e}");
            let c = Command::new("unshare")
                .args([
                    "-m",
                    "sh",
                    "-c",
                    &format!(
                        "mount --bind /dev/null /dev/kvm && exec {} check",
                        env!("CARGO_BIN_EXE_husk")
                    ),
                ])
                .output()
                .expect("husk check");
            assert_eq!(c.status.code(), Some(1));
            assert!(String::from_utf8_lossy(&c.stdout).contains("verdict: unusable"));
        }
        other => eprintln!(
            "SKIP no_kvm_is_a_clear_error: cannot make a mount namespace here ({other:?})"
        ),
    }
    std::fs::remove_file(k).unwrap();
}

#[test]
fn check_reports_one_line_each_and_a_verdict() {
    let o = husk(&["check"]);
    let out = String::from_utf8_lossy(&o.stdout);
    for key in [
        "kvm:",
        "virtualization:",
        "tun:",
        "cgroup:",
        "containerd:",
        "verdict:",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(key)),
            "no {key} line in\n{out}"
        );
    }
    if kvm_usable() {
        assert_eq!(o.status.code(), Some(0), "{out}");
        assert!(out.contains("verdict: usable"));
    } else {
        assert_eq!(o.status.code(), Some(1), "{out}");
    }
}

#[test]
fn missing_or_corrupt_template() {
    let o = husk(&[
        "vm",
        "run",
        "--from-template",
        "/nonexistent/tpl",
        "--vsock-uds",
        "/tmp/x.sock",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("/nonexistent/tpl/snapshot.json"), "{e}");
    let dir = std::env::temp_dir().join(format!("husk-cli-{}-tpl", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("snapshot.json"), b"{\"format\":\"husk-snapshot\"").unwrap();
    let o = husk(&["vm", "run", "--from-template", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("corrupt"), "{}", stderr(&o));
    // --kernel and --from-template exclude each other.
    let o = husk(&[
        "vm",
        "run",
        "--from-template",
        dir.to_str().unwrap(),
        "--kernel",
        "/k",
    ]);
    assert_eq!(o.status.code(), Some(2));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn timeouts_too_large_for_a_duration_are_errors_not_panics() {
    for args in [
        &["vm", "run", "--kernel", "/k", "--timeout", "1e20"][..],
        &["vm", "run", "--kernel", "/k", "--timeout", "inf"][..],
        &["vm", "run", "--kernel", "/k", "--timeout=-1"][..],
        &[
            "template",
            "create",
            "--kernel",
            "/k",
            "--initrd",
            "/i",
            "--timeout",
            "1e20",
        ][..],
    ] {
        let o = husk(args);
        // clap's usage error: exit 2 with the reason, never a panic (101).
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("--timeout"), "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
    // A huge deadline that a Duration holds is no deadline at all.
    let o = husk(&[
        "vm",
        "run",
        "--kernel",
        "/nonexistent/k",
        "--timeout",
        "1e18",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("/nonexistent/k"), "{}", stderr(&o));
}
