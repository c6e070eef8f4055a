//! Host tests: real containers from a busybox rootfs (root only; a SKIP
//! line otherwise). Children are reaped with [`ReapMode::PerChild`], so the
//! tests share one process. cgroup parts run where a cgroup2 mount exists
//! (this host is v1 hybrid: `/sys/fs/cgroup/unified` has no controllers, so
//! limits and memory/pids stats are not exercised here; membership,
//! freeze, kill and removal are).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde_json::{json, Value};

use super::*;
use crate::reaper::{ExitStatus, ReapMode};
use std::os::fd::AsRawFd;

fn is_root() -> bool {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! need_root {
    ($name:expr) => {
        if !is_root() {
            eprintln!("SKIP container::{}: needs root", $name);
            return;
        }
    };
}

/// A busybox rootfs shared by the tests (read-only use, plus mount
/// points), built once into a temporary directory and renamed into place,
/// so runs share one copy instead of leaving one each.
fn rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let done = std::env::temp_dir().join("husk-ctr-rootfs");
        if done.join("etc/secret").exists() {
            return done;
        }
        let dir = std::env::temp_dir().join(format!("husk-ctr-rootfs.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "ro"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet));
            }
        }
        std::fs::write(dir.join("etc/secret"), "secret\n").unwrap();
        if std::fs::rename(&dir, &done).is_err() {
            // Another run got there first.
            let _ = std::fs::remove_dir_all(&dir);
        }
        done
    })
}

/// The cgroup2 mount of this host, if any.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// A registry with a pod cgroup of its own (`husk-test-<pid>-<n>`), removed
/// when the test drops it.
struct TestRegistry(Containers);

impl std::ops::Deref for TestRegistry {
    type Target = Containers;
    fn deref(&self) -> &Containers {
        &self.0
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if let Some(root) = &self.0.config().cgroup_root {
            let _ = std::fs::remove_dir(root.join(&self.0.config().cgroup_parent));
        }
    }
}

fn registry() -> TestRegistry {
    // One parent per registry: a test that ends removes its parent, which
    // must not be another running test's.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let config = Config {
        cgroup_root: cgroup2_root(),
        cgroup_parent: format!("husk-test-{}-{n}", std::process::id()),
    };
    TestRegistry(Containers::new(Arc::new(Reaper::new(ReapMode::PerChild)), config).unwrap())
}

/// A containerd-like spec running `args`.
fn spec(args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.1.0",
        "root": {"path": "rootfs"},
        "hostname": "ctr",
        "process": {
            "args": args,
            "env": ["PATH=/bin", "HOME=/"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {
                "bounding": CAPS, "effective": CAPS, "permitted": CAPS
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1024}],
            "noNewPrivileges": true
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                            "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/etc/secret"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Docker's default capabilities.
const CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

fn id(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

struct Output {
    code: u32,
    stdout: String,
    stderr: String,
}

fn pipes() -> (Stdio, File, File) {
    let (out_r, out_w) = cloexec_pipe().unwrap();
    let (err_r, err_w) = cloexec_pipe().unwrap();
    (
        Stdio::Pipes {
            stdin: None,
            stdout: out_w,
            stderr: err_w,
        },
        File::from(out_r),
        File::from(err_r),
    )
}

/// Creates, starts, collects output and exit, removes.
fn run(c: &Containers, name: &str, spec: &Value) -> Output {
    run_in(c, name, spec, rootfs())
}

/// [`run`] on the root file system `root`.
fn run_in(c: &Containers, name: &str, spec: &Value, root: &Path) -> Output {
    let id = id(name);
    let plan = c.validate(&id, spec.to_string().as_bytes(), root).unwrap();
    let (stdio, mut out, mut err) = pipes();
    c.create(plan, stdio).unwrap();
    c.start(&id, None).unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let mut stdout = String::new();
    out.read_to_string(&mut stdout).unwrap();
    let stderr = reader.join().unwrap();
    let info = c
        .wait(&id, None, Some(Duration::from_secs(30)))
        .unwrap()
        .expect("exited");
    c.remove(&id).unwrap();
    Output {
        code: info.exit_code(),
        stdout,
        stderr,
    }
}

fn sh(script: &str) -> Value {
    spec(&["sh", "-c", script])
}

#[test]
fn echo_exit_code_and_pid_1() {
    need_root!("echo_exit_code_and_pid_1");
    let c = registry();
    let o = run(&c, "echo", &spec(&["echo", "hello"]));
    assert_eq!((o.code, o.stdout.as_str()), (0, "hello\n"), "{}", o.stderr);
    assert_eq!(run(&c, "exit3", &sh("exit 3")).code, 3);
    let o = run(&c, "pid1", &sh("echo $$; hostname"));
    assert_eq!(o.stdout, "1\nctr\n", "{}", o.stderr);
}

#[test]
fn readonly_root_user_and_rlimit() {
    need_root!("readonly_root_user_and_rlimit");
    let c = registry();
    let mut s = sh("touch /newfile 2>/dev/null && echo writable || echo readonly; id; ulimit -n");
    s["root"]["readonly"] = json!(true);
    s["process"]["user"] =
        json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20], "umask": 63});
    s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 123, "hard": 456}]);
    let o = run(&c, "ro-user", &s);
    assert_eq!(
        o.stdout, "readonly\nuid=1000 gid=1001 groups=10,20\n123\n",
        "{}",
        o.stderr
    );
}

