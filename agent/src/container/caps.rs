//! OCI capability names to kernel capability numbers, and the five sets as
//! the child applies them.

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilities};

use super::error::SpecError;

/// The kernel's number of `cap` (include/uapi/linux/capability.h).
pub(super) fn number(cap: Capability) -> u32 {
    use Capability::*;
    match cap {
        Chown => 0,
        DacOverride => 1,
        DacReadSearch => 2,
        Fowner => 3,
        Fsetid => 4,
        Kill => 5,
        Setgid => 6,
        Setuid => 7,
        Setpcap => 8,
        LinuxImmutable => 9,
        NetBindService => 10,
        NetBroadcast => 11,
        NetAdmin => 12,
        NetRaw => 13,
        IpcLock => 14,
        IpcOwner => 15,
        SysModule => 16,
        SysRawio => 17,
        SysChroot => 18,
        SysPtrace => 19,
        SysPacct => 20,
        SysAdmin => 21,
        SysBoot => 22,
        SysNice => 23,
        SysResource => 24,
        SysTime => 25,
        SysTtyConfig => 26,
        Mknod => 27,
        Lease => 28,
        AuditWrite => 29,
        AuditControl => 30,
        Setfcap => 31,
        MacOverride => 32,
        MacAdmin => 33,
        Syslog => 34,
        WakeAlarm => 35,
        BlockSuspend => 36,
        AuditRead => 37,
        Perfmon => 38,
        Bpf => 39,
        CheckpointRestore => 40,
    }
}

/// The sets as bit masks (bit n = capability n), plus the lists the child
/// walks (bounding drops, ambient raises) prepared here so it does not
/// compute anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    /// Capabilities to drop from the bounding set: every one up to the
    /// kernel's last that is not in `bounding`.
    pub drop_bounding: Vec<u32>,
    pub ambient: Vec<u32>,
}

fn mask(field: &str, set: &Option<Capabilities>, last: u32) -> Result<u64, SpecError> {
    let mut m = 0u64;
    for cap in set.iter().flatten() {
        let n = number(*cap);
        if n > last {
            // Unknown to this kernel: runc warns and skips it.
            crate::log::log(&format!(
                "container: {field}: {cap} is not known to this kernel (last is {last}), ignored"
            ));
            continue;
        }
        m |= 1 << n;
    }
    Ok(m)
}

/// The highest capability number this kernel knows.
pub(super) fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

impl CapSets {
    /// `caps` checked against the kernel's last capability. A missing set is
    /// empty (as runc: no capabilities field means none).
    pub fn from_spec(field: &str, caps: &LinuxCapabilities, last: u32) -> Result<Self, SpecError> {
        let bounding = mask(&format!("{field}.bounding"), caps.bounding(), last)?;
        let effective = mask(&format!("{field}.effective"), caps.effective(), last)?;
        let permitted = mask(&format!("{field}.permitted"), caps.permitted(), last)?;
        let inheritable = mask(&format!("{field}.inheritable"), caps.inheritable(), last)?;
        let ambient = mask(&format!("{field}.ambient"), caps.ambient(), last)?;
        let bits = |m: u64| (0..=last).filter(move |n| m & (1 << n) != 0);
        // An ambient capability must be permitted and inheritable, or the
        // kernel refuses to raise it; runc warns and skips those.
        let mut ambient_ok = Vec::new();
        for n in bits(ambient) {
            if permitted & inheritable & (1 << n) == 0 {
                crate::log::log(&format!(
                    "container: {field}.ambient: capability {n} is not both permitted and inheritable, not raised"
                ));
            } else {
                ambient_ok.push(n);
            }
        }
        Ok(Self {
            effective,
            permitted,
            inheritable,
            drop_bounding: (0..=last).filter(|n| bounding & (1 << n) == 0).collect(),
            ambient: ambient_ok,
        })
    }

    /// The kernel's capset(2) data (version 3: two 32-bit halves).
    pub(super) fn capset_data(&self) -> [CapData; 2] {
        let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
        [false, true].map(|hi| CapData {
            effective: half(self.effective, hi),
            permitted: half(self.permitted, hi),
            inheritable: half(self.inheritable, hi),
        })
    }
}

/// `struct __user_cap_header_struct`.
#[repr(C)]
pub(super) struct CapHeader {
    pub version: u32,
    pub pid: libc::c_int,
}

/// `struct __user_cap_data_struct`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct CapData {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

pub(super) const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
