//! Pod density through CRI (issue 14): start N pods (one busybox container
//! each) with bounded concurrency on a private containerd with CRI
//! ([`husk_tests::cri::CriFixture`]) and print one JSON document.
//!
//! ```sh
//! cargo run -p husk-tests --example cri_density -- --runtime husk --pods 10 --concurrency 2
//! ```
//!
//! Options: `--runtime husk|runc`, `--pods N`, `--concurrency C`, `--shim
//! PATH` (husk; default `<target>/debug/containerd-shim-husk-v2`),
//! `--template-dir DIR` (default `<target>/husk-shim-templates`),
//! `--mem-mib M` (the husk config's `memory_mib`), `--kernel PATH` (the
//! husk config's `kernel`; default the built one), `--settle S` (seconds
//! between the last start and the memory census), `--baseline S` (seconds
//! of machine CPU sampled before the start phase: the load that is not
//! ours), `--debug` (containerd and the shim log at debug level), `--log
//! PATH` (a copy of containerd's log, with the shims' lines), `--out PATH`
//! (the JSON; default stdout), `--kubelet` (what kubelet v1.32 sends for a
//! BestEffort pod on a cgroup v2 node with the cgroupfs driver: the pod's
//! parent `<root>/kubepods/besteffort/pod<uid>`, the container's
//! `cpu_shares` 2, `cpu_period` 100000, `oom_score_adj` 1000, zero huge
//! page limits, `unified` NoSwap and `memory.oom.group`, kubelet's masked
//! and read-only paths; as tests/tests/cri_qos.rs). Progress goes to
//! stderr.
//!
//! Per pod: RunPodSandbox → CreateContainer → StartContainer returned (the
//! container is running), each step's end relative to the start of the
//! phase. One warm-up pod runs first and is removed (husk: it makes the
//! template if the store has none); it is reported apart. After the phase:
//! whole-machine CPU (/proc/stat) over the phase, every pod's processes'
//! CPU (/proc/PID/stat, with reaped children) and its host cgroups' CPU
//! and memory (cgroup v1 cpuacct / memory under the fixture's cgroup
//! parent), and memory per pod: PSS/RSS of the pod's shim and every
//! process under it (husk: the shim alone holds the VMM and the guest's
//! memory; its guest RAM mapping, the template's `memory.bin`, on its
//! own). Then all pods are stopped and removed (timed) and the leak census
//! is reported. A failed pod is reported (step and error), not hidden; the
//! fixture's Drop removes everything even when this program fails.

use husk_tests::containerd::{all_pids, cmdline, Options};
use husk_tests::cri::{container_config, pod_config, v1 as api, Cri, CriFixture};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One CRI call's bound: a pod start under load takes tens of seconds here.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

struct Args {
    runtime: String,
    pods: usize,
    concurrency: usize,
    shim: PathBuf,
    template_dir: PathBuf,
    mem_mib: Option<u64>,
    kernel: Option<PathBuf>,
    settle: f64,
    baseline: f64,
    debug: bool,
    kubelet: bool,
    log: Option<PathBuf>,
    out: Option<PathBuf>,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "cri_density: {msg}\nusage: cri_density --runtime husk|runc [--pods N] [--concurrency C] \
         [--shim PATH] [--template-dir DIR] [--mem-mib M] [--kernel PATH] [--settle S] [--baseline S] [--debug] \
         [--kubelet] [--log PATH] [--out PATH]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let target = husk_tests::oci::target_dir();
    let mut a = Args {
        runtime: String::new(),
        pods: 10,
        concurrency: 2,
        shim: target.join("debug/containerd-shim-husk-v2"),
        template_dir: target.join("husk-shim-templates"),
        mem_mib: None,
        kernel: None,
        settle: 5.0,
        baseline: 3.0,
        debug: false,
        kubelet: false,
        log: None,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        if k == "--debug" {
            a.debug = true;
            continue;
        }
        if k == "--kubelet" {
            a.kubelet = true;
            continue;
        }
        let v = it
            .next()
            .unwrap_or_else(|| usage(&format!("{k} needs a value")));
        let num = |v: &str| -> f64 { v.parse().unwrap_or_else(|_| usage(&format!("{k} {v}"))) };
        match k.as_str() {
            "--runtime" => a.runtime = v,
            "--pods" => a.pods = num(&v) as usize,
            "--concurrency" => a.concurrency = (num(&v) as usize).max(1),
            "--shim" => a.shim = v.into(),
            "--template-dir" => a.template_dir = v.into(),
            "--mem-mib" => a.mem_mib = Some(num(&v) as u64),
            "--kernel" => a.kernel = Some(v.into()),
            "--settle" => a.settle = num(&v),
            "--baseline" => a.baseline = num(&v),
            "--log" => a.log = Some(v.into()),
            "--out" => a.out = Some(v.into()),
            _ => usage(&format!("unknown option {k}")),
        }
    }
    if a.runtime != "husk" && a.runtime != "runc" {
        usage("--runtime husk|runc");
    }
    a
}