#[test]
fn capabilities_and_seccomp() {
    need_root!("capabilities_and_seccomp");
    let c = registry();
    let caps: Vec<&str> = CAPS
        .iter()
        .copied()
        .filter(|c| *c != "CAP_NET_RAW")
        .collect();
    let mut s = sh("grep CapEff /proc/self/status; mkdir /tmp/d && echo made || echo refused");
    s["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
    s["linux"]["seccomp"] = json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    });
    let o = run(&c, "caps", &s);
    let eff = o
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let eff = u64::from_str_radix(&eff, 16).unwrap();
    assert_eq!(eff & (1 << 13), 0, "CAP_NET_RAW dropped: {eff:x}");
    assert_ne!(eff & 1, 0, "CAP_CHOWN kept: {eff:x}");
    assert!(o.stdout.ends_with("refused\n"), "{} {}", o.stdout, o.stderr);
    assert!(o.stderr.contains("Operation not permitted"), "{}", o.stderr);
}

#[test]
fn masked_readonly_and_isolation() {
    need_root!("masked_readonly_and_isolation");
    let c = registry();
    let marker = std::env::temp_dir().join(format!("husk-host-marker-{}", std::process::id()));
    std::fs::write(&marker, "host").unwrap();
    let script = format!(
        "cat /etc/secret; echo masked; echo 1 > /proc/sys/kernel/ns_last_pid 2>/dev/null && echo rw || echo ro; \
         [ -e {} ] && echo visible || echo hidden; ls /",
        marker.display()
    );
    let o = run(&c, "masked", &sh(&script));
    std::fs::remove_file(&marker).unwrap();
    let mut lines = o.stdout.lines();
    assert_eq!(lines.next(), Some("masked"), "{} {}", o.stdout, o.stderr);
    assert_eq!(lines.next(), Some("ro"));
    assert_eq!(lines.next(), Some("hidden"));
    let ls: Vec<&str> = lines.collect();
    assert_eq!(
        ls,
        ["bin", "dev", "etc", "proc", "ro", "sys", "tmp"],
        "only the rootfs"
    );
}

