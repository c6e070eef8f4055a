//! The Kubernetes pod flow through containerd's CRI plugin, with the CRI
//! client and fixture of `husk_tests::cri`: RunPodSandbox → two
//! containers → ExecSync → stats → CRI logs → the pod IP answers from the
//! host and from a second pod → StopPodSandbox → RemovePodSandbox, and
//! nothing left behind. With runc (`runc` handler →
//! io.containerd.runc.v2) as the reference, and with the `husk` handler
//! (one VM per pod, its containers inside; pod stats from the shim's host
//! cgroup). Needs root, containerd, the CNI plugins and busybox-static
//! (and /dev/kvm for husk); skips with a SKIP line without them.
//! `*_streaming_exec`: CRI's streaming `Exec` (a WebSocket to containerd's
//! streaming server, as `kubectl exec`), plain and with a terminal.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use husk_tests::containerd::{find_in_path, run_timeout, Options};
use husk_tests::cri::{
    container_config, husk_setup, parse_cri_log, v1 as api, CriFixture, Pod, StreamInput,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// A whole streaming exec: the upgrade, the process, its status.
const STREAM_TIMEOUT: Duration = Duration::from_secs(30);

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Step timings, printed at the end.
struct Clock {
    t0: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl Clock {
    fn new() -> Self {
        let now = Instant::now();
        Clock {
            t0: now,
            last: now,
            steps: Vec::new(),
        }
    }

    fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        self.steps.push((step, now - self.last));
        self.last = now;
    }

    fn report(&self, handler: &str) {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(s, d)| format!("{s} {} ms", d.as_millis()))
            .collect();
        eprintln!(
            "cri pod flow ({handler}): {}; total {} ms",
            steps.join(", "),
            self.t0.elapsed().as_millis()
        );
    }
}

