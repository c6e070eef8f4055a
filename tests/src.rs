//! Helpers for husk's integration tests.
//!
//! VM tests need /dev/kvm. Where it is absent they print a clear SKIP line
//! and return; where it is present they must run (and fail for real).

use std::path::{Path, PathBuf};

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
