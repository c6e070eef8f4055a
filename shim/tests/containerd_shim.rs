//! `containerd-shim-husk-v2` under a real containerd (Debian's 1.6.20,
//! started by the test with its own root, state and sockets): `ctr run
//! --runtime io.containerd.husk.v2` runs busybox in a pod VM from a
//! template. Needs root, /dev/kvm, containerd and the guest image; skips
//! with a SKIP line only where one is absent.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::time::{Duration, Instant};

use husk_tests::containerd::Containerd;
use husk_tests::pty::Pty;

mod common;

use common::ctr::*;

/// Output, exit codes, the guest kernel, exec, kill, and nothing left.
#[test]
fn ctr_runs_containers_in_a_pod_vm() {
    if !available("ctr_runs_containers_in_a_pod_vm") {
        return;
    }
    let (c, run_dir) = containerd("basics", "");
    let img = c.import_busybox().expect("import busybox");
    let t0 = Instant::now();
    let out = run(&c, &img, "hello", &["echo", "hello"]);
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail(60));
    assert_eq!(text(&out.stdout), "hello\n");
    eprintln!("first ctr run (template or restore): {:?}", t0.elapsed());

    let t0 = Instant::now();
    let out = run(&c, &img, "exit3", &["sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}\n{}", c.log_tail(60));
    eprintln!("second ctr run: {:?}", t0.elapsed());

    // The guest's kernel, not the host's.
    let out = run(&c, &img, "uname", &["uname", "-r"]);
    assert!(out.status.success(), "{out:?}");
    let host = text(
        &std::process::Command::new("uname")
            .arg("-r")
            .output()
            .unwrap()
            .stdout,
    );
    assert_ne!(
        text(&out.stdout).trim(),
        host.trim(),
        "the container saw the host kernel"
    );

    // A long-running task: exec and its code, kill, STOPPED.
    c.ctr_ok([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &img,
        "sleeper",
        "sleep",
        "600",
    ]);
    assert_eq!(task_status(&c, "sleeper").as_deref(), Some("RUNNING"));
    let out = c.ctr([
        "task",
        "exec",
        "--exec-id",
        "e1",
        "sleeper",
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}\n{}", c.log_tail(60));
    let out = c.ctr([
        "task",
        "exec",
        "--exec-id",
        "e2",
        "sleeper",
        "cat",
        "/proc/1/cmdline",
    ]);
    assert!(text(&out.stdout).starts_with("sleep"), "{out:?}");
    // Pids, metrics (cgroup v2 from the guest), pause and resume.
    let ps = c.ctr_ok(["task", "ps", "sleeper"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    let metrics = c.ctr_ok(["task", "metrics", "sleeper"]);
    assert!(metrics.contains("memory"), "{metrics}");
    check_monitor(&run_dir, "sleeper");
    c.ctr_ok(["task", "pause", "sleeper"]);
    assert_eq!(task_status(&c, "sleeper").as_deref(), Some("PAUSED"));
    c.ctr_ok(["task", "resume", "sleeper"]);
    assert_eq!(task_status(&c, "sleeper").as_deref(), Some("RUNNING"));
    c.ctr_ok(["task", "kill", "-s", "SIGKILL", "sleeper"]);
    wait_stopped(&c, "sleeper", Duration::from_secs(60));
    c.ctr_ok(["task", "delete", "sleeper"]);
    c.ctr_ok(["container", "delete", "sleeper"]);
    // The shim logged the VM's counters when it stopped (containerd
    // copies the shim's log asynchronously: a bounded wait for the line).
    let logged = |c: &Containerd| {
        c.log_tail(2000)
            .lines()
            .any(|l| l.contains("pod VM counters") && l.contains("sleeper"))
    };
    let end = Instant::now() + Duration::from_secs(30);
    while !logged(&c) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(logged(&c), "no counters line\n{}", c.log_tail(60));
    if let Some(l) = c
        .log_tail(2000)
        .lines()
        .find(|l| l.contains("pod VM counters") && l.contains("sleeper"))
    {
        eprintln!("{}", &l[..l.len().min(700)]);
    }
    assert_clean(&c, &run_dir);
}

/// The running pod's monitor socket (0600, in its VM's directory) and
/// what `husk pods`, `husk vm stats` and `GET /metrics` make of it: the
/// guest ran, so it exited, took vsock interrupts and used CPU.
fn check_monitor(run_dir: &Path, pod: &str) {
    use std::os::unix::fs::PermissionsExt;
    let socks = husk_shim::monitor::list_sockets(run_dir).unwrap();
    assert_eq!(socks.len(), 1, "{socks:?}");
    let mode = std::fs::symlink_metadata(&socks[0])
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{:o}", mode);
    let husk = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_husk"))
            .args(args)
            .arg("--run-dir")
            .arg(run_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "husk {args:?}: {out:?}");
        text(&out.stdout)
    };
    let json = husk(&["vm", "stats", pod]);
    let p: husk_shim::monitor::PodStats = serde_json::from_str(&json).unwrap();
    assert_eq!(p.pod, pod);
    assert!(p.vm.running, "{json}");
    assert!(p.vm.interrupts_of("vsock", "queue").unwrap() > 0, "{json}");
    assert!(p.vm.loop_exits() > 0, "{json}");
    assert!(p.vm.vcpu_cpu_ns().unwrap() > 0, "{json}");
    if p.vm.vcpus.iter().all(|v| v.kvm.is_some()) {
        assert!(p.vm.kvm_vcpu_sum("exits").unwrap() > 0, "{json}");
    }
    let table = husk(&["pods"]);
    eprintln!("husk pods:\n{table}");
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with(pod)),
        "{table}"
    );
    let all: Vec<husk_shim::monitor::PodStats> =
        serde_json::from_str(&husk(&["pods", "--json"])).unwrap();
    assert_eq!(all.len(), 1);
    let metrics = husk_shim::monitor::http::get(&socks[0], "/metrics", Duration::from_secs(10))
        .map(|b| text(&b))
        .unwrap();
    let irq_line =
        format!("husk_vm_interrupts_total{{pod=\"{pod}\",device=\"vsock\",kind=\"queue\"}} ");
    assert!(
        metrics.lines().any(|l| l.starts_with(&irq_line)),
        "{metrics}"
    );
}

