//! The pod's host cgroup. The shim, and with it every VMM thread of the
//! pod, moves into the sandbox container's `linux.cgroupsPath` (what Kata
//! calls `sandbox_cgroup_only`): the pod's real cost on the host (vCPU
//! time, guest memory the VMM touched, virtio-fs work) is accounted where
//! kubelet and containerd look. containerd's `PodSandboxStats` reads the
//! pod's cgroup parent, which now holds the shim.
//!
//! Accounting only: no limits are written. The VM's memory and vCPUs
//! already bound what the pod can take (the guest enforces the containers'
//! limits inside), and a host limit below the VM size would OOM-kill the
//! whole pod instead of the guest process at fault.
//!
//! Only cgroupfs-style paths (`/kubepods/pod<uid>/<id>`) are joined; a
//! systemd-style `slice:prefix:name` is left to a systemd driver we do not
//! have (logged, the pod runs where the shim was started). Every mounted
//! hierarchy under `/sys/fs/cgroup` is joined except cpuset (a v1 cpuset
//! must be given cpus and mems before it takes a task; the VM's vCPU
//! threads are not pinned).
//!
//! Leaving moves the process back to the cgroups it came from and removes
//! the directories this module made (the leaf only: the parent belongs to
//! kubelet, as with runc). After a `kill -9` of the shim, `delete` removes
//! the (then empty) leaf with [`remove_leaf`].

use std::io;
use std::path::{Path, PathBuf};

/// Where cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One mounted hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Its mount point.
    pub mount: PathBuf,
    /// v1 controllers and `name=` options; empty for cgroup2.
    pub controllers: Vec<String>,
}

impl Hierarchy {
    fn is_v2(&self) -> bool {
        self.controllers.is_empty()
    }

    /// Whether `/proc/<pid>/cgroup`'s entry with `controllers` (its second
    /// field, split on ',') names this hierarchy.
    fn matches(&self, controllers: &[&str]) -> bool {
        if self.is_v2() {
            controllers.iter().all(|c| c.is_empty())
        } else {
            !controllers.is_empty()
                && controllers
                    .iter()
                    .all(|c| self.controllers.iter().any(|m| m == c))
        }
    }
}

/// The hierarchies mounted under `root` in a `/proc/self/mountinfo` text
/// (mounts of their cgroup root only; cpuset left out, see the module
/// docs).
pub fn hierarchies(mountinfo: &str, root: &Path) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mount-point options [optional...] - fstype source super-options
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        let (Some(mount_root), Some(mount_point), Some(fstype)) =
            (pre.get(3), pre.get(4), post.first())
        else {
            continue;
        };
        let mount = PathBuf::from(unescape(mount_point));
        if *mount_root != "/" || !mount.starts_with(root) {
            continue;
        }
        let h = match *fstype {
            "cgroup2" => Hierarchy {
                mount,
                controllers: Vec::new(),
            },
            "cgroup" => {
                let opts = post.get(2).copied().unwrap_or("");
                let controllers: Vec<String> = opts
                    .split(',')
                    .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("relatime"))
                    .filter(|o| {
                        !matches!(
                            *o,
                            "noprefix" | "clone_children" | "xattr" | "nosuid" | "nodev" | "noexec"
                        ) && !o.starts_with("release_agent=")
                    })
                    .map(str::to_owned)
                    .collect();
                if controllers.is_empty() || controllers.iter().any(|c| c == "cpuset") {
                    continue;
                }
                Hierarchy { mount, controllers }
            }
            _ => continue,
        };
        if !out.iter().any(|o: &Hierarchy| o.mount == h.mount) {
            out.push(h);
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u32, |a, d| a * 8 + u32::from(d - b'0'));
            if let Ok(byte) = u8::try_from(v) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup of each hierarchy a `/proc/<pid>/cgroup` text names.
fn current(proc_cgroup: &str, hierarchies: &[Hierarchy]) -> Vec<Option<String>> {
    hierarchies
        .iter()
        .map(|h| {
            proc_cgroup.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrl, path) = (f.next()?, f.next()?, f.next()?);
                let ctrl: Vec<&str> = ctrl.split(',').collect();
                h.matches(&ctrl).then(|| path.to_owned())
            })
        })
        .collect()
}

