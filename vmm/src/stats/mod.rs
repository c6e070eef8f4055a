//! Per-VM counters, always on: what the guest made the VMM do, and what
//! the kernel's KVM counted for it.
//!
//! - vCPU exits our run loop took, by reason ([`VcpuExits`]: port and MMIO
//!   reads and writes, signal kicks, system events), and per bus device
//!   (the PIO and MMIO buses count each range's accesses, and those no
//!   device claims);
//! - interrupts raised per device (each virtio-mmio transport's interrupt
//!   counts queue and configuration interrupts; the serial port its line);
//! - the kernel's per-vCPU and per-VM statistics (`KVM_GET_STATS_FD`,
//!   [`kvm_fd`]): all exits including those KVM handles itself (HLT,
//!   in-kernel APIC and timer), halt wakeups, injected interrupts,
//!   emulated instructions, page faults, ...;
//! - each vCPU thread's CPU time, and the wall time since the VM was
//!   started or restored.
//!
//! Cost: every count is one relaxed atomic add (`husk_devices::counters`)
//! on a path that already costs a VM exit and a device lock or an eventfd
//! write; nothing else happens on a vCPU's exit path (no lock, no
//! syscall, no timer). The KVM stats fds are read and the thread clocks
//! asked only when someone asks for the statistics.
//!
//! [`VmmHandle::stats`](crate::VmmHandle::stats) (or a [`StatsReader`])
//! returns a [`VmStats`]: read on the caller's thread, never the VMM's, so
//! a request wakes no VMM thread and needs nothing of their seccomp
//! filters. Once the VM has stopped it returns the final counts, taken by
//! the VMM thread right after the vCPUs stopped (its filter allows the
//! `pread64` of the KVM stats fds), which then closes those fds.

pub mod cpu;
pub mod kvm_fd;
pub(crate) mod live;

use serde::{Deserialize, Serialize};

pub use kvm_fd::{KvmStats, KvmStatsFd};
pub use live::{StatsReader, VcpuCounters, VmCounters};

/// A VM's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    /// The VM's name.
    pub vm: String,
    /// False once the VM has stopped: these are then its final counts.
    pub running: bool,
    /// Wall time since the VM was started or restored (until it stopped).
    pub uptime_ns: u64,
    pub vcpus: Vec<VcpuStats>,
    /// Port I/O exits per device.
    pub pio: BusStats,
    /// MMIO exits per device.
    pub mmio: BusStats,
    /// Interrupts raised, per device and kind.
    pub interrupts: Vec<InterruptStats>,
    /// The kernel's per-VM statistics; `None` where KVM has no binary
    /// stats.
    pub kvm: Option<KvmStats>,
}

/// One vCPU's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuStats {
    pub id: u8,
    /// CPU time of the vCPU's thread (guest and host work on it).
    pub cpu_ns: Option<u64>,
    /// Exits our run loop took, by reason.
    pub exits: VcpuExits,
    /// The kernel's statistics of this vCPU; `None` where KVM has no
    /// binary stats.
    pub kvm: Option<KvmStats>,
}

/// Exits that reached our run loop (`KVM_RUN` returned), by reason. Those
/// KVM handles in the kernel (HLT, APIC, timer, page faults) are in the
/// vCPU's KVM statistics only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuExits {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    /// `KVM_EXIT_INTR`: a signal was pending on entry.
    pub intr: u64,
    /// `KVM_RUN` returned EINTR/EAGAIN: a kick (pause, stop).
    pub eintr: u64,
    /// `KVM_EXIT_SYSTEM_EVENT` (reset, shutdown, crash).
    pub system_event: u64,
    /// `KVM_EXIT_SHUTDOWN` (triple fault).
    pub shutdown: u64,
    /// Anything else (failed entry, internal error, unexpected exits).
    pub other: u64,
}