/// A terminal session: typed input, the answer, the exit code.
#[test]
fn ctr_tty_session() {
    if !available("ctr_tty_session") {
        return;
    }
    let (c, run_dir) = containerd("tty", "");
    let img = c.import_busybox().expect("import busybox");
    let mut p = Pty::spawn(c.ctr_command([
        "run",
        "--rm",
        "-t",
        "--runtime",
        RUNTIME,
        &img,
        "tty1",
        "sh",
    ]))
    .expect("ctr under a pty");
    if let Err(e) = p.expect("# ", Duration::from_secs(300)) {
        panic!("no prompt: {e}: {}\n{}", p.output_string(), c.log_tail(60));
    }
    p.send(b"echo typed-$((1+2)); exit 5\r").unwrap();
    let (status, out) = p.wait(Duration::from_secs(120)).expect("ctr ends");
    let out = text(&out);
    assert!(out.contains("typed-3"), "{out}\n{}", c.log_tail(60));
    assert_eq!(status.code(), Some(5), "{out}");
    assert_clean(&c, &run_dir);
}

/// `kill -9` of the shim, then `ctr task delete`: no VM (it was in the
/// shim), no directory, no socket.
#[test]
fn shim_killed_leaves_nothing() {
    if !available("shim_killed_leaves_nothing") {
        return;
    }
    let (c, run_dir) = containerd("kill9", "");
    let img = c.import_busybox().expect("import busybox");
    c.ctr_ok([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &img,
        "victim",
        "sleep",
        "600",
    ]);
    let shims = c.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    // SAFETY: kill(2) on a pid of our fixture's shim.
    assert_eq!(unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) }, 0);
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let out = c.ctr(["task", "delete", "victim"]);
        if out.status.success() || task_status(&c, "victim").is_none() {
            break;
        }
        assert!(
            Instant::now() < end,
            "task delete kept failing: {out:?}\n{}",
            c.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    c.ctr_ok(["container", "delete", "victim"]);
    // `ctr run -d` leaves its FIFOs for a later `ctr task delete` to
    // remove; with the shim dead containerd deleted the task itself, so
    // they are ctr's leftovers (runc's shim leaves the same), not the pod's.
    for d in std::fs::read_dir(c.fifo_dir()).unwrap().flatten() {
        let p = d.path();
        let ours = std::fs::read_dir(&p)
            .map(|e| {
                e.flatten()
                    .any(|f| f.file_name().to_string_lossy().starts_with("victim-"))
            })
            .unwrap_or(false);
        if ours {
            std::fs::remove_dir_all(&p).unwrap();
        }
    }
    assert_clean(&c, &run_dir);
}

/// Rewrites keys of the test's husk config (`key = value` lines, TOML
/// values as given), adding those not there.
fn set_config(name: &str, pairs: &[(&str, &str)]) {
    let path = husk_tests::temp_path(&format!("shim-{name}")).join("config.toml");
    let old = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| !pairs.iter().any(|(k, _)| l.starts_with(&format!("{k} ="))))
        .map(str::to_owned)
        .collect();
    lines.extend(pairs.iter().map(|(k, v)| format!("{k} = {v}")));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

