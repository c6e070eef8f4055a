//! IPv6 on the pod's interface: silent until a pod gives it an address.
//!
//! The guest kernel has IPv6 (dual-stack pods), and an interface with IPv6
//! on, once up, makes a link-local address, probes it (duplicate address
//! detection: a neighbour solicitation and a one-second timer), reports
//! its multicast groups, and then solicits routers: at 4 s, then backing
//! off to once an hour, for ever, where (as on a CNI bridge) no router
//! answers. Each is an idle guest woken. A pod's routes come from its veth,
//! never from router advertisements, and its addresses were checked where
//! CNI assigned them, so at boot, before ready (a template snapshot holds
//! it done: no restored pod pays for it), every interface but lo gets
//! - `accept_ra=0`: no router solicitations, no routes from the network;
//! - `accept_dad=0`: its link-local address usable at once, no probe;
//! - `disable_ipv6=1`: no IPv6 at all, so an IPv4-only pod's guest sends
//!   and keeps nothing of it (no link-local, no multicast reports, no
//!   timers), and pays nothing per pod.
//!
//! A pod with IPv6 addresses turns it on again ([`enable`]: one write, three
//! guest syscalls, before eth0 goes up). The other way round (IPv6 left on
//! at boot, turned off per IPv4-only pod) would cost every IPv4-only pod that
//! write, and the two quieting ones every dual-stack pod.
//!
//! Measured (2026-12-08, the PVM host loaded by other VM tests, load ~5;
//! the agent's own timing of `ConfigureNetwork`): 936 and 1026 ms for a
//! dual-stack pod (2 addresses, 2 routes, the IPv6 write), 1048 ms for an
//! IPv4-only one (1 address, 1 route): eth0 coming up dominates, and
//! IPv6's part (three syscalls for the write, one more address and route)
//! is inside the noise.

use std::io;
use std::path::{Path, PathBuf};

/// The per-interface IPv6 settings.
const CONF: &str = "/proc/sys/net/ipv6/conf";

/// The settings of [`quiet_at_boot`], in the order written (`disable_ipv6`
/// last: the others are kept while it is on, ready for [`enable`]).
const QUIET: [(&str, &str); 3] = [
    ("accept_ra", "0"),
    ("accept_dad", "0"),
    ("disable_ipv6", "1"),
];

/// The interfaces [`quiet_at_boot`] quiets: every one under `conf` but the
/// `all`/`default` templates and lo (whose `::1` stays, for programs that
/// listen on or call localhost over IPv6).
fn interfaces(conf: &Path) -> io::Result<Vec<String>> {
    let mut out: Vec<String> = std::fs::read_dir(conf)?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !matches!(n.as_str(), "all" | "default" | "lo"))
        .collect();
    out.sort();
    Ok(out)
}

/// At boot: [`QUIET`] on every interface but lo. Returns the interfaces
/// done, or what failed (a kernel without IPv6 has no `conf`: nothing to
/// do, `Ok` with none).
pub fn quiet_at_boot() -> Result<Vec<String>, String> {
    quiet_under(Path::new(CONF))
}

fn quiet_under(conf: &Path) -> Result<Vec<String>, String> {
    let names = match interfaces(conf) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("listing {}: {e}", conf.display())),
    };
    for name in &names {
        for (key, value) in QUIET {
            let path = conf.join(name).join(key);
            std::fs::write(&path, value)
                .map_err(|e| format!("writing {value} to {}: {e}", path.display()))?;
        }
    }
    Ok(names)
}

/// Turns IPv6 on for interface `name` (quieted at boot). `Ok(false)` when
/// the kernel has no IPv6 (no setting to write).
pub fn enable(name: &str) -> io::Result<bool> {
    enable_under(Path::new(CONF), name)
}

fn enable_under(conf: &Path, name: &str) -> io::Result<bool> {
    if name.contains('/') || name.is_empty() || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    let path: PathBuf = conf.join(name).join("disable_ipv6");
    match std::fs::write(&path, "0") {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !conf.exists() => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    /// A fake `conf` tree: the templates, lo and eth0, each with the three
    /// settings at the kernel's defaults.
    fn fake_conf(dir: &Path) {
        for iface in ["all", "default", "lo", "eth0"] {
            std::fs::create_dir_all(dir.join(iface)).unwrap();
            for (key, value) in [
                ("accept_ra", "1"),
                ("accept_dad", "1"),
                ("disable_ipv6", "0"),
            ] {
                std::fs::write(dir.join(iface).join(key), value).unwrap();
            }
        }
    }

    fn read(dir: &Path, iface: &str, key: &str) -> String {
        std::fs::read_to_string(dir.join(iface).join(key)).unwrap()
    }

    #[test]
    fn boot_quiets_every_interface_but_lo_and_enable_turns_one_on() {
        let dir = std::env::temp_dir().join(format!("husk-ipv6-conf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        fake_conf(&dir);
        assert_eq!(quiet_under(&dir).unwrap(), vec!["eth0".to_string()]);
        for (key, value) in QUIET {
            assert_eq!(read(&dir, "eth0", key), value, "{key}");
        }
        for iface in ["all", "default", "lo"] {
            assert_eq!(read(&dir, iface, "disable_ipv6"), "0", "{iface} untouched");
            assert_eq!(read(&dir, iface, "accept_ra"), "1", "{iface} untouched");
        }
        assert!(enable_under(&dir, "eth0").unwrap());
        assert_eq!(read(&dir, "eth0", "disable_ipv6"), "0");
        assert_eq!(read(&dir, "eth0", "accept_ra"), "0", "stays quiet");
        // An interface that is not there is an error; a name that would
        // leave the tree is refused.
        assert!(enable_under(&dir, "eth9").is_err());
        for bad in ["../all", "", ".."] {
            let e = enable_under(&dir, bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();

        // A kernel without IPv6: nothing to quiet, nothing to enable.
        let none = dir.join("absent");
        assert_eq!(quiet_under(&none).unwrap(), Vec::<String>::new());
        assert!(!enable_under(&none, "eth0").unwrap());
    }
}
