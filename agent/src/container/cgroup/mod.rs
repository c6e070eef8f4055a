//! cgroup v2 for containers: `<root>/<parent>/<id>` (parent `husk`, the pod
//! level): the controllers enabled, the writes applied, freeze, kill and
//! removal. `linux.resources` becomes those writes in [`resources`]; the
//! statistics and the `memory.events` OOM counter are read in [`stats`].
//!
//! Only controllers the kernel offers are enabled (`cgroup.controllers` of
//! the root); a limit for a controller that is not there is refused with the
//! field named. Two kinds of limit hold without a file to write, and are
//! skipped with a log line instead: a swap limit where the kernel has no
//! swap, and a `hugepageLimits` entry for a huge page size the guest does
//! not have (no process in the guest can get such pages; kubelet sends a
//! zero limit for every size the *node* has, whatever the pod asks).
//!
//! `cpu.cpus`/`cpu.mems` are ignored with a log line: they name the host's
//! CPUs and NUMA nodes, which are not the guest's (Kata drops them too); the
//! VM's vCPUs are what bounds the pod.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::SpecError;
use resources::{page_size_kb, HUGEPAGES};

/// The controllers a CRI spec's `linux.resources` sets, enabled for the
/// containers where the kernel offers them (the guest has no cpuset: one
/// vCPU, see the module docs).
pub const CONTROLLERS: [&str; 6] = ["cpu", "memory", "pids", "io", "hugetlb", "cpuset"];

mod resources;
mod stats;

pub use resources::{controller_of, resource_writes, shares_to_weight, Write1};
pub use stats::{keyed, oom_kills, CpuStats, IoStats, MemoryStats, PidsStats, Stats};

/// A container's cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub dir: PathBuf,
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Whether `value` is what interface file `file` holds in a cgroup just
/// made (the kernel's defaults for a new child of cgroup v2), so that
/// writing it there changes nothing. Only exact default spellings count;
/// anything else (and every file not listed) is written.
pub fn is_fresh_default(file: &str, value: &str) -> bool {
    match file {
        "cpu.max" => value == "max 100000" || value == "max",
        "cpu.weight" => value == "100",
        "cpu.idle" | "cpu.max.burst" | "memory.low" | "memory.min" => value == "0",
        "memory.max" | "memory.high" | "memory.swap.max" | "pids.max" => value == "max",
        f if f.starts_with("hugetlb.") && f.ends_with(".max") => value == "max",
        _ => false,
    }
}

/// The controllers `root` offers (its `cgroup.controllers`).
pub fn available(root: &Path) -> io::Result<Vec<String>> {
    Ok(fs::read_to_string(root.join("cgroup.controllers"))?
        .split_whitespace()
        .map(str::to_owned)
        .collect())
}

/// Creates `<root>/<parent>` and enables [`CONTROLLERS`] (those offered) in
/// the subtree_control of the root and of the parent. Idempotent; a step
/// that does not depend on the container (can run before a template
/// snapshot).
pub fn prepare_parent(root: &Path, parent: &str) -> io::Result<PathBuf> {
    let have = available(root)?;
    let enable: Vec<String> = CONTROLLERS
        .iter()
        .filter(|c| have.iter().any(|h| h == *c))
        .map(|c| format!("+{c}"))
        .collect();
    let dir = root.join(parent);
    match fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if !enable.is_empty() {
        let line = enable.join(" ");
        for d in [root, &dir] {
            let current = fs::read_to_string(d.join("cgroup.subtree_control")).unwrap_or_default();
            if enable
                .iter()
                .all(|c| current.split_whitespace().any(|h| h == &c[1..]))
            {
                continue;
            }
            write_file(&d.join("cgroup.subtree_control"), &line)?;
        }
    }
    Ok(dir)
}

