//! Kubelet's resources for each QoS class, in a real guest (issue 20).
//! Through containerd's CRI with the `husk` handler, one pod per class,
//! each with the pod-level `cgroup_parent` kubelet's `cgroupsPerQOS` makes
//! with the cgroupfs driver (`<root>/kubepods/besteffort/pod<uid>`,
//! `<root>/kubepods/burstable/pod<uid>`, `<root>/kubepods/pod<uid>`; the
//! root is the fixture's cgroup parent, as kubelet's `--cgroup-root`, so
//! the pods' host cgroups are the fixture's to census and clean), and
//! containers with the `LinuxContainerResources` kubelet v1.32's
//! `generateLinuxContainerResources` sends on a cgroup v2 node:
//!
//! - BestEffort: `cpu_shares` 2 and `cpu_period` 100000, no quota (before
//!   issue 20 every such container failed: the guest had no `cpu.max`);
//! - Burstable (100m CPU request, 128 MiB memory limit): shares 102, the
//!   period, the memory limit;
//! - Guaranteed (250m, 64 MiB): shares 256, quota 25000, the period, the
//!   memory limit;
//! - each: a `hugepage_limits` entry of 0 for every huge page size of the
//!   node (2MB and 1GB), its `oom_score_adj`, and `unified`
//!   `memory.swap.max: 0` (NoSwap) and `memory.oom.group: 1` (v1.32's
//!   default `singleProcessOOMKill: false` on cgroup v2).
//!
//! ExecSync reads the guest's cgroup files as the container sees them
//! (`/sys/fs/cgroup` is its own cgroup: a bind of it without a cgroup
//! namespace, the namespace's root with one) and the test asserts the
//! values; then UpdateContainerResources (kubelet's in-place resize)
//! changes the Guaranteed container's CPU and memory and the files follow.
//! Nothing is left behind.
//!
//! containerd drops `hugepage_limits` where the *host* has no hugetlb
//! controller it recognizes (containerd 1.6 on a cgroup v1 host looks for
//! `/sys/fs/cgroup/hugetlb`; `tolerate_missing_hugetlb_controller`): the
//! hugetlb values are asserted when the runtime spec containerd made holds
//! them, and the guest's `hugetlb.2MB.max` is asserted to be there either
//! way. Needs root, /dev/kvm, containerd, the CNI plugins and
//! busybox-static; skips with a SKIP line without them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use husk_tests::cri::{container_config, husk_setup, v1 as api, Cri, CriFixture};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Generous: a first exec in a fresh pod VM pages busybox in over virtio-fs
/// on a loaded emulated host (~20 s here), and the Guaranteed container's
/// runs at a quarter of a vCPU (~85 s here).
const EXEC_TIMEOUT: Duration = Duration::from_secs(300);

/// The container's own cgroup, as it sees it.
const CGROUP: &str = "/sys/fs/cgroup";

/// The files the test reads in the container's cgroup.
const FILES: [&str; 9] = [
    "cgroup.controllers",
    "cpu.max",
    "cpu.weight",
    "memory.max",
    "memory.oom.group",
    "pids.max",
    "hugetlb.2MB.max",
    "hugetlb.2MB.rsvd.max",
    "hugetlb.1GB.max",
];

/// kubelet's `GetHugepageLimitsFromResources` for a node with 2 MB and
/// 1 GB pages and a pod that asks for none.
fn hugepage_zeros() -> Vec<api::HugepageLimit> {
    ["2MB", "1GB"]
        .iter()
        .map(|s| api::HugepageLimit {
            page_size: s.to_string(),
            limit: 0,
        })
        .collect()
}

