//! A container's cgroup statistics: cpu.stat, memory.*, pids.*, io.stat,
//! and the `memory.events` OOM counter.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;

use super::Cgroup;

impl Cgroup {
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

#[cfg(test)]
mod tests {
    use super::*;

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
