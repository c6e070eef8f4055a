//! containerd's runtime `io.containerd.husk.v2`: see
//! `husk_shim::shim_v2`.

fn main() {
    // One malloc arena for the whole process instead of one per thread
    // that allocates: a pod's shim has ~40 threads (ttrpc connections,
    // waiters, the VMM's), each of which otherwise gets a 132 KiB arena
    // with a few pages touched, ~0.3 MiB of private memory per pod (see
    // perf/README.md, CRI density). The shim allocates little and rarely
    // from several threads at once.
    // SAFETY: mallopt takes no pointers; it runs before any thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::exit(husk_shim::shim_v2::main(&args));
}
