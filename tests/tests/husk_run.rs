//! Containers on the real guest (agent API 4), driven through the library
//! the way `husk run` drives them: one sandbox from the template store
//! with a busybox rootfs share, many containers in it. Output, exit codes,
//! stdin, a terminal and its resize, signals, exec into a running
//! container (same rootfs, same pid namespace, the workload its PID 1),
//! and the ttrpc codes of bad requests.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_shim::agent_client::{
    AgentClientError, ContainerEvent, ExecCommand, ExecStatus, GuestSteps, MountSource, MountSpec,
    ProcessExit, ProcessStreams, SignalTarget, Stdio, TtySize, ACCOUNTING_STEP,
};
use husk_shim::cli::run::spec::{self, SpecOptions};
use husk_shim::cli::run::{CONTAINER_API, GUEST_ROOTFS, ROOTFS_TAG};
use husk_shim::sandbox::store::TemplateStore;
use husk_shim::sandbox::template_build::VmTemplateBuilder;
use husk_shim::sandbox::{build_id, GuestSpec, Sandbox, SandboxConfig, Source};
use husk_tests::{guest_image, kvm_available, pattern, temp_path};
use husk_vmm::{ConsoleConfig, PvmCompat, SeccompMode, ShareConfig};

/// How long one container may take to finish.
const WAIT: Duration = Duration::from_secs(300);
const MARKER: &str = "husk run rootfs marker\n";
/// The second rootfs (its own share): its tag, where the guest mounts it,
/// and the file only it has.
const OTHER_TAG: &str = "rootfs-b";
const OTHER_ROOTFS: &str = "/run/husk/rootfs-b";
const OTHER_ONLY: &str = "only-in-b";

/// A rootfs of static busybox in `dir/name`: `bin/busybox` and a relative
/// link per applet (`busybox --install -s` would link to the host path),
/// and `/marker`.
fn make_rootfs(dir: &Path, name: &str) -> PathBuf {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox missing: install busybox-static (guest-image/install-deps.sh does)"
    );
    let root = dir.join(name);
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    let list = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .unwrap();
    assert!(list.status.success());
    for applet in String::from_utf8(list.stdout).unwrap().lines() {
        if applet != "busybox" && !applet.contains('/') {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
    }
    std::fs::write(root.join("marker"), MARKER).unwrap();
    root
}

fn config(dir: &Path, rootfs: &Path, other: &Path) -> SandboxConfig {
    let (kernel, initrd) = guest_image();
    let source = Source::Store {
        guest: GuestSpec {
            kernel,
            initrd,
            cmdline_extra: String::new(),
            mem_mib: 256,
            vcpus: 1,
            pvm_compat: PvmCompat::Auto,
        },
        store: TemplateStore::open(dir.join("store"), build_id()).unwrap(),
        builder: VmTemplateBuilder {
            boot_timeout: Duration::from_secs(600),
            seccomp: SeccompMode::Enforce,
        },
    };
    let mut cfg = SandboxConfig::new("husk-run", dir.join("run"), source);
    cfg.shares = vec![
        ShareConfig {
            tag: ROOTFS_TAG.into(),
            shared_dir: Some(rootfs.to_path_buf()),
            read_only: false,
        },
        ShareConfig {
            tag: OTHER_TAG.into(),
            shared_dir: Some(other.to_path_buf()),
            read_only: false,
        },
    ];
    cfg.console = ConsoleConfig {
        file: Some(dir.join("console.log")),
        log: false,
    };
    cfg
}

fn spec_json(args: &[&str], terminal: bool) -> Vec<u8> {
    let mut s = spec::runc_default().unwrap();
    SpecOptions {
        args: args.iter().map(|a| a.to_string()).collect(),
        terminal,
        ..SpecOptions::default()
    }
    .apply(&mut s)
    .unwrap();
    spec::to_json(&s).unwrap()
}

/// What one container did.
struct Ran {
    exit: ProcessExit,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    /// The agent's accounting of its create and start.
    steps: (GuestSteps, GuestSteps),
}