// ------------------------------------------------------------ /proc, cgroups

/// Busy and total jiffies of the whole machine (`cpu` of /proc/stat):
/// busy = user + nice + system + irq + softirq (guest time is in user;
/// steal, idle and iowait are not ours).
fn machine_jiffies() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    let busy = g(0) + g(1) + g(2) + g(5) + g(6);
    (busy, v.iter().take(8).sum())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// (ppid, utime + stime + cutime + cstime in ticks) of a process.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.rsplit_once(") ")?.1.split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    Some((n(1) as u32, n(11) + n(12) + n(13) + n(14)))
}

/// `pid` and every process under it.
fn tree(pid: u32, kids: &HashMap<u32, Vec<u32>>) -> Vec<u32> {
    let (mut out, mut stack) = (Vec::new(), vec![pid]);
    while let Some(p) = stack.pop() {
        out.push(p);
        stack.extend(kids.get(&p).into_iter().flatten());
    }
    out
}

/// The kB fields of /proc/PID/smaps_rollup.
fn rollup(pid: u32) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for line in std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
    {
        let p: Vec<&str> = line.split_whitespace().collect();
        if p.len() >= 3 && p[p.len() - 1] == "kB" {
            if let Ok(v) = p[p.len() - 2].parse() {
                m.insert(p[0].trim_end_matches(':').to_string(), v);
            }
        }
    }
    m
}

/// kB totals of the mappings of `pid` whose path ends in `/memory.bin`
/// (the VMM's MAP_PRIVATE mapping of the template's guest memory: pages
/// the guest wrote since the restore are its private anonymous copies,
/// pages it only read are the file's shared page cache).
fn guest_ram(pid: u32) -> BTreeMap<String, u64> {
    let keys = [
        "Size",
        "Rss",
        "Pss",
        "Shared_Clean",
        "Private_Clean",
        "Private_Dirty",
        "Anonymous",
    ];
    let mut m: BTreeMap<String, u64> = keys.iter().map(|k| (k.to_string(), 0)).collect();
    let mut cur = false;
    for line in std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_default()
        .lines()
    {
        let p: Vec<&str> = line.split_whitespace().collect();
        let Some(first) = p.first() else { continue };
        if first.contains('-') && !first.ends_with(':') {
            cur = p.len() > 5 && p[5].ends_with("/memory.bin");
        } else if cur {
            if let (Some(v), Some(n)) = (m.get_mut(first.trim_end_matches(':')), p.get(1)) {
                *v += n.parse::<u64>().unwrap_or(0);
            }
        }
    }
    m
}

/// A cgroup v1 file of hierarchy `ctl` at `rel` (under its mount), as u64.
fn cgroup_u64(ctl: &str, rel: &str, file: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/sys/fs/cgroup/{ctl}/{rel}/{file}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn summary(values: &[f64]) -> Value {
    let mut v: Vec<f64> = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    json!({
        "n": v.len(),
        "min": v.first(),
        "p50": percentile(&v, 50.0),
        "p90": percentile(&v, 90.0),
        "p99": percentile(&v, 99.0),
        "max": v.last(),
        "mean": if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) },
    })
}

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ------------------------------------------------------------ pods

/// One pod's start, times in seconds from the phase's start.
#[derive(Default, Clone)]
struct PodRun {
    name: String,
    id: Option<String>,
    container: Option<String>,
    t_begin: f64,
    t_sandbox: Option<f64>,
    t_created: Option<f64>,
    t_running: Option<f64>,
    /// CPU seconds of the pod's shim and its processes when
    /// RunPodSandbox, CreateContainer and StartContainer returned.
    cpu_marks: [Option<f64>; 3],
    error: Option<String>,
}

/// The shim of pod `id` of the containerd at `address` (its `-id`).
fn shim_of(address: &str, id: &str) -> Option<u32> {
    all_pids().into_iter().find(|&p| {
        let a = cmdline(p);
        let arg = |f: &str| a.iter().position(|x| x == f).and_then(|i| a.get(i + 1));
        arg("-address").map(String::as_str) == Some(address)
            && arg("-id").map(String::as_str) == Some(id)
    })
}

