//! `linux.resources` (or an UpdateResources document) as cgroup v2
//! interface-file writes, each naming the spec field it comes from.

use oci_spec::runtime::LinuxResources;

use super::super::error::SpecError;

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
    let warn = |what: &str| crate::log::log_once(&format!("containers: {field}.{what}: ignored"));
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
pub(super) fn page_size_kb(s: &str) -> Option<u64> {
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

#[cfg(test)]
pub(super) mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// `linux.resources` from JSON (also the directory tests').
    pub(in crate::container::cgroup) fn res(json: &str) -> LinuxResources {
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
}