fn read_all(s: Option<UnixStream>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut s) = s {
            s.read_to_end(&mut buf).unwrap();
        }
        buf
    })
}

/// Runs `args` as container `id` to its end, feeding it `stdin`; removes
/// it unless `keep`.
fn run(sb: &Sandbox, id: &str, args: &[&str], stdin: Option<&[u8]>, keep: bool) -> Ran {
    let agent = sb.agent();
    let stdio = Stdio::pipes(stdin.is_some());
    let mut streams = ProcessStreams::open(sb.vsock_socket(), id, None, &stdio).unwrap();
    let created = agent
        .create_container(id, &spec_json(args, false), GUEST_ROOTFS, stdio)
        .unwrap();
    let started = agent.start_container(id).unwrap();
    let input = streams.stdin.take().map(|s| {
        let data = stdin.unwrap_or_default().to_vec();
        std::thread::spawn(move || {
            (&s).write_all(&data).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
        })
    });
    let out = read_all(streams.stdout.take());
    let err = read_all(streams.stderr.take());
    let exit = agent.wait_process(id, None, Some(WAIT)).unwrap();
    if let Some(i) = input {
        i.join().unwrap();
    }
    let ran = Ran {
        exit,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        steps: (created, started.steps),
    };
    if !keep {
        agent.remove_container(id).unwrap();
    }
    ran
}

/// The agent's accounting of a `husk run`-style container (runc's
/// default spec: new pid, ipc, uts, mount and cgroup namespaces; masked
/// and read-only paths; no seccomp, no sysctls): every step there, in
/// order, with what it measured. No timing is asserted beyond "some".
fn check_steps(create: &GuestSteps, start: &GuestSteps) {
    assert_eq!(
        create.names(),
        ["validate", "stdio", "cgroup", "register", ACCOUNTING_STEP],
        "{}",
        create.table("create")
    );
    assert_eq!(
        start.names(),
        [
            "prepare",
            "clone",
            "join",
            "setns",
            "mounts",
            "pivot_root",
            "masked_readonly",
            "creds",
            "seccomp",
            "exec",
            "attach",
            ACCOUNTING_STEP,
        ],
        "{}",
        start.table("start")
    );
    let step = |name: &str| start.0.iter().find(|s| s.name == name).unwrap();
    // Each spec mount timed apart (by the clock), then the device nodes.
    let parts = |within: &str| -> Vec<String> {
        start.parts(within).iter().map(|p| p.name.clone()).collect()
    };
    assert_eq!(
        parts("mounts"),
        [
            "proc:/proc",
            "tmpfs:/dev",
            "devpts:/dev/pts",
            "tmpfs:/dev/shm",
            "mqueue:/dev/mqueue",
            "sysfs:/sys",
            "cgroup:/sys/fs/cgroup",
            "devices",
        ],
        "{}",
        start.table("start")
    );
    assert_eq!(parts("masked_readonly"), ["masked", "readonly"]);
    for name in ["clone", "mounts", "pivot_root", "exec"] {
        assert!(step(name).wall_us > 0, "{name}: {}", start.table("start"));
    }
    assert!(create.0.iter().map(|s| s.wall_us).sum::<u64>() > 0);
    // pid, ipc, uts, mount made by the clone; the cgroup one unshared.
    assert_eq!(
        (step("clone").count, step("clone").unit.as_str()),
        (4, "namespaces")
    );
    assert_eq!(
        (step("setns").count, step("setns").unit.as_str()),
        (1, "namespaces")
    );
    let mounts = step("mounts");
    assert!(mounts.count >= 7 && mounts.unit == "mounts", "{mounts:?}");
    assert_eq!(step("pivot_root").count, 2);
    assert!(step("masked_readonly").count > 0);
    // `echo` is looked up along runc's PATH: /bin is its 6th directory.
    assert_eq!(
        (step("exec").count, step("exec").unit.as_str()),
        (6, "execve")
    );
    let acct = start.0.last().unwrap();
    assert_eq!(acct.unit, "syscalls");
    assert!(acct.count > 0);
}