/// What kubelet v1.32 adds on a cgroup v2 node (NoSwap; the whole
/// container OOM-killed together).
fn unified() -> std::collections::HashMap<String, String> {
    [("memory.swap.max", "0"), ("memory.oom.group", "1")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// kubelet's `MilliCPUToShares`.
fn shares(milli: i64) -> i64 {
    (milli * 1024 / 1000).max(2)
}

/// One QoS class: the pod's cgroup parent under `root`, the container's
/// resources, and the files they must give.
struct Class {
    name: &'static str,
    /// The QoS class's kubelet cgroup (`""`: Guaranteed, right under
    /// `kubepods`).
    qos_dir: &'static str,
    resources: api::LinuxContainerResources,
    /// (file, value) the container's cgroup must show.
    want: Vec<(&'static str, String)>,
}

fn classes() -> Vec<Class> {
    let period = 100_000;
    vec![
        Class {
            name: "besteffort",
            qos_dir: "besteffort",
            resources: api::LinuxContainerResources {
                cpu_shares: shares(0),
                cpu_period: period,
                oom_score_adj: 1000,
                hugepage_limits: hugepage_zeros(),
                unified: unified(),
                ..Default::default()
            },
            want: vec![
                ("cpu.weight", "1".into()),
                ("cpu.max", "max 100000".into()),
                ("memory.max", "max".into()),
            ],
        },
        Class {
            name: "burstable",
            qos_dir: "burstable",
            resources: api::LinuxContainerResources {
                cpu_shares: shares(100),
                cpu_period: period,
                memory_limit_in_bytes: 128 << 20,
                // 1000 - 1000 * 64 MiB request / 16 GiB node.
                oom_score_adj: 997,
                hugepage_limits: hugepage_zeros(),
                unified: unified(),
                ..Default::default()
            },
            want: vec![
                // runc's shares -> weight: 1 + (102 - 2) * 9999 / 262142.
                ("cpu.weight", "4".into()),
                ("cpu.max", "max 100000".into()),
                ("memory.max", (128u64 << 20).to_string()),
            ],
        },
        Class {
            name: "guaranteed",
            qos_dir: "",
            resources: guaranteed(250, 64),
            want: vec![
                ("cpu.weight", "10".into()),
                ("cpu.max", "25000 100000".into()),
                ("memory.max", (64u64 << 20).to_string()),
            ],
        },
    ]
}

/// A Guaranteed container's resources: `milli` CPU, `mib` memory.
fn guaranteed(milli: i64, mib: i64) -> api::LinuxContainerResources {
    api::LinuxContainerResources {
        cpu_shares: shares(milli),
        cpu_quota: milli * 100,
        cpu_period: 100_000,
        memory_limit_in_bytes: mib << 20,
        oom_score_adj: -997,
        hugepage_limits: hugepage_zeros(),
        unified: unified(),
        ..Default::default()
    }
}

/// The container's cgroup files (a file that is not there: `<absent>`)
/// and its PID 1's oom_score_adj (key `oom_score_adj`). One process, no
/// shell: the Guaranteed container runs at a quarter of the guest's one
/// vCPU, and a fork and exec in an emulated guest kernel cost that much
/// more.
fn cgroup_view(cri: &Cri, id: &str) -> BTreeMap<String, String> {
    let mut cmd = vec!["grep".to_string(), "-H".into(), "".into()];
    cmd.extend(FILES.iter().map(|f| format!("{CGROUP}/{f}")));
    cmd.push("/proc/1/oom_score_adj".into());
    let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let t = std::time::Instant::now();
    let out = cri
        .exec_sync(id, &argv, EXEC_TIMEOUT)
        .unwrap_or_else(|e| panic!("ExecSync in {id}: {e}"));
    eprintln!("ExecSync grep: {} ms", t.elapsed().as_millis());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let err = String::from_utf8_lossy(&out.stderr);
    // grep exits 2 when a file is missing (1GB pages, where the guest
    // has none), having printed the others.
    assert!(
        matches!(out.exit_code, 0 | 2),
        "grep exit {}: {text}{err}",
        out.exit_code
    );
    let mut view: BTreeMap<String, String> = FILES
        .iter()
        .map(|f| (f.to_string(), "<absent>".to_string()))
        .collect();
    for l in text.lines() {
        let Some((path, value)) = l.split_once(':') else {
            continue;
        };
        let key = match path.strip_prefix(CGROUP) {
            Some(f) => f.trim_start_matches('/'),
            None if path == "/proc/1/oom_score_adj" => "oom_score_adj",
            None => continue,
        };
        view.insert(key.to_string(), value.trim().to_string());
    }
    view
}

/// The runtime spec containerd made for `id`.
fn runtime_spec(cri: &Cri, id: &str) -> serde_json::Value {
    let v = cri.container_status_verbose(id).unwrap();
    let info: serde_json::Value =
        serde_json::from_str(v.info.get("info").expect("verbose info")).unwrap();
    info.get("runtimeSpec").cloned().unwrap_or_default()
}

/// Its `linux.resources`.
fn spec_resources(cri: &Cri, id: &str) -> serde_json::Value {
    runtime_spec(cri, id)
        .pointer("/linux/resources")
        .cloned()
        .unwrap_or_default()
}

fn check(
    class: &str,
    view: &BTreeMap<String, String>,
    want: &[(&str, String)],
    spec: &serde_json::Value,
) {
    let get = |f: &str| view.get(f).map(String::as_str).unwrap_or("<not read>");
    for (file, value) in want {
        assert_eq!(get(file), value, "{class}: {file}; all: {view:#?}");
    }
    let controllers: Vec<&str> = get("cgroup.controllers").split_whitespace().collect();
    for c in ["cpu", "memory", "pids", "io", "hugetlb"] {
        assert!(
            controllers.contains(&c),
            "{class}: the {c} controller is not enabled for containers: {controllers:?}"
        );
    }
    // The guest has 2 MB pages (x86-64 always has them with HUGETLBFS).
    let passed = spec
        .get("hugepageLimits")
        .and_then(|h| h.as_array())
        .is_some_and(|h| !h.is_empty());
    if passed {
        assert_eq!(get("hugetlb.2MB.max"), "0", "{class}: {view:#?}");
        assert_eq!(get("hugetlb.2MB.rsvd.max"), "0", "{class}: {view:#?}");
        // 1GB: "0" where the guest's CPU has gbpages, absent where not
        // (skipped by the agent: a zero limit for pages nobody can get).
        assert!(
            matches!(get("hugetlb.1GB.max"), "0" | "<absent>"),
            "{class}: {view:#?}"
        );
    } else {
        eprintln!(
            "NOTE {class}: containerd dropped hugepage_limits (this host has no hugetlb \
             controller it recognizes); the guest's hugetlb.2MB.max is checked to exist only"
        );
        assert_eq!(get("hugetlb.2MB.max"), "max", "{class}: {view:#?}");
    }
    if spec.pointer("/unified/memory.oom.group").is_some() {
        assert_eq!(get("memory.oom.group"), "1", "{class}: {view:#?}");
    }
}

/// The host's cgroup hierarchies: `/sys/fs/cgroup` (cgroup v2) and the
/// directories in it (v1 hierarchies, a hybrid's `unified`).
fn hierarchies() -> Vec<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup");
    let mut v = vec![root.clone()];
    v.extend(
        std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir()),
    );
    v
}

#[test]
fn husk_kubelet_qos_resources_in_the_guest() {
    let test = "husk_kubelet_qos_resources_in_the_guest";
    let Some((shim, opts, cleanup)) = husk_setup(test, "cri-qos") else {
        return;
    };
    let f = CriFixture::start("husk", Some(&shim), opts).expect("start the CRI fixture");
    let cri = f.cri();
    // A new guest image makes its template by a cold boot first (minutes
    // on this emulated host): a longer bound than the fixture's client's.
    let slow = Cri::connect(f.containerd().address())
        .unwrap()
        .with_timeout(Duration::from_secs(300));
    let mut pod_cgroups = Vec::new();
    for class in classes() {
        let mut pod_config = f.pod_config(class.name);
        let uid = pod_config.metadata.as_ref().unwrap().uid.clone();
        let parent = Path::new(&f.cgroup_parent)
            .join("kubepods")
            .join(class.qos_dir)
            .join(format!("pod{uid}"));
        pod_config.linux.as_mut().unwrap().cgroup_parent = parent.display().to_string();
        pod_cgroups.push(parent.clone());
        let _ = std::fs::create_dir_all(&pod_config.log_directory);
        let pod_id = slow
            .run_pod_sandbox(&pod_config, "husk")
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}", class.name));
        // The pod's VM runs in its kubelet-made host cgroup (the
        // sandbox's leaf below it, in each hierarchy the shim joins).
        let rel = parent.strip_prefix("/").unwrap().join(&pod_id);
        let joined: Vec<_> = hierarchies()
            .into_iter()
            .map(|h| h.join(&rel).join("cgroup.procs"))
            .filter(|p| std::fs::read_to_string(p).is_ok_and(|procs| !procs.trim().is_empty()))
            .collect();
        assert!(
            !joined.is_empty(),
            "{}: no shim in the pod's host cgroup {}",
            class.name,
            rel.display()
        );
        let mut config = container_config("app", &f.busybox, &["sleep", "600"], "app.log");
        config.linux = Some(api::LinuxContainerConfig {
            resources: Some(class.resources.clone()),
            // kubelet's default (no shareProcessNamespace): the
            // container's own pid namespace, its process PID 1.
            security_context: Some(api::LinuxContainerSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    pid: api::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        });
        let c = cri
            .create_container(&pod_id, &config, &pod_config)
            .unwrap_or_else(|e| panic!("CreateContainer {}: {e}", class.name));
        cri.start_container(&c)
            .unwrap_or_else(|e| panic!("StartContainer {}: {e}", class.name));
        let runtime = runtime_spec(cri, &c);
        let spec = runtime
            .pointer("/linux/resources")
            .cloned()
            .unwrap_or_default();
        eprintln!("{}: containerd's linux.resources: {spec}", class.name);
        let view = cgroup_view(cri, &c);
        eprintln!("{}: the container's cgroup: {view:?}", class.name);
        check(class.name, &view, &class.want, &spec);
        // The oom_score_adj containerd passed: kubelet's, except that the
        // fixture's `restrict_oom_score_adj` raises a negative one to
        // containerd's own (as for runc containers on this host).
        let adj = runtime
            .pointer("/process/oomScoreAdj")
            .and_then(serde_json::Value::as_i64)
            .expect("process.oomScoreAdj in the runtime spec");
        let kubelet = class.resources.oom_score_adj;
        assert!(
            adj == kubelet || (kubelet < 0 && adj >= kubelet),
            "{}: containerd passed oomScoreAdj {adj} for kubelet's {kubelet}",
            class.name
        );
        assert_eq!(
            view.get("oom_score_adj").map(String::as_str),
            Some(adj.to_string().as_str()),
            "{}",
            class.name
        );
        if class.name == "guaranteed" {
            // In-place resize: 250m/64 MiB -> 500m/128 MiB.
            let bigger = guaranteed(500, 128);
            cri.update_container_resources(&c, &bigger)
                .expect("UpdateContainerResources");
            let view = cgroup_view(cri, &c);
            eprintln!("{}: after the resize: {view:?}", class.name);
            let want = [
                ("cpu.weight", "20".to_string()),
                ("cpu.max", "50000 100000".to_string()),
                ("memory.max", (128u64 << 20).to_string()),
            ];
            check(class.name, &view, &want, &spec_resources(cri, &c));
            // A resize below what the container uses is the kernel's to
            // refuse or reclaim; a bad value is refused with the field.
            let mut bad = bigger.clone();
            bad.cpu_quota = 10;
            let e = cri
                .update_container_resources(&c, &bad)
                .expect_err("a 10 µs quota is refused");
            assert!(e.message.contains("quota"), "{e}");
            let view = cgroup_view(cri, &c);
            assert_eq!(
                view.get("cpu.max").map(String::as_str),
                Some("50000 100000")
            );
        }
        slow.stop_pod_sandbox(&pod_id).expect("StopPodSandbox");
        slow.remove_pod_sandbox(&pod_id).expect("RemovePodSandbox");
    }
    // kubelet removes the pod and QoS cgroups it made (the shim removes
    // only the sandbox's leaf): so does the test, deepest first.
    let mut dirs: Vec<PathBuf> = pod_cgroups
        .iter()
        .flat_map(|p| p.ancestors().map(Path::to_path_buf).collect::<Vec<_>>())
        .filter(|p| p.starts_with(Path::new(&f.cgroup_parent).join("kubepods")))
        .collect();
    dirs.sort_by(|a, b| (b.components().count(), b).cmp(&(a.components().count(), a)));
    dirs.dedup();
    for h in hierarchies() {
        for d in &dirs {
            let dir = h.join(d.strip_prefix("/").unwrap());
            // The shim leaves its leaf as it exits: a few tries.
            let end = std::time::Instant::now() + Duration::from_secs(10);
            while dir.is_dir() {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(e) if std::time::Instant::now() >= end => {
                        panic!("rmdir {}: {e}", dir.display())
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
    }
    f.assert_no_leaks(Duration::from_secs(10));
    cleanup.assert_no_pod_dirs();
}