/// A cgroupfs `cgroupsPath` as a relative path with only normal parts
/// (`/a/b`, `a/b`); None for a systemd-style path or one with `..`.
pub fn relative(cgroups_path: &str) -> Option<PathBuf> {
    if cgroups_path.contains(':') {
        return None;
    }
    let mut out = PathBuf::new();
    for part in Path::new(cgroups_path).components() {
        match part {
            std::path::Component::RootDir => {}
            std::path::Component::Normal(p) => out.push(p),
            _ => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
pub enum HostCgroupError {
    #[error("cgroupsPath {0:?} is not a cgroupfs path (systemd-style paths are not joined)")]
    NotCgroupfs(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> HostCgroupError + '_ {
    move |source| HostCgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A process moved into the pod's cgroup; dropping it moves the process
/// back and removes the leaf directories it made.
#[derive(Debug)]
pub struct HostCgroup {
    pid: u32,
    /// (hierarchy mount, the pod cgroup dir, we made it, where it was).
    joined: Vec<(PathBuf, PathBuf, bool, Option<String>)>,
}

impl HostCgroup {
    /// Moves `pid` (all its threads) into `cgroups_path` in every hierarchy
    /// of `hierarchies`, making the directories as needed; on error it is
    /// moved back and nothing made stays.
    pub fn join(
        pid: u32,
        cgroups_path: &str,
        hierarchies: &[Hierarchy],
    ) -> Result<Self, HostCgroupError> {
        let rel = relative(cgroups_path)
            .ok_or_else(|| HostCgroupError::NotCgroupfs(cgroups_path.to_owned()))?;
        let proc_cgroup = format!("/proc/{pid}/cgroup");
        let was = std::fs::read_to_string(&proc_cgroup).map_err(io_err(Path::new(&proc_cgroup)))?;
        let was = current(&was, hierarchies);
        let mut me = HostCgroup {
            pid,
            joined: Vec::new(),
        };
        for (h, was) in hierarchies.iter().zip(was) {
            let dir = h.mount.join(&rel);
            let made = !dir.exists();
            // Parents too (kubelet's pod cgroup when nobody made it, as
            // runc does); only the leaf is ours to remove.
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            me.joined.push((h.mount.clone(), dir.clone(), made, was));
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(io_err(&procs))?;
        }
        Ok(me)
    }

    /// The pod cgroup's directory in each hierarchy joined.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.joined.iter().map(|(_, d, _, _)| d.as_path())
    }

    fn leave(&mut self) {
        for (mount, dir, made, was) in self.joined.drain(..).rev() {
            if let Some(was) = was {
                let back = mount.join(was.trim_start_matches('/')).join("cgroup.procs");
                if let Err(e) = std::fs::write(&back, self.pid.to_string()) {
                    tracing::warn!(cgroup = %back.display(), error = %e, "cannot move the shim back to its cgroup");
                }
            }
            if made {
                if let Err(e) = std::fs::remove_dir(&dir) {
                    tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove the pod's host cgroup");
                }
            }
        }
    }
}

impl Drop for HostCgroup {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Removes the (empty) leaf `cgroups_path` in every hierarchy: `delete`
/// after a shim died in it. Returns the directories removed.
pub fn remove_leaf(cgroups_path: &str, hierarchies: &[Hierarchy]) -> Vec<PathBuf> {
    leaf_dirs(cgroups_path, hierarchies)
        .into_iter()
        .filter(|d| std::fs::remove_dir(d).is_ok())
        .collect()
}

/// The leaf `cgroups_path` directories that exist, in every hierarchy.
pub fn leaf_dirs(cgroups_path: &str, hierarchies: &[Hierarchy]) -> Vec<PathBuf> {
    let Some(rel) = relative(cgroups_path) else {
        return Vec::new();
    };
    hierarchies
        .iter()
        .map(|h| h.mount.join(&rel))
        .filter(|d| d.is_dir())
        .collect()
}

/// The hierarchies of this host (empty where mountinfo cannot be read).
pub fn host_hierarchies() -> Vec<Hierarchy> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| hierarchies(&m, Path::new(CGROUP_ROOT)))
        .unwrap_or_default()
}

/// The sandbox container's `linux.cgroupsPath` in a spec.
pub fn cgroups_path(spec: &serde_json::Value) -> Option<String> {
    spec.pointer("/linux/cgroupsPath")
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
42 31 0:39 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid shared:9 - cgroup cgroup rw,net_cls,net_prio
90 23 0:32 /x /run/c/rootfs/sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
91 23 0:32 /x /sys/fs/cgroup/memory/in rw - cgroup cgroup rw,memory
";

    #[test]
    fn hybrid_hierarchies() {
        let h = hierarchies(HYBRID, Path::new(CGROUP_ROOT));
        let names: Vec<String> = h
            .iter()
            .map(|h| format!("{}={}", h.mount.display(), h.controllers.join(",")))
            .collect();
        assert_eq!(
            names,
            [
                "/sys/fs/cgroup/cpu=cpu",
                "/sys/fs/cgroup/cpuacct=cpuacct",
                "/sys/fs/cgroup/memory=memory",
                "/sys/fs/cgroup/systemd=name=systemd",
                "/sys/fs/cgroup/unified=",
                "/sys/fs/cgroup/net_cls,net_prio=net_cls,net_prio",
            ]
        );
    }

    #[test]
    fn pure_v2() {
        let m = "25 1 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n";
        let h = hierarchies(m, Path::new(CGROUP_ROOT));
        assert_eq!(
            h,
            [Hierarchy {
                mount: "/sys/fs/cgroup".into(),
                controllers: vec![]
            }]
        );
        assert_eq!(
            current("0::/system.slice/containerd.service\n", &h),
            [Some("/system.slice/containerd.service".to_owned())]
        );
    }

    #[test]
    fn current_cgroups() {
        let h = hierarchies(HYBRID, Path::new(CGROUP_ROOT));
        let proc = "9:name=systemd:/s\n4:memory:/m\n1:cpu:/\n2:cpuacct:/a\n12:net_cls,net_prio:/n\n0::/u\n";
        assert_eq!(
            current(proc, &h),
            [
                Some("/".to_owned()),
                Some("/a".to_owned()),
                Some("/m".to_owned()),
                Some("/s".to_owned()),
                Some("/u".to_owned()),
                Some("/n".to_owned()),
            ]
        );
    }

    #[test]
    fn paths() {
        assert_eq!(
            relative("/kubepods/pod1/abc"),
            Some(PathBuf::from("kubepods/pod1/abc"))
        );
        assert_eq!(relative("default/abc"), Some(PathBuf::from("default/abc")));
        assert_eq!(relative("kubepods.slice:cri-containerd:abc"), None);
        assert_eq!(relative("/a/../b"), None);
        assert_eq!(relative("/"), None);
        assert_eq!(relative(""), None);
        assert_eq!(unescape(r"/a\040b"), "/a b");
        let spec = serde_json::json!({"linux": {"cgroupsPath": "/p/x"}});
        assert_eq!(cgroups_path(&spec).as_deref(), Some("/p/x"));
        assert_eq!(cgroups_path(&serde_json::json!({})), None);
    }

    /// The real hierarchies (root only): a `sleep` moves into a pod
    /// cgroup in each, back out on drop, and the leaf is removed.
    #[test]
    fn join_and_leave_real_cgroups() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP join_and_leave_real_cgroups: needs root");
            return;
        }
        let h = host_hierarchies();
        if h.is_empty() {
            eprintln!("SKIP join_and_leave_real_cgroups: no cgroup hierarchy mounted");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id();
        let before = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let parent = format!("husk-test-cgroup-{}", std::process::id());
        let path = format!("/{parent}/pod");
        let joined = HostCgroup::join(pid, &path, &h).unwrap();
        let inside = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        for d in joined.dirs() {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap();
            assert!(
                procs.lines().any(|l| l == pid.to_string()),
                "{}: {procs}",
                d.display()
            );
        }
        assert!(inside.contains(&path), "{inside}");
        let dirs: Vec<PathBuf> = joined.dirs().map(Path::to_owned).collect();
        drop(joined);
        let after = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        assert_eq!(after, before);
        for d in &dirs {
            assert!(!d.exists(), "{} left", d.display());
            let _ = std::fs::remove_dir(d.parent().unwrap());
        }
        // remove_leaf: what delete does after a kill -9.
        let again = HostCgroup::join(pid, &path, &h).unwrap();
        std::mem::forget(again);
        let before_path = h[0].mount.join(&parent).join("pod");
        assert!(before_path.is_dir());
        // Still holding the process: not removed.
        assert_eq!(remove_leaf(&path, &h), Vec::<PathBuf>::new());
        child.kill().unwrap();
        child.wait().unwrap();
        let removed = remove_leaf(&path, &h);
        assert_eq!(removed.len(), h.len(), "{removed:?}");
        for x in &h {
            let _ = std::fs::remove_dir(x.mount.join(&parent));
        }
    }
}
