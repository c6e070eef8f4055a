//! Generates the protobuf messages and ttrpc sync bindings of containerd's
//! task v2 shim API from proto/ (pure Rust: no protoc needed).
//!
//! proto/ holds containerd's API definitions as containerd 1.6 speaks them
//! (from containerd-shim-protos 0.11's vendor tree, Apache-2.0), with the
//! `fieldpath` options removed (they only steer Go code generation).

use std::path::{Path, PathBuf};

/// (directory, proto files). Generated files are named after their proto
/// file and refer to each other as `super::<file>`: the task events
/// (`events/task.proto`) go in a directory of their own, beside a copy of
/// `mount.proto` they refer to, apart from `types/task/task.proto`.
const GROUPS: &[(&str, &[&str])] = &[
    (
        "api",
        &[
            "types/mount.proto",
            "types/task/task.proto",
            "types/event.proto",
            "runtime/task/v2/shim.proto",
            "services/ttrpc/events/v1/events.proto",
            "cgroups/v2/metrics.proto",
        ],
    ),
    ("events", &["types/mount.proto", "events/task.proto"]),
];

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let root = PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?);
    for (dir, protos) in GROUPS {
        generate(&root.join(dir), protos)?;
    }
    Ok(())
}

fn generate(out: &Path, protos: &[&str]) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    let inputs: Vec<PathBuf> = protos.iter().map(|p| Path::new("proto").join(p)).collect();
    ttrpc_codegen::Codegen::new()
        .out_dir(out)
        .inputs(&inputs)
        .include("proto")
        .rust_protobuf()
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().gen_mod_rs(false))
        .run()?;
    // Inner attributes and doc comments at the top of generated files are
    // refused by `include!`: drop them.
    for entry in std::fs::read_dir(out)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("#!") && !l.starts_with("//!"))
                .collect();
            std::fs::write(&path, kept.join("\n"))?;
        }
    }
    Ok(())
}