/// Bad input reaches ctr as a clear error and leaves nothing: a missing
/// kernel; pod annotations with a bad value or a key not allowed; a spec
/// the agent refuses (a relative cwd).
#[test]
fn bad_input_is_a_clear_error() {
    if !available("bad_input_is_a_clear_error") {
        return;
    }
    let (c, run_dir) = containerd("badinput", "");
    let img = c.import_busybox().expect("import busybox");
    let fails = |id: &str, extra: &[&str], needle: &str| {
        let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&img, id, "true"]);
        let out = c
            .ctr_timeout(args, Duration::from_secs(300))
            .expect("ctr within 300 s");
        assert!(!out.status.success(), "{id}: {out:?}");
        let err = text(&out.stderr);
        assert!(err.contains(needle), "{id}: {err}");
        let _ = c.ctr(["container", "delete", id]);
    };
    fails(
        "badvcpus",
        &["--annotation", "io.husk.config.vcpus=many"],
        "io.husk.config.vcpus",
    );
    fails(
        "notallowed",
        &["--annotation", "io.husk.config.templates=false"],
        "not allowed",
    );
    // No annotation names a host path or binary (the kernel, the
    // initramfs, directories): those keys cannot be overridden at all.
    for key in ["kernel", "initramfs", "run_dir", "template_dir"] {
        fails(
            &format!("host{}", key.replace('_', "")),
            &["--annotation", &format!("io.husk.config.{key}=/usr/bin/id")],
            "not allowed",
        );
    }
    // An invalid spec (the agent checks it: the field is named).
    fails("badcwd", &["--cwd", "relative/dir"], "process.cwd");
    set_config("badinput", &[("kernel", "\"/nonexistent/vmlinux\"")]);
    fails("nokernel", &[], "/nonexistent/vmlinux");
    assert_clean(&c, &run_dir);
}

/// A guest whose agent never answers (its /init is busybox's init, no
/// agent): the pod's VM start fails within the configured bound, the error
/// names the agent, and nothing is left (the VM went with the failed
/// start).
#[test]
fn agent_that_never_answers() {
    if !available("agent_that_never_answers") {
        return;
    }
    let (c, run_dir) = containerd("noagent", "");
    let dir = husk_tests::temp_path("shim-noagent");
    let initrd = dir.join("no-agent.cpio");
    std::fs::write(
        &initrd,
        cpio_newc(&[("init", 0o100755, std::fs::read("/bin/busybox").unwrap())]),
    )
    .unwrap();
    set_config(
        "noagent",
        &[
            ("initramfs", &format!("{:?}", initrd)),
            ("templates", "false"),
            ("agent_timeout_s", "20"),
            ("boot_timeout_s", "20"),
        ],
    );
    let img = c.import_busybox().expect("import busybox");
    let t0 = Instant::now();
    let out = run(&c, &img, "noagent", &["true"]);
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("agent"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(200),
        "took {:?}",
        t0.elapsed()
    );
    let _ = c.ctr(["container", "delete", "noagent"]);
    assert_clean(&c, &run_dir);
}