impl VcpuExits {
    /// Each reason and its count, in a fixed order (the reason names are
    /// the JSON fields' and the `reason` label's).
    pub fn by_reason(&self) -> [(&'static str, u64); 9] {
        [
            ("io_in", self.io_in),
            ("io_out", self.io_out),
            ("mmio_read", self.mmio_read),
            ("mmio_write", self.mmio_write),
            ("intr", self.intr),
            ("eintr", self.eintr),
            ("system_event", self.system_event),
            ("shutdown", self.shutdown),
            ("other", self.other),
        ]
    }

    /// All of them.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}

/// One bus's accesses per device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusStats {
    pub devices: Vec<DeviceAccesses>,
    /// Accesses no device claims (they read as all ones).
    pub unclaimed: Accesses,
}

/// Reads and writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accesses {
    pub reads: u64,
    pub writes: u64,
}

/// One device's range on a bus and the guest's accesses to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAccesses {
    /// The device's name; `name@0xBASE` where several share a name.
    pub device: String,
    pub base: u64,
    pub len: u64,
    pub reads: u64,
    pub writes: u64,
}

/// Interrupts one device raised of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterruptStats {
    /// As in [`DeviceAccesses::device`].
    pub device: String,
    /// `queue` or `config` (virtio), `line` (the serial port's).
    pub kind: String,
    pub count: u64,
}

impl VmStats {
    /// Total CPU time of the vCPU threads, when every one is known.
    pub fn vcpu_cpu_ns(&self) -> Option<u64> {
        self.vcpus.iter().map(|v| v.cpu_ns).sum()
    }

    /// A KVM vCPU statistic summed over the vCPUs; `None` without KVM
    /// stats (or a statistic this kernel does not have).
    pub fn kvm_vcpu_sum(&self, name: &str) -> Option<u64> {
        if self.vcpus.is_empty() {
            return None;
        }
        self.vcpus
            .iter()
            .map(|v| v.kvm.as_ref().and_then(|k| k.get(name)))
            .sum()
    }

    /// Exits our run loop took, all vCPUs.
    pub fn loop_exits(&self) -> u64 {
        self.vcpus.iter().map(|v| v.exits.total()).sum()
    }

    /// Interrupts raised by all devices.
    pub fn interrupts_raised(&self) -> u64 {
        self.interrupts.iter().map(|i| i.count).sum()
    }

    /// A device's interrupts of one kind.
    pub fn interrupts_of(&self, device: &str, kind: &str) -> Option<u64> {
        self.interrupts
            .iter()
            .find(|i| i.device == device && i.kind == kind)
            .map(|i| i.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kvm(pairs: &[(&str, u64)]) -> Option<KvmStats> {
        Some(KvmStats {
            counters: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            gauges: Default::default(),
        })
    }

    #[test]
    fn sums_over_vcpus() {
        let mut s = VmStats {
            vcpus: vec![
                VcpuStats {
                    id: 0,
                    cpu_ns: Some(5),
                    exits: VcpuExits {
                        io_out: 2,
                        mmio_read: 1,
                        ..Default::default()
                    },
                    kvm: kvm(&[("exits", 10), ("halt_wakeup", 1)]),
                },
                VcpuStats {
                    id: 1,
                    cpu_ns: Some(7),
                    exits: VcpuExits {
                        eintr: 4,
                        ..Default::default()
                    },
                    kvm: kvm(&[("exits", 20)]),
                },
            ],
            ..Default::default()
        };
        assert_eq!(s.vcpu_cpu_ns(), Some(12));
        assert_eq!(s.kvm_vcpu_sum("exits"), Some(30));
        // One vCPU's kernel lacks it: no partial sum.
        assert_eq!(s.kvm_vcpu_sum("halt_wakeup"), None);
        assert_eq!(s.loop_exits(), 7);
        s.vcpus[1].cpu_ns = None;
        assert_eq!(s.vcpu_cpu_ns(), None);
        s.vcpus.clear();
        assert_eq!(s.kvm_vcpu_sum("exits"), None);
    }

    #[test]
    fn round_trips_through_json() {
        let s = VmStats {
            vm: "pod".into(),
            running: true,
            uptime_ns: 3,
            interrupts: vec![InterruptStats {
                device: "vsock".into(),
                kind: "queue".into(),
                count: 9,
            }],
            kvm: kvm(&[("pages_4k", 1)]),
            ..Default::default()
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VmStats>(&json).unwrap(), s);
        assert_eq!(s.interrupts_of("vsock", "queue"), Some(9));
        assert_eq!(s.interrupts_of("vsock", "config"), None);
        assert_eq!(s.interrupts_raised(), 9);
    }
}
