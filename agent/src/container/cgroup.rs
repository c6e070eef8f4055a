//! cgroup v2 for containers: `<root>/<parent>/<id>` (parent `husk`, the pod
//! level), `linux.resources` as interface-file writes, stats, freeze, kill,
//! removal and the `memory.events` OOM counter.
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

use oci_spec::runtime::LinuxResources;

use super::error::SpecError;

/// The controllers a CRI spec's `linux.resources` sets, enabled for the
/// containers where the kernel offers them (the guest has no cpuset: one
/// vCPU, see the module docs).
pub const CONTROLLERS: [&str; 6] = ["cpu", "memory", "pids", "io", "hugetlb", "cpuset"];

/// One interface-file write: (file name, value, the spec field it comes from).
pub type Write1 = (String, String, String);

/// runc's cpu.shares (2..262144) to cpu.weight (1..10000) conversion.
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        0
    } else {
        1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142
    }
}

fn limit(v: i64) -> String {
    if v < 0 {
        "max".to_owned()
    } else {
        v.to_string()
    }
}

/// `linux.resources` (or an UpdateResources document: `field` is its
/// prefix) as the writes that apply it, in order. Fields that have no cgroup
/// v2 file are ignored with a log line.
pub fn resource_writes(field: &str, r: &LinuxResources) -> Result<Vec<Write1>, SpecError> {
    let mut w: Vec<Write1> = Vec::new();
    let mut put = |file: &str, value: String, f: String| w.push((file.to_owned(), value, f));
    let warn = |what: &str| crate::log::log(&format!("container: {field}.{what}: ignored"));
    if let Some(m) = r.memory() {
        let f = format!("{field}.memory");
        let mem = m.limit();
        if let Some(l) = mem {
            put("memory.max", limit(l), format!("{f}.limit"));
        }
        if let Some(r) = m.reservation() {
            put("memory.low", limit(r), format!("{f}.reservation"));
        }
        if let Some(swap) = m.swap() {
            // OCI swap is memory + swap; v2 wants swap alone (runc's
            // ConvertMemorySwapToCgroupV2Value).
            let v = match (swap, mem) {
                (-1, _) => "max".to_owned(),
                (0, _) => String::new(),
                (_, None | Some(-1) | Some(0)) => {
                    return Err(SpecError::new(
                        format!("{f}.swap"),
                        "a swap limit needs a memory limit",
                    ))
                }
                (s, Some(l)) if s < l => {
                    return Err(SpecError::new(
                        format!("{f}.swap"),
                        format!("{s} is below memory.limit {l} (swap is memory + swap)"),
                    ))
                }
                (s, Some(l)) => (s - l).to_string(),
            };
            if !v.is_empty() {
                put("memory.swap.max", v, format!("{f}.swap"));
            }
        }
        if m.kernel().is_some() || m.kernel_tcp().is_some() {
            warn("memory.kernel/kernelTCP (no cgroup v2 file)");
        }
        if m.swappiness().is_some() {
            warn("memory.swappiness (no cgroup v2 file)");
        }
        if m.disable_oom_killer() == Some(true) {
            warn("memory.disableOOMKiller (no cgroup v2 file)");
        }
    }
    if let Some(c) = r.cpu() {
        let f = format!("{field}.cpu");
        if let Some(s) = c.shares() {
            let weight = shares_to_weight(s);
            if weight > 0 {
                put("cpu.weight", weight.to_string(), format!("{f}.shares"));
            }
        }
        if c.quota().is_some() || c.period().is_some() {
            let period = c.period().unwrap_or(100_000);
            if !(1000..=1_000_000).contains(&period) {
                return Err(SpecError::new(
                    format!("{f}.period"),
                    format!("{period} is not 1000..1000000 µs"),
                ));
            }
            let quota = match c.quota() {
                None | Some(-1) => "max".to_owned(),
                Some(q) if q < 1000 => {
                    return Err(SpecError::new(
                        format!("{f}.quota"),
                        format!("{q} is below 1000 µs"),
                    ))
                }
                Some(q) => q.to_string(),
            };
            put("cpu.max", format!("{quota} {period}"), format!("{f}.quota"));
        }
        if let Some(idle) = c.idle() {
            put("cpu.idle", idle.to_string(), format!("{f}.idle"));
        }
        if c.burst().is_some() {
            put(
                "cpu.max.burst",
                c.burst().unwrap_or(0).to_string(),
                format!("{f}.burst"),
            );
        }
        if c.cpus().is_some() || c.mems().is_some() {
            warn("cpu.cpus/mems (they name the host's CPUs and NUMA nodes, not the guest's)");
        }
        if c.realtime_runtime().is_some() || c.realtime_period().is_some() {
            warn("cpu.realtime* (no cgroup v2 file)");
        }
    }
    if let Some(p) = r.pids() {
        put(
            "pids.max",
            limit(if p.limit() <= 0 { -1 } else { p.limit() }),
            format!("{field}.pids.limit"),
        );
    }
    if let Some(b) = r.block_io() {
        let f = format!("{field}.blockIO");
        if let Some(weight) = b.weight() {
            // blkio 10..1000 to io 1..10000 (runc's conversion).
            let v = 1 + (u64::from(weight).saturating_sub(10)) * 9999 / 990;
            put("io.weight", format!("default {v}"), format!("{f}.weight"));
        }
        let throttles = [
            (
                "throttleReadBpsDevice",
                "rbps",
                b.throttle_read_bps_device(),
            ),
            (
                "throttleWriteBpsDevice",
                "wbps",
                b.throttle_write_bps_device(),
            ),
            (
                "throttleReadIOPSDevice",
                "riops",
                b.throttle_read_iops_device(),
            ),
            (
                "throttleWriteIOPSDevice",
                "wiops",
                b.throttle_write_iops_device(),
            ),
        ];
        for (name, key, list) in throttles {
            for (i, d) in list.iter().flatten().enumerate() {
                put(
                    "io.max",
                    format!("{}:{} {key}={}", d.major(), d.minor(), d.rate()),
                    format!("{f}.{name}[{i}]"),
                );
            }
        }
        if b.weight_device().is_some() || b.leaf_weight().is_some() {
            warn("blockIO.weightDevice/leafWeight");
        }
    }
    for (i, h) in r.hugepage_limits().iter().flatten().enumerate() {
        let f = format!("{field}.hugepageLimits[{i}]");
        let size = h.page_size();
        if !is_page_size(size) {
            return Err(SpecError::new(
                format!("{f}.pageSize"),
                format!("{size:?} is not a huge page size (digits, then KB, MB or GB: \"2MB\")"),
            ));
        }
        if h.limit() < 0 {
            return Err(SpecError::new(
                format!("{f}.limit"),
                format!("{} is not a byte count", h.limit()),
            ));
        }
        // The reservation limit too, as runc does (a mapping reserves its
        // pages before it faults them in).
        for file in [
            format!("hugetlb.{size}.max"),
            format!("hugetlb.{size}.rsvd.max"),
        ] {
            put(&file, h.limit().to_string(), format!("{f}.limit"));
        }
    }
    if r.network().is_some() {
        warn("network (no net_cls/net_prio on cgroup v2)");
    }
    if r.rdma().is_some() {
        warn("rdma");
    }
    if r.devices().as_ref().is_some_and(|v| !v.is_empty()) {
        // cgroup v2 device control is an eBPF program; the guest's devices
        // are the VM's (nothing of the host's is reachable).
        warn("devices (no device cgroup program in the guest)");
    }
    if let Some(u) = r.unified() {
        let mut keys: Vec<_> = u.iter().collect();
        keys.sort();
        for (k, v) in keys {
            if k.contains('/') || k.starts_with("cgroup.") || k.is_empty() {
                return Err(SpecError::new(
                    format!("{field}.unified.{k}"),
                    "not a controller interface file",
                ));
            }
            put(k, v.clone(), format!("{field}.unified.{k}"));
        }
    }
    Ok(w)
}

