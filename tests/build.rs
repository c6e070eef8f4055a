//! Assembles the tiny test guests (tests/guests/*.S) into ELF images that
//! the VMM boots in milliseconds. Needs gcc (always present where Rust
//! builds C dependencies).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("guests");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("tests/guests") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "S") {
            let name = path
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned();
            let elf = out.join(format!("{name}.elf"));
            let status = Command::new("gcc")
                .args([
                    "-nostdlib",
                    "-static",
                    "-no-pie",
                    "-Wl,--build-id=none",
                    "-Wl,-z,noseparate-code",
                    "-Wl,-Ttext=0x200000",
                    "-Wl,-e,_start",
                    "-I",
                ])
                .arg(&dir)
                .arg("-o")
                .arg(&elf)
                .arg(&path)
                .status()
                .expect("running gcc for the test guests");
            assert!(status.success(), "assembling {}", path.display());
            names.push(name);
        }
    }
    println!("cargo:rustc-env=HUSK_TEST_GUEST_DIR={}", out.display());
}
