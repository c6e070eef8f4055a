//! `HUSK_BUILD_ID`: a hash of the code whose state a snapshot holds (the
//! sources and manifests of husk-vmm and husk-devices, and the workspace's
//! Cargo.lock), so that snapshots are only restored by the build that wrote
//! them (`husk_vmm::snapshot::BUILD_ID`). Any change there changes the id;
//! it needs no git metadata.

use std::path::{Path, PathBuf};

/// FNV-1a, 64 bits, two independent lanes (128 bits in all).
struct Fnv([u64; 2]);

impl Fnv {
    fn new() -> Self {
        Fnv([0xcbf2_9ce4_8422_2325, 0x6c62_272e_07bb_0142])
    }

    fn update(&mut self, bytes: &[u8]) {
        for (lane, h) in self.0.iter_mut().enumerate() {
            for b in bytes {
                *h ^= u64::from(*b) ^ (lane as u64);
                *h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
}

/// Every file under `dir`, sorted.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let root = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
    let inputs = [
        manifest.join("src"),
        manifest.join("Cargo.toml"),
        manifest.join("build.rs"),
        root.join("devices/src"),
        root.join("devices/Cargo.toml"),
        root.join("Cargo.lock"),
    ];
    let mut all = Vec::new();
    for i in &inputs {
        println!("cargo:rerun-if-changed={}", i.display());
        if i.is_dir() {
            files(i, &mut all);
        } else if i.exists() {
            all.push(i.clone());
        }
    }
    all.sort();
    let mut h = Fnv::new();
    for f in &all {
        let rel = f.strip_prefix(&root).unwrap_or(f);
        let bytes = std::fs::read(f).unwrap_or_default();
        h.update(rel.to_string_lossy().as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    println!(
        "cargo:rustc-env=HUSK_BUILD_ID={}-{:016x}{:016x}",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        h.0[0],
        h.0[1]
    );
}
