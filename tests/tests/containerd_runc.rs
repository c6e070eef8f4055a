//! The containerd harness proven with runc: what the husk shim's
//! end-to-end tests will do with `--runtime io.containerd.husk.v2`, run
//! with containerd's own runc shim. Needs root and Debian's containerd +
//! runc; skips (with a SKIP line) without them.

use husk_tests::containerd::{find_in_path, Containerd};
use husk_tests::pty::Pty;
use std::time::{Duration, Instant};

const RUNTIME: &str = "io.containerd.runc.v2";

fn available(test: &str) -> bool {
    if !Containerd::available(test) {
        return false;
    }
    if find_in_path("runc").is_none() || find_in_path("containerd-shim-runc-v2").is_none() {
        eprintln!("SKIP {test}: runc or containerd-shim-runc-v2 not installed (apt-get install runc containerd)");
        return false;
    }
    true
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The status column of `ctr task ls` for `id` (RUNNING, STOPPED, ...).
fn task_status(c: &Containerd, id: &str) -> Option<String> {
    let out = c.ctr_ok(["tasks", "ls"]);
    out.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first() == Some(&id)).then(|| f.last().map(|s| s.to_string()))?
    })
}

#[test]
fn runc_run_exec_kill_and_nothing_leaks() {
    if !available("runc_run_exec_kill_and_nothing_leaks") {
        return;
    }
    let t0 = Instant::now();
    let c = Containerd::start().expect("start containerd");
    let started = t0.elapsed();
    let img = c.import_busybox().expect("import the busybox image");
    let imported = t0.elapsed();

    // Output reaches ctr.
    let out = c.ctr([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &img,
        "c1",
        "echo",
        "hello",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "hello\n");

    // The exit code propagates.
    let out = c.ctr([
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        &img,
        "c1",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");

    // A detached task, an exec in it, its exit code.
    c.ctr_ok([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &img,
        "c2",
        "sleep",
        "1000",
    ]);
    assert_eq!(task_status(&c, "c2").as_deref(), Some("RUNNING"));
    let out = c.ctr([
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "c2",
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let out = c.ctr([
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "c2",
        "cat",
        "/etc/passwd",
    ]);
    assert!(text(&out.stdout).starts_with("root:x:0:0:"), "{out:?}");

    // Kill → STOPPED. (sleep is the container's PID 1: only SIGKILL is
    // sure to end it.)
    c.ctr_ok(["tasks", "kill", "--signal", "SIGKILL", "c2"]);
    let end = Instant::now() + Duration::from_secs(10);
    while task_status(&c, "c2").as_deref() != Some("STOPPED") {
        assert!(
            Instant::now() < end,
            "c2 not STOPPED: {:?}",
            task_status(&c, "c2")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.ctr_ok(["tasks", "delete", "c2"]);
    c.ctr_ok(["containers", "delete", "c2"]);

    c.assert_no_leaks(Duration::from_secs(5));
    eprintln!(
        "containerd up in {started:?}, image imported at {imported:?}, all done in {:?}",
        t0.elapsed()
    );
}

#[test]
fn runc_tty_session_with_typed_input() {
    if !available("runc_tty_session_with_typed_input") {
        return;
    }
    let c = Containerd::start().expect("start containerd");
    let img = c.import_busybox().expect("import the busybox image");
    let mut p =
        Pty::spawn(c.ctr_command(["run", "-t", "--rm", "--runtime", RUNTIME, &img, "t1", "sh"]))
            .expect("ctr run -t on a pty");
    // busybox sh's prompt as root.
    p.expect("# ", Duration::from_secs(20))
        .expect("a shell prompt");
    p.send(b"stty size; echo typed-$((1+2))\n").expect("type");
    p.expect("typed-3", Duration::from_secs(10))
        .expect("the typed command ran in the container");
    p.send(b"exit 5\n").expect("type exit");
    let (status, out) = p.wait(Duration::from_secs(20)).expect("ctr exits");
    let out = text(&out);
    assert_eq!(status.code(), Some(5), "{out}");
    // The terminal's size reached the container's tty.
    assert!(out.contains("24 80"), "{out}");
    c.assert_no_leaks(Duration::from_secs(5));
}

/// True when `pid` is gone or a zombie (this host's init reaps orphans
/// lazily).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

/// The census sees what a running container holds, and dropping the
/// fixture (a test that failed half-way) still cleans all of it.
#[test]
fn census_sees_a_running_container_and_drop_cleans_it() {
    if !available("census_sees_a_running_container_and_drop_cleans_it") {
        return;
    }
    let c = Containerd::start().expect("start containerd");
    let img = c.import_busybox().expect("import the busybox image");
    c.ctr_ok([
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        &img,
        "c3",
        "sleep",
        "1000",
    ]);
    let l = c.leaks();
    eprintln!("census of a running container:\n{l}");
    assert_eq!(l.tasks, ["c3"]);
    assert_eq!(l.containers, ["c3"]);
    assert_eq!(l.shims.len(), 1, "{l}");
    assert_eq!(
        l.sockets,
        [c.shim_socket("c3").display().to_string()],
        "{l}"
    );
    assert_eq!(l.bundles, ["c3"], "{l}");
    assert_eq!(l.runc_state, ["c3"], "{l}");
    assert!(!l.mounts.is_empty(), "{l}");
    assert!(!l.fifos.is_empty(), "{l}");
    assert!(!l.cgroups.is_empty(), "{l}");
    let task_pid: u32 = c
        .ctr_ok(["tasks", "ls"])
        .lines()
        .find(|l| l.starts_with("c3 "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("c3's pid in `ctr tasks ls`");
    let shims = c.shim_pids();
    let containerd = c.pid().expect("containerd's pid");
    let work = c.work_dir().to_path_buf();
    drop(c);

    let end = Instant::now() + Duration::from_secs(5);
    let live = || -> Vec<u32> {
        shims
            .iter()
            .chain([&task_pid, &containerd])
            .copied()
            .filter(|&p| !dead(p))
            .collect()
    };
    while !live().is_empty() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(live().is_empty(), "still running after drop: {:?}", live());
    assert!(!work.exists(), "{} left", work.display());
    for p in l.sockets.iter().chain(&l.cgroups) {
        assert!(!std::path::Path::new(p).exists(), "{p} left");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mountinfo.contains(&*work.to_string_lossy()),
        "mounts left under {}",
        work.display()
    );
}

/// The CRI plugin loads with the fixture's injected runtime config (what
/// the CRI tests will start containerd with, the husk handler's shim named
/// by absolute path).
#[test]
fn cri_plugin_loads_with_an_injected_runtime_handler() {
    use husk_tests::containerd::{cri_config, Options};
    if !available("cri_plugin_loads_with_an_injected_runtime_handler") {
        return;
    }
    let cni = husk_tests::temp_path("cni-conf");
    std::fs::create_dir_all(&cni).expect("cni conf dir");
    let shim = find_in_path("containerd-shim-runc-v2").expect("runc shim");
    let toml = cri_config("husk", &shim, husk_tests::oci::BUSYBOX_IMAGE, &cni);
    let c = Containerd::start_with(Options::new().cri(true).config(&toml))
        .expect("start containerd with CRI");
    let plugins = c.ctr_ok(["plugins", "ls"]);
    let cri = plugins
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.contains(" cri "))
        .unwrap_or_default()
        .to_string();
    assert!(
        cri.trim_end().ends_with("ok"),
        "CRI plugin not ok: {cri:?}\n{plugins}\n{}",
        c.log_tail(20)
    );
    drop(c);
    let _ = std::fs::remove_dir_all(&cni);
}