/// Reads `s` until what was read contains `needle`.
fn read_until(s: &mut UnixStream, seen: &mut String, needle: &str) {
    let end = Instant::now() + Duration::from_secs(120);
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while !seen.contains(needle) {
        assert!(Instant::now() < end, "no {needle:?} in {seen:?}");
        match s.read(&mut buf) {
            Ok(0) => panic!("EOF before {needle:?}: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

fn code_of<T: std::fmt::Debug>(r: Result<T, AgentClientError>) -> (ttrpc::Code, String) {
    match r {
        Err(AgentClientError::Rpc { code, message, .. }) => (code, message),
        other => panic!("expected an agent error, got {other:?}"),
    }
}

/// `seq 1 N`'s output.
fn seq(n: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.extend_from_slice(format!("{i}\n").as_bytes());
    }
    v
}

/// The default spec for `args`, changed by `edit` (JSON paths as in the
/// OCI runtime spec).
fn spec_edited(args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_slice(&spec_json(args, false)).unwrap();
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

/// Runs container `id` from `spec` to its end (no stdin); removes it.
fn run_spec(sb: &Sandbox, id: &str, spec: &[u8]) -> Ran {
    let agent = sb.agent();
    let stdio = Stdio::pipes(false);
    let mut streams = ProcessStreams::open(sb.vsock_socket(), id, None, &stdio).unwrap();
    let created = agent
        .create_container(id, spec, GUEST_ROOTFS, stdio)
        .unwrap();
    let started = agent.start_container(id).unwrap();
    let out = read_all(streams.stdout.take());
    let err = read_all(streams.stderr.take());
    let exit = agent.wait_process(id, None, Some(WAIT)).unwrap();
    let ran = Ran {
        exit,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        steps: (created, started.steps),
    };
    agent.remove_container(id).unwrap();
    ran
}

/// Isolation a user can see: the agent's files, a read-only rootfs, the
/// spec's uid, dropped capabilities, a seccomp profile, a memory limit's
/// OOM kill; a pids limit, stats and the freezer.
fn isolation(sb: &Sandbox) {
    let agent = sb.agent();
    let text = |r: &Ran| {
        format!(
            "exit {:?}; out {:?}; err {:?}",
            r.exit,
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        )
    };
    // The agent's files (its /init, its /run) are not in the container's
    // view; the rootfs is.
    let r = run_spec(
        sb,
        "iso-view",
        &spec_json(
            &[
                "sh",
                "-c",
                "test -e /marker && ! test -e /init && ! test -e /run/husk && ls /",
            ],
            false,
        ),
    );
    assert_eq!(r.exit.shell_code(), 0, "{}", text(&r));
    // A read-only rootfs refuses writes.
    let spec = spec_edited(&["sh", "-c", "touch /written"], |v| {
        v["root"]["readonly"] = true.into()
    });
    let r = run_spec(sb, "iso-ro", &spec);
    assert_ne!(r.exit.shell_code(), 0, "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("Read-only"),
        "{}",
        text(&r)
    );
    // The uid and gid from the spec.
    let spec = spec_edited(&["sh", "-c", "id -u; id -g"], |v| {
        v["process"]["user"] = serde_json::json!({"uid": 1234, "gid": 4321});
    });
    let r = run_spec(sb, "iso-uid", &spec);
    assert_eq!(r.stdout, b"1234\n4321\n", "{}", text(&r));
    // No capabilities at all: CapEff and CapBnd are empty.
    let spec = spec_edited(
        &["sh", "-c", "grep -E '^Cap(Eff|Bnd)' /proc/self/status"],
        |v| {
            let none = serde_json::json!([]);
            v["process"]["capabilities"] = serde_json::json!({
                "bounding": none, "effective": none, "permitted": none, "inheritable": none, "ambient": none
            });
        },
    );
    let r = run_spec(sb, "iso-caps", &spec);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\n",
        "{}",
        text(&r)
    );
    // A seccomp profile that refuses mkdir.
    let spec = spec_edited(&["mkdir", "/tmp/refused"], |v| {
        v["linux"]["seccomp"] = serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
    });
    let r = run_spec(sb, "iso-seccomp", &spec);
    assert_ne!(r.exit.shell_code(), 0, "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("not permitted"),
        "{}",
        text(&r)
    );
    // A memory limit: the process that passes it is OOM-killed (137) and
    // the exit says so.
    let spec = spec_edited(
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=12M", "count=1"],
        |v| {
            v["linux"]["resources"]["memory"] = serde_json::json!({"limit": 4 << 20});
        },
    );
    let r = run_spec(sb, "iso-oom", &spec);
    assert_eq!(r.exit.shell_code(), 137, "{}", text(&r));
    assert!(r.exit.oom_killed, "{}", text(&r));
    // ... and WaitEvent names the container (the first OOM event of this
    // sandbox: the agent queues events from its start).
    assert_eq!(
        agent.wait_event(Duration::from_secs(30)).unwrap(),
        Some(ContainerEvent::Oom {
            container_id: "iso-oom".into()
        })
    );
    // kubelet's hugepage limits (one for every size the node has) and a
    // BestEffort container's CPU (shares 2, a period, no quota): 2 MB pages
    // are limited, a size the guest lacks (1 GB without gbpages, 16 GB
    // never on x86) is skipped, zero or not; the lowest weight and no
    // bandwidth limit.
    let spec = spec_edited(
        &[
            "sh",
            "-c",
            "cd /sys/fs/cgroup && cat hugetlb.2MB.max hugetlb.2MB.rsvd.max cpu.max cpu.weight",
        ],
        |v| {
            v["linux"]["resources"]["hugepageLimits"] = serde_json::json!([
                {"pageSize": "2MB", "limit": 4 << 20},
                {"pageSize": "1GB", "limit": 0},
                {"pageSize": "16GB", "limit": 1u64 << 34}
            ]);
            v["linux"]["resources"]["cpu"] = serde_json::json!({"shares": 2, "period": 100000});
        },
    );
    let r = run_spec(sb, "iso-hugetlb", &spec);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "4194304\n4194304\nmax 100000\n1\n",
        "{}",
        text(&r)
    );
    // A page size that is not one is refused, naming the field.
    let spec = spec_edited(&["true"], |v| {
        v["linux"]["resources"]["hugepageLimits"] =
            serde_json::json!([{"pageSize": "2MiB", "limit": 0}]);
    });
    let (code, msg) =
        code_of(agent.create_container("iso-bad-hugetlb", &spec, GUEST_ROOTFS, Stdio::null()));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("linux.resources.hugepageLimits[0].pageSize"),
        "{msg}"
    );
    // A fork bomb under a pids limit: the forks past the limit fail, and
    // the agent (outside the container's cgroup) still answers and still
    // runs containers. The background sleeps hold stdout open until the
    // init's exit ends the pid namespace.
    let bomb = spec_edited(
        &[
            "sh",
            "-c",
            "sh -c 'for i in $(seq 1 40); do sleep 600 & done'; echo forked; exec sleep 3",
        ],
        |v| v["linux"]["resources"]["pids"] = serde_json::json!({"limit": 16}),
    );
    let r = run_spec(sb, "iso-forks", &bomb);
    assert_eq!(r.stdout, b"forked\n", "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stderr).contains("can't fork"),
        "{}",
        text(&r)
    );
    assert!(agent.version().unwrap().api_version >= CONTAINER_API);
    let r = run_spec(
        sb,
        "iso-after-forks",
        &spec_json(&["echo", "still here"], false),
    );
    assert_eq!(r.stdout, b"still here\n", "{}", text(&r));
    // A pids limit, stats, the freezer and kill on a running container.
    let long = spec_edited(&["sh", "-c", "echo running; exec sleep 600"], |v| {
        v["linux"]["resources"]["pids"] = serde_json::json!({"limit": 16})
    });
    let stdio = Stdio::pipes(false);
    let mut streams = ProcessStreams::open(sb.vsock_socket(), "iso-long", None, &stdio).unwrap();
    agent
        .create_container("iso-long", &long, GUEST_ROOTFS, stdio)
        .unwrap();
    agent.start_container("iso-long").unwrap();
    let mut out = streams.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "running");
    let stats = agent.container_stats("iso-long").unwrap();
    assert_eq!(stats.pids_limit, Some(16), "{stats:?}");
    assert!(
        stats.pids_current >= 1 && stats.pids_current <= 16,
        "{stats:?}"
    );
    assert!(stats.memory_usage_bytes > 0, "{stats:?}");
    agent.pause_container("iso-long").unwrap();
    agent.resume_container("iso-long").unwrap();
    agent
        .signal_process("iso-long", SignalTarget::All, libc::SIGKILL)
        .unwrap();
    let exit = agent.wait_process("iso-long", None, Some(WAIT)).unwrap();
    assert_eq!(exit.shell_code(), 137);
    agent.remove_container("iso-long").unwrap();
}

