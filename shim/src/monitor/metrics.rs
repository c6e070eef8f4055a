//! A pod's counters as Prometheus text (exposition format 0.0.4).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `husk_vm_running` | gauge | pod |
//! | `husk_vm_uptime_seconds` | gauge | pod |
//! | `husk_vm_vcpu_cpu_seconds_total` | counter | pod, vcpu |
//! | `husk_vm_exits_total` (our run loop's) | counter | pod, vcpu, reason |
//! | `husk_vm_pio_exits_total`, `husk_vm_mmio_exits_total` | counter | pod, device, reason (`read`, `write`) |
//! | `husk_vm_interrupts_total` | counter | pod, device, kind (`queue`, `config`, `line`) |
//! | `husk_vm_kvm_vcpu_total` / `husk_vm_kvm_vcpu` | counter / gauge | pod, vcpu, stat |
//! | `husk_vm_kvm_total` / `husk_vm_kvm` | counter / gauge | pod, stat |
//!
//! Accesses no device claims have `device="(unclaimed)"`. The KVM
//! families are the kernel's binary statistics under their own names
//! (`stat="exits"`, `"halt_wakeup"`, `"halt_wait_ns"`, ...), absent where
//! KVM has none.

use std::fmt::Write as _;

use husk_vmm::stats::{BusStats, KvmStats};

use super::PodStats;

/// The Content-Type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A label value, escaped (`\`, `"`, newline).
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// One metric family: HELP and TYPE once, then its samples.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: impl ToString) {
        self.samples.push((labels, value.to_string()));
    }

    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{k}=\"{}\"", escape(v));
            }
            let _ = writeln!(out, "}} {value}");
        }
    }
}

fn seconds(ns: u64) -> String {
    format!("{:.9}", ns as f64 / 1e9)
}

fn bus(f: &mut Family, pod: &str, b: &BusStats) {
    let devices = b
        .devices
        .iter()
        .map(|d| (d.device.as_str(), d.reads, d.writes))
        .chain(std::iter::once((
            "(unclaimed)",
            b.unclaimed.reads,
            b.unclaimed.writes,
        )));
    for (device, reads, writes) in devices {
        for (reason, n) in [("read", reads), ("write", writes)] {
            f.add(
                vec![
                    ("pod", pod.to_owned()),
                    ("device", device.to_owned()),
                    ("reason", reason.to_owned()),
                ],
                n,
            );
        }
    }
}