/// CPU seconds (with reaped children) of `pid` and every process under it.
fn tree_cpu_s(pid: u32) -> Option<f64> {
    let mut kids: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in all_pids() {
        if let Some((pp, _)) = proc_stat(p) {
            kids.entry(pp).or_default().push(p);
        }
    }
    proc_stat(pid)?;
    Some(tree_cpu(&tree(pid, &kids)) as f64 / clock_ticks())
}

/// CPU seconds of `pid`'s threads, summed by thread name (husk: the vCPU
/// thread's time is the guest's work, emulated kernel code included).
fn threads_cpu_s(pid: u32) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let Ok(s) = std::fs::read_to_string(dir.join("stat")) else {
            continue;
        };
        let Some((_, rest)) = s.rsplit_once(") ") else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // utime, stime (fields 14, 15; `rest` starts at field 3, the state,
        // which does not parse).
        let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
        *m.entry(comm).or_insert(0.0) += ticks as f64 / clock_ticks();
    }
    m
}

/// The pod's cgroup parent under the fixture's `root` (relative): kubelet's
/// BestEffort one with `--kubelet`, else `root` itself.
fn pod_parent(root: &str, name: &str, kubelet: bool) -> String {
    if kubelet {
        format!("{root}/kubepods/besteffort/pod{name}-uid")
    } else {
        root.to_owned()
    }
}

