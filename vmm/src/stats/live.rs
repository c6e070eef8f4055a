//! The counters of a running VM and the snapshot of them a reader gets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use husk_devices::bus::Bus;
use husk_devices::counters::{AccessCounts, Counter, InterruptCounts, RangeCounts};

use super::kvm_fd::{KvmStats, KvmStatsFd};
use super::{
    cpu, Accesses, BusStats, DeviceAccesses, InterruptStats, VcpuExits, VcpuStats, VmStats,
};

/// One vCPU's exit counters, written by its thread only, and what the
/// thread tells of itself (its tid; its CPU time when it ends). Aligned to
/// a cache line of its own: vCPUs never write each other's lines.
#[repr(align(64))]
#[derive(Debug)]
pub struct VcpuCounters {
    pub io_in: Counter,
    pub io_out: Counter,
    pub mmio_read: Counter,
    pub mmio_write: Counter,
    pub intr: Counter,
    pub eintr: Counter,
    pub system_event: Counter,
    pub shutdown: Counter,
    pub other: Counter,
    tid: AtomicI32,
    /// The thread's CPU time when it ended; `u64::MAX` until then.
    cpu_at_end: AtomicU64,
}

impl Default for VcpuCounters {
    fn default() -> Self {
        Self {
            io_in: Counter::default(),
            io_out: Counter::default(),
            mmio_read: Counter::default(),
            mmio_write: Counter::default(),
            intr: Counter::default(),
            eintr: Counter::default(),
            system_event: Counter::default(),
            shutdown: Counter::default(),
            other: Counter::default(),
            tid: AtomicI32::new(0),
            cpu_at_end: AtomicU64::new(u64::MAX),
        }
    }
}

impl VcpuCounters {
    /// Called first thing on the vCPU's thread.
    pub fn thread_started(&self) {
        self.tid.store(cpu::own_tid(), Ordering::Release);
    }

    /// Called last thing on the vCPU's thread: its CPU time, kept.
    pub fn thread_ending(&self) {
        if let Some(ns) = cpu::own_cpu_ns() {
            self.cpu_at_end.store(ns, Ordering::Release);
        }
    }

    fn cpu_ns(&self) -> Option<u64> {
        match self.cpu_at_end.load(Ordering::Acquire) {
            u64::MAX => cpu::thread_cpu_ns(self.tid.load(Ordering::Acquire)),
            ns => Some(ns),
        }
    }

    fn exits(&self) -> VcpuExits {
        VcpuExits {
            io_in: self.io_in.get(),
            io_out: self.io_out.get(),
            mmio_read: self.mmio_read.get(),
            mmio_write: self.mmio_write.get(),
            intr: self.intr.get(),
            eintr: self.eintr.get(),
            system_event: self.system_event.get(),
            shutdown: self.shutdown.get(),
            other: self.other.get(),
        }
    }
}

/// A bus's ranges (labels made unique) and its unclaimed counts.
struct BusCounters {
    ranges: Vec<(String, RangeCounts)>,
    unclaimed: Arc<AccessCounts>,
}

impl BusCounters {
    fn of(bus: &Bus) -> Self {
        let ranges = bus.range_counts();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for r in &ranges {
            *seen.entry(r.name.as_str()).or_default() += 1;
        }
        let labelled = ranges
            .iter()
            .map(|r| {
                let label = if seen.get(r.name.as_str()).copied().unwrap_or(0) > 1 {
                    format!("{}@{:#x}", r.name, r.base)
                } else {
                    r.name.clone()
                };
                (label, r.clone())
            })
            .collect();
        Self {
            ranges: labelled,
            unclaimed: bus.unclaimed_counts(),
        }
    }

    fn label_at(&self, base: u64) -> Option<&str> {
        self.ranges
            .iter()
            .find(|(_, r)| r.base == base)
            .map(|(l, _)| l.as_str())
    }

    fn stats(&self) -> BusStats {
        BusStats {
            devices: self
                .ranges
                .iter()
                .map(|(label, r)| DeviceAccesses {
                    device: label.clone(),
                    base: r.base,
                    len: r.len,
                    reads: r.counts.reads.get(),
                    writes: r.counts.writes.get(),
                })
                .collect(),
            unclaimed: Accesses {
                reads: self.unclaimed.reads.get(),
                writes: self.unclaimed.writes.get(),
            },
        }
    }
}

/// The KVM stats fds; emptied when the VM ends (each holds the kernel's
/// VM alive).
#[derive(Default)]
struct KvmFds {
    vm: Option<KvmStatsFd>,
    vcpus: Vec<Option<KvmStatsFd>>,
}