/// A minimal newc cpio archive of regular files.
fn cpio_newc(files: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
        let namesize = name.len() + 1;
        let hdr = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
            0, 0, 1, 0, data.len(), 0, 0, 0, 0, 0
        );
        out.extend_from_slice(hdr.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    let mut out = Vec::new();
    for (i, (name, mode, data)) in files.iter().enumerate() {
        entry(&mut out, i as u32 + 1, name, *mode, data);
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

/// Two tasks with the same `io.husk.pod` annotation share one shim and
/// one VM (same guest boot id), each in its own pid namespace.
#[test]
fn one_vm_per_pod() {
    if !available("one_vm_per_pod") {
        return;
    }
    let (c, run_dir) = containerd("pod", "");
    let img = c.import_busybox().expect("import busybox");
    for id in ["pa", "pb"] {
        run_detached(
            &c,
            &[
                "--annotation",
                "io.husk.pod=p1",
                "--runtime",
                RUNTIME,
                &img,
                id,
                "sleep",
                "600",
            ],
        );
    }
    assert_eq!(c.shim_pids().len(), 1, "one shim for the pod");
    let boot_id = |id: &str| {
        let out = c.ctr([
            "task",
            "exec",
            "--exec-id",
            "b",
            id,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ]);
        assert!(out.status.success(), "{out:?}");
        text(&out.stdout)
    };
    assert_eq!(boot_id("pa"), boot_id("pb"), "two VMs for one pod");
    for id in ["pa", "pb"] {
        let out = c.ctr([
            "task",
            "exec",
            "--exec-id",
            "p",
            id,
            "cat",
            "/proc/1/cmdline",
        ]);
        assert!(text(&out.stdout).starts_with("sleep"), "{id}: {out:?}");
    }
    for id in ["pa", "pb"] {
        c.ctr_ok(["task", "kill", "-s", "SIGKILL", id]);
        wait_stopped(&c, id, Duration::from_secs(60));
        c.ctr_ok(["task", "delete", id]);
        c.ctr_ok(["container", "delete", id]);
    }
    assert_clean(&c, &run_dir);
}

/// Bind volumes through the pod's virtio-fs share (`ctr run --mount`): a
/// read-only directory and a read-only file show the host's content and
/// refuse writes, a read-write directory's write lands on the host, a
/// missing source is a clear error, and nothing is left after delete.
#[test]
fn bind_volumes() {
    if !available("bind_volumes") {
        return;
    }
    let (c, run_dir) = containerd("volumes", "");
    let img = c.import_busybox().expect("import busybox");
    let src = husk_tests::temp_path("shim-volume-sources");
    let _ = std::fs::remove_dir_all(&src);
    let (ro, rw, file) = (src.join("ro"), src.join("rw"), src.join("hostname"));
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("greeting"), "hello from the host\n").unwrap();
    std::fs::write(&file, "host-name-file\n").unwrap();
    let mount = |s: &Path, dst: &str, opts: &str| {
        format!("type=bind,src={},dst={dst},options={opts}", s.display())
    };
    let (m_ro, m_file, m_rw) = (
        mount(&ro, "/data", "rbind:ro"),
        mount(&file, "/etc/hostname-test", "rbind:ro"),
        mount(&rw, "/rw", "rbind:rw"),
    );
    let script = "cat /data/greeting /etc/hostname-test; \
        echo x > /data/new 2>/dev/null && echo WROTE-RO-DIR; \
        echo x >> /etc/hostname-test 2>/dev/null && echo WROTE-RO-FILE; \
        echo from-the-guest > /rw/out && echo rw-ok";
    let out = c
        .ctr_timeout(
            [
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--mount",
                &m_ro,
                "--mount",
                &m_file,
                "--mount",
                &m_rw,
                &img,
                "vols",
                "sh",
                "-c",
                script,
            ],
            Duration::from_secs(300),
        )
        .expect("ctr run within 300 s");
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail(60));
    assert_eq!(
        text(&out.stdout),
        "hello from the host\nhost-name-file\nrw-ok\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("out")).unwrap(),
        "from-the-guest\n"
    );
    assert!(!ro.join("new").exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "host-name-file\n");

    // A source that is not there: the create fails naming the mount.
    let gone = mount(&src.join("gone"), "/gone", "rbind:ro");
    let out = c
        .ctr_timeout(
            [
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                "--mount",
                &gone,
                &img,
                "gone",
                "true",
            ],
            Duration::from_secs(300),
        )
        .expect("ctr run within 300 s");
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("/gone") && err.contains("mounts["), "{err}");
    let _ = c.ctr(["container", "delete", "gone"]);

    assert_clean(&c, &run_dir);
    std::fs::remove_dir_all(&src).unwrap();
}

/// A container's memory limit sizes its VM (limit + overhead, its own
/// template): never silently a VM smaller than the spec asks for.
#[test]
fn vm_follows_the_memory_limit() {
    if !available("vm_follows_the_memory_limit") {
        return;
    }
    let (c, run_dir) = containerd("memsize", "");
    let img = c.import_busybox().expect("import busybox");
    // 512 MiB + 128 MiB overhead: a 640 MiB VM.
    let out = run_limited(&c, &img);
    assert!(out.status.success(), "{out:?}\n{}", c.log_tail(40));
    let kib: u64 = text(&out.stdout)
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(
        kib > 560 * 1024,
        "MemTotal {kib} kB for a 512 MiB container"
    );
    assert_clean(&c, &run_dir);
}

fn run_limited(c: &Containerd, img: &str) -> std::process::Output {
    c.ctr_timeout(
        [
            "run",
            "--rm",
            "--runtime",
            RUNTIME,
            "--memory-limit",
            "536870912",
            img,
            "big",
            "grep",
            "MemTotal",
            "/proc/meminfo",
        ],
        Duration::from_secs(300),
    )
    .expect("ctr run within 300 s")
}