#[test]
fn exec_joins_the_container() {
    need_root!("exec_joins_the_container");
    let c = registry();
    let id = id("exec");
    // A stale marker of an earlier run (the rootfs is shared) must not count.
    let _ = std::fs::remove_file(rootfs().join("tmp").join(&id));
    let events = c.events();
    let plan = c
        .validate(
            &id,
            sh(&format!("echo ready > /tmp/{id}; exec sleep 30"))
                .to_string()
                .as_bytes(),
            rootfs(),
        )
        .unwrap();
    c.create(plan, Stdio::Null).unwrap();
    let init = c.start(&id, None).unwrap();
    assert_eq!(c.state(&id).unwrap().state, State::Running);
    // The exec sees the init as PID 1, its /tmp, and its hostname.
    let process = json!({
        "args": ["sh", "-c", format!(
            "i=0; while [ \"$(cat /proc/1/comm)\" != sleep ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
             cat /proc/1/comm; cat /tmp/{id}; hostname; echo $$")],
        "env": ["PATH=/bin"], "cwd": "/tmp", "user": {"uid": 0, "gid": 0}
    });
    let (stdio, mut out, _err) = pipes();
    c.exec(&id, "e1", process.to_string().as_bytes(), stdio)
        .unwrap();
    let e = c
        .exec(&id, "e1", process.to_string().as_bytes(), Stdio::Null)
        .unwrap_err();
    assert_eq!(e.code(), ttrpc::Code::ALREADY_EXISTS);
    let pid = c.start(&id, Some("e1")).unwrap();
    assert_ne!(pid, init);
    let mut s = String::new();
    out.read_to_string(&mut s).unwrap();
    let info = c
        .wait(&id, Some("e1"), Some(Duration::from_secs(30)))
        .unwrap()
        .unwrap();
    assert_eq!(info.exit_code(), 0, "{s}");
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(&lines[..3], ["sleep", "ready", "ctr"], "{s}");
    assert!(lines[3].parse::<u32>().unwrap() > 1, "{s}");
    if c.config().cgroup_root.is_some() {
        let pids = c.pids(&id).unwrap();
        assert_eq!(
            pids,
            [ProcessInfo {
                pid: init,
                exec_id: None
            }]
        );
    }
    // The exit watch fires once the init is killed.
    let notify = c.exit_notify(&id, None).unwrap();
    c.signal(&id, None, libc::SIGKILL, false).unwrap();
    let mut pfd = libc::pollfd {
        fd: notify.fd().as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 10_000) }, 1);
    let info = c.wait(&id, None, None).unwrap().unwrap();
    assert_eq!(info.status, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(info.exit_code(), 137);
    assert_eq!(c.state(&id).unwrap().state, State::Stopped);
    let got: Vec<Event> = events.try_iter().collect();
    assert!(
        got.iter()
            .any(|e| matches!(e, Event::Exited { exec_id: Some(x), .. } if x == "e1")),
        "{got:?}"
    );
    let e = c
        .exec(&id, "e2", process.to_string().as_bytes(), Stdio::Null)
        .unwrap_err();
    assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION, "{e}");
    c.remove(&id).unwrap();
}

#[test]
fn terminal() {
    need_root!("terminal");
    let c = registry();
    let id = id("tty");
    let mut s = sh("[ -t 0 ] && echo tty; stty size");
    s["process"]["terminal"] = json!(true);
    s["process"]["consoleSize"] = json!({"height": 30, "width": 100});
    let plan = c.validate(&id, s.to_string().as_bytes(), rootfs()).unwrap();
    let master = c.create(plan, Stdio::Terminal).unwrap().unwrap();
    c.start(&id, None).unwrap();
    let mut out = Vec::new();
    let mut f = File::from(master);
    // EIO once the slave side is gone.
    let _ = f.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert_eq!(out, "tty\n30 100\n");
    assert_eq!(c.wait(&id, None, None).unwrap().unwrap().exit_code(), 0);
    c.remove(&id).unwrap();
}

/// An exec's terminal is a pty of the container's own devpts: `tty` (its
/// ttyname) names it, `/dev/pts/0`, the container's first, as under runc;
/// the console size applies.
#[test]
fn exec_terminal_is_named_in_the_container() {
    need_root!("exec_terminal_is_named_in_the_container");
    let c = registry();
    let id = id("exectty");
    let plan = c
        .validate(&id, sh("exec sleep 30").to_string().as_bytes(), rootfs())
        .unwrap();
    c.create(plan, Stdio::Null).unwrap();
    c.start(&id, None).unwrap();
    let process = json!({
        "args": ["sh", "-c", "tty; stty size"], "terminal": true,
        "consoleSize": {"height": 30, "width": 100},
        "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}
    });
    let master = c
        .exec(&id, "t", process.to_string().as_bytes(), Stdio::Terminal)
        .unwrap()
        .unwrap();
    c.start(&id, Some("t")).unwrap();
    let mut out = Vec::new();
    // EIO once the slave side is gone.
    let _ = File::from(master).read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert_eq!(out, "/dev/pts/0\n30 100\n");
    let info = c
        .wait(&id, Some("t"), Some(Duration::from_secs(30)))
        .unwrap()
        .unwrap();
    assert_eq!(info.exit_code(), 0);
    c.signal(&id, None, libc::SIGKILL, false).unwrap();
    c.wait(&id, None, Some(Duration::from_secs(30))).unwrap();
    c.remove(&id).unwrap();
}