/// Where the counters are, as the builder gives them.
pub struct Sources<'a> {
    pub name: String,
    pub started: Instant,
    pub pio: &'a Bus,
    pub mmio: &'a Bus,
    /// Each virtio device's MMIO base and its interrupt's counts.
    pub virtio_interrupts: Vec<(u64, Arc<InterruptCounts>)>,
    /// The serial port's interrupt line.
    pub serial_irqs: Arc<Counter>,
    /// vCPU ids with their counters and stats fds.
    pub vcpus: Vec<(u8, Arc<VcpuCounters>, Option<KvmStatsFd>)>,
    pub vm_fd: Option<KvmStatsFd>,
}

/// A VM's counters: shared by its vCPU threads (which write theirs), the
/// VMM thread (which ends them) and readers. Holds no device, no guest
/// memory and (once the VM ended) no KVM fd.
pub struct VmCounters {
    name: String,
    started: Instant,
    vcpus: Vec<(u8, Arc<VcpuCounters>)>,
    pio: BusCounters,
    mmio: BusCounters,
    interrupts: Vec<(String, &'static str, InterruptSource)>,
    kvm: Mutex<KvmFds>,
    /// The counts when the VM ended.
    last: Mutex<Option<VmStats>>,
}

enum InterruptSource {
    Virtio(Arc<InterruptCounts>, bool),
    Line(Arc<Counter>),
}

impl InterruptSource {
    fn get(&self) -> u64 {
        match self {
            InterruptSource::Virtio(c, false) => c.queue.get(),
            InterruptSource::Virtio(c, true) => c.config.get(),
            InterruptSource::Line(c) => c.get(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VmCounters {
    pub fn new(s: Sources<'_>) -> Self {
        let pio = BusCounters::of(s.pio);
        let mmio = BusCounters::of(s.mmio);
        let mut interrupts = Vec::new();
        let serial = pio.label_at(husk_devices::legacy::serial::COM1_BASE);
        interrupts.push((
            serial.unwrap_or("serial").to_string(),
            "line",
            InterruptSource::Line(s.serial_irqs),
        ));
        for (base, counts) in s.virtio_interrupts {
            let label = mmio
                .label_at(base)
                .map_or_else(|| format!("virtio@{base:#x}"), str::to_string);
            interrupts.push((
                label.clone(),
                "queue",
                InterruptSource::Virtio(counts.clone(), false),
            ));
            interrupts.push((label, "config", InterruptSource::Virtio(counts, true)));
        }
        let mut vcpus = Vec::with_capacity(s.vcpus.len());
        let mut fds = KvmFds {
            vm: s.vm_fd,
            vcpus: Vec::with_capacity(s.vcpus.len()),
        };
        for (id, c, fd) in s.vcpus {
            vcpus.push((id, c));
            fds.vcpus.push(fd);
        }
        Self {
            name: s.name,
            started: s.started,
            vcpus,
            pio,
            mmio,
            interrupts,
            kvm: Mutex::new(fds),
            last: Mutex::new(None),
        }
    }

    /// Each vCPU's counters, in vCPU order.
    pub fn vcpu_counters(&self) -> Vec<Arc<VcpuCounters>> {
        self.vcpus.iter().map(|(_, c)| c.clone()).collect()
    }

    fn read_kvm(fd: Option<&KvmStatsFd>, what: &str) -> Option<KvmStats> {
        match fd?.read() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!(what, error = %e, "reading KVM stats");
                None
            }
        }
    }

    fn collect(&self, fds: &KvmFds, running: bool) -> VmStats {
        let vcpus = self
            .vcpus
            .iter()
            .enumerate()
            .map(|(i, (id, c))| VcpuStats {
                id: *id,
                cpu_ns: c.cpu_ns(),
                exits: c.exits(),
                kvm: Self::read_kvm(fds.vcpus.get(i).and_then(Option::as_ref), "vCPU"),
            })
            .collect();
        VmStats {
            vm: self.name.clone(),
            running,
            uptime_ns: u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            vcpus,
            pio: self.pio.stats(),
            mmio: self.mmio.stats(),
            interrupts: self
                .interrupts
                .iter()
                .map(|(device, kind, src)| InterruptStats {
                    device: device.clone(),
                    kind: (*kind).to_string(),
                    count: src.get(),
                })
                .collect(),
            kvm: Self::read_kvm(fds.vm.as_ref(), "VM"),
        }
    }

    /// The counts now; the final ones once the VM has ended.
    pub fn stats(&self) -> VmStats {
        if let Some(s) = lock(&self.last).as_ref() {
            return s.clone();
        }
        let fds = lock(&self.kvm);
        // `finish` may have run while we waited for the fds.
        if let Some(s) = lock(&self.last).as_ref() {
            return s.clone();
        }
        self.collect(&fds, true)
    }

    /// The VM has ended (its vCPU threads have stopped): keeps the final
    /// counts and closes the KVM stats fds. Runs on the VMM thread.
    pub fn finish(&self) -> VmStats {
        let mut fds = lock(&self.kvm);
        let mut last = lock(&self.last);
        if let Some(s) = last.as_ref() {
            return s.clone();
        }
        let s = self.collect(&fds, false);
        *last = Some(s.clone());
        *fds = KvmFds::default();
        s
    }
}

/// A handle that reads a VM's counters from any thread, during its life
/// and after (then the final counts). Cheap to clone; keeps no device,
/// guest memory or (after the VM's end) kernel object alive.
#[derive(Clone)]
pub struct StatsReader(pub(crate) Arc<VmCounters>);

impl StatsReader {
    pub fn stats(&self) -> VmStats {
        self.0.stats()
    }
}

impl std::fmt::Debug for StatsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("StatsReader").field(&self.0.name).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_devices::bus::BusDevice;

    struct Nop;
    impl BusDevice for Nop {
        fn read(&mut self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&mut self, _: u64, _: &[u8]) {}
    }

    fn nop() -> Arc<Mutex<Nop>> {
        Arc::new(Mutex::new(Nop))
    }

    #[test]
    fn collects_per_device_and_per_vcpu_and_freezes_at_the_end() {
        let mut pio = Bus::new();
        pio.insert(0x3f8, 8, "serial", nop()).unwrap();
        let mut mmio = Bus::new();
        mmio.insert(0xd000_0000, 0x1000, "vsock", nop()).unwrap();
        mmio.insert(0xd000_1000, 0x1000, "virtio-fs", nop())
            .unwrap();
        mmio.insert(0xd000_2000, 0x1000, "virtio-fs", nop())
            .unwrap();
        let vsock_irq = Arc::new(InterruptCounts::default());
        let fs2_irq = Arc::new(InterruptCounts::default());
        let serial_irqs = Arc::new(Counter::default());
        let v0 = Arc::new(VcpuCounters::default());
        let counters = VmCounters::new(Sources {
            name: "vm".into(),
            started: Instant::now(),
            pio: &pio,
            mmio: &mmio,
            virtio_interrupts: vec![
                (0xd000_0000, vsock_irq.clone()),
                (0xd000_2000, fs2_irq.clone()),
            ],
            serial_irqs: serial_irqs.clone(),
            vcpus: vec![(0, v0.clone(), None)],
            vm_fd: None,
        });

        // What a vCPU's exits and the devices do.
        for _ in 0..5 {
            v0.io_out.inc();
            pio.write(0x3f8, b"x");
        }
        v0.mmio_read.inc();
        mmio.read(0xd000_2000, &mut [0u8; 4]);
        v0.mmio_write.inc();
        mmio.write(0xe000_0000, &[0; 4]);
        v0.eintr.inc();
        vsock_irq.queue.inc();
        vsock_irq.queue.inc();
        fs2_irq.config.inc();
        serial_irqs.inc();
        v0.thread_started();

        let s = counters.stats();
        assert!(s.running);
        assert_eq!(s.vcpus.len(), 1);
        let e = &s.vcpus[0].exits;
        assert_eq!((e.io_out, e.mmio_read, e.mmio_write, e.eintr), (5, 1, 1, 1));
        assert_eq!(s.loop_exits(), 8);
        // This thread's clock stands in for the vCPU's.
        assert!(s.vcpus[0].cpu_ns.is_some());
        assert_eq!(s.vcpus[0].kvm, None);
        assert_eq!(s.pio.devices[0].device, "serial");
        assert_eq!(s.pio.devices[0].writes, 5);
        let labels: Vec<&str> = s.mmio.devices.iter().map(|d| d.device.as_str()).collect();
        assert_eq!(
            labels,
            vec!["vsock", "virtio-fs@0xd0001000", "virtio-fs@0xd0002000"]
        );
        assert_eq!(s.mmio.devices[2].reads, 1);
        assert_eq!(
            s.mmio.unclaimed,
            Accesses {
                reads: 0,
                writes: 1
            }
        );
        assert_eq!(s.interrupts_of("vsock", "queue"), Some(2));
        assert_eq!(s.interrupts_of("virtio-fs@0xd0002000", "config"), Some(1));
        assert_eq!(s.interrupts_of("serial", "line"), Some(1));
        assert_eq!(s.interrupts_raised(), 4);

        // The end: counts freeze, later events are not seen.
        v0.thread_ending();
        let last = counters.finish();
        assert!(!last.running);
        v0.io_out.inc();
        vsock_irq.queue.inc();
        let after = StatsReader(Arc::new(counters)).stats();
        assert_eq!(after, last);
        assert_eq!(after.vcpus[0].exits.io_out, 5);
    }
}