/// Two containers, each on its own rootfs (two shares): while B runs,
/// A sees none of B's files or mounts, and B none of A's.
fn other_rootfs(sb: &Sandbox) {
    let agent = sb.agent();
    let stdio = Stdio::pipes(false);
    let mut streams = ProcessStreams::open(sb.vsock_socket(), "iso-b", None, &stdio).unwrap();
    let b = spec_json(
        &[
            "sh",
            "-c",
            &format!("test -e /{OTHER_ONLY} && ! test -e /marker && echo b-up; exec sleep 600"),
        ],
        false,
    );
    agent
        .create_container("iso-b", &b, OTHER_ROOTFS, stdio)
        .unwrap();
    agent.start_container("iso-b").unwrap();
    let mut out = streams.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "b-up\n");
    // B's init runs (its mounts are live) while A looks.
    let r = run_spec(
        sb,
        "iso-a",
        &spec_json(&["sh", "-c", "ls -a /; echo ---; cat /proc/mounts"], false),
    );
    let view = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(r.exit.shell_code(), 0, "{view}");
    let (listing, mounts) = view.split_once("---\n").unwrap();
    assert!(listing.lines().any(|l| l == "marker"), "{view}");
    assert!(!listing.contains(OTHER_ONLY), "{view}");
    assert!(!mounts.contains(OTHER_TAG), "{view}");
    assert!(!mounts.contains(OTHER_ROOTFS), "{view}");
    assert!(!mounts.contains(GUEST_ROOTFS), "{view}");
    agent
        .signal_process("iso-b", SignalTarget::All, libc::SIGKILL)
        .unwrap();
    agent.wait_process("iso-b", None, Some(WAIT)).unwrap();
    agent.remove_container("iso-b").unwrap();
}