impl Cgroup {
    /// Makes the container's directory under `parent_dir` and applies
    /// `writes`. On error the directory is removed again.
    ///
    /// Values a new cgroup already has ([`is_fresh_default`]: kubelet's
    /// `cpu.max "max 100000"` for every container without a quota, say)
    /// are not written: each write is ~25 ms of emulated guest kernel on
    /// nested hosts. Returns the cgroup and how many files were written.
    pub fn create(
        parent_dir: &Path,
        id: &str,
        writes: &[Write1],
    ) -> Result<(Self, usize), CgroupError> {
        let dir = parent_dir.join(id);
        fs::create_dir(&dir).map_err(|e| CgroupError::io(format!("mkdir {}", dir.display()), e))?;
        let cg = Self { dir };
        let writes: Vec<Write1> = writes
            .iter()
            .filter(|(file, value, _)| !is_fresh_default(file, value))
            .cloned()
            .collect();
        if let Err(e) = cg.apply(&writes) {
            let _ = fs::remove_dir(&cg.dir);
            return Err(e);
        }
        Ok((cg, writes.len()))
    }

    /// Writes each value; a file that is not there means its controller is
    /// not enabled here: refused, naming the field. The exceptions are the
    /// limits that hold without their file ([`Self::holds_without`]).
    pub fn apply(&self, writes: &[Write1]) -> Result<(), CgroupError> {
        self.apply_with(writes, Path::new(HUGEPAGES))
    }

    /// [`Self::apply`] with the kernel's huge page sizes listed in
    /// `hugepages` (tests).
    fn apply_with(&self, writes: &[Write1], hugepages: &Path) -> Result<(), CgroupError> {
        for (file, value, field) in writes {
            let path = self.dir.join(file);
            // The write itself tells whether the file is there: no stat
            // first (each syscall is guest work on the container's path).
            if let Err(e) = write_file(&path, value) {
                if e.kind() == io::ErrorKind::NotFound {
                    if let Some(why) = self.holds_without(file, value, hugepages) {
                        crate::log::log(&format!("container: {field}: {file} skipped: {why}"));
                        continue;
                    }
                }
                return Err(match e.kind() {
                    io::ErrorKind::NotFound => CgroupError::Spec(SpecError::new(
                        field,
                        format!(
                            "{file}: the {} controller is not available here",
                            controller_of(file)
                        ),
                    )),
                    _ if e.raw_os_error() == Some(libc::EINVAL)
                        || e.raw_os_error() == Some(libc::ERANGE) =>
                    {
                        CgroupError::Spec(SpecError::new(
                            field,
                            format!("{file}: {value:?} refused by the kernel: {e}"),
                        ))
                    }
                    _ => CgroupError::io(format!("write {value:?} to {}", path.display()), e),
                });
            }
        }
        Ok(())
    }

    /// Why a limit whose `file` is not there holds anyway, if it does:
    /// - `memory.swap.max` next to a `memory.max`: a kernel without swap
    ///   (the guest's) has no swap files, and a process there never swaps
    ///   (containerd's CRI sets a swap limit with every memory limit;
    ///   kubelet on a cgroup v2 node adds `unified: memory.swap.max=0`);
    /// - `hugetlb.<size>.max` / `.rsvd.max` for a size the kernel has no
    ///   pages of (no `<hugepages>/hugepages-<kB>kB`): no process can use
    ///   any. A size it has, without the file: refused (the controller is
    ///   not there), except `.rsvd.max` next to its `.max` (a kernel
    ///   before reservation accounting).
    fn holds_without(&self, file: &str, value: &str, hugepages: &Path) -> Option<String> {
        if file == "memory.swap.max" && self.dir.join("memory.max").exists() {
            return Some("this kernel has no swap".to_owned());
        }
        let size = file
            .strip_prefix("hugetlb.")?
            .strip_suffix(".max")
            .map(|s| s.strip_suffix(".rsvd").unwrap_or(s))?;
        let kb = page_size_kb(size)?;
        if hugepages.join(format!("hugepages-{kb}kB")).exists() {
            let max = self.dir.join(format!("hugetlb.{size}.max"));
            return (file.ends_with(".rsvd.max") && max.exists())
                .then(|| "this kernel accounts no hugetlb reservations".to_owned());
        }
        Some(if value == "0" {
            format!("this guest has no {size} huge pages (a zero limit holds)")
        } else {
            format!("this guest has no {size} huge pages to hand out, so the limit is not written")
        })
    }

