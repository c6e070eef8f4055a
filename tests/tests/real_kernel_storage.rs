//! The real guest with two virtio-blk disks and two virtio-fs shares, driven
//! through the agent's Mount and Exec calls (the debug initramfs has
//! busybox):
//! - an ext4 image mounted in the guest: files written there match their
//!   checksums on the host after shutdown (read back with debugfs);
//! - a read-only disk: readable, and writes are refused;
//! - a virtio-fs share: create/read/write/append/rename/unlink/mkdir/rmdir/
//!   symlink/chmod/truncate and a large file, checked on the host, host-side
//!   changes seen in the guest, and escapes that fail;
//! - a read-only share the guest mounts read-write: the device refuses.
//!
//! One boot serves all of it: on nested (PVM) hosts a boot takes ~20 s.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use husk_shim::agent_client::{
    AgentClient, ExecCommand, ExecOutput, ExecStatus, MountSource, MountSpec,
};
use husk_tests::{debug_guest_image, kvm_available, pattern, temp_path};
use husk_vmm::{DiskConfig, ExitReason, ShareConfig, VmConfig, VsockConfig};

/// Tens of MiB, as the issue asks; each MiB costs seconds of emulated
/// guest kernel on nested hosts (the copy in and out takes ~2 min here).
const LARGE_MIB: usize = 32;
const LARGE_SEED: u64 = 0x2545_f491_4f6c_dd1d;

fn sha256_file(p: &Path) -> String {
    let out = Command::new("sha256sum").arg(p).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn mkfs_ext4(img: &Path, mib: u64, populate: Option<&Path>) {
    let f = std::fs::File::create(img).unwrap();
    f.set_len(mib << 20).unwrap();
    let mut cmd = Command::new("mkfs.ext4");
    cmd.args(["-q", "-F"]);
    if let Some(d) = populate {
        cmd.arg("-d").arg(d);
    }
    let st = cmd
        .arg(img)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is needed");
    assert!(st.success(), "mkfs.ext4 {}", img.display());
}

/// A file's contents inside an ext4 image, read on the host with debugfs.
fn debugfs_cat(img: &Path, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(img)
        .output()
        .expect("debugfs (e2fsprogs) is needed");
    assert!(out.status.success(), "debugfs cat {path}");
    out.stdout
}

struct Guest {
    client: AgentClient,
}

impl Guest {
    fn sh(&self, script: &str) -> ExecOutput {
        let mut cmd = ExecCommand::new(["/bin/sh", "-c", script]);
        cmd.timeout = Duration::from_secs(300);
        let t = std::time::Instant::now();
        let out = self.client.exec(&cmd).unwrap();
        // Shown with --nocapture or on failure: where the time goes.
        eprintln!("guest ({:.2} s): {script}", t.elapsed().as_secs_f64());
        out
    }

    /// Runs `script`, which must succeed; returns its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert_eq!(
            out.status,
            ExecStatus::Exited(0),
            "guest `{script}` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn mount(&self, source: MountSource, target: &str, read_only: bool) {
        let mut spec = MountSpec::new(source, target);
        spec.read_only = read_only;
        self.client.mount(&spec).unwrap();
    }
}

