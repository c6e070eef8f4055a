//! `containerd-shim-husk-v2`: containerd's task v2 shim, with the pod's
//! VM in its own process (no hypervisor child).
//!
//! - [`cmd`]: `start` / `serve` / `delete`, the socket and the pod.
//! - [`service`] → [`tasks`]: the Task service and its state machine.
//! - [`guest`]: what the service needs from a VM (traits; faked in tests);
//!   [`pod`]: the real one (a [`crate::sandbox::Sandbox`] from the
//!   template store, the pod's network and host cgroup, its share).
//! - [`host_fs`]: all host file work under a pod's directory: the VM's
//!   host-private container tree and its read-only view (the share),
//!   rootfs and volume mounts, by descriptors, never following links.
//! - [`rootfs`]: containerd's mount options as mount(2) flags.
//! - [`spec`]: the bundle's spec for the guest (bind volumes shared
//!   through the pod's virtio-fs, host namespace paths translated).
//! - [`io`]: containerd's FIFOs ↔ the process's vsock streams.
//! - [`events`]: task events to containerd; [`stats`]: cgroup v2 metrics.
//! - [`host_cgroup`]: the shim joins the pod's host cgroup.
//! - [`config`]: `/etc/husk/config.toml`; [`error`]: errors with ttrpc codes.

pub mod cmd;
pub mod config;
pub mod error;
pub mod events;
pub mod guest;
pub mod host_cgroup;
pub mod host_fs;
pub mod io;
pub mod pod;
pub mod rootfs;
pub mod service;
pub mod spec;
pub mod stats;
pub mod tasks;

#[cfg(test)]
mod tests;

/// Runs the binary with `args` (without argv[0]); returns the exit code.
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let a = match cmd::parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-husk-v2: {e}");
            return 2;
        }
    };
    let stderr_log = || {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(if a.debug {
                "debug"
            } else {
                "warn"
            }))
            .with_ansi(false)
            .with_writer(std::io::stderr)
            .try_init();
    };
    match a.action.as_str() {
        "version" => {
            println!(
                "containerd-shim-husk-v2 {} (husk build {})",
                env!("CARGO_PKG_VERSION"),
                crate::sandbox::build_id()
            );
            0
        }
        "start" => {
            // containerd reads start's stdout and stderr as one (the
            // address): no log lines there; a failure is one line.
            match cmd::start(&a) {
                Ok(address) => {
                    print!("{address}");
                    0
                }
                Err(e) => {
                    eprintln!("containerd-shim-husk-v2 start: {e}");
                    1
                }
            }
        }
        "delete" => {
            stderr_log();
            match cmd::delete(&a) {
                Ok(bytes) => {
                    use std::io::Write;
                    let mut out = std::io::stdout();
                    if out.write_all(&bytes).and_then(|()| out.flush()).is_err() {
                        return 1;
                    }
                    0
                }
                Err(e) => {
                    eprintln!("containerd-shim-husk-v2 delete: {e}");
                    1
                }
            }
        }
        "serve" => match cmd::serve(&a) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "shim failed");
                eprintln!("containerd-shim-husk-v2 serve: {e}");
                1
            }
        },
        other => {
            eprintln!("containerd-shim-husk-v2: unknown action {other:?} (start, delete)");
            2
        }
    }
}