fn kvm(counters: &mut Family, gauges: &mut Family, base: &[(&'static str, String)], k: &KvmStats) {
    for (family, map) in [(counters, &k.counters), (gauges, &k.gauges)] {
        for (stat, v) in map {
            let mut labels = base.to_vec();
            labels.push(("stat", stat.clone()));
            family.add(labels, v);
        }
    }
}

/// The pod's counters as Prometheus text.
pub fn render(p: &PodStats) -> String {
    let pod = p.pod.as_str();
    let vm = &p.vm;
    let podl = || vec![("pod", pod.to_owned())];
    let mut running = Family::new(
        "husk_vm_running",
        "gauge",
        "1 while the pod's VM runs, 0 once it stopped (its counts are then final).",
    );
    running.add(podl(), u8::from(vm.running));
    let mut uptime = Family::new(
        "husk_vm_uptime_seconds",
        "gauge",
        "Wall time since the VM was started or restored.",
    );
    uptime.add(podl(), seconds(vm.uptime_ns));
    let mut cpu = Family::new(
        "husk_vm_vcpu_cpu_seconds_total",
        "counter",
        "CPU time of the vCPU's thread (guest and host work on it).",
    );
    let mut exits = Family::new(
        "husk_vm_exits_total",
        "counter",
        "vCPU exits that reached the VMM's run loop, by reason.",
    );
    let mut kvm_vcpu_c = Family::new(
        "husk_vm_kvm_vcpu_total",
        "counter",
        "KVM's cumulative per-vCPU statistics (binary stats fd).",
    );
    let mut kvm_vcpu_g = Family::new(
        "husk_vm_kvm_vcpu",
        "gauge",
        "KVM's instant and peak per-vCPU statistics (binary stats fd).",
    );
    for v in &vm.vcpus {
        let vl = || vec![("pod", pod.to_owned()), ("vcpu", v.id.to_string())];
        if let Some(ns) = v.cpu_ns {
            cpu.add(vl(), seconds(ns));
        }
        for (reason, n) in v.exits.by_reason() {
            let mut l = vl();
            l.push(("reason", reason.to_owned()));
            exits.add(l, n);
        }
        if let Some(k) = &v.kvm {
            kvm(&mut kvm_vcpu_c, &mut kvm_vcpu_g, &vl(), k);
        }
    }
    let mut pio = Family::new(
        "husk_vm_pio_exits_total",
        "counter",
        "Port I/O exits, by device and direction.",
    );
    bus(&mut pio, pod, &vm.pio);
    let mut mmio = Family::new(
        "husk_vm_mmio_exits_total",
        "counter",
        "MMIO exits, by device and direction.",
    );
    bus(&mut mmio, pod, &vm.mmio);
    let mut irqs = Family::new(
        "husk_vm_interrupts_total",
        "counter",
        "Interrupts the VMM's devices raised, by device and kind.",
    );
    for i in &vm.interrupts {
        irqs.add(
            vec![
                ("pod", pod.to_owned()),
                ("device", i.device.clone()),
                ("kind", i.kind.clone()),
            ],
            i.count,
        );
    }
    let mut kvm_c = Family::new(
        "husk_vm_kvm_total",
        "counter",
        "KVM's cumulative per-VM statistics (binary stats fd).",
    );
    let mut kvm_g = Family::new(
        "husk_vm_kvm",
        "gauge",
        "KVM's instant and peak per-VM statistics (binary stats fd).",
    );
    if let Some(k) = &vm.kvm {
        kvm(&mut kvm_c, &mut kvm_g, &podl(), k);
    }
    let mut out = String::new();
    for f in [
        running, uptime, cpu, exits, pio, mmio, irqs, kvm_vcpu_c, kvm_vcpu_g, kvm_c, kvm_g,
    ] {
        f.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm::stats::{DeviceAccesses, InterruptStats, VcpuExits, VcpuStats};
    use husk_vmm::VmStats;

    fn sample() -> PodStats {
        PodStats {
            pod: "p\"1".into(),
            namespace: "k8s.io".into(),
            shim_pid: 7,
            vm: VmStats {
                vm: "p1".into(),
                running: true,
                uptime_ns: 1_500_000_000,
                vcpus: vec![VcpuStats {
                    id: 0,
                    cpu_ns: Some(250_000_000),
                    exits: VcpuExits {
                        io_out: 3,
                        mmio_write: 2,
                        ..Default::default()
                    },
                    kvm: Some(KvmStats {
                        counters: [("exits".to_string(), 40)].into(),
                        gauges: [("blocking".to_string(), 1)].into(),
                    }),
                }],
                pio: BusStats {
                    devices: vec![DeviceAccesses {
                        device: "serial".into(),
                        base: 0x3f8,
                        len: 8,
                        reads: 1,
                        writes: 3,
                    }],
                    unclaimed: Default::default(),
                },
                mmio: Default::default(),
                interrupts: vec![InterruptStats {
                    device: "vsock".into(),
                    kind: "queue".into(),
                    count: 5,
                }],
                kvm: None,
            },
        }
    }

    #[test]
    fn renders_families_once_with_escaped_labels() {
        let text = render(&sample());
        for line in [
            "husk_vm_running{pod=\"p\\\"1\"} 1",
            "husk_vm_uptime_seconds{pod=\"p\\\"1\"} 1.500000000",
            "husk_vm_vcpu_cpu_seconds_total{pod=\"p\\\"1\",vcpu=\"0\"} 0.250000000",
            "husk_vm_exits_total{pod=\"p\\\"1\",vcpu=\"0\",reason=\"io_out\"} 3",
            "husk_vm_exits_total{pod=\"p\\\"1\",vcpu=\"0\",reason=\"mmio_write\"} 2",
            "husk_vm_pio_exits_total{pod=\"p\\\"1\",device=\"serial\",reason=\"write\"} 3",
            "husk_vm_pio_exits_total{pod=\"p\\\"1\",device=\"(unclaimed)\",reason=\"read\"} 0",
            "husk_vm_mmio_exits_total{pod=\"p\\\"1\",device=\"(unclaimed)\",reason=\"write\"} 0",
            "husk_vm_interrupts_total{pod=\"p\\\"1\",device=\"vsock\",kind=\"queue\"} 5",
            "husk_vm_kvm_vcpu_total{pod=\"p\\\"1\",vcpu=\"0\",stat=\"exits\"} 40",
            "husk_vm_kvm_vcpu{pod=\"p\\\"1\",vcpu=\"0\",stat=\"blocking\"} 1",
            "# TYPE husk_vm_exits_total counter",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        // No VM-wide KVM stats: no such family at all.
        assert!(!text.contains("husk_vm_kvm_total"), "{text}");
        // Every family's TYPE once, before its samples.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut dedup = types.clone();
        dedup.dedup();
        assert_eq!(types, dedup);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    }
}
