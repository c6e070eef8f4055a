//! [`adapt`] on specs like containerd's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{json, Value};

use super::*;

const SHARE: &str = "/run/husk/pod";

fn no_sandbox(_: &str) -> Option<u32> {
    None
}

fn adapt_v(cid: &str, spec: &Value, pid: &dyn Fn(&str) -> Option<u32>) -> (Value, Vec<Volume>) {
    let g = adapt(
        cid,
        Path::new("/bundles/c1"),
        &serde_json::to_vec(spec).unwrap(),
        SHARE,
        pid,
    )
    .unwrap();
    (serde_json::from_slice(&g.json).unwrap(), g.volumes)
}

fn err(cid: &str, spec: &Value, pid: &dyn Fn(&str) -> Option<u32>) -> TaskError {
    adapt(
        cid,
        Path::new("/bundles/c1"),
        &serde_json::to_vec(spec).unwrap(),
        SHARE,
        pid,
    )
    .expect_err("expected an error")
}

/// The mounts containerd's default spec has (`ctr run`), none a bind.
fn default_mounts() -> Value {
    json!([
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    ])
}

#[test]
fn binds_are_rewritten_and_others_pass_through() {
    let mut mounts = default_mounts();
    let m = mounts.as_array_mut().unwrap();
    m.push(json!({"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]}));
    m.push(json!({"destination": "/etc/hostname-test", "type": "none", "source": "/etc/hostname", "options": ["bind"]}));
    m.push(json!({"destination": "/rel", "type": "bind", "source": "vol", "options": ["rbind", "ro", "rw"]}));
    let spec = json!({"ociVersion": "1.0.2", "mounts": mounts, "process": {"args": ["sh"]}});
    let (out, vols) = adapt_v("c1", &spec, &no_sandbox);
    // Non-binds: byte for byte.
    for i in 0..7 {
        assert_eq!(out["mounts"][i], spec["mounts"][i], "mounts[{i}]");
    }
    assert_eq!(
        vols,
        vec![
            Volume {
                what: "mounts[7] (/data)".into(),
                index: 7,
                source: "/srv/data".into(),
                recursive: true,
                read_only: true,
            },
            Volume {
                what: "mounts[8] (/etc/hostname-test)".into(),
                index: 8,
                source: "/etc/hostname".into(),
                recursive: false,
                read_only: false,
            },
            Volume {
                what: "mounts[9] (/rel)".into(),
                index: 9,
                source: "/bundles/c1/vol".into(),
                recursive: true,
                read_only: false,
            },
        ]
    );
    assert_eq!(out["mounts"][7]["source"], "/run/husk/pod/c1/mounts/7");
    assert_eq!(out["mounts"][8]["source"], "/run/husk/pod/c1/mounts/8");
    assert_eq!(out["mounts"][9]["source"], "/run/husk/pod/c1/mounts/9");
    // Options and destination stay: the agent binds with them in the guest.
    assert_eq!(out["mounts"][7]["options"], json!(["rbind", "ro"]));
    assert_eq!(out["mounts"][7]["destination"], "/data");
    // Everything else is kept.
    assert_eq!(out["process"], spec["process"]);
}

#[test]
fn bad_bind_entries_name_the_mount() {
    let spec = json!({"mounts": [{"destination": "/d", "type": "bind", "options": ["rbind"]}]});
    let e = err("c1", &spec, &no_sandbox);
    assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
    assert!(e.to_string().contains("mounts[0] (/d)"), "{e}");
    let spec =
        json!({"mounts": [{"destination": "/d", "type": "bind", "source": "/x", "options": "ro"}]});
    assert_eq!(
        err("c1", &spec, &no_sandbox).code(),
        ttrpc::Code::INVALID_ARGUMENT
    );
    let spec = json!({"mounts": {"destination": "/d"}});
    assert_eq!(
        err("c1", &spec, &no_sandbox).code(),
        ttrpc::Code::INVALID_ARGUMENT
    );
    let e = adapt("c1", Path::new("/b"), b"not json", SHARE, &no_sandbox).unwrap_err();
    assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
}

fn namespaces_of(v: &Value) -> Vec<(String, Option<String>)> {
    v["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap().to_owned(),
                n.get("path").and_then(Value::as_str).map(str::to_owned),
            )
        })
        .collect()
}

fn ns(v: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    v.iter()
        .map(|(t, p)| (t.to_string(), p.map(str::to_owned)))
        .collect()
}

/// The pod's network is the guest's own: the sandbox gets no network
/// namespace entry at all (it stays where eth0 is); the other host paths
/// become new namespaces.
#[test]
fn sandbox_gets_new_namespaces_for_host_paths() {
    let spec = json!({
        "annotations": {CONTAINER_TYPE: "sandbox", SANDBOX_ID: "sb1"},
        "linux": {"namespaces": [
            {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-1234-abcd"}
        ]}
    });
    let (out, _) = adapt_v("sb1", &spec, &no_sandbox);
    assert_eq!(
        namespaces_of(&out),
        ns(&[("pid", None), ("ipc", None), ("uts", None), ("mount", None),])
    );
}

/// CRI's `/proc/<task pid>/ns/…`: the pid containerd got for the sandbox
/// task, the shim's.
fn reported(ns: &str) -> String {
    format!("/proc/{}/ns/{ns}", std::process::id())
}

#[test]
fn app_containers_join_the_sandbox_in_the_guest() {
    let spec = json!({
        "annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "sb1"},
        "linux": {"namespaces": [
            {"type": "pid", "path": "/var/run/pidns-of-host"},
            {"type": "ipc", "path": reported("ipc")},
            {"type": "uts", "path": reported("uts")},
            {"type": "mount"},
            {"type": "network", "path": "/var/run/netns/cni-1234-abcd"},
            {"type": "cgroup", "path": ""}
        ]}
    });
    let pid = |sid: &str| (sid == "sb1").then_some(42);
    let (out, _) = adapt_v("c1", &spec, &pid);
    assert_eq!(
        namespaces_of(&out),
        ns(&[
            ("pid", Some("/proc/42/ns/pid")),
            ("ipc", Some("/proc/42/ns/ipc")),
            ("uts", Some("/proc/42/ns/uts")),
            ("mount", None),
            ("network", Some("/proc/42/ns/net")),
            ("cgroup", Some("")),
        ])
    );
    // The sandbox is not running here: its namespaces cannot be found.
    let e = err("c1", &spec, &no_sandbox);
    assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION);
    assert!(e.to_string().contains("linux.namespaces[0].path"), "{e}");
    assert!(e.to_string().contains("sb1"), "{e}");
    // A guest pid, or any pid but the one reported, names no task of the
    // pod: refused, whatever the guest would find there.
    for path in [
        "/proc/42/ns/ipc",
        "/proc/1/ns/ipc",
        "/proc/self/ns/ipc",
        "/proc/42/ns/../x",
    ] {
        let spec = json!({
            "annotations": {CONTAINER_TYPE: "container", SANDBOX_ID: "sb1"},
            "linux": {"namespaces": [{"type": "ipc", "path": path}]}
        });
        let e = err("c1", &spec, &pid);
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{path}: {e}");
        assert!(e.to_string().contains("linux.namespaces[0].path"), "{e}");
    }
}

#[test]
fn host_namespaces_outside_cri_are_refused() {
    let spec = json!({"linux": {"namespaces": [
        {"type": "pid"}, {"type": "mount"},
        {"type": "network", "path": "/var/run/netns/mine"}
    ]}});
    let e = err("c1", &spec, &|_| Some(7));
    assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
    assert!(e.to_string().contains("linux.namespaces[2].path"), "{e}");
    // New namespaces, and the guest's own (`ctr --with-ns
    // pid:/proc/1/ns/pid`), pass.
    let spec = json!({"linux": {"namespaces": [
        {"type": "pid", "path": "/proc/1/ns/pid"}, {"type": "mount"}, {"type": "network"}
    ]}});
    let (out, vols) = adapt_v("c1", &spec, &no_sandbox);
    assert_eq!(out, spec);
    assert!(vols.is_empty());
    // A pid that is no task of this pod.
    let spec = json!({"linux": {"namespaces": [{"type": "network", "path": "/proc/9/ns/net"}]}});
    assert_eq!(
        err("c1", &spec, &no_sandbox).code(),
        ttrpc::Code::INVALID_ARGUMENT
    );
    // A ctr pod: the reported pid is the `io.husk.pod` task's.
    let spec = json!({
        "annotations": {"io.husk.pod": "p1"},
        "linux": {"namespaces": [{"type": "network", "path": reported("net")}]}
    });
    let pod = |sid: &str| (sid == "p1").then_some(31);
    let (out, _) = adapt_v("c2", &spec, &pod);
    assert_eq!(
        namespaces_of(&out),
        ns(&[("network", Some("/proc/31/ns/net"))])
    );
    assert_eq!(
        err("c2", &spec, &no_sandbox).code(),
        ttrpc::Code::FAILED_PRECONDITION
    );
    // Without a pod annotation the task is its own pod: nothing to join.
    let spec = json!({"linux": {"namespaces": [{"type": "network", "path": reported("net")}]}});
    assert_eq!(err("c3", &spec, &pod).code(), ttrpc::Code::INVALID_ARGUMENT);
}

/// An app container's spec as containerd 1.6's CRI writes it (trimmed
/// of capabilities, seccomp and masked paths, which pass through).
const CRI_CONTAINER: &str = r#"{
  "ociVersion": "1.0.2-dev",
  "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "sleep 3600"],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=pod1"],
    "cwd": "/", "capabilities": {"bounding": ["CAP_CHOWN"]}, "oomScoreAdj": 1000},
  "root": {"path": "rootfs"},
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/sb1/hosts", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/dev/termination-log", "type": "bind", "source": "/var/lib/kubelet/pods/uid/containers/app/0a1b", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/etc/hostname", "type": "bind", "source": "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/sb1/hostname", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/sb1/resolv.conf", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/sb1/shm", "options": ["rbind", "rprivate", "rw"]},
    {"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "type": "bind", "source": "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~projected/kube-api-access-x", "options": ["rbind", "rprivate", "ro"]}
  ],
  "annotations": {
    "io.kubernetes.cri.container-name": "app",
    "io.kubernetes.cri.container-type": "container",
    "io.kubernetes.cri.image-name": "docker.io/library/busybox:latest",
    "io.kubernetes.cri.sandbox-id": "sb1",
    "io.kubernetes.cri.sandbox-name": "pod1",
    "io.kubernetes.cri.sandbox-namespace": "default"
  },
  "linux": {
    "resources": {"memory": {"limit": 134217728}, "cpu": {"shares": 2}},
    "cgroupsPath": "/kubepods/besteffort/poduid/app",
    "namespaces": [
      {"type": "pid"},
      {"type": "ipc", "path": "/proc/101/ns/ipc"},
      {"type": "uts", "path": "/proc/101/ns/uts"},
      {"type": "mount"},
      {"type": "network", "path": "/proc/101/ns/net"}
    ],
    "maskedPaths": ["/proc/acpi"],
    "readonlyPaths": ["/proc/bus"]
  }
}"#;

