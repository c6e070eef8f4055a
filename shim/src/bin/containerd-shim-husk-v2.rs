//! containerd's runtime `io.containerd.husk.v2`: see
//! `husk_shim::shim_v2`.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(husk_shim::shim_v2::main(&args));
}
