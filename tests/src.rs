//! Helpers for husk's integration tests.
//!
//! VM tests need /dev/kvm. Where it is absent they print a clear SKIP line
//! and return; where it is present they must run (and fail for real).
//!
//! End-to-end tests against a real containerd use [`containerd`] (the
//! daemon fixture, `ctr`, the leak census), [`oci`] (busybox images built
//! locally) and [`pty`] (`ctr run -t` on a pseudo-terminal); Kubernetes
//! pods through containerd's CRI plugin use [`cri`] (a CRI v1 client and a
//! fixture with CNI networking and a pause image).

use std::path::{Path, PathBuf};

pub mod containerd;
pub mod cri;
pub mod oci;
pub mod pty;

/// True when /dev/kvm can be opened read-write; otherwise prints why the
/// calling test is skipped.
pub fn kvm_available(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP {test}: /dev/kvm is not usable here ({e}); VM tests need KVM");
            false
        }
    }
}

/// The ELF image of test guest `name` (tests/guests/NAME.S).
pub fn test_guest(name: &str) -> PathBuf {
    Path::new(env!("HUSK_TEST_GUEST_DIR")).join(format!("{name}.elf"))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The guest image built by guest-image/build.sh: (vmlinux, initramfs).
/// Panics with instructions when it is missing: the real-kernel tests must
/// run wherever KVM exists.
pub fn guest_image() -> (PathBuf, PathBuf) {
    image_files("initramfs.cpio.gz")
}

/// The guest kernel and the debug initramfs (the agent plus busybox, for
/// tests that run commands in the guest).
pub fn debug_guest_image() -> (PathBuf, PathBuf) {
    image_files("initramfs-debug.cpio.gz")
}

fn image_files(initramfs: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::var_os("HUSK_GUEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/guest-image"));
    let k = dir.join("vmlinux");
    let i = dir.join(initramfs);
    assert!(
        k.exists() && i.exists(),
        "guest image missing in {}: run `bash guest-image/build.sh` (./test.sh does)",
        dir.display()
    );
    (k, i)
}

/// `(thread name, status file)` of this process's `husk-*` threads (the
/// VMM's), sorted by name.
pub fn husk_thread_status() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue; // the thread just ended
        };
        let comm = comm.trim().to_string();
        if !comm.starts_with("husk-") {
            continue;
        }
        if let Ok(status) = std::fs::read_to_string(dir.join("status")) {
            out.push((comm, status));
        }
    }
    out.sort();
    out
}

/// A unique temporary path for this test process.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("husk-test-{}-{name}", std::process::id()))
}

/// Deterministic bytes (xorshift64) for data a test sends and checks; each
/// seed gives another sequence.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// What a process holds that a VM or sandbox must give back: its threads,
/// its open descriptors (by target) and its file mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    pub threads: usize,
    pub fds: Vec<String>,
    pub mapped_files: Vec<String>,
}

/// This process's [`Census`] now.
pub fn census() -> Census {
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.to_string_lossy().into_owned())
                // The read_dir's own descriptor.
                .filter(|p| !p.starts_with("/proc/") || !p.ends_with("/fd"))
                .collect()
        })
        .unwrap_or_default();
    fds.sort();
    let mut mapped_files: Vec<String> = std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5).map(str::to_string))
        .filter(|p| p.starts_with('/'))
        .collect();
    mapped_files.sort();
    mapped_files.dedup();
    Census {
        threads,
        fds,
        mapped_files,
    }
}

/// Waits up to `timeout` for this process to hold no more than `baseline`
/// (threads of a dropped ttrpc client end shortly after it is dropped);
/// returns the last census when it does not.
pub fn settle_to(baseline: &Census, timeout: std::time::Duration) -> Result<(), Census> {
    let end = std::time::Instant::now() + timeout;
    loop {
        let now = census();
        let extra_fds =
            now.fds.iter().any(|f| !baseline.fds.contains(f)) || now.fds.len() > baseline.fds.len();
        let extra_maps = now
            .mapped_files
            .iter()
            .any(|m| !baseline.mapped_files.contains(m));
        if now.threads <= baseline.threads && !extra_fds && !extra_maps {
            return Ok(());
        }
        if std::time::Instant::now() >= end {
            return Err(now);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
