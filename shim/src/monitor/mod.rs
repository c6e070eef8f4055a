//! The per-pod monitor endpoint (as Kata's shim monitor socket): the shim
//! serves its pod VM's counters ([`husk_vmm::stats`]) on a Unix socket in
//! the VM's host-private directory, `<run_dir>/<pod key>/<incarnation>/`
//! [`SOCKET`] (0600, root only; the directories above are 0700):
//!
//! - `GET /metrics`: Prometheus text (`husk_vm_*`, labels `pod`, `vcpu`,
//!   `device`, `reason`, `kind`, `stat`; [`metrics`]);
//! - `GET /stats`: the pod's [`PodStats`] as JSON.
//!
//! One short request per connection (HTTP/1.0, [`http`]), served by one
//! thread blocked in `accept`: no guest work, no periodic host wakeup.
//! `husk pods` and `husk vm stats` are its clients ([`list_sockets`]).

pub mod http;
pub mod metrics;
pub mod server;

use std::path::{Path, PathBuf};

use husk_vmm::VmStats;
use serde::{Deserialize, Serialize};

/// The monitor socket's name in a pod VM's directory.
pub const SOCKET: &str = "monitor.sock";

/// What `GET /stats` returns.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodStats {
    /// The pod's id (the CRI sandbox id, `io.husk.pod`, or the task id).
    pub pod: String,
    /// containerd's namespace.
    pub namespace: String,
    /// The shim's pid (the VMM's threads are its threads).
    pub shim_pid: u32,
    pub vm: VmStats,
}

/// The monitor sockets under `run_dir`: `<run_dir>/*/*/monitor.sock`
/// that are sockets (no link followed), in name order.
pub fn list_sockets(run_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let dirs = |d: &Path| -> std::io::Result<Vec<PathBuf>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                v.push(e.path());
            }
        }
        v.sort();
        Ok(v)
    };
    let mut out = Vec::new();
    for pod in dirs(run_dir)? {
        // A pod directory that goes while we look is no error.
        let Ok(incarnations) = dirs(&pod) else {
            continue;
        };
        for inc in incarnations {
            let sock = inc.join(SOCKET);
            if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket()) {
                out.push(sock);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sockets_two_levels_down_only() {
        let root = std::env::temp_dir().join(format!("husk-monitor-list-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let inc = root.join("0123456789abcdef").join("1f-1");
        std::fs::create_dir_all(&inc).unwrap();
        let _l = std::os::unix::net::UnixListener::bind(inc.join(SOCKET)).unwrap();
        // Not sockets, or not where they belong.
        std::fs::create_dir_all(root.join("p2").join("i2")).unwrap();
        std::fs::write(root.join("p2").join("i2").join(SOCKET), b"").unwrap();
        std::os::unix::fs::symlink(inc.join(SOCKET), root.join("p2").join("i3")).unwrap();
        std::fs::write(root.join("stray"), b"").unwrap();
        let _top = std::os::unix::net::UnixListener::bind(root.join(SOCKET)).unwrap();
        assert_eq!(list_sockets(&root).unwrap(), vec![inc.join(SOCKET)]);
        assert!(list_sockets(&root.join("absent")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