/// Where the kernel lists its huge page sizes (`hugepages-2048kB`, ...).
pub const HUGEPAGES: &str = "/sys/kernel/mm/hugepages";

/// A huge page size as the kernel names it in hugetlb files: a number
/// without leading zeros, then `KB`, `MB` or `GB` (`2MB`, `1GB`, `64KB`).
fn is_page_size(s: &str) -> bool {
    page_size_kb(s).is_some()
}

/// A page size ([`is_page_size`]) in KiB (`2MB` -> 2048).
fn page_size_kb(s: &str) -> Option<u64> {
    let (digits, unit) = [("KB", 1u64), ("MB", 1 << 10), ("GB", 1 << 20)]
        .iter()
        .find_map(|(u, kb)| s.strip_suffix(u).map(|d| (d, *kb)))?;
    let ok = (1..=7).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| digits.parse::<u64>().ok().map(|n| n * unit))
        .flatten()
}

/// The controller a write needs (`memory.max` -> `memory`).
pub fn controller_of(file: &str) -> &str {
    file.split('.').next().unwrap_or(file)
}

/// A container's cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub dir: PathBuf,
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
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
    pub fn create(parent_dir: &Path, id: &str, writes: &[Write1]) -> Result<Self, CgroupError> {
        let dir = parent_dir.join(id);
        fs::create_dir(&dir).map_err(|e| CgroupError::io(format!("mkdir {}", dir.display()), e))?;
        let cg = Self { dir };
        if let Err(e) = cg.apply(writes) {
            let _ = fs::remove_dir(&cg.dir);
            return Err(e);
        }
        Ok(cg)
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
            if !path.exists() {
                if let Some(why) = self.holds_without(file, value, hugepages) {
                    crate::log::log(&format!("container: {field}: {file} skipped: {why}"));
                    continue;
                }
            }
            if let Err(e) = write_file(&path, value) {
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

    pub fn stats(&self) -> io::Result<Stats> {
        let read = |f: &str| fs::read_to_string(self.dir.join(f)).ok();
        let num = |f: &str| read(f).and_then(|s| s.trim().parse::<u64>().ok());
        let max = |f: &str| read(f).map(|s| s.trim().parse::<u64>().ok());
        let cpu_stat = read("cpu.stat").unwrap_or_default();
        let cpu = CpuStats {
            usage_usec: keyed(&cpu_stat, "usage_usec").unwrap_or(0),
            user_usec: keyed(&cpu_stat, "user_usec").unwrap_or(0),
            system_usec: keyed(&cpu_stat, "system_usec").unwrap_or(0),
            nr_periods: keyed(&cpu_stat, "nr_periods").unwrap_or(0),
            nr_throttled: keyed(&cpu_stat, "nr_throttled").unwrap_or(0),
            throttled_usec: keyed(&cpu_stat, "throttled_usec").unwrap_or(0),
        };
        let memory = num("memory.current").map(|current| {
            let stat = read("memory.stat").unwrap_or_default();
            let inactive_file = keyed(&stat, "inactive_file").unwrap_or(0);
            let events = read("memory.events").unwrap_or_default();
            MemoryStats {
                current,
                working_set: current.saturating_sub(inactive_file),
                peak: num("memory.peak"),
                limit: max("memory.max").flatten(),
                swap_current: num("memory.swap.current"),
                oom_kill: keyed(&events, "oom_kill").unwrap_or(0),
            }
        });
        let pids = num("pids.current").map(|current| PidsStats {
            current,
            limit: max("pids.max").flatten(),
        });
        let io = read("io.stat")
            .map(|s| parse_io_stat(&s))
            .unwrap_or_default();
        Ok(Stats {
            cpu,
            memory,
            pids,
            io,
        })
    }
}

/// `key value` lines (cpu.stat, memory.stat, cgroup.events...).
pub fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn parse_io_stat(text: &str) -> Vec<IoStats> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (major, minor) = parts.next()?.split_once(':')?;
            let mut s = IoStats {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for kv in parts {
                let Some((k, v)) = kv.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => s.rbytes = v,
                    "wbytes" => s.wbytes = v,
                    "rios" => s.rios = v,
                    "wios" => s.wios = v,
                    _ => {}
                }
            }
            Some(s)
        })
        .collect()
}