/// Removes what kubelet would once its pods are gone: `<root>/kubepods`
/// and the QoS and pod cgroups under it, in every hierarchy, deepest
/// first (a shim leaves its leaf as it exits: a few tries each).
fn remove_kubelet_cgroups(root: &str) {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), out);
            }
        }
        out.push(d.to_path_buf());
    }
    let cg = Path::new("/sys/fs/cgroup");
    let hierarchies = std::iter::once(cg.to_path_buf()).chain(
        std::fs::read_dir(cg)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    for h in hierarchies {
        let top = h.join(root).join("kubepods");
        if !top.is_dir() {
            continue;
        }
        let mut dirs = Vec::new();
        walk(&top, &mut dirs);
        for d in dirs {
            let end = Instant::now() + Duration::from_secs(10);
            while d.is_dir() && std::fs::remove_dir(&d).is_err() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// kubelet v1.32's masked and read-only paths for the default proc
/// mount (`securitycontext.ConvertToRuntimeMaskedPaths`): containerd 1.6
/// masks nothing the CRI request does not name.
const KUBELET_MASKED: [&str; 11] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const KUBELET_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What kubelet v1.32 sends for a BestEffort container on a cgroup v2
/// node (tests/tests/cri_qos.rs has every class), with its default
/// masked and read-only paths.
fn kubelet_besteffort() -> api::LinuxContainerConfig {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    api::LinuxContainerConfig {
        security_context: Some(api::LinuxContainerSecurityContext {
            masked_paths: strings(&KUBELET_MASKED),
            readonly_paths: strings(&KUBELET_READONLY),
            ..Default::default()
        }),
        resources: Some(api::LinuxContainerResources {
            cpu_shares: 2,
            cpu_period: 100_000,
            oom_score_adj: 1000,
            hugepage_limits: ["2MB", "1GB"]
                .iter()
                .map(|s| api::HugepageLimit {
                    page_size: s.to_string(),
                    limit: 0,
                })
                .collect(),
            unified: [("memory.swap.max", "0"), ("memory.oom.group", "1")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

/// RunPodSandbox → CreateContainer → StartContainer of pod `name` (with
/// kubelet's BestEffort resources when `kubelet`).
fn start_pod(
    cri: &Cri,
    address: &str,
    handler: &str,
    image: &str,
    config: api::PodSandboxConfig,
    t0: Instant,
    kubelet: bool,
) -> PodRun {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let _ = std::fs::create_dir_all(&config.log_directory);
    let mut r = PodRun {
        name,
        t_begin: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let id = match cri.run_pod_sandbox(&config, handler) {
        Ok(id) => id,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    r.t_sandbox = Some(t0.elapsed().as_secs_f64());
    r.id = Some(id.clone());
    let shim = shim_of(address, &id);
    let cpu = || shim.and_then(tree_cpu_s);
    r.cpu_marks[0] = cpu();
    let mut c = container_config("app", image, &["sleep", "3600"], "app.log");
    if kubelet {
        c.linux = Some(kubelet_besteffort());
    }
    let cid = match cri.create_container(&id, &c, &config) {
        Ok(c) => c,
        Err(e) => {
            r.error = Some(e.to_string());
            return r;
        }
    };
    r.t_created = Some(t0.elapsed().as_secs_f64());
    r.cpu_marks[1] = cpu();
    r.container = Some(cid.clone());
    match cri.start_container(&cid) {
        Ok(()) => r.t_running = Some(t0.elapsed().as_secs_f64()),
        Err(e) => r.error = Some(e.to_string()),
    }
    r.cpu_marks[2] = cpu();
    r
}

/// Runs `work(i)` for i in 0..n on `c` threads, each with its own CRI
/// client.
fn parallel<T: Send>(
    sock: &Path,
    n: usize,
    c: usize,
    work: impl Fn(&Cri, usize) -> T + Sync,
) -> Vec<Option<T>> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<T>>> = Mutex::new((0..n).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..c.min(n.max(1)) {
            s.spawn(|| {
                let cri = match Cri::connect(sock) {
                    Ok(c) => c.with_timeout(CALL_TIMEOUT),
                    Err(e) => {
                        eprintln!("cri_density: a worker's CRI connection: {e}");
                        return;
                    }
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let v = work(&cri, i);
                    if let Ok(mut o) = out.lock() {
                        o[i] = Some(v);
                    }
                }
            });
        }
    });
    out.into_inner().unwrap_or_default()
}

fn main() {
    let a = parse_args();
    if !CriFixture::available("cri_density") {
        std::process::exit(1);
    }
    let work = husk_tests::temp_path("cri-density");
    let _ = std::fs::remove_dir_all(&work);
    if let Err(e) = std::fs::create_dir_all(&work) {
        eprintln!("cri_density: {}: {e}", work.display());
        std::process::exit(1);
    }
    let code = match run(&a, &work) {
        Ok(doc) => {
            let text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            match &a.out {
                Some(p) => {
                    if let Err(e) = std::fs::write(p, text + "\n") {
                        eprintln!("cri_density: {}: {e}", p.display());
                    }
                }
                None => println!("{text}"),
            }
            0
        }
        Err(e) => {
            eprintln!("cri_density: {e}");
            1
        }
    };
    let _ = std::fs::remove_dir_all(&work);
    std::process::exit(code);
}

fn run(a: &Args, work: &Path) -> Result<Value, String> {
    let (handler, shim, opts) = if a.runtime == "husk" {
        if !husk_tests::kvm_available("cri_density") {
            return Err("/dev/kvm is not usable".into());
        }
        if !a.shim.is_file() {
            return Err(format!(
                "{} missing: cargo build -p husk-shim --bins",
                a.shim.display()
            ));
        }
        let (built, initrd) = husk_tests::guest_image();
        let kernel = a.kernel.clone().unwrap_or(built);
        let config = work.join("config.toml");
        let mut toml = format!(
            "kernel = {:?}\ninitramfs = {:?}\ntemplate_dir = {:?}\nrun_dir = {:?}\nconsole_dir = {:?}\ndebug = {}\n",
            kernel,
            initrd,
            a.template_dir,
            work.join("pods"),
            work,
            a.debug
        );
        if let Some(m) = a.mem_mib {
            toml.push_str(&format!("memory_mib = {m}\n"));
        }
        std::fs::write(&config, toml).map_err(|e| e.to_string())?;
        let opts = Options::new()
            .env("HUSK_CONFIG", config.to_string_lossy())
            .debug(a.debug);
        ("husk", Some(a.shim.clone()), opts)
    } else {
        ("runc", None, Options::new().debug(a.debug))
    };
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let f = CriFixture::start(handler, shim.as_deref(), opts)
        .map_err(|e| format!("CRI fixture: {e}"))?;
    let result = measure(a, &f, handler, work);
    if let Some(p) = &a.log {
        let log = f.containerd().work_dir().join("containerd.log");
        if let Err(e) = std::fs::copy(&log, p) {
            eprintln!("cri_density: copying {}: {e}", log.display());
        }
    }
    // Drop removes whatever is left (pods, shims, netns, veths, cgroups).
    drop(f);
    let mut doc = result?;
    doc["load_before"] = json!(load_before.trim());
    doc["load_after"] = json!(std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim());
    Ok(doc)
}

fn measure(a: &Args, f: &CriFixture, handler: &str, work: &Path) -> Result<Value, String> {
    let sock = f.containerd().address().to_path_buf();
    let address = sock.to_string_lossy().into_owned();
    let tick = clock_ticks();
    let parent = f.cgroup_parent.trim_start_matches('/').to_string();
    // Plain values: the fixture is not Sync, the workers are threads.
    let (busybox, log_root, cgroup_parent) = (
        f.busybox.clone(),
        f.log_root.clone(),
        f.cgroup_parent.clone(),
    );
    let kubelet = a.kubelet;
    let cfg = |name: &str| {
        let root = cgroup_parent.trim_end_matches('/');
        pod_config(name, &log_root.join(name), &pod_parent(root, name, kubelet))
    };

    // Warm-up: one pod (husk: makes the template if the store has none),
    // then removed. Not counted.
    eprintln!("cri_density: {handler}: warm-up pod");
    let tw = Instant::now();
    let warm = parallel(&sock, 1, 1, |cri, _| {
        let r = start_pod(cri, &address, handler, &busybox, cfg("warmup"), tw, kubelet);
        if let Some(id) = &r.id {
            let _ = cri.stop_pod_sandbox(id);
            let _ = cri.remove_pod_sandbox(id);
        }
        r
    })
    .pop()
    .flatten()
    .unwrap_or_default();
    if let Some(e) = &warm.error {
        return Err(format!("the warm-up pod failed: {e}"));
    }
    let warm_s = warm.t_running.unwrap_or(0.0) - warm.t_begin;
    eprintln!("cri_density: warm-up pod running after {warm_s:.1} s, removed");

    // Background load, before the phase.
    let (b0, _) = machine_jiffies();
    std::thread::sleep(Duration::from_secs_f64(a.baseline));
    let (b1, _) = machine_jiffies();
    let baseline_cores = (b1 - b0) as f64 / tick / a.baseline.max(0.001);
    let containerd_pid = f.containerd().pid();
    let ctrd_cpu0 = containerd_pid.and_then(proc_stat).map_or(0, |s| s.1);

    // The phase: N pods, C at a time; a sampler notes machine CPU and
    // memory every second.
    eprintln!(
        "cri_density: {handler}: starting {} pods, {} at a time",
        a.pods, a.concurrency
    );
    let names: Vec<String> = (0..a.pods).map(|i| format!("density-{i:03}")).collect();
    let configs: Vec<api::PodSandboxConfig> = names.iter().map(|n| cfg(n)).collect();
    let done = AtomicBool::new(false);
    let started = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::new());
    let t0 = Instant::now();
    let t0_epoch = epoch(SystemTime::now());
    let (m0, _) = machine_jiffies();
    let runs = std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = (machine_jiffies().0, Instant::now());
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if last.1.elapsed() < Duration::from_secs(1) {
                    continue;
                }
                let (b, now) = (machine_jiffies().0, Instant::now());
                let cores = (b - last.0) as f64 / tick / (now - last.1).as_secs_f64();
                last = (b, now);
                if let Ok(mut v) = samples.lock() {
                    v.push(json!({
                        "t": t0.elapsed().as_secs_f64(),
                        "busy_cores": cores,
                        "mem_available_mib": mem_available_kib() as f64 / 1024.0,
                        "running": started.load(Ordering::Relaxed),
                    }));
                }
            }
        });
        let runs = parallel(&sock, a.pods, a.concurrency, |cri, i| {
            let r = start_pod(
                cri,
                &address,
                handler,
                &busybox,
                configs[i].clone(),
                t0,
                kubelet,
            );
            let k = started.load(Ordering::Relaxed) + usize::from(r.error.is_none());
            started.store(k, Ordering::Relaxed);
            match &r.error {
                None => eprintln!(
                    "cri_density: {} running after {:.1} s ({} running, t={:.1} s)",
                    r.name,
                    r.t_running.unwrap_or(0.0) - r.t_begin,
                    k,
                    t0.elapsed().as_secs_f64()
                ),
                Some(e) => eprintln!("cri_density: {} FAILED: {e}", r.name),
            }
            r
        });
        done.store(true, Ordering::Relaxed);
        runs
    });
    let phase_s = t0.elapsed().as_secs_f64();
    let (m1, _) = machine_jiffies();
    let ctrd_cpu1 = containerd_pid.and_then(proc_stat).map_or(0, |s| s.1);
    let runs: Vec<PodRun> = runs
        .into_iter()
        .zip(&names)
        .map(|(r, n)| {
            r.unwrap_or_else(|| PodRun {
                name: n.clone(),
                error: Some("not attempted (no CRI connection)".into()),
                ..Default::default()
            })
        })
        .collect();
    let ok: Vec<&PodRun> = runs.iter().filter(|r| r.error.is_none()).collect();
    let total_s = ok
        .iter()
        .filter_map(|r| r.t_running)
        .fold(0.0_f64, f64::max);

    let cri = f.cri();
    let mut kids: HashMap<u32, Vec<u32>> = HashMap::new();
    let mut shims: HashMap<String, u32> = HashMap::new();
    for pid in all_pids() {
        if let Some((ppid, _)) = proc_stat(pid) {
            kids.entry(ppid).or_default().push(pid);
        }
        let argv = cmdline(pid);
        let arg = |flag: &str| {
            argv.iter()
                .position(|x| x == flag)
                .and_then(|i| argv.get(i + 1))
        };
        if arg("-address") == Some(&address) {
            if let Some(id) = arg("-id") {
                shims.insert(id.clone(), pid);
            }
        }
    }
    // Each pod's process tree CPU now, for its idle rate over the settle.
    let cpu_before: HashMap<String, u64> = shims
        .iter()
        .map(|(id, &spid)| (id.clone(), tree_cpu(&tree(spid, &kids))))
        .collect();
    // All running: settle, then per pod CPU and memory. husk: each pod
    // VM's counters (`husk pods --json`) before and after the settle, so
    // what an idle pod costs is counted, not only timed.
    let pods_dir = work.join("pods");
    let vm_before = (handler == "husk").then(|| husk_pods(&a.shim, &pods_dir));
    let settle_t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.settle));
    let settle_s = settle_t.elapsed().as_secs_f64();
    let vm_idle =
        vm_before.map(|before| idle_rates(&before, &husk_pods(&a.shim, &pods_dir), settle_s));
    let mut pods_json = Vec::new();
    let mut still_running = 0;
    for r in &runs {
        let mut p = json!({
            "name": r.name, "id": r.id, "container": r.container, "ok": r.error.is_none(),
            "error": r.error, "t_begin": r.t_begin, "t_sandbox": r.t_sandbox,
            "t_created": r.t_created, "t_running": r.t_running,
            "start_s": r.t_running.map(|t| t - r.t_begin),
            "run_pod_sandbox_s": r.t_sandbox.map(|t| t - r.t_begin),
            "create_container_s": r.t_created.zip(r.t_sandbox).map(|(c, s)| c - s),
            "start_container_s": r.t_running.zip(r.t_created).map(|(e, c)| e - c),
            "cpu_at_sandbox_s": r.cpu_marks[0],
            "cpu_create_container_s": r.cpu_marks[1].zip(r.cpu_marks[0]).map(|(b, a)| b - a),
            "cpu_start_container_s": r.cpu_marks[2].zip(r.cpu_marks[1]).map(|(b, a)| b - a),
        });
        if let Some(cid) = &r.container {
            let running = matches!(cri.container_status(cid),
                Ok(s) if s.state == api::ContainerState::ContainerRunning as i32);
            still_running += usize::from(running);
            p["running_at_census"] = json!(running);
        }
        if let Some(id) = &r.id {
            // The pod's host cgroups: the sandbox's and its container's.
            let mut cg_cpu = 0u64;
            let mut cg_mem = 0u64;
            for leaf in [Some(id), r.container.as_ref()].into_iter().flatten() {
                let rel = format!("{}/{leaf}", pod_parent(&parent, &r.name, kubelet));
                cg_cpu += cgroup_u64("cpuacct", &rel, "cpuacct.usage").unwrap_or(0);
                cg_mem += cgroup_u64("memory", &rel, "memory.usage_in_bytes").unwrap_or(0);
            }
            p["cgroup_cpu_s"] = json!(cg_cpu as f64 / 1e9);
            p["cgroup_mem_mib"] = json!(cg_mem as f64 / 1048576.0);
            if let Some(&spid) = shims.get(id) {
                let procs = tree(spid, &kids);
                let roll: Vec<_> = procs.iter().map(|&q| rollup(q)).collect();
                let sum = |k: &str| {
                    roll.iter()
                        .map(|m| m.get(k).copied().unwrap_or(0))
                        .sum::<u64>()
                };
                let cpu = tree_cpu(&procs);
                p["shim_pid"] = json!(spid);
                if let Some(&c0) = cpu_before.get(id) {
                    // % of a core over the settle (clock ticks: coarse).
                    p["idle_cpu_pct"] =
                        json!((cpu.saturating_sub(c0)) as f64 / tick / settle_s.max(1e-9) * 100.0);
                }
                p["processes"] = json!(procs.len());
                p["proc_cpu_s"] = json!(cpu as f64 / tick);
                p["pss_kib"] = json!(sum("Pss"));
                p["rss_kib"] = json!(sum("Rss"));
                p["pss_anon_kib"] = json!(sum("Pss_Anon"));
                p["pss_file_kib"] = json!(sum("Pss_File"));
                p["shim_pss_kib"] = json!(roll[0].get("Pss"));
                if handler == "husk" {
                    p["guest_ram_kib"] = json!(guest_ram(spid));
                    p["threads_cpu_s"] = json!(threads_cpu_s(spid));
                    if let Some(rates) = vm_idle.as_ref().and_then(|m| m.get(id)) {
                        p["vm_idle_per_s"] = rates.clone();
                    }
                }
            }
        }
        pods_json.push(p);
    }
    let stat = |k: &str| -> Vec<f64> { pods_json.iter().filter_map(|p| p[k].as_f64()).collect() };
    let guest = |k: &str| -> Vec<f64> {
        pods_json
            .iter()
            .filter_map(|p| p["guest_ram_kib"][k].as_f64())
            .collect()
    };
    let machine_cpu_s = (m1 - m0) as f64 / tick;
    let n_ok = ok.len().max(1) as f64;

    // Teardown, timed, C at a time.
    eprintln!("cri_density: {handler}: removing the pods");
    let tt = Instant::now();
    let ids: Vec<String> = runs.iter().filter_map(|r| r.id.clone()).collect();
    let teardown_errors: Vec<String> = parallel(&sock, ids.len(), a.concurrency, |cri, i| {
        cri.stop_pod_sandbox(&ids[i])
            .and_then(|()| cri.remove_pod_sandbox(&ids[i]))
            .err()
            .map(|e| format!("{}: {e}", ids[i]))
    })
    .into_iter()
    .flatten()
    .flatten()
    .collect();
    if kubelet {
        remove_kubelet_cgroups(&parent);
    }
    let teardown_s = tt.elapsed().as_secs_f64();
    let leaks = match f.wait_no_leaks(Duration::from_secs(60)) {
        Ok(()) => Value::Null,
        Err(l) => json!(l.to_string()),
    };

    Ok(json!({
        "runtime": handler,
        "pods": a.pods,
        "concurrency": a.concurrency,
        "host": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "mem_total_mib": std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines()
                .next().and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()).map(|k| k / 1024.0),
            "pvm": Path::new("/sys/module/kvm_pvm").exists(),
        },
        "husk": if handler == "husk" { json!({
            "shim": a.shim, "template_dir": a.template_dir, "memory_mib": a.mem_mib.unwrap_or(256),
        }) } else { Value::Null },
        "warmup_start_s": warm_s,
        "t0_epoch": t0_epoch,
        "pods_ok": ok.len(),
        "pods_failed": runs.len() - ok.len(),
        "running_at_census": still_running,
        "total_s": total_s,
        "phase_s": phase_s,
        "pods_per_s": if total_s > 0.0 { ok.len() as f64 / total_s } else { 0.0 },
        "start_s": summary(&stat("start_s")),
        "run_pod_sandbox_s": summary(&stat("run_pod_sandbox_s")),
        "create_container_s": summary(&stat("create_container_s")),
        "start_container_s": summary(&stat("start_container_s")),
        "vm_idle_per_s": idle_summary(&pods_json),
        "idle_cpu_pct": summary(&stat("idle_cpu_pct")),
        "settle_s": settle_s,
        "cpu": {
            "machine_busy_s": machine_cpu_s,
            "baseline_busy_cores": baseline_cores,
            "machine_busy_s_per_pod": machine_cpu_s / n_ok,
            "machine_busy_s_per_pod_minus_baseline":
                (machine_cpu_s - baseline_cores * phase_s).max(0.0) / n_ok,
            "containerd_s_per_pod": (ctrd_cpu1 - ctrd_cpu0) as f64 / tick / n_ok,
            "pod_processes_s": summary(&stat("proc_cpu_s")),
            "pod_processes_at_sandbox_s": summary(&stat("cpu_at_sandbox_s")),
            "pod_processes_create_container_s": summary(&stat("cpu_create_container_s")),
            "pod_processes_start_container_s": summary(&stat("cpu_start_container_s")),
            "pod_cgroup_s": summary(&stat("cgroup_cpu_s")),
        },
        "memory_kib": {
            "settle_s": a.settle,
            "pss": summary(&stat("pss_kib")),
            "rss": summary(&stat("rss_kib")),
            "pss_anon": summary(&stat("pss_anon_kib")),
            "pss_file": summary(&stat("pss_file_kib")),
            "cgroup_mib": summary(&stat("cgroup_mem_mib")),
            "guest_ram_rss": summary(&guest("Rss")),
            "guest_ram_pss": summary(&guest("Pss")),
            "guest_ram_private": summary(&guest("Anonymous")),
        },
        "teardown_s": teardown_s,
        "teardown_errors": teardown_errors,
        "leaks": leaks,
        "samples": samples.into_inner().unwrap_or_default(),
        "pod_list": pods_json,
    }))
}

