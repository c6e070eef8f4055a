//! Generates the protobuf messages and the ttrpc sync client/server from
//! proto/agent.proto (pure Rust: no protoc needed).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let proto = "proto/agent.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").map_err(std::io::Error::other)?).join("generated");
    std::fs::create_dir_all(&out)?;
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .input(proto)
        .include("proto")
        .rust_protobuf()
        // No reflection/descriptors: the agent is a static binary in every
        // guest's initramfs, and nothing here needs text/JSON formats.
        .rust_protobuf_customize(ttrpc_codegen::ProtobufCustomize::default().lite_runtime(true))
        .run()?;
    // The generated mod.rs opens with an inner attribute, which `include!`
    // refuses; write a plain one (its `mod` items resolve next to it).
    std::fs::write(out.join("mod.rs"), "pub mod agent;\npub mod agent_ttrpc;\n")
}