#[test]
fn bad_specs_name_the_field() {
    let c = registry();
    let check = |s: &Value, field: &str, code: ttrpc::Code| {
        let e = c
            .validate("bad", s.to_string().as_bytes(), rootfs())
            .unwrap_err();
        assert_eq!((e.field.as_str(), e.code()), (field, code), "{e}");
    };
    let mut s = spec(&[]);
    check(&s, "process.args", ttrpc::Code::INVALID_ARGUMENT);
    s = spec(&["true"]);
    s["linux"]["namespaces"][2] = json!({"type": "nope"});
    check(
        &s,
        "linux.namespaces[2].type",
        ttrpc::Code::INVALID_ARGUMENT,
    );
    s = spec(&["true"]);
    s["linux"]["namespaces"][2] = json!({"type": "user"});
    check(
        &s,
        "linux.namespaces[2].type",
        ttrpc::Code::INVALID_ARGUMENT,
    );
    s = spec(&["true"]);
    s["process"]["capabilities"]["bounding"][1] = json!("CAP_NOPE");
    let e = c
        .validate("bad", s.to_string().as_bytes(), rootfs())
        .unwrap_err();
    assert!(e.field.starts_with("process.capabilities.bounding"), "{e}");
    s = spec(&["true"]);
    s["mounts"][3]["options"] = json!(["idmap"]);
    check(&s, "mounts[3].options[0]", ttrpc::Code::INVALID_ARGUMENT);
    s = spec(&["true"]);
    s["mounts"][1] = json!({"destination": "/etc/x", "type": "bind", "source": "/no/such/source"});
    check(&s, "mounts[1].source", ttrpc::Code::NOT_FOUND);
    s = spec(&["true"]);
    s["hooks"] = json!({"prestart": [{"path": "/bin/true"}]});
    check(&s, "hooks", ttrpc::Code::INVALID_ARGUMENT);
    s = spec(&["true"]);
    s["linux"]["sysctl"] = json!({"kernel.panic": "1"});
    check(
        &s,
        "linux.sysctl.kernel.panic",
        ttrpc::Code::INVALID_ARGUMENT,
    );
    s = spec(&["true"]);
    s["process"]["rlimits"][0]["soft"] = json!(2048);
    check(&s, "process.rlimits[0]", ttrpc::Code::INVALID_ARGUMENT);
    let e = c
        .validate(
            "bad",
            spec(&["true"]).to_string().as_bytes(),
            Path::new("/no/such/rootfs"),
        )
        .unwrap_err();
    assert_eq!(
        (e.field.as_str(), e.code()),
        ("root.path", ttrpc::Code::NOT_FOUND)
    );
    let e = c
        .validate("../x", spec(&["true"]).to_string().as_bytes(), rootfs())
        .unwrap_err();
    assert_eq!(e.field, "id");
    let e = c
        .validate("bad", b"{\"process\": 3}", rootfs())
        .unwrap_err();
    assert_eq!(e.field, "process");
}

#[test]
fn unknown_duplicate_and_wrong_state() {
    need_root!("unknown_duplicate_and_wrong_state");
    let c = registry();
    for e in [
        c.start("nope", None).unwrap_err(),
        c.remove("nope").unwrap_err(),
        c.signal("nope", None, 9, false).unwrap_err(),
        c.state("nope").unwrap_err(),
    ] {
        assert_eq!(e.code(), ttrpc::Code::NOT_FOUND, "{e}");
    }
    let id = id("dup");
    let plan = c
        .validate(&id, spec(&["true"]).to_string().as_bytes(), rootfs())
        .unwrap();
    c.create(plan.clone(), Stdio::Null).unwrap();
    assert_eq!(
        c.create(plan, Stdio::Null).unwrap_err().code(),
        ttrpc::Code::ALREADY_EXISTS
    );
    assert_eq!(
        c.pause(&id).unwrap_err().code(),
        ttrpc::Code::FAILED_PRECONDITION
    );
    assert_eq!(
        c.exec(
            &id,
            "x",
            b"{\"args\":[\"true\"],\"cwd\":\"/\",\"user\":{\"uid\":0,\"gid\":0}}",
            Stdio::Null
        )
        .unwrap_err()
        .code(),
        ttrpc::Code::FAILED_PRECONDITION
    );
    // Removing a created (never started) container.
    c.remove(&id).unwrap();
    assert!(c.ids().is_empty());
}