/// Every husk pod VM's counters, by pod id, as `husk pods --json` (next
/// to the shim) reads them from the pods' monitor sockets; empty (said
/// once) when that fails.
fn husk_pods(shim: &Path, run_dir: &Path) -> HashMap<String, Value> {
    let husk = shim.with_file_name("husk");
    let out = std::process::Command::new(&husk)
        .arg("pods")
        .arg("--json")
        .arg("--run-dir")
        .arg(run_dir)
        .output();
    let pods = match out {
        Ok(o) if o.status.success() => serde_json::from_slice::<Vec<Value>>(&o.stdout),
        Ok(o) => {
            eprintln!(
                "cri_density: {} pods: {}: {}",
                husk.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr)
            );
            return HashMap::new();
        }
        Err(e) => {
            eprintln!("cri_density: {}: {e}", husk.display());
            return HashMap::new();
        }
    };
    match pods {
        Ok(v) => v
            .into_iter()
            .filter_map(|p| Some((p["pod"].as_str()?.to_owned(), p)))
            .collect(),
        Err(e) => {
            eprintln!("cri_density: husk pods --json: {e}");
            HashMap::new()
        }
    }
}

/// CPU (clock ticks, utime + stime with reaped children) of processes
/// `procs`.
fn tree_cpu(procs: &[u32]) -> u64 {
    procs
        .iter()
        .filter_map(|&q| proc_stat(q))
        .map(|s| s.1)
        .sum()
}