/// Waits up to `timeout` for `f` to give `Some`.
fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `busybox ping` from the host: one answer within `timeout`.
fn host_ping(ip: &str, timeout: Duration) -> Result<(), String> {
    let end = Instant::now() + timeout;
    loop {
        let mut cmd = Command::new(husk_tests::oci::BUSYBOX_BINARY);
        cmd.args(["ping", "-c", "1", "-W", "2", ip]);
        let out = run_timeout(cmd, None, Duration::from_secs(5));
        match out {
            Ok(o) if o.status.success() => return Ok(()),
            o if Instant::now() >= end => return Err(format!("{o:?}")),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Runs a busybox container `name` (`command`) in `pod`; returns its id.
fn run_container(f: &CriFixture, pod: &Pod, name: &str, command: &[&str]) -> String {
    run_container_with(f, pod, name, command, Vec::new())
}

/// [`run_container`] with bind `mounts` (kubelet's hostPath, emptyDir and
/// termination-log volumes are such mounts).
fn run_container_with(
    f: &CriFixture,
    pod: &Pod,
    name: &str,
    command: &[&str],
    mounts: Vec<api::Mount>,
) -> String {
    let cri = f.cri();
    let mut config = container_config(name, &f.busybox, command, &format!("{name}.log"));
    config.mounts = mounts;
    let id = cri
        .create_container(&pod.id, &config, &pod.config)
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
    cri.start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
    id
}

/// A bind mount of host `host` at `container`.
fn bind(host: &Path, container: &str, readonly: bool) -> api::Mount {
    api::Mount {
        container_path: container.to_string(),
        host_path: host.to_string_lossy().into_owned(),
        readonly,
        ..Default::default()
    }
}

/// The pod's volumes, as kubelet would make them: a read-only hostPath
/// directory, an emptyDir both containers write, and a termination-log
/// file.
struct Volumes {
    host_path: PathBuf,
    empty_dir: PathBuf,
    termination_log: PathBuf,
}

impl Volumes {
    fn create(root: &Path) -> Volumes {
        let v = Volumes {
            host_path: root.join("host-path"),
            empty_dir: root.join("empty-dir"),
            termination_log: root.join("termination-log"),
        };
        std::fs::create_dir_all(&v.host_path).unwrap();
        std::fs::write(v.host_path.join("config"), "from the host\n").unwrap();
        std::fs::create_dir_all(&v.empty_dir).unwrap();
        std::fs::write(&v.termination_log, "").unwrap();
        v
    }

    fn mounts(&self, with_log: bool) -> Vec<api::Mount> {
        let mut m = vec![
            bind(&self.host_path, "/config", true),
            bind(&self.empty_dir, "/scratch", false),
        ];
        if with_log {
            m.push(bind(&self.termination_log, "/dev/termination-log", false));
        }
        m
    }
}

/// What a runtime's pods are checked for beyond the common flow.
#[derive(Clone, Copy)]
struct Expect {
    /// The pod IP is on the containers' eth0 and answers pings (the pod's
    /// network reaches the containers).
    network: bool,
    /// The pod's containers share one VM (one guest boot id) whose kernel
    /// is not the host's.
    vm: bool,
}

/// The pod flow with runtime handler `handler` (served by `shim`, `None`
/// for runc), containerd started with `opts`.
fn pod_flow(handler: &str, shim: Option<&Path>, opts: Options, expect: Expect) {
    let mut clock = Clock::new();
    let f = CriFixture::start(handler, shim, opts).expect("start the CRI fixture");
    let cri = f.cri();
    let v = cri.version().unwrap();
    eprintln!(
        "CRI {} {} (runtime API {}); network {} on {} ({})",
        v.runtime_name,
        v.runtime_version,
        v.runtime_api_version,
        f.net.name,
        f.net.bridge,
        f.net.subnet
    );
    clock.lap("fixture");

    // The pod: ready, with an IP of the fixture's subnet in a netns of
    // its own.
    let mut config = f.pod_config("flow");
    config.dns_config = Some(api::DnsConfig {
        servers: vec!["10.96.0.10".into()],
        searches: vec!["svc.cluster.local".into()],
        options: vec!["ndots:5".into()],
    });
    let pod = f.run_pod_with(config).expect("RunPodSandbox");
    clock.lap("RunPodSandbox");
    let status = cri.pod_sandbox_status(&pod.id).unwrap();
    assert_eq!(
        status.state,
        api::PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    assert_eq!(status.runtime_handler, handler);
    let ip = pod.ip.clone().expect("the pod's IP in PodSandboxStatus");
    let prefix = f.net.gateway.trim_end_matches(".1");
    assert!(
        ip.starts_with(prefix),
        "pod IP {ip} not in {}",
        f.net.subnet
    );
    let netns = pod
        .netns
        .clone()
        .expect("the pod's netns in the verbose status");
    assert!(Path::new(&netns).exists(), "{netns}");
    assert_eq!(f.net.veths().len(), 1, "one veth on the bridge");

    // Two containers, with the pod's volumes.
    let volumes = Volumes::create(&f.log_root.join("volumes"));
    let sleeper = run_container_with(&f, &pod, "sleeper", &["sleep", "600"], volumes.mounts(true));
    let talker = run_container_with(
        &f,
        &pod,
        "talker",
        &["sh", "-c", "echo started; sleep 600"],
        volumes.mounts(false),
    );
    clock.lap("Create+StartContainer x2");
    for id in [&sleeper, &talker] {
        let s = cri.container_status(id).unwrap();
        assert_eq!(
            s.state,
            api::ContainerState::ContainerRunning as i32,
            "{s:?}"
        );
    }

    // ExecSync: output, stderr, exit code.
    let out = cri
        .exec_sync(&sleeper, &["echo", "hi"], EXEC_TIMEOUT)
        .unwrap();
    assert_eq!(
        (text(&out.stdout).as_str(), out.exit_code),
        ("hi\n", 0),
        "{out:?}"
    );
    let out = cri
        .exec_sync(
            &sleeper,
            &["sh", "-c", "echo oops >&2; exit 3"],
            EXEC_TIMEOUT,
        )
        .unwrap();
    assert_eq!(
        (text(&out.stderr).as_str(), out.exit_code),
        ("oops\n", 3),
        "{out:?}"
    );
    clock.lap("ExecSync x2");

    // The two containers share the pod's network namespace, which has the
    // pod IP.
    let ns = |id: &str| {
        let o = cri
            .exec_sync(id, &["readlink", "/proc/self/ns/net"], EXEC_TIMEOUT)
            .unwrap();
        assert_eq!(o.exit_code, 0, "{o:?}");
        text(&o.stdout)
    };
    assert_eq!(ns(&sleeper), ns(&talker), "one network namespace per pod");
    if expect.network {
        let addr = cri
            .exec_sync(&talker, &["ip", "-4", "addr", "show", "eth0"], EXEC_TIMEOUT)
            .unwrap();
        assert!(
            text(&addr.stdout).contains(&format!("inet {ip}/24")),
            "{addr:?}"
        );
    }
    if expect.vm {
        let read = |id: &str, cmd: &[&str]| {
            let o = cri.exec_sync(id, cmd, EXEC_TIMEOUT).unwrap();
            assert_eq!(o.exit_code, 0, "{o:?}");
            text(&o.stdout)
        };
        let boot = ["cat", "/proc/sys/kernel/random/boot_id"];
        assert_eq!(
            read(&sleeper, &boot),
            read(&talker, &boot),
            "two VMs for one pod"
        );
        let host = std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap();
        assert_ne!(
            read(&talker, &["uname", "-r"]),
            text(&host.stdout),
            "the host's kernel"
        );
        if expect.network {
            // An IPv4-only pod's guest has IPv6 off on eth0: it sends no
            // IPv6 chatter (cri_dualstack.rs: a pod with an IPv6 address).
            let off = ["cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"];
            assert_eq!(
                read(&talker, &off),
                "1\n",
                "IPv6 on an IPv4-only pod's eth0"
            );
        }
    }
    let host = cri.exec_sync(&talker, &["hostname"], EXEC_TIMEOUT).unwrap();
    assert_eq!(text(&host.stdout), "flow\n");
    clock.lap("VM, hostname");

    // Files and volumes: resolv.conf from the pod's DNS config, the pod's
    // hostname file, a read-only hostPath, an emptyDir shared by both
    // containers and the host, a termination-log file written back.
    let sh = |id: &str, script: &str| {
        let o = cri
            .exec_sync(id, &["sh", "-c", script], EXEC_TIMEOUT)
            .unwrap();
        (o.exit_code, text(&o.stdout), text(&o.stderr))
    };
    let (rc, out, err) = sh(
        &talker,
        "cat /etc/resolv.conf /etc/hostname /config/config; echo hi > /scratch/from-talker; \
         echo x > /config/x && echo WROTE-RO; test -s /etc/hosts && echo hosts-ok",
    );
    assert_eq!(rc, 0, "{out} {err}");
    for want in [
        "nameserver 10.96.0.10",
        "search svc.cluster.local",
        "options ndots:5",
        "flow\n",
        "from the host",
        "hosts-ok",
    ] {
        assert!(out.contains(want), "{want:?} missing in {out:?} ({err})");
    }
    assert!(
        !out.contains("WROTE-RO"),
        "a read-only hostPath took a write: {out}"
    );
    let (rc, out, err) = sh(
        &sleeper,
        "cat /scratch/from-talker; echo bye > /dev/termination-log",
    );
    assert_eq!((rc, out.as_str()), (0, "hi\n"), "{err}");
    assert_eq!(
        std::fs::read_to_string(volumes.empty_dir.join("from-talker")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_to_string(&volumes.termination_log).unwrap(),
        "bye\n"
    );
    assert!(!volumes.host_path.join("x").exists());
    clock.lap("volumes");

    // Stats.
    let stats = cri.container_stats(&sleeper).unwrap();
    assert_eq!(
        stats.attributes.as_ref().map(|a| a.id.as_str()),
        Some(sleeper.as_str())
    );
    let mem = stats
        .memory
        .as_ref()
        .and_then(|m| m.working_set_bytes.as_ref());
    assert!(mem.is_some_and(|m| m.value > 0), "memory stats: {stats:?}");
    assert!(stats.cpu.is_some(), "cpu stats: {stats:?}");
    let all = cri.list_container_stats().unwrap();
    for id in [&sleeper, &talker] {
        assert!(
            all.iter()
                .any(|s| s.attributes.as_ref().is_some_and(|a| &a.id == id)),
            "{id} missing in ListContainerStats"
        );
    }
    match cri.list_pod_sandbox_stats() {
        Ok(pods) => {
            let mine = pods
                .iter()
                .find(|p| p.attributes.as_ref().is_some_and(|a| a.id == pod.id));
            assert!(
                mine.is_some(),
                "pod missing in ListPodSandboxStats: {pods:?}"
            );
            let linux = mine.and_then(|p| p.linux.as_ref());
            eprintln!(
                "ListPodSandboxStats: {:?}",
                linux.map(|l| (&l.cpu, &l.memory))
            );
            // containerd 1.6 reads them from the pod's host cgroup: for a
            // VM pod, the shim and its VMM threads are there.
            let mem = linux
                .and_then(|l| l.memory.as_ref())
                .and_then(|m| m.working_set_bytes.as_ref())
                .map_or(0, |v| v.value);
            let cpu = linux
                .and_then(|l| l.cpu.as_ref())
                .and_then(|c| c.usage_core_nano_seconds.as_ref())
                .map_or(0, |v| v.value);
            assert!(mem > 0 && cpu > 0, "pod stats without usage: {linux:?}");
        }
        Err(e) if e.is_unimplemented() => {
            eprintln!("NOTE ListPodSandboxStats: not implemented by this containerd ({e})")
        }
        Err(e) => panic!("{e}"),
    }
    clock.lap("stats");

    // The CRI log file: `<time> stdout F started`.
    let log = pod.log_dir.join("talker.log");
    let st = cri.container_status(&talker).unwrap();
    assert_eq!(Path::new(&st.log_path), log, "{st:?}");
    let lines = wait_for("`started` in the CRI log", Duration::from_secs(10), || {
        let lines = parse_cri_log(&std::fs::read_to_string(&log).ok()?);
        (!lines.is_empty()).then_some(lines)
    });
    let first = lines[0].clone().expect("a CRI-format log line");
    assert_eq!(
        (
            first.stream.as_str(),
            first.tag.as_str(),
            first.text.as_str()
        ),
        ("stdout", "F", "started")
    );
    clock.lap("logs");

    // The pod IP answers from the host and from a second pod.
    if expect.network {
        host_ping(&ip, Duration::from_secs(10)).unwrap_or_else(|e| panic!("host ping {ip}: {e}"));
        let peer = f.run_pod("peer").expect("RunPodSandbox peer");
        let peer_ip = peer.ip.clone().expect("the peer's IP");
        assert_ne!(peer_ip, ip);
        let pinger = run_container(&f, &peer, "pinger", &["sleep", "600"]);
        let out = cri
            .exec_sync(&pinger, &["ping", "-c", "1", "-W", "3", &ip], EXEC_TIMEOUT)
            .unwrap();
        assert_eq!(out.exit_code, 0, "ping {ip} from the peer pod: {out:?}");
        cri.stop_pod_sandbox(&peer.id).unwrap();
        cri.remove_pod_sandbox(&peer.id).unwrap();
        clock.lap("ping host+pod");
    }

    // Stop: containers exited, network gone; remove: nothing left.
    cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    clock.lap("StopPodSandbox");
    let status = cri.pod_sandbox_status(&pod.id).unwrap();
    assert_eq!(
        status.state,
        api::PodSandboxState::SandboxNotready as i32,
        "{status:?}"
    );
    for id in [&sleeper, &talker] {
        let s = cri.container_status(id).unwrap();
        assert_eq!(
            s.state,
            api::ContainerState::ContainerExited as i32,
            "{s:?}"
        );
    }
    assert!(
        !Path::new(&netns).exists(),
        "{netns} left after StopPodSandbox"
    );
    cri.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    clock.lap("RemovePodSandbox");
    f.assert_no_leaks(Duration::from_secs(10));
    clock.lap("leak census");
    clock.report(handler);
}

/// Whether the CRI prerequisites and runc are here (else a SKIP line).
fn runc_available(test: &str) -> bool {
    if !CriFixture::available(test) {
        return false;
    }
    if find_in_path("runc").is_none() || find_in_path("containerd-shim-runc-v2").is_none() {
        eprintln!("SKIP {test}: runc not installed (apt-get install runc containerd)");
        return false;
    }
    true
}

#[test]
fn runc_pod_flow() {
    if !runc_available("runc_pod_flow") {
        return;
    }
    pod_flow(
        "runc",
        None,
        Options::new(),
        Expect {
            network: true,
            vm: false,
        },
    );
}

/// The husk shim (`target/debug/containerd-shim-husk-v2`: `cargo build -p
/// husk-shim --bins`) with the repo's guest image: the pod lifecycle, two
/// containers in one VM, ExecSync, stats (the pod's from the shim's host
/// cgroup), logs, nothing left. The pod's
/// network inside the VM (tap + tc redirect, the guest's eth0) is not
/// there yet: `husk_pod_network` checks it.
#[test]
fn husk_pod_flow() {
    husk_flow(
        "husk_pod_flow",
        Expect {
            network: false,
            vm: true,
        },
    );
}

/// The pod IP inside the VM, answering the host and another pod.
#[test]
fn husk_pod_network() {
    husk_flow(
        "husk_pod_network",
        Expect {
            network: true,
            vm: true,
        },
    );
}

fn husk_flow(test: &str, expect: Expect) {
    let Some((shim, opts, cleanup)) = husk_setup(test, test) else {
        return;
    };
    pod_flow("husk", Some(&shim), opts, expect);
    cleanup.assert_no_pod_dirs();
}

/// The seed's isolation demo: a fork bomb in one pod's container (with a
/// memory limit, as kubelet would give it) rages inside that pod's VM,
/// while another pod keeps answering ExecSync, containerd keeps answering,
/// the bombing VM takes at most about its one vCPU of host CPU (its host
/// cgroup says), and both pods stop and go away with nothing left.
#[test]
fn husk_fork_bomb_stays_in_its_pod() {
    let test = "husk_fork_bomb_stays_in_its_pod";
    let Some((shim, opts, _cleanup)) = husk_setup(test, test) else {
        return;
    };
    let f = CriFixture::start("husk", Some(&shim), opts).expect("start the CRI fixture");
    let cri = f.cri();
    let calm = f.run_pod("calm").expect("RunPodSandbox calm");
    let calm_c = run_container(&f, &calm, "calm", &["sleep", "600"]);
    // The calm pod's ExecSync before the bomb, for comparison.
    let before: Vec<u128> = (0..2)
        .map(|_| {
            let t = Instant::now();
            let out = cri
                .exec_sync(&calm_c, &["echo", "still here"], Duration::from_secs(30))
                .expect("ExecSync in the calm pod");
            assert_eq!(out.exit_code, 0, "{out:?}");
            t.elapsed().as_millis()
        })
        .collect();
    let bomb = f.run_pod("bomb").expect("RunPodSandbox bomb");
    let scratch = f.log_root.join("bomb-scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut config = container_config(
        "bomb",
        &f.busybox,
        &[
            "sh",
            "-c",
            "b() { echo x >> /scratch/forks; b | b & }; b; sleep 600",
        ],
        "bomb.log",
    );
    config.mounts = vec![bind(&scratch, "/scratch", false)];
    config.linux = Some(api::LinuxContainerConfig {
        resources: Some(api::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let bomb_c = cri
        .create_container(&bomb.id, &config, &bomb.config)
        .expect("CreateContainer bomb");
    // The bombing VM's host cgroup (the sandbox's cgroupsPath: parent/id).
    let cpuacct = PathBuf::from("/sys/fs/cgroup/cpuacct")
        .join(f.cgroup_parent.trim_start_matches('/'))
        .join(&bomb.id)
        .join("cpuacct.usage");
    let usage = || {
        std::fs::read_to_string(&cpuacct)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    cri.start_container(&bomb_c).expect("StartContainer bomb");
    let forks = || {
        std::fs::read_to_string(scratch.join("forks"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    wait_for("the bomb's first forks", Duration::from_secs(60), || {
        (forks() >= 8).then_some(())
    });
    let (t0, u0, n0) = (Instant::now(), usage(), forks());
    // 40 s of bombing: the other pod answers every time.
    let mut answers = Vec::new();
    while t0.elapsed() < Duration::from_secs(40) {
        let t = Instant::now();
        let out = cri
            .exec_sync(&calm_c, &["echo", "still here"], Duration::from_secs(30))
            .expect("ExecSync in the calm pod during the bomb");
        assert_eq!(
            (text(&out.stdout).as_str(), out.exit_code),
            ("still here\n", 0),
            "{out:?}"
        );
        cri.version().expect("CRI Version during the bomb");
        answers.push(t.elapsed().as_millis());
        std::thread::sleep(Duration::from_secs(2));
    }
    let (wall, u1) = (t0.elapsed(), usage());
    let n = forks();
    let cores = match (u0, u1) {
        (Some(u0), Some(u1)) => u1.saturating_sub(u0) as f64 / wall.as_nanos() as f64,
        _ => panic!(
            "no host cgroup for the bombing pod at {}",
            cpuacct.display()
        ),
    };
    eprintln!(
        "fork bomb: {n0} -> {n} forks logged in {wall:?}; its VM used {cores:.2} host cores; \
         the calm pod's ExecSync answered {} times (ms: {answers:?}; before the bomb: {before:?})",
        answers.len()
    );
    // Under the emulator here a guest fork costs ~0.1-1 s: the bomb grows
    // as fast as its one vCPU lets it, not exponentially.
    assert!(
        n >= n0 + 8,
        "the bomb stopped multiplying: {n0} -> {n} forks"
    );
    assert!(
        cores < 1.5,
        "a 1-vCPU pod VM used {cores:.2} host cores while bombing"
    );
    // The bombing pod stops (its VM is powered off, or stopped) and goes.
    let slow = husk_tests::cri::Cri::connect(f.containerd().address())
        .unwrap()
        .with_timeout(Duration::from_secs(180));
    slow.stop_pod_sandbox(&bomb.id)
        .expect("StopPodSandbox bomb");
    slow.remove_pod_sandbox(&bomb.id)
        .expect("RemovePodSandbox bomb");
    let out = cri
        .exec_sync(&calm_c, &["echo", "after"], EXEC_TIMEOUT)
        .unwrap();
    assert_eq!(text(&out.stdout), "after\n");
    cri.stop_pod_sandbox(&calm.id).unwrap();
    cri.remove_pod_sandbox(&calm.id).unwrap();
    f.assert_no_leaks(Duration::from_secs(10));
}

/// A test that fails half-way leaves a running pod: dropping the fixture
/// still removes all of it (pod, shim, netns, veth, bridge, IP, cgroups).
#[test]
fn cri_fixture_drop_cleans_a_running_pod() {
    let test = "cri_fixture_drop_cleans_a_running_pod";
    if !runc_available(test) {
        return;
    }
    let f = CriFixture::start("runc", None, Options::new()).expect("start the CRI fixture");
    let pod = f.run_pod("left").expect("RunPodSandbox");
    run_container(&f, &pod, "c", &["sleep", "600"]);
    let l = f.leaks();
    eprintln!("census of a running pod:\n{l}");
    assert_eq!(l.pods, std::slice::from_ref(&pod.id));
    assert_eq!(l.containers.len(), 1, "{l}");
    assert_eq!(l.veths.len(), 1, "{l}");
    assert_eq!(l.ips.len(), 1, "{l}");
    assert!(!l.cgroups.is_empty(), "{l}");
    assert_eq!(l.containerd.shims.len(), 1, "one shim per pod: {l}");
    let netns = pod.netns.clone().expect("netns");
    let bridge = Path::new("/sys/class/net").join(&f.net.bridge);
    let ipam = f.net.ipam_dir.clone();
    let cgroups = l.cgroups.clone();
    let shims = f.containerd().shim_pids();
    assert!(bridge.exists());
    drop(f);
    for p in [Path::new(&netns), &bridge, &ipam] {
        assert!(!p.exists(), "{} left after drop", p.display());
    }
    for c in &cgroups {
        assert!(!Path::new(c).exists(), "{c} left after drop");
    }
    for pid in shims {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, s)| &s[..1]);
        assert!(
            matches!(state, None | Some("Z") | Some("X")),
            "shim {pid} alive after drop"
        );
    }
}

/// A streaming `Exec` request of `cmd` in container `id`.
fn exec_request(id: &str, cmd: &[&str], stdin: bool, tty: bool) -> api::ExecRequest {
    api::ExecRequest {
        container_id: id.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        // CRI: a terminal has one output stream.
        stderr: !tty,
    }
}

/// CRI streaming exec (`Exec` → containerd's streaming server → a
/// WebSocket, as `kubectl exec` goes through kubelet) with runtime handler
/// `handler`: stdin reaches the process, stdout and stderr come back apart,
/// the exit code arrives in the status; then a terminal exec: a pty, the
/// client's terminal size, typed input echoed; then the pod goes and
/// nothing is left.
fn streaming_exec(handler: &str, shim: Option<&Path>, opts: Options) {
    let mut clock = Clock::new();
    let f = CriFixture::start(handler, shim, opts).expect("start the CRI fixture");
    let cri = f.cri();
    clock.lap("fixture");
    let pod = f.run_pod("stream").expect("RunPodSandbox");
    let c = run_container(&f, &pod, "shell", &["sleep", "600"]);
    clock.lap("pod+container");

    let exec = |req: api::ExecRequest, input: StreamInput| {
        let what = format!("{:?}", req.cmd);
        cri.exec_stream(req, &input, STREAM_TIMEOUT)
            .unwrap_or_else(|e| panic!("streaming exec {what}: {e}"))
    };
    // stdin in, both outputs out, a non-zero exit.
    let out = exec(
        exec_request(
            &c,
            &["sh", "-c", "read x; echo out:$x; echo err >&2; exit 3"],
            true,
            false,
        ),
        StreamInput {
            stdin: Some(b"hi\n".to_vec()),
            ..Default::default()
        },
    );
    assert_eq!(
        (
            text(&out.stdout).as_str(),
            text(&out.stderr).as_str(),
            out.exit_code
        ),
        ("out:hi\n", "err\n", 3),
        "{out:?}"
    );
    // No stdin, exit 0: the Success status.
    let out = exec(
        exec_request(&c, &["echo", "ok"], false, false),
        StreamInput::default(),
    );
    assert_eq!(
        (text(&out.stdout).as_str(), out.exit_code),
        ("ok\n", 0),
        "{out:?}"
    );
    clock.lap("exec x2");

    // A terminal: the process's stdin/stdout are a pty, of the size the
    // client sent (applied after the start: the command polls for it),
    // and typed input is echoed before the process reads it.
    let script = "tty; for i in $(seq 100); do s=$(stty size); \
                  [ \"$s\" = '30 100' ] && break; sleep 0.1; done; \
                  echo size:$s; read x; echo got:$x; exit 0";
    let out = exec(
        exec_request(&c, &["sh", "-c", script], true, true),
        StreamInput {
            stdin: Some(b"typed\n".to_vec()),
            tty_size: Some((100, 30)),
        },
    );
    let tty_out = text(&out.stdout);
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
    for want in ["/dev/pts/", "size:30 100\r\n", "typed\r\n", "got:typed\r\n"] {
        assert!(tty_out.contains(want), "{want:?} missing in {tty_out:?}");
    }
    // A terminal's exit code comes back too.
    let out = exec(
        exec_request(
            &c,
            &["sh", "-c", "test -t 0 && test -t 1 && exit 7"],
            false,
            true,
        ),
        StreamInput::default(),
    );
    assert_eq!(out.exit_code, 7, "{out:?}");
    clock.lap("tty exec x2");

    cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
    cri.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    f.assert_no_leaks(Duration::from_secs(10));
    clock.lap("stop+remove+census");
    clock.report(&format!("{handler}, streaming exec"));
}

#[test]
fn runc_streaming_exec() {
    let test = "runc_streaming_exec";
    if !runc_available(test) {
        return;
    }
    streaming_exec("runc", None, Options::new());
}

/// Streaming exec in a husk pod VM: the exec's stdin FIFO, its output
/// FIFOs and its pty (ResizePty) all go through the shim to the guest.
#[test]
fn husk_streaming_exec() {
    let Some((shim, opts, cleanup)) = husk_setup("husk_streaming_exec", "husk_streaming_exec")
    else {
        return;
    };
    streaming_exec("husk", Some(&shim), opts);
    cleanup.assert_no_pod_dirs();
}
