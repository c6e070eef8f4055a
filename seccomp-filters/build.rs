//! Compiles the allowlists in `src/rules/` to BPF with seccompiler: one
//! program per thread kind and mode (enforce, log), written to `OUT_DIR` as
//! raw `struct sock_filter` arrays that the library embeds. A rule that does
//! not compile fails the build.

use std::fmt::Write as _;
use std::path::Path;

use seccompiler::{BpfProgram, SeccompAction};

#[allow(dead_code)] // the library's tests use more of it than the build does
#[path = "src/rules/mod.rs"]
mod rules;

use rules::Kind;

/// The raw bytes of `prog` (x86_64: little endian `sock_filter`s).
fn to_bytes(prog: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for i in prog {
        out.extend_from_slice(&i.code.to_le_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_le_bytes());
    }
    out
}

fn main() {
    println!("cargo::rerun-if-changed=src/rules");
    let target_arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if target_arch != "x86_64" {
        panic!("husk-seccomp: filters exist for x86_64 only, not {target_arch}");
    }
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    let out = Path::new(&out_dir);
    let mut summary = String::new();
    for kind in Kind::ALL {
        // Enforce kills the process (see the library docs for why); Log
        // lets everything through and has the kernel log what is not listed.
        for (mode, mismatch) in [
            ("enforce", SeccompAction::KillProcess),
            ("log", SeccompAction::Log),
        ] {
            let filter = rules::filter(kind, mismatch)
                .unwrap_or_else(|e| panic!("husk-seccomp: bad rule: {e}"));
            let prog: BpfProgram = filter
                .try_into()
                .unwrap_or_else(|e| panic!("husk-seccomp: {kind:?} filter does not compile: {e}"));
            if prog.is_empty() || prog.len() > usize::from(u16::MAX) {
                panic!(
                    "husk-seccomp: {kind:?} filter has {} instructions",
                    prog.len()
                );
            }
            let file = out.join(format!("{}-{mode}.bpf", kind.file_stem()));
            std::fs::write(&file, to_bytes(&prog))
                .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
        }
        let names: Vec<String> = rules::rules(kind)
            .expect("checked above")
            .iter()
            .map(|r| format!("{:?}", r.sys.name.trim_start_matches("SYS_")))
            .collect();
        let _ = writeln!(
            summary,
            "pub const {}: &[&str] = &[{}];",
            kind.file_stem().to_uppercase(),
            names.join(", ")
        );
    }
    std::fs::write(out.join("allowed.rs"), summary).expect("writing allowed.rs");
}