/// The figures of a pod VM's counters that show what it does while idle
/// ([`vm_figures`]), by name.
const IDLE_FIGURES: [&str; 6] = [
    "vcpu_cpu_ms",
    "kvm_exits",
    "irq_injections",
    "halt_wakeup",
    "insn_emulation",
    "vmm_exits",
];

/// One pod VM's [`IDLE_FIGURES`] from its `husk pods` entry: vCPU thread
/// CPU and KVM's exits, interrupts injected, halt wake-ups, emulated
/// instructions, and the exits our run loop took.
fn vm_figures(p: &Value) -> Vec<(&'static str, f64)> {
    let vcpu = &p["vm"]["vcpus"][0];
    let kvm = |k: &str| vcpu["kvm"]["counters"][k].as_f64();
    let figure = |name: &str| match name {
        "vcpu_cpu_ms" => vcpu["cpu_ns"].as_f64().map(|n| n / 1e6),
        "kvm_exits" => kvm("exits"),
        "vmm_exits" => Some(
            ["io_in", "io_out", "mmio_read", "mmio_write"]
                .iter()
                .filter_map(|k| vcpu["exits"][*k].as_f64())
                .sum(),
        ),
        counter => kvm(counter),
    };
    IDLE_FIGURES
        .iter()
        .filter_map(|&k| Some((k, figure(k)?)))
        .collect()
}

/// Per pod: each figure's rate over `secs` between two `husk pods`
/// readings.
fn idle_rates(
    before: &HashMap<String, Value>,
    after: &HashMap<String, Value>,
    secs: f64,
) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    for (id, b) in before {
        let Some(a) = after.get(id) else { continue };
        let fb: HashMap<_, _> = vm_figures(b).into_iter().collect();
        let mut rates = serde_json::Map::new();
        for (k, va) in vm_figures(a) {
            if let Some(vb) = fb.get(k) {
                rates.insert(k.to_owned(), json!((va - vb) / secs.max(1e-9)));
            }
        }
        out.insert(id.clone(), Value::Object(rates));
    }
    out
}

/// p50/max of each idle rate over the pods that have them.
fn idle_summary(pods: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for k in IDLE_FIGURES {
        let v: Vec<f64> = pods
            .iter()
            .filter_map(|p| p["vm_idle_per_s"][k].as_f64())
            .collect();
        if !v.is_empty() {
            out.insert(k.to_owned(), summary(&v));
        }
    }
    Value::Object(out)
}