/// stdin through `ctr run` (it always copies its stdin; CloseIO at EOF), and 50 MiB of stdout
/// arriving whole.
#[test]
fn ctr_stdin_and_large_output() {
    if !available("ctr_stdin_and_large_output") {
        return;
    }
    let (c, run_dir) = containerd("stdio", "");
    let img = c.import_busybox().expect("import busybox");
    let cmd = c.ctr_command(["run", "--rm", "--runtime", RUNTIME, &img, "cat1", "cat"]);
    let input: Vec<u8> = (0..200_000u32)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let out = husk_tests::containerd::run_timeout(cmd, Some(&input), Duration::from_secs(300))
        .expect("ctr run -i");
    assert!(
        out.status.success(),
        "{:?} {}\n{}",
        out.status,
        text(&out.stderr),
        c.log_tail(40)
    );
    assert!(
        out.stdout == input,
        "stdin came back as {} bytes of {}",
        out.stdout.len(),
        input.len()
    );

    // 50+ MiB: `seq 1 7000000` (one process writing; 53.9 MB), in order.
    let t0 = Instant::now();
    let out = c
        .ctr_timeout(
            [
                "run",
                "--rm",
                "--runtime",
                RUNTIME,
                &img,
                "big",
                "seq",
                "1",
                "7000000",
            ],
            Duration::from_secs(900),
        )
        .unwrap_or_else(|e| panic!("ctr run seq: {:?} (output not shown)", e.kind()));
    assert!(out.status.success(), "{:?}\n{}", out.status, c.log_tail(40));
    let expected: Vec<u8> = (1..=7_000_000u32)
        .flat_map(|i| format!("{i}\n").into_bytes())
        .collect();
    assert!(expected.len() > 50 << 20);
    assert_eq!(out.stdout.len(), expected.len(), "bytes of stdout");
    assert!(out.stdout == expected, "stdout differs from seq's");
    eprintln!("{} bytes through ctr in {:?}", expected.len(), t0.elapsed());
    assert_clean(&c, &run_dir);
}

/// The guest powers off under a running task (a privileged container in
/// the guest's own pid namespace runs `poweroff -f`): the task ends with
/// exit 255, containerd sees it STOPPED, delete cleans everything.
#[test]
fn guest_death_ends_its_tasks() {
    if !available("guest_death_ends_its_tasks") {
        return;
    }
    let (c, run_dir) = containerd("vmdeath", "");
    let img = c.import_busybox().expect("import busybox");
    run_detached(
        &c,
        &[
            "--privileged",
            "--with-ns",
            "pid:/proc/1/ns/pid",
            "--runtime",
            RUNTIME,
            &img,
            "dier",
            "sh",
            "-c",
            "sleep 2; poweroff -f",
        ],
    );
    wait_stopped(&c, "dier", Duration::from_secs(120));
    let out = c.ctr_ok(["task", "delete", "dier"]);
    assert!(out.contains("255") || out.is_empty(), "{out}");
    c.ctr_ok(["container", "delete", "dier"]);
    // The shim's log (through containerd's): the task ended with 255.
    assert!(
        c.log_tail(400).contains("exited process=dier status=255"),
        "{}",
        c.log_tail(40)
    );
    assert_clean(&c, &run_dir);
}

/// containerd restarts while a pod runs: the task is still RUNNING
/// afterwards (containerd reconnects to the shim), exec works, and the
/// pod cleans up as usual.
#[test]
fn containerd_restart_keeps_pods() {
    if !available("containerd_restart_keeps_pods") {
        return;
    }
    let (mut c, run_dir) = containerd("restart", "");
    let img = c.import_busybox().expect("import busybox");
    run_detached(
        &c,
        &["--runtime", RUNTIME, &img, "survivor", "sleep", "600"],
    );
    let shims = c.shim_pids();
    c.restart().expect("containerd restarts");
    assert_eq!(
        task_status(&c, "survivor").as_deref(),
        Some("RUNNING"),
        "{}",
        c.log_tail(40)
    );
    assert_eq!(c.shim_pids(), shims, "the shim was replaced");
    let out = c.ctr([
        "task",
        "exec",
        "--exec-id",
        "after",
        "survivor",
        "echo",
        "still here",
    ]);
    assert!(
        out.status.success() && text(&out.stdout) == "still here\n",
        "{out:?}\n{}",
        c.log_tail(40)
    );
    c.ctr_ok(["task", "kill", "-s", "SIGKILL", "survivor"]);
    wait_stopped(&c, "survivor", Duration::from_secs(60));
    c.ctr_ok(["task", "delete", "survivor"]);
    c.ctr_ok(["container", "delete", "survivor"]);
    assert_clean(&c, &run_dir);
}
