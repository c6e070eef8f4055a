//! `husk pods` and `husk vm stats`: the running pod VMs of this node and
//! their counters, asked of each pod's monitor socket
//! (`<run_dir>/*/*/monitor.sock`, see [`crate::monitor`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::monitor::{http, list_sockets, PodStats};
use crate::shim_v2::config::Config;

use super::exit_code;

/// How long one pod's monitor may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Options of `husk pods`.
#[derive(Debug, clap::Args)]
pub struct PodsArgs {
    /// The shim's per-pod directory (default: `run_dir` of the husk config,
    /// /etc/husk/config.toml or $HUSK_CONFIG).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Print every pod's counters as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `husk vm stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// The pod: its id (a CRI sandbox id, `io.husk.pod`, or the task id),
    /// or a prefix of it that names one pod.
    pub pod: String,
    /// As for `husk pods`.
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

fn run_dir(given: &Option<PathBuf>) -> Result<PathBuf, String> {
    match given {
        Some(d) => Ok(d.clone()),
        None => Config::load()
            .map(|c| c.run_dir)
            .map_err(|e| super::error_chain(&e)),
    }
}

/// Asks every monitor under `dir`; the failures come apart (a pod that
/// stops while we ask is one).
fn ask_all(dir: &Path) -> Result<(Vec<PodStats>, Vec<String>), String> {
    let sockets = match list_sockets(dir) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("listing {}: {e}", dir.display())),
    };
    let mut pods = Vec::new();
    let mut failed = Vec::new();
    for sock in sockets {
        match http::get(&sock, "/stats", ASK_TIMEOUT) {
            Ok(body) => match serde_json::from_slice::<PodStats>(&body) {
                Ok(p) => pods.push(p),
                Err(e) => failed.push(format!("{}: not pod stats: {e}", sock.display())),
            },
            Err(e) => failed.push(e.to_string()),
        }
    }
    pods.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    Ok((pods, failed))
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |n| n.to_string())
}