#[test]
fn containers_in_one_sandbox() {
    let test = "containers_in_one_sandbox";
    if !kvm_available(test) {
        return;
    }
    let dir = temp_path("husk-run");
    std::fs::create_dir_all(&dir).unwrap();
    let rootfs = make_rootfs(&dir, "rootfs");
    let other = make_rootfs(&dir, "rootfs-b");
    std::fs::remove_file(other.join("marker")).unwrap();
    std::fs::write(other.join(OTHER_ONLY), "b\n").unwrap();
    let sb = Sandbox::start(config(&dir, &rootfs, &other)).unwrap();
    let agent = sb.agent();
    for (tag, at) in [(ROOTFS_TAG, GUEST_ROOTFS), (OTHER_TAG, OTHER_ROOTFS)] {
        agent
            .mount(&MountSpec::new(MountSource::Share(tag.into()), at))
            .unwrap();
    }
    // The share is the rootfs: its static busybox runs in the guest (the
    // agent's Exec, API 3).
    let mut cat = ExecCommand::new([
        format!("{GUEST_ROOTFS}/bin/busybox"),
        "cat".into(),
        format!("{GUEST_ROOTFS}/marker"),
    ]);
    cat.timeout = Duration::from_secs(60);
    let out = agent.exec(&cat).unwrap();
    assert_eq!(out.status, ExecStatus::Exited(0), "{out:?}");
    assert_eq!(out.stdout, MARKER.as_bytes());
    let api = agent.version().unwrap().api_version;
    assert!(api >= CONTAINER_API, "the guest agent speaks API {api}");

    // The same small container, 20 times over.
    for i in 0..20 {
        let r = run(&sb, &format!("echo-{i}"), &["echo", "hello"], None, false);
        assert_eq!(
            r.exit.shell_code(),
            0,
            "run {i}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert_eq!(r.stdout, b"hello\n", "run {i}");
        if i == 0 {
            check_steps(&r.steps.0, &r.steps.1);
        }
    }

    // Exit codes, and exec into a stopped container.
    let r = run(
        &sb,
        "exit3",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
        None,
        true,
    );
    assert_eq!((r.exit.exit_code, r.exit.signal), (3, None));
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    let (code, msg) = code_of(agent.exec_process(
        "exit3",
        "late",
        &spec::exec_process_json(&spec::runc_default().unwrap(), &SpecOptions::default()).unwrap(),
        Stdio::null(),
    ));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    agent.remove_container("exit3").unwrap();

    // 50+ MiB of stdout, every byte in order.
    let t = Instant::now();
    let r = run(&sb, "bulk", &["seq", "1", "7000000"], None, false);
    let want = seq(7_000_000);
    assert!(want.len() > 50 << 20);
    assert_eq!(r.exit.shell_code(), 0);
    assert_eq!(r.stdout.len(), want.len());
    assert!(r.stdout == want, "the output differs from seq's");
    eprintln!(
        "{} MiB of stdout in {:.1} s",
        want.len() >> 20,
        t.elapsed().as_secs_f64()
    );

    // stdin through cat.
    let data = pattern(7, 1 << 20);
    let r = run(&sb, "cat", &["cat"], Some(&data), false);
    assert_eq!(r.exit.shell_code(), 0);
    assert!(r.stdout == data, "cat gave back {} bytes", r.stdout.len());

    // A terminal: its first size, then a resize.
    let stdio = Stdio {
        stdin: true,
        stdout: true,
        ..Stdio::tty(Some(TtySize { rows: 24, cols: 80 }))
    };
    let mut streams = ProcessStreams::open(sb.vsock_socket(), "tty", None, &stdio).unwrap();
    let json = spec_json(&["sh", "-c", "stty size; read x; stty size"], true);
    agent
        .create_container("tty", &json, GUEST_ROOTFS, stdio)
        .unwrap();
    agent.start_container("tty").unwrap();
    let mut tty = streams.tty.take().unwrap();
    let mut seen = String::new();
    read_until(&mut tty, &mut seen, "24 80");
    agent
        .resize_tty(
            "tty",
            None,
            TtySize {
                rows: 40,
                cols: 100,
            },
        )
        .unwrap();
    tty.write_all(b"go\r").unwrap();
    read_until(&mut tty, &mut seen, "40 100");
    assert_eq!(
        agent
            .wait_process("tty", None, Some(WAIT))
            .unwrap()
            .shell_code(),
        0
    );
    agent.remove_container("tty").unwrap();

    // SIGTERM reaches a process that traps it.
    let stdio = Stdio::pipes(false);
    let mut streams = ProcessStreams::open(sb.vsock_socket(), "trap", None, &stdio).unwrap();
    let json = spec_json(
        &[
            "sh",
            "-c",
            "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
        ],
        false,
    );
    agent
        .create_container("trap", &json, GUEST_ROOTFS, stdio)
        .unwrap();
    agent.start_container("trap").unwrap();
    let mut out = streams.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "ready\n");
    agent
        .signal_process("trap", SignalTarget::Init, libc::SIGTERM)
        .unwrap();
    read_until(&mut out, &mut seen, "got TERM\n");
    let exit = agent.wait_process("trap", None, Some(WAIT)).unwrap();
    assert_eq!((exit.exit_code, exit.signal), (7, None));
    agent.remove_container("trap").unwrap();

    // The workload is PID 1 of its pid namespace; an exec sees its rootfs
    // and its pid namespace.
    let stdio = Stdio::pipes(false);
    let mut streams = ProcessStreams::open(sb.vsock_socket(), "long", None, &stdio).unwrap();
    let json = spec_json(&["sh", "-c", "echo pid=$$; exec sleep 1000"], false);
    agent
        .create_container("long", &json, GUEST_ROOTFS, stdio)
        .unwrap();
    let pid = agent.start_container("long").unwrap().pid;
    assert!(pid > 1, "the guest pid {pid}");
    let mut out = streams.stdout.take().unwrap();
    let mut seen = String::new();
    read_until(&mut out, &mut seen, "pid=1\n");
    let (code, msg) = code_of(agent.start_container("long"));
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(!agent.list_pids("long").unwrap().is_empty());
    let mut ex = ProcessStreams::open(sb.vsock_socket(), "long", Some("look"), &stdio).unwrap();
    let process = spec::exec_process_json(
        &spec::runc_default().unwrap(),
        &SpecOptions {
            args: [
                "sh",
                "-c",
                "cat /marker; tr '\\0' ' ' < /proc/1/cmdline; echo; echo self=$$",
            ]
            .map(String::from)
            .to_vec(),
            ..SpecOptions::default()
        },
    )
    .unwrap();
    let exec_pid = agent.exec_process("long", "look", &process, stdio).unwrap();
    assert_ne!(exec_pid, pid);
    let ex_out = read_all(ex.stdout.take());
    let ex_err = read_all(ex.stderr.take());
    let exit = agent
        .wait_process("long", Some("look"), Some(WAIT))
        .unwrap();
    let (ex_out, ex_err) = (ex_out.join().unwrap(), ex_err.join().unwrap());
    assert_eq!(exit.shell_code(), 0, "{}", String::from_utf8_lossy(&ex_err));
    let text = String::from_utf8(ex_out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(MARKER.trim_end()), "{text}");
    assert_eq!(lines.next(), Some("sleep 1000 "), "{text}");
    let self_pid = lines.next().unwrap_or_default();
    assert!(
        self_pid.starts_with("self=") && self_pid != "self=1",
        "{text}"
    );
    agent
        .signal_process("long", SignalTarget::All, libc::SIGKILL)
        .unwrap();
    let exit = agent.wait_process("long", None, Some(WAIT)).unwrap();
    assert_eq!((exit.signal, exit.shell_code()), (Some(libc::SIGKILL), 137));
    agent.remove_container("long").unwrap();

    isolation(&sb);
    other_rootfs(&sb);

    // Bad input and its codes.
    let (code, msg) =
        code_of(agent.create_container("badspec", b"{not json", GUEST_ROOTFS, Stdio::null()));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    let (code, msg) = code_of(agent.create_container(
        "noroot",
        &spec_json(&["true"], false),
        "/run/husk/no-such-rootfs",
        Stdio::null(),
    ));
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    assert!(msg.contains("rootfs"), "{msg}");
    let (code, msg) = code_of(agent.create_container(
        "bad id",
        &spec_json(&["true"], false),
        GUEST_ROOTFS,
        Stdio::null(),
    ));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    for (what, r) in [
        ("start", agent.start_container("nope").map(|_| ())),
        (
            "wait",
            agent.wait_process("nope", None, Some(WAIT)).map(|_| ()),
        ),
        (
            "signal",
            agent.signal_process("nope", SignalTarget::Init, libc::SIGTERM),
        ),
        ("remove", agent.remove_container("nope")),
    ] {
        let (code, msg) = code_of(r);
        assert_eq!(code, ttrpc::Code::NOT_FOUND, "{what}: {msg}");
    }
    agent
        .create_container(
            "dup",
            &spec_json(&["true"], false),
            GUEST_ROOTFS,
            Stdio::null(),
        )
        .unwrap();
    let (code, msg) = code_of(agent.create_container(
        "dup",
        &spec_json(&["true"], false),
        GUEST_ROOTFS,
        Stdio::null(),
    ));
    assert_eq!(code, ttrpc::Code::ALREADY_EXISTS, "{msg}");
    agent.remove_container("dup").unwrap();

    sb.stop(Duration::from_secs(60)).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