#[test]
fn a_failing_start_names_the_step() {
    need_root!("a_failing_start_names_the_step");
    let c = registry();
    let id = id("fail");
    let plan = c
        .validate(
            &id,
            spec(&["no-such-program"]).to_string().as_bytes(),
            rootfs(),
        )
        .unwrap();
    c.create(plan, Stdio::Null).unwrap();
    let e = c.start(&id, None).unwrap_err();
    assert_eq!(e.code(), ttrpc::Code::NOT_FOUND, "{e}");
    assert!(e.to_string().contains("exec"), "{e}");
    c.remove(&id).unwrap();
    let mut s = spec(&["true"]);
    s["process"]["cwd"] = json!("/no/such/dir");
    let plan = c.validate(&id, s.to_string().as_bytes(), rootfs()).unwrap();
    c.create(plan, Stdio::Null).unwrap();
    let e = c.start(&id, None).unwrap_err();
    assert!(e.to_string().contains("process.cwd /no/such/dir"), "{e}");
    c.remove(&id).unwrap();
}

#[test]
fn cgroup_pause_resume_stats_and_cleanup() {
    need_root!("cgroup_pause_resume_stats_and_cleanup");
    let Some(root) = cgroup2_root() else {
        eprintln!(
            "SKIP container::cgroup_pause_resume_stats_and_cleanup: no cgroup2 mount on this host"
        );
        return;
    };
    if !root.join("cgroup.controllers").exists() {
        eprintln!(
            "SKIP container::cgroup_pause_resume_stats_and_cleanup: {} has no cgroup.controllers",
            root.display()
        );
        return;
    }
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let before = mountinfo();
    let c = registry();
    let id = id("cg");
    let mut s = sh("exec sleep 30");
    s["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}]);
    s["mounts"].as_array_mut().unwrap().push(json!(
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}));
    let plan = c.validate(&id, s.to_string().as_bytes(), rootfs()).unwrap();
    c.create(plan, Stdio::Null).unwrap();
    let dir = root.join(&c.config().cgroup_parent).join(&id);
    assert!(dir.is_dir());
    let pid = c.start(&id, None).unwrap();
    assert_eq!(c.pids(&id).unwrap(), [ProcessInfo { pid, exec_id: None }]);
    c.pause(&id).unwrap();
    assert_eq!(c.state(&id).unwrap().state, State::Paused);
    assert_eq!(
        cgroup::keyed(
            &std::fs::read_to_string(dir.join("cgroup.events")).unwrap(),
            "frozen"
        ),
        Some(1)
    );
    c.resume(&id).unwrap();
    assert_eq!(c.state(&id).unwrap().state, State::Running);
    let stats = c.stats(&id).unwrap();
    eprintln!("stats here: {stats:?}");
    // Limits need controllers this host's cgroup2 does not have.
    let e = c.update(&id, br#"{"pids":{"limit":10}}"#);
    if cgroup::available(&root)
        .unwrap()
        .iter()
        .any(|x| x == "pids")
    {
        e.unwrap();
    } else {
        let e = e.unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{e}");
        eprintln!(
            "SKIP container::cgroup limits: no pids controller in {}: {e}",
            root.display()
        );
    }
    c.pause(&id).unwrap();
    // remove thaws, kills, waits, removes the directory.
    c.remove(&id).unwrap();
    assert!(!dir.exists());
    assert_eq!(mountinfo(), before, "the test's mounts are untouched");
}

#[test]
fn the_registry_can_be_shared_by_rpc_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Containers>();
    send_sync::<Plan>();
}

#[test]
fn each_oom_kill_is_reported_once_whoever_sees_it_first() {
    // The monitor (on POLLPRI) and remove (its last look before the
    // cgroup goes) share one count: a count already reported, or a stale
    // lower one read late, is no news.
    let s = OomState::default();
    let oom = |count| Event::Oom {
        id: "c".into(),
        count,
    };
    assert_eq!(s.news("c", 0), None);
    assert_eq!(s.news("c", 1), Some(oom(1)));
    assert_eq!(s.news("c", 1), None, "remove's look after the monitor's");
    assert_eq!(s.news("c", 3), Some(oom(2)));
    assert_eq!(s.news("c", 2), None, "a stale read");
}