/// Reads the `oom_kill` counter from an open memory.events.
pub fn oom_kills(events: &File) -> u64 {
    let mut buf = [0u8; 512];
    let n = events.read_at(&mut buf, 0).unwrap_or(0);
    keyed(&String::from_utf8_lossy(&buf[..n]), "oom_kill").unwrap_or(0)
}

/// A container's cgroup statistics. `None`: that controller is not enabled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub cpu: CpuStats,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    pub io: Vec<IoStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub current: u64,
    /// current - inactive_file (what the kubelet calls the working set).
    pub working_set: u64,
    /// memory.peak (Linux 5.19+).
    pub peak: Option<u64>,
    /// memory.max; `None` is "max".
    pub limit: Option<u64>,
    pub swap_current: Option<u64>,
    pub oom_kill: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PidsStats {
    pub current: u64,
    /// `None` is "max".
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStats {
    pub major: u64,
    pub minor: u64,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
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

    use super::*;

    fn res(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn resources_become_v2_writes() {
        let w = resource_writes(
            "linux.resources",
            &res(r#"{"memory":{"limit":104857600,"swap":209715200},
                    "cpu":{"shares":1024,"quota":50000,"period":100000},
                    "pids":{"limit":64},
                    "blockIO":{"throttleReadBpsDevice":[{"major":254,"minor":0,"rate":1048576}]}}"#),
        )
        .unwrap();
        let files: Vec<(&str, &str)> = w.iter().map(|(f, v, _)| (f.as_str(), v.as_str())).collect();
        assert_eq!(
            files,
            [
                ("memory.max", "104857600"),
                ("memory.swap.max", "104857600"),
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("pids.max", "64"),
                ("io.max", "254:0 rbps=1048576"),
            ]
        );
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10000);
    }

    #[test]
    fn bad_resources_name_the_field() {
        let e = resource_writes("linux.resources", &res(r#"{"memory":{"swap":100}}"#)).unwrap_err();
        assert_eq!(e.field, "linux.resources.memory.swap");
        let e = resource_writes("linux.resources", &res(r#"{"cpu":{"quota":10}}"#)).unwrap_err();
        assert_eq!(e.field, "linux.resources.cpu.quota");
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

    fn files(w: &[Write1]) -> Vec<(&str, &str)> {
        w.iter().map(|(f, v, _)| (f.as_str(), v.as_str())).collect()
    }

    /// What kubelet sends for each QoS class (kuberuntime's
    /// generateLinuxContainerResources; a hugepageLimits entry of 0 for
    /// every size the node has): BestEffort's shares 2 and period with no
    /// quota is the lowest weight and no bandwidth limit.
    #[test]
    fn kubelet_qos_resources() {
        let zeros =
            r#""hugepageLimits":[{"pageSize":"2MB","limit":0},{"pageSize":"1GB","limit":0}]"#;
        let hugetlb_zeros = [
            ("hugetlb.2MB.max", "0"),
            ("hugetlb.2MB.rsvd.max", "0"),
            ("hugetlb.1GB.max", "0"),
            ("hugetlb.1GB.rsvd.max", "0"),
        ];
        let best_effort = resource_writes(
            "linux.resources",
            &res(&format!(
                r#"{{"cpu":{{"shares":2,"period":100000}},{zeros}}}"#
            )),
        )
        .unwrap();
        let mut want = vec![("cpu.weight", "1"), ("cpu.max", "max 100000")];
        want.extend(hugetlb_zeros);
        assert_eq!(files(&best_effort), want);
        let guaranteed = resource_writes(
            "linux.resources",
            &res(&format!(
                r#"{{"memory":{{"limit":67108864}},
                    "cpu":{{"shares":256,"quota":25000,"period":100000}},{zeros}}}"#
            )),
        )
        .unwrap();
        let mut want = vec![
            ("memory.max", "67108864"),
            ("cpu.weight", "10"),
            ("cpu.max", "25000 100000"),
        ];
        want.extend(hugetlb_zeros);
        assert_eq!(files(&guaranteed), want);
        // A pod that asks for 2 MiB pages: its limit, in bytes.
        let w = resource_writes(
            "r",
            &res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":4194304}]}"#),
        )
        .unwrap();
        assert_eq!(
            w,
            [
                (
                    "hugetlb.2MB.max".to_owned(),
                    "4194304".to_owned(),
                    "r.hugepageLimits[0].limit".to_owned()
                ),
                (
                    "hugetlb.2MB.rsvd.max".to_owned(),
                    "4194304".to_owned(),
                    "r.hugepageLimits[0].limit".to_owned()
                ),
            ]
        );
        // cpuset fields name the host's CPUs: not written.
        let w = resource_writes("r", &res(r#"{"cpu":{"cpus":"0-3","mems":"0"}}"#)).unwrap();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn bad_page_sizes_name_the_field() {
        for bad in [
            "2M",
            "02MB",
            "2MiB",
            "2mb",
            "MB",
            "",
            "../x",
            "2MB/..",
            "1 GB",
            "99999999GB",
        ] {
            let json = format!(
                r#"{{"hugepageLimits":[{{"pageSize":"2MB","limit":0}},{{"pageSize":{bad:?},"limit":0}}]}}"#
            );
            let e = resource_writes("linux.resources", &res(&json)).unwrap_err();
            assert_eq!(
                e.field, "linux.resources.hugepageLimits[1].pageSize",
                "{bad:?}"
            );
        }
        let e = resource_writes(
            "resources",
            &res(r#"{"hugepageLimits":[{"pageSize":"2MB","limit":-1}]}"#),
        )
        .unwrap_err();
        assert_eq!(e.field, "resources.hugepageLimits[0].limit");
        for good in ["64KB", "2MB", "32MB", "1GB", "16GB"] {
            assert!(is_page_size(good), "{good}");
        }
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

    #[test]
    fn stat_files_parse() {
        assert_eq!(keyed("usage_usec 12\nuser_usec 7\n", "user_usec"), Some(7));
        assert_eq!(
            parse_io_stat("254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n"),
            [IoStats {
                major: 254,
                minor: 0,
                rbytes: 10,
                wbytes: 20,
                rios: 1,
                wios: 2
            }]
        );
    }
}