/// The table `husk pods` prints. Exits, MMIO exits and injected
/// interrupts are KVM's counts (all exits, those KVM handles itself
/// included); without KVM binary stats, the VMM's own (exits and MMIO
/// exits its run loop took, interrupts its devices raised).
pub fn table(pods: &[PodStats]) -> String {
    let mut rows = vec![[
        "POD".to_string(),
        "NAMESPACE".into(),
        "VCPU_CPU_S".into(),
        "EXITS".into(),
        "MMIO_EXITS".into(),
        "IRQS".into(),
        "HALT_WAKEUPS".into(),
        "INSN_EMULATED".into(),
        "UPTIME_S".into(),
    ]];
    for p in pods {
        let vm = &p.vm;
        let our_mmio: u64 = vm
            .vcpus
            .iter()
            .map(|v| v.exits.mmio_read + v.exits.mmio_write)
            .sum();
        rows.push([
            p.pod.clone(),
            p.namespace.clone(),
            vm.vcpu_cpu_ns()
                .map_or_else(|| "-".into(), |n| format!("{:.2}", n as f64 / 1e9)),
            vm.kvm_vcpu_sum("exits")
                .unwrap_or_else(|| vm.loop_exits())
                .to_string(),
            vm.kvm_vcpu_sum("mmio_exits")
                .unwrap_or(our_mmio)
                .to_string(),
            vm.kvm_vcpu_sum("irq_injections")
                .unwrap_or_else(|| vm.interrupts_raised())
                .to_string(),
            opt(vm.kvm_vcpu_sum("halt_wakeup")),
            opt(vm.kvm_vcpu_sum("insn_emulation")),
            format!("{:.1}", vm.uptime_ns as f64 / 1e9),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (cell, w))| {
                if i < 2 {
                    format!("{cell:<w$}")
                } else {
                    format!("{cell:>w$}")
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Every pod's counters under the run dir `given` (or the config's), and
/// the monitors that did not answer; an error is said here (exit code).
fn listed(given: &Option<PathBuf>) -> Result<(Vec<PodStats>, Vec<String>), i32> {
    run_dir(given).and_then(|d| ask_all(&d)).map_err(|e| {
        eprintln!("husk: {e}");
        exit_code::ERROR
    })
}

/// Prints `v` as pretty JSON; the exit code.
fn print_json(v: &impl serde::Serialize) -> i32 {
    match serde_json::to_string_pretty(v) {
        Ok(j) => {
            println!("{j}");
            exit_code::OK
        }
        Err(e) => {
            eprintln!("husk: {e}");
            exit_code::ERROR
        }
    }
}

/// `husk pods`.
pub fn pods(args: &PodsArgs) -> i32 {
    let (pods, failed) = match listed(&args.run_dir) {
        Ok(x) => x,
        Err(code) => return code,
    };
    for f in &failed {
        eprintln!("husk: {f}");
    }
    if args.json {
        return print_json(&pods);
    }
    print!("{}", table(&pods));
    exit_code::OK
}

/// The one pod `wanted` names: its id, or a prefix of one id only.
pub fn find<'a>(pods: &'a [PodStats], wanted: &str) -> Result<&'a PodStats, String> {
    if let Some(p) = pods.iter().find(|p| p.pod == wanted) {
        return Ok(p);
    }
    let matching: Vec<&PodStats> = pods.iter().filter(|p| p.pod.starts_with(wanted)).collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(format!("no running pod {wanted:?} (see `husk pods`)")),
        many => Err(format!(
            "{wanted:?} names {} pods: {}",
            many.len(),
            many.iter()
                .map(|p| p.pod.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `husk vm stats`.
pub fn stats(args: &StatsArgs) -> i32 {
    let (pods, failed) = match listed(&args.run_dir) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let found = find(&pods, &args.pod);
    let pod = match found {
        Ok(p) => p,
        Err(e) => {
            for f in &failed {
                eprintln!("husk: {f}");
            }
            eprintln!("husk: {e}");
            return exit_code::ERROR;
        }
    };
    print_json(pod)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_vmm::stats::{KvmStats, VcpuExits, VcpuStats};
    use husk_vmm::VmStats;

    fn pod(id: &str, kvm: bool) -> PodStats {
        PodStats {
            pod: id.into(),
            namespace: "k8s.io".into(),
            shim_pid: 1,
            vm: VmStats {
                running: true,
                uptime_ns: 12_345_000_000,
                vcpus: vec![VcpuStats {
                    id: 0,
                    cpu_ns: Some(1_500_000_000),
                    exits: VcpuExits {
                        mmio_write: 4,
                        io_out: 6,
                        ..Default::default()
                    },
                    kvm: kvm.then(|| KvmStats {
                        counters: [
                            ("exits".to_string(), 1000),
                            ("mmio_exits".to_string(), 40),
                            ("irq_injections".to_string(), 77),
                            ("halt_wakeup".to_string(), 9),
                            ("insn_emulation".to_string(), 5),
                        ]
                        .into(),
                        gauges: Default::default(),
                    }),
                }],
                ..Default::default()
            },
        }
    }

    #[test]
    fn table_prefers_kvm_counts_and_falls_back() {
        let t = table(&[pod("abc", true), pod("abd", false)]);
        let lines: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(lines[0][0], "POD");
        assert_eq!(
            lines[1],
            vec!["abc", "k8s.io", "1.50", "1000", "40", "77", "9", "5", "12.3"]
        );
        assert_eq!(
            lines[2],
            vec!["abd", "k8s.io", "1.50", "10", "4", "0", "-", "-", "12.3"]
        );
    }

    #[test]
    fn finds_by_id_or_unique_prefix() {
        let pods = [pod("abc", true), pod("abd", true), pod("ab", true)];
        assert_eq!(find(&pods, "ab").unwrap().pod, "ab");
        assert_eq!(find(&pods, "abc").unwrap().pod, "abc");
        assert!(find(&pods, "a").unwrap_err().contains("names 3 pods"));
        assert!(find(&pods, "x").unwrap_err().contains("no running pod"));
    }
}