    pub fn procs_path(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// The pids in the cgroup (the agent's view).
    pub fn pids(&self) -> io::Result<Vec<libc::pid_t>> {
        Ok(fs::read_to_string(self.procs_path())?
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }

    /// `populated` from cgroup.events.
    pub fn populated(&self) -> io::Result<bool> {
        Ok(keyed(
            &fs::read_to_string(self.dir.join("cgroup.events"))?,
            "populated",
        ) == Some(1))
    }

    /// Freezes (or thaws) and waits until cgroup.events says so.
    pub fn freeze(&self, frozen: bool, timeout: Duration) -> io::Result<()> {
        write_file(
            &self.dir.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        let want = u64::from(frozen);
        let until = Instant::now() + timeout;
        let events = File::open(self.dir.join("cgroup.events"))?;
        loop {
            let mut buf = [0u8; 256];
            let n = events.read_at(&mut buf, 0)?;
            let text = String::from_utf8_lossy(&buf[..n]);
            // An empty cgroup never reports frozen 1 on old kernels: done.
            if keyed(&text, "frozen") == Some(want) || keyed(&text, "populated") == Some(0) {
                return Ok(());
            }
            if Instant::now() >= until {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "cgroup.events still says frozen {} after {timeout:?}",
                        1 - want
                    ),
                ));
            }
            // cgroup.events signals changes with POLLPRI.
            let mut pfd = libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&events),
                events: libc::POLLPRI,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut pfd, 1, 50) };
        }
    }

    /// SIGKILLs everything in it (cgroup.kill, or each pid where the kernel
    /// has no cgroup.kill).
    pub fn kill_all(&self) -> io::Result<()> {
        match write_file(&self.dir.join("cgroup.kill"), "1") {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                for pid in self.pids()? {
                    // SAFETY: kill takes no pointers.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Removes the directory once empty (waits up to `timeout` for killed
    /// processes to leave it).
    pub fn remove(&self, timeout: Duration) -> io::Result<()> {
        let until = Instant::now() + timeout;
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// memory.events opened for polling (POLLPRI on change), if the memory
    /// controller is enabled here.
    pub fn memory_events(&self) -> Option<File> {
        File::open(self.dir.join("memory.events")).ok()
    }
}

/// A cgroup step failed: a refused value (naming the field) or I/O.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl CgroupError {
    fn io(what: String, source: io::Error) -> Self {
        Self::Io { what, source }
    }
}

/// Reads a whole small file (for tests and callers).
pub fn read_small(path: &Path) -> io::Result<String> {
    let mut s = String::new();
    File::open(path)?.read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::resources::tests::res;
    use super::*;

    /// kubelet's BestEffort container (shares 2, period 100000, no quota)
    /// writes cpu.weight only into a new cgroup; a quota, a memory limit
    /// or a non-default weight are written; unknown files always are.
    #[test]
    fn fresh_defaults_are_not_written() {
        let kubelet = resource_writes(
            "r",
            &res(
                r#"{"cpu":{"shares":2,"period":100000},"memory":{"limit":-1},"pids":{"limit":0}}"#,
            ),
        )
        .unwrap();
        let kept: Vec<_> = kubelet
            .iter()
            .filter(|(f, v, _)| !is_fresh_default(f, v))
            .map(|(f, v, _)| (f.as_str(), v.as_str()))
            .collect();
        assert_eq!(kept, [("cpu.weight", "1")]);
        for (f, v) in [
            ("cpu.max", "50000 100000"),
            ("cpu.max", "max 50000"),
            ("cpu.weight", "39"),
            ("memory.max", "104857600"),
            ("pids.max", "100"),
            ("hugetlb.2MB.max", "4194304"),
            ("memory.oom.group", "1"),
            ("io.weight", "default 100"),
        ] {
            assert!(!is_fresh_default(f, v), "{f} {v}");
        }
        for (f, v) in [
            ("cpu.max", "max 100000"),
            ("cpu.weight", "100"),
            ("memory.max", "max"),
            ("memory.low", "0"),
            ("pids.max", "max"),
            ("hugetlb.1GB.rsvd.max", "max"),
        ] {
            assert!(is_fresh_default(f, v), "{f} {v}");
        }
    }

    /// A kernel without swap: memory.swap.max is skipped where the memory
    /// controller is there, refused where it is not.
    #[test]
    fn swap_limit_without_swap() {
        let dir = std::env::temp_dir().join(format!("husk-cg-swap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let cg = Cgroup { dir: dir.clone() };
        let w = |f: &str, v: &str| (f.to_owned(), v.to_owned(), format!("r.{f}"));
        let writes = [w("memory.max", "100"), w("memory.swap.max", "0")];
        let e = cg.apply(&writes).unwrap_err();
        assert!(
            matches!(&e, CgroupError::Spec(s) if s.field == "r.memory.max"),
            "{e}"
        );
        fs::write(dir.join("memory.max"), "max").unwrap();
        cg.apply(&writes).unwrap();
        assert_eq!(read_small(&dir.join("memory.max")).unwrap(), "100");
        assert!(!dir.join("memory.swap.max").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A guest with 2 MB pages only: the 1 GB limits (zero or not) are
    /// skipped, the 2 MB ones written; a reservation file a kernel lacks
    /// is skipped next to its max; any other missing file is refused (a
    /// size the guest has included).
    #[test]
    fn hugetlb_sizes_the_guest_lacks() {
        let dir = std::env::temp_dir().join(format!("husk-cg-huge-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let cg = Cgroup {
            dir: dir.join("cg"),
        };
        let sizes = dir.join("hugepages");
        fs::create_dir_all(sizes.join("hugepages-2048kB")).unwrap();
        fs::create_dir_all(&cg.dir).unwrap();
        let dir = cg.dir.clone();
        fs::write(dir.join("hugetlb.2MB.max"), "max").unwrap();
        let writes = resource_writes(
            "r",
            &res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304},
                    {"pageSize":"1GB","limit":0},{"pageSize":"1GB","limit":1073741824}]}"#),
        )
        .unwrap();
        cg.apply_with(&writes, &sizes).unwrap();
        assert_eq!(read_small(&dir.join("hugetlb.2MB.max")).unwrap(), "4194304");
        for f in [
            "hugetlb.2MB.rsvd.max",
            "hugetlb.1GB.max",
            "hugetlb.1GB.rsvd.max",
        ] {
            assert!(!dir.join(f).exists(), "{f}");
        }
        let w = |f: &str, v: &str| (f.to_owned(), v.to_owned(), format!("r.{f}"));
        let refused = |writes: &[Write1], field: &str| {
            let e = cg.apply_with(writes, &sizes).unwrap_err();
            assert!(
                matches!(&e, CgroupError::Spec(s) if s.field == field),
                "{e}"
            );
        };
        refused(&[w("cpu.max", "max 100000")], "r.cpu.max");
        // Not a page size (a `unified` key), and a size the kernel has
        // whose file is not there (no hugetlb controller here): refused.
        refused(&[w("hugetlb.x.max", "0")], "r.hugetlb.x.max");
        refused(&[w("hugetlbx.max", "0")], "r.hugetlbx.max");
        fs::remove_file(dir.join("hugetlb.2MB.max")).unwrap();
        refused(&[w("hugetlb.2MB.max", "0")], "r.hugetlb.2MB.max");
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }
}