#[test]
fn blk_and_virtio_fs_in_the_guest() {
    if !kvm_available("blk_and_virtio_fs_in_the_guest") {
        return;
    }
    let (kernel, initrd) = debug_guest_image();
    let dir = temp_path("storage");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    // Disks: a blank ext4 image, and a read-only one holding a file.
    let data_img = dir.join("data.img");
    mkfs_ext4(&data_img, 96, None);
    let ro_src = dir.join("ro-src");
    std::fs::create_dir_all(&ro_src).unwrap();
    std::fs::write(ro_src.join("hello.txt"), "read-only disk\n").unwrap();
    let ro_img = dir.join("ro.img");
    mkfs_ext4(&ro_img, 16, Some(&ro_src));
    let ro_img_sum = sha256_file(&ro_img);

    // Shares: a read-write one with a large file and escape bait, a file
    // outside it, and a read-only one.
    let share = dir.join("share");
    let outside = dir.join("outside");
    let roshare = dir.join("roshare");
    for d in [&share, &outside, &roshare] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(outside.join("secret.txt"), "host secret\n").unwrap();
    std::fs::write(share.join("host.txt"), "from the host\n").unwrap();
    std::fs::write(
        share.join("large.bin"),
        pattern(LARGE_SEED, LARGE_MIB << 20),
    )
    .unwrap();
    let large_sum = sha256_file(&share.join("large.bin"));
    std::os::unix::fs::symlink(outside.join("secret.txt"), share.join("escape_abs")).unwrap();
    std::os::unix::fs::symlink("../outside/secret.txt", share.join("escape_rel")).unwrap();
    std::fs::write(roshare.join("ro.txt"), "read-only share\n").unwrap();

    let uds = dir.join("v.sock");
    let handle = husk_vmm::start(VmConfig {
        name: "real-kernel-storage".into(),
        kernel,
        initrd: Some(initrd),
        mem_mib: 256,
        console: husk_vmm::ConsoleConfig {
            file: Some(dir.join("console.log")),
            log: false,
        },
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        }),
        disks: vec![
            DiskConfig {
                path: data_img.clone(),
                read_only: false,
                id: "data".into(),
            },
            DiskConfig {
                path: ro_img.clone(),
                read_only: true,
                id: "rodisk".into(),
            },
        ],
        shares: vec![
            ShareConfig {
                tag: "shared".into(),
                shared_dir: Some(share.clone()),
                read_only: false,
            },
            ShareConfig {
                tag: "roshare".into(),
                shared_dir: Some(roshare.clone()),
                read_only: true,
            },
        ],
        ..VmConfig::default()
    })
    .unwrap();
    let client = AgentClient::connect(&uds, Duration::from_secs(600))
        .unwrap()
        .with_call_timeout(Duration::from_secs(300));
    let g = Guest { client };

    g.mount(MountSource::Disk("data".into()), "/mnt/data", false);
    g.mount(MountSource::Disk("rodisk".into()), "/mnt/ro", true);
    g.mount(MountSource::Share("shared".into()), "/mnt/fs", false);
    // Read-write in the guest: only the device stands in the way.
    g.mount(MountSource::Share("roshare".into()), "/mnt/rofs", false);

    // A failed mount names the disk and the mount point.
    let mut rw = MountSpec::new(MountSource::Disk("rodisk".into()), "/mnt/ro-rw");
    rw.read_only = false;
    let e = g.client.mount(&rw).unwrap_err().to_string();
    assert!(e.contains("rodisk") && e.contains("/mnt/ro-rw"), "{e}");
    let e = g
        .client
        .mount(&MountSpec::new(MountSource::Disk("nope".into()), "/mnt/x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");

    // Each exec costs ~1 s of emulated guest kernel on nested hosts: the
    // checks are batched into a few scripts.
    // --- virtio-fs: every kind of change. ---
    let out = g.ok("cd /mnt/fs && cat host.txt \
         && echo hello > a.txt && echo more >> a.txt \
         && mv a.txt b.txt && chmod 640 b.txt && stat -c %a b.txt \
         && mkdir d1 d2 && rmdir d2 && echo x > d1/in.txt \
         && echo gone > gone.txt && rm gone.txt \
         && ln -s b.txt link && cat link \
         && echo 0123456789 > t.txt && truncate -s 4 t.txt");
    assert_eq!(out, "from the host\n640\nhello\nmore\n");
    // A change made on the host shows up in the guest (1 s cache timeout).
    std::fs::write(share.join("host.txt"), "changed on the host\n").unwrap();
    std::fs::write(share.join("new.txt"), "new on the host\n").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        g.ok("cat /mnt/fs/host.txt /mnt/fs/new.txt"),
        "changed on the host\nnew on the host\n"
    );
    // Escapes: the links resolve inside the guest, where nothing is there;
    // `..` of the mount is the guest's /mnt.
    let out = g.ok(
        "for p in /mnt/fs/escape_abs /mnt/fs/escape_rel /mnt/fs/../outside/secret.txt; do \
           cat $p 2>/dev/null && echo LEAKED $p; done; \
         readlink /mnt/fs/escape_rel; ls /mnt/fs/..",
    );
    assert!(
        !out.contains("LEAKED") && !out.contains("host secret"),
        "{out}"
    );
    assert!(out.starts_with("../outside/secret.txt\n"), "{out}");
    assert!(!out.contains("outside\n") && out.contains("fs\n"), "{out}");

    // --- read-only share (mounted read-write): reads work, every change is
    // refused by the device. ---
    let out = g.ok(
        "cd /mnt/rofs && cat ro.txt; \
         for c in 'echo x > new.txt' 'echo x >> ro.txt' 'rm ro.txt' 'mkdir d' \
                  'chmod 600 ro.txt' 'mv ro.txt r2.txt' 'ln -s ro.txt l' 'truncate -s 0 ro.txt'; do \
           sh -c \"$c\" 2>/dev/null && echo ALLOWED: $c; done; true",
    );
    assert_eq!(out, "read-only share\n");

    // --- virtio-blk: the read-only disk refuses writes, even raw ones. ---
    let out = g.ok(
        "cat /mnt/ro/hello.txt; touch /mnt/ro/x 2>/dev/null && echo ALLOWED touch; \
         dd if=/dev/zero of=/dev/vdb bs=512 count=1 conv=fsync 2>/dev/null && echo ALLOWED dd; true",
    );
    assert_eq!(out, "read-only disk\n");

    // --- a large file: share -> ext4 disk -> share. ---
    g.ok("cp /mnt/fs/large.bin /mnt/data/big.bin");
    g.ok("echo on ext4 > /mnt/data/small.txt && sync");
    g.ok("cp /mnt/data/big.bin /mnt/fs/copy.bin");
    g.client.unmount("/mnt/data").unwrap();

    // Orderly power-off, then check everything on the host.
    g.client.shutdown().unwrap();
    let outcome = handle.wait(Some(Duration::from_secs(120))).unwrap();
    assert_eq!(outcome.reason, ExitReason::GuestShutdown);

    let big = debugfs_cat(&data_img, "/big.bin");
    assert_eq!(big.len(), LARGE_MIB << 20);
    assert!(
        big == pattern(LARGE_SEED, LARGE_MIB << 20),
        "big.bin on the ext4 image"
    );
    assert_eq!(debugfs_cat(&data_img, "/small.txt"), b"on ext4\n");
    assert_eq!(
        sha256_file(&ro_img),
        ro_img_sum,
        "the read-only image changed"
    );

    let read = |p: &str| std::fs::read_to_string(share.join(p)).unwrap();
    assert_eq!(read("b.txt"), "hello\nmore\n");
    assert!(!share.join("a.txt").exists());
    let mode = std::fs::metadata(share.join("b.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640);
    assert!(share.join("d1").is_dir() && !share.join("d2").exists());
    assert_eq!(read("d1/in.txt"), "x\n");
    assert!(!share.join("gone.txt").exists());
    assert_eq!(
        std::fs::read_link(share.join("link")).unwrap(),
        Path::new("b.txt")
    );
    assert_eq!(read("t.txt"), "0123");
    assert_eq!(sha256_file(&share.join("copy.bin")), large_sum);
    assert_eq!(
        std::fs::read_to_string(outside.join("secret.txt")).unwrap(),
        "host secret\n"
    );
    let ro_names: Vec<_> = std::fs::read_dir(&roshare)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(ro_names, vec![std::ffi::OsString::from("ro.txt")]);
    assert_eq!(
        std::fs::read_to_string(roshare.join("ro.txt")).unwrap(),
        "read-only share\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