#[test]
fn a_cri_container_spec() {
    // CRI wrote the pause task's pid as reported: the shim's.
    let shim = format!("/proc/{}/", std::process::id());
    let spec: Value = serde_json::from_str(&CRI_CONTAINER.replace("/proc/101/", &shim)).unwrap();
    // The pause task's guest pid is 101.
    let pid = |sid: &str| (sid == "sb1").then_some(101);
    let (out, vols) = adapt_v("app1", &spec, &pid);
    let dests: Vec<(&str, usize, bool)> = vols
        .iter()
        .map(|v| {
            (
                spec["mounts"][v.index]["destination"].as_str().unwrap(),
                v.index,
                v.read_only,
            )
        })
        .collect();
    assert_eq!(
        dests,
        [
            ("/etc/hosts", 6, false),
            ("/dev/termination-log", 7, false),
            ("/etc/hostname", 8, false),
            ("/etc/resolv.conf", 9, false),
            ("/dev/shm", 10, false),
            ("/var/run/secrets/kubernetes.io/serviceaccount", 11, true),
        ]
    );
    assert!(vols.iter().all(|v| v.recursive));
    for v in &vols {
        assert_eq!(
            out["mounts"][v.index]["source"],
            format!("/run/husk/pod/app1/mounts/{}", v.index)
        );
        assert_eq!(
            v.source.to_str().unwrap(),
            spec["mounts"][v.index]["source"]
        );
    }
    // The /proc paths name the pause's guest pid; nothing else changes.
    let mut expect: Value = serde_json::from_str(CRI_CONTAINER).unwrap();
    for v in &vols {
        expect["mounts"][v.index]["source"] = out["mounts"][v.index]["source"].clone();
    }
    assert_eq!(out, expect);
}