/// A CRI sandbox (pause) container is planned as the agent's own pause:
/// `/init husk-pause`, new ipc/uts/pid/mount namespaces only, no mounts; the
/// pod's namespaced sysctls (net.* too: the VM's network is the pod's) are
/// kept.
#[test]
fn a_cri_sandbox_is_the_agents_pause() {
    let c = registry();
    let mut s = spec(&["/pause"]);
    s["annotations"] = json!({"io.kubernetes.cri.container-type": "sandbox"});
    s["linux"]["sysctl"] = json!({"net.ipv4.ip_unprivileged_port_start": "0"});
    let p = c
        .validate("sb", s.to_string().as_bytes(), rootfs())
        .unwrap();
    assert!(p.light_sandbox);
    let args: Vec<&str> = p.process.args.iter().map(|a| a.to_str().unwrap()).collect();
    assert_eq!(args, ["/init", "husk-pause"]);
    assert_eq!(
        p.namespaces.clone_flags,
        libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS | libc::CLONE_NEWNS
    );
    assert!(p.root.mounts.is_empty());
    assert_eq!(p.sysctl.len(), 1);
    assert_eq!(p.process.uid, 0);
    // An app container is planned as before.
    s["annotations"] = json!({"io.kubernetes.cri.container-type": "container"});
    let p = c
        .validate("app", s.to_string().as_bytes(), rootfs())
        .unwrap();
    assert!(!p.light_sandbox);
    assert_eq!(p.root.mounts.len(), 6);
}

