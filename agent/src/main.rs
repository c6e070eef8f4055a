//! husk-agent: PID 1 of a husk guest.
//!
//! Now: mounts /proc, /sys and /dev, announces itself on the console with the
//! line `husk-agent ready`, reaps orphans, and powers the guest off on
//! SIGTERM (or at once when the kernel command line has `husk.oneshot=1`).
//! The ttrpc API over vsock arrives with the vsock issue.

mod init;

use std::io::Write;

/// The line the VMM waits for.
pub const READY_MARKER: &str = "husk-agent ready";

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        init::mount_basics();
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let oneshot = init::cmdline_flag(&cmdline, "husk.oneshot");
    let release = init::kernel_release();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{READY_MARKER} (version {}, kernel {release})",
        env!("CARGO_PKG_VERSION")
    );
    let _ = out.flush();
    drop(out);
    if !pid1 {
        eprintln!("husk-agent: not PID 1; nothing more to do outside a guest");
        return;
    }
    if oneshot {
        init::power_off("oneshot");
    }
    init::supervise();
}