/// A wait on the init of a container that is removed before it started
/// (so never exits) returns at the removal, not at its timeout.
#[test]
fn removal_wakes_the_waiters_of_a_never_started_process() {
    need_root!("removal_wakes_the_waiters_of_a_never_started_process");
    let c = std::sync::Arc::new(registry());
    let id = id("orphan");
    let plan = c
        .validate(&id, spec(&["true"]).to_string().as_bytes(), rootfs())
        .unwrap();
    c.create(plan, Stdio::Null).unwrap();
    let (c2, id2) = (c.clone(), id.clone());
    let t0 = std::time::Instant::now();
    let waiter =
        std::thread::spawn(move || c2.wait(&id2, None, Some(std::time::Duration::from_secs(300))));
    std::thread::sleep(std::time::Duration::from_millis(200));
    c.remove(&id).unwrap();
    let r = waiter.join().unwrap();
    assert!(matches!(r, Ok(None)), "{r:?}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
}

/// A light sandbox (the pause) runs in a mount namespace of its own whose
/// only mount is an empty read-only tmpfs root: `/proc/<pid>/root` (what a
/// `shareProcessNamespace` container reaches as `/proc/1/root`) lists
/// nothing. Its sysctls (written before the empty root, under /proc),
/// user and cgroup still apply, and its binary (here busybox's `sleep`
/// in place of `/init husk-pause`) is exec'd from the descriptor opened
/// before.
#[test]
fn a_light_sandbox_has_an_empty_root_of_its_own() {
    need_root!("a_light_sandbox_has_an_empty_root_of_its_own");
    let mountinfo = || std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let before = mountinfo();
    let c = registry();
    let id = id("empty-root");
    let mut s = spec(&["/pause"]);
    s["annotations"] = json!({"io.kubernetes.cri.container-type": "sandbox"});
    // In its new ipc namespace: not the host's.
    s["linux"]["sysctl"] = json!({"kernel.shmmni": "1234"});
    s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    let mut plan = c.validate(&id, s.to_string().as_bytes(), rootfs()).unwrap();
    assert!(plan.light_sandbox);
    plan.process.args = vec![c"sleep".to_owned(), c"600".to_owned()];
    plan.process.candidates = vec![c"/bin/busybox".to_owned()];
    c.create(plan, Stdio::Null).unwrap();
    let pid = c.start(&id, None).unwrap();
    let proc_path = |p: &str| format!("/proc/{pid}/{p}");
    let entries: Vec<_> = std::fs::read_dir(proc_path("root"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(entries.is_empty(), "the pause's root lists {entries:?}");
    assert!(std::fs::read_dir(proc_path("cwd"))
        .unwrap()
        .next()
        .is_none());
    assert_ne!(
        std::fs::read_link(proc_path("ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap(),
        "a mount namespace of its own"
    );
    let mounts = std::fs::read_to_string(proc_path("mountinfo")).unwrap();
    let lines: Vec<&str> = mounts.lines().collect();
    assert_eq!(lines.len(), 1, "{mounts}");
    assert!(lines[0].contains(" / / ro,"), "{mounts}");
    assert!(lines[0].contains(" - tmpfs "), "{mounts}");
    assert!(
        std::fs::write(format!("/proc/{pid}/root/x"), "").is_err(),
        "read-only"
    );
    let status = std::fs::read_to_string(proc_path("status")).unwrap();
    assert!(
        status.lines().any(|l| l.starts_with("Uid:\t1000\t")),
        "{status}"
    );
    let st = c.state(&id).unwrap();
    assert_eq!(st.state, State::Running);
    c.remove(&id).unwrap();
    assert_eq!(mountinfo(), before, "the test's mounts are untouched");
}

/// Mount destinations are resolved inside the container's root: an
/// image's absolute symlink (`etc -> /run/...`) and one of `..`s
/// (`opt -> ../../..`) lead where they would with the rootfs as `/`, so the
/// mount points (a tmpfs directory, a bound file) are made and mounted in
/// the rootfs and nothing is created outside it.
#[test]
fn mount_targets_resolve_inside_the_rootfs() {
    need_root!("mount_targets_resolve_inside_the_rootfs");
    let pid = std::process::id();
    let tmp = std::env::temp_dir();
    let root = tmp.join(format!("husk-ctr-escape-root.{pid}"));
    let outside = tmp.join(format!("husk-escape-test.{pid}"));
    let dots = format!("husk-escape-dots.{pid}");
    let bound = tmp.join(format!("husk-escape-bound.{pid}"));
    for d in [&root, &outside] {
        let _ = std::fs::remove_dir_all(d);
    }
    for d in ["bin", "proc", "dev", "sys"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // The symlink's target exists both inside the rootfs and outside it.
    let inside = root.join(outside.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&inside).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::hard_link(rootfs().join("bin/busybox"), root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "touch", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../..", root.join("opt")).unwrap();
    std::fs::write(&bound, "bound\n").unwrap();
    let c = registry();
    let mut s = sh(&format!(
        "cat /etc/bar.conf && touch /etc/foo/x /opt/{dots}/y && ls /{dots}"
    ));
    let mounts = s["mounts"].as_array_mut().unwrap();
    mounts.push(json!({"destination": "/etc/foo", "type": "tmpfs", "source": "tmpfs", "options": ["size=64k"]}));
    mounts.push(json!({"destination": "/etc/bar.conf", "type": "bind", "source": bound, "options": ["rbind", "ro"]}));
    mounts.push(json!({"destination": format!("/opt/{dots}"), "type": "tmpfs", "source": "tmpfs", "options": ["size=64k"]}));
    let o = run_in(&c, "escape", &s, &root);
    assert_eq!(
        (o.code, o.stdout.as_str()),
        (0, "bound\ny\n"),
        "{}",
        o.stderr
    );
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing made outside the rootfs"
    );
    assert!(!Path::new("/").join(&dots).exists());
    assert!(inside.join("foo").is_dir());
    assert!(inside.join("bar.conf").is_file());
    assert!(root.join(&dots).is_dir());
    // The tmpfs went with the container: the mount point is empty.
    assert!(std::fs::read_dir(inside.join("foo"))
        .unwrap()
        .next()
        .is_none());
    for d in [&root, &outside] {
        std::fs::remove_dir_all(d).unwrap();
    }
    std::fs::remove_file(&bound).unwrap();
}

/// The names of `steps` (not their parts), in order.
fn names(steps: &[crate::accounting::Step]) -> Vec<&str> {
    steps
        .iter()
        .filter(|s| s.within.is_empty())
        .map(|s| s.name.as_ref())
        .collect()
}

/// The parts of step `within`: (name, mount calls).
fn parts<'a>(steps: &'a [crate::accounting::Step], within: &str) -> Vec<(&'a str, u64)> {
    steps
        .iter()
        .filter(|s| s.within == within)
        .map(|s| (s.name.as_ref(), s.count))
        .collect()
}

/// A metered create and start account for each coarse step: the agent's
/// (cgroup, register; prepare, clone), the child's own (join, mounts,
/// pivot_root, masked_readonly, creds, seccomp), the exec, and what the
/// measuring cost; with the counts of what each did. No timing is
/// asserted beyond "some".
#[test]
fn a_metered_start_accounts_for_each_step() {
    need_root!("a_metered_start_accounts_for_each_step");
    use crate::accounting::{Meter, ACCOUNTING};
    let c = registry();
    let id = id("metered");
    let plan = c
        .validate(
            &id,
            spec(&["sleep", "600"]).to_string().as_bytes(),
            rootfs(),
        )
        .unwrap();
    let (stdio, _out, _err) = pipes();
    let mut meter = Meter::thread();
    c.create_metered(plan, stdio, &mut meter).unwrap();
    let created = meter.finish();
    assert_eq!(names(&created), ["cgroup", "register", ACCOUNTING]);

    let mut meter = Meter::thread();
    c.start_metered(&id, None, &mut meter).unwrap();
    let steps = meter.finish();
    // No namespace joined and no cgroup namespace: no setns step; no
    // sysctls.
    assert_eq!(
        names(&steps),
        [
            "prepare",
            "clone",
            "join",
            "mounts",
            "pivot_root",
            "masked_readonly",
            "creds",
            "seccomp",
            "exec",
            ACCOUNTING
        ],
        "{steps:#?}"
    );
    let step = |n: &str| steps.iter().find(|s| s.name == n).unwrap();
    // Each spec mount timed apart, in order, then the device nodes.
    assert_eq!(
        parts(&steps, "mounts"),
        [
            ("proc:/proc", 1),
            ("tmpfs:/dev", 1),
            ("devpts:/dev/pts", 1),
            ("tmpfs:/dev/shm", 1),
            ("mqueue:/dev/mqueue", 1),
            ("sysfs:/sys", 1),
            ("devices", 0),
        ],
        "{steps:#?}"
    );
    let paths = parts(&steps, "masked_readonly");
    assert_eq!(
        paths.iter().map(|p| p.0).collect::<Vec<_>>(),
        ["masked", "readonly"]
    );
    assert_eq!(
        paths.iter().map(|p| p.1).sum::<u64>(),
        step("masked_readonly").count
    );
    // pid, ipc, uts, mount, network.
    assert_eq!((step("clone").count, step("clone").unit), (5, "namespaces"));
    // `/` rslave, the rootfs bind, the 6 spec mounts (and their remounts).
    let mounts = step("mounts");
    assert!(mounts.count >= 8 && mounts.unit == "mounts", "{mounts:?}");
    assert_eq!(step("pivot_root").count, 2);
    // 10 masked paths (a directory takes 2 calls), 5 read-only (2 each
    // where they exist).
    assert!(step("masked_readonly").count >= 10, "{steps:#?}");
    assert_eq!((step("exec").count, step("exec").unit), (1, "execve"));
    assert!(
        steps.iter().map(|s| s.wall_us).sum::<u64>() > 0,
        "{steps:#?}"
    );
    // The agent's 3 samples (the start, the prepare mark, the wakeup) and
    // one per child step.
    let acct = steps.last().unwrap();
    assert_eq!((acct.count, acct.unit), (3 + 6, "syscalls"), "{acct:?}");
    c.remove(&id).unwrap();
}

/// A light sandbox's child steps: its sysctls, its empty root.
#[test]
fn a_metered_light_sandbox() {
    need_root!("a_metered_light_sandbox");
    use crate::accounting::{Meter, ACCOUNTING};
    let c = registry();
    let id = id("metered-pause");
    let mut s = spec(&["/pause"]);
    s["annotations"] = json!({"io.kubernetes.cri.container-type": "sandbox"});
    s["linux"]["sysctl"] = json!({"kernel.shmmni": "1234"});
    let mut plan = c.validate(&id, s.to_string().as_bytes(), rootfs()).unwrap();
    plan.process.args = vec![c"sleep".to_owned(), c"600".to_owned()];
    plan.process.candidates = vec![c"/bin/busybox".to_owned()];
    c.create(plan, Stdio::Null).unwrap();
    let mut meter = Meter::thread();
    c.start_metered(&id, None, &mut meter).unwrap();
    let steps = meter.finish();
    assert_eq!(
        names(&steps),
        [
            "prepare",
            "clone",
            "join",
            "sysctl",
            "empty_root",
            "creds",
            "seccomp",
            "exec",
            ACCOUNTING
        ],
        "{steps:#?}"
    );
    let step = |n: &str| steps.iter().find(|s| s.name == n).unwrap();
    assert!(steps.iter().all(|s| s.within.is_empty()), "no parts");
    assert_eq!((step("sysctl").count, step("sysctl").unit), (1, "files"));
    // rprivate, the tmpfs, pivot_root, the old root's umount.
    assert_eq!(
        (step("empty_root").count, step("empty_root").unit),
        (4, "mounts")
    );
    c.remove(&id).unwrap();
}
