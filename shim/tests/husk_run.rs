//! `husk run` and the container calls under it: every container call
//! reaches the agent and keeps its ttrpc code (against the agent service
//! behind a fake vsock muxer); the binary's exit code 125 and messages for
//! bad input; and, on the real guest once its agent serves containers
//! (API 4), output, stdin and the container's exit code through the
//! binary.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio as ProcStdio};
use std::time::Duration;

use common::{FakeMuxer, Mode};
use husk_shim::agent_client::{AgentClient, AgentClientError, SignalTarget, TtySize};

fn husk<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    husk_with_stdin(args, b"")
}

fn husk_with_stdin<S: AsRef<std::ffi::OsStr>>(args: &[S], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(ProcStdio::piped())
        .stdout(ProcStdio::piped())
        .stderr(ProcStdio::piped())
        .spawn()
        .expect("runs husk");
    let mut input = child.stdin.take().unwrap();
    // husk may exit before it reads (bad input): a closed pipe is fine.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("husk-run-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn container_calls_reach_the_agent_and_keep_its_code() {
    let mux = FakeMuxer::start("containers", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(10)).unwrap();
    // This agent (the service on a Unix socket, no container runtime behind
    // it) answers FAILED_PRECONDITION: the code and the method come
    // through. (An unknown id on a real guest is NOT_FOUND: husk_run.rs in
    // tests/.)
    let size = TtySize { rows: 1, cols: 1 };
    let calls: Vec<(&str, Result<(), AgentClientError>)> = vec![
        ("StartContainer", c.start_container("nope").map(drop)),
        (
            "ExecProcess",
            c.exec_process("nope", "e", b"{}", Default::default())
                .map(drop),
        ),
        (
            "SignalProcess",
            c.signal_process("nope", SignalTarget::All, 15),
        ),
        ("WaitProcess", c.wait_process("nope", None, None).map(drop)),
        (
            "WaitProcess",
            c.wait_process("nope", Some("e"), Some(Duration::from_secs(5)))
                .map(drop),
        ),
        ("ResizeTty", c.resize_tty("nope", None, size)),
        ("CloseStdin", c.close_stdin("nope", None)),
        ("ListPids", c.list_pids("nope").map(drop)),
        ("ContainerStats", c.container_stats("nope").map(drop)),
        ("PauseContainer", c.pause_container("nope")),
        ("ResumeContainer", c.resume_container("nope")),
        ("UpdateResources", c.update_resources("nope", b"{}")),
        ("RemoveContainer", c.remove_container("nope")),
    ];
    for (want, r) in calls {
        match r {
            Err(AgentClientError::Rpc { method, code, .. }) => {
                assert_eq!(method, want);
                assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{want}");
            }
            other => panic!("{want}: {other:?}"),
        }
    }
    // A negative signal never leaves the host.
    let e = c.signal_process("c", SignalTarget::Init, -1).unwrap_err();
    assert!(
        matches!(
            e,
            AgentClientError::Rpc {
                code: ttrpc::Code::INVALID_ARGUMENT,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn bad_input_is_125_and_says_what() {
    let dir = temp("bad");
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"not used").unwrap();
    let d = dir.to_str().unwrap();
    let f = file.to_str().unwrap();
    let k = kernel.to_str().unwrap();
    let missing = format!("{d}/missing");
    let bundle_cfg = dir.join("config.json");
    std::fs::write(&bundle_cfg, b"{\"ociVersion\": 5}").unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["run", "--", "true"], "--rootfs".into()),
        (
            vec!["run", "--rootfs", &missing, "--", "true"],
            format!("the rootfs {missing}: No such file"),
        ),
        (
            vec!["run", "--rootfs", f, "--", "true"],
            format!("the rootfs {f}: not a directory"),
        ),
        (
            vec!["run", "--rootfs", d, "--kernel", &missing, "--", "true"],
            format!("the guest kernel {missing}: no such file"),
        ),
        (
            vec![
                "run", "--rootfs", d, "--kernel", k, "--initrd", &missing, "--", "true",
            ],
            format!("the initramfs {missing}: no such file"),
        ),
        (
            vec!["run", "--rootfs", d, "--env", "NOVALUE", "--", "true"],
            "--env \"NOVALUE\": expected KEY=VALUE".into(),
        ),
        (
            vec!["run", "--rootfs", d, "--user", "root", "--", "true"],
            "the uid must be a number".into(),
        ),
        (
            vec!["run", "--rootfs", d, "--memory", "0", "--", "true"],
            "--memory <MIB>".into(),
        ),
        (
            vec!["run", "--rootfs", d, "--name", "a/b", "--", "true"],
            "the name \"a/b\" must be".into(),
        ),
        (
            vec!["run", "--bundle", d],
            format!("bundle {}", bundle_cfg.display()),
        ),
    ];
    for (args, want) in cases {
        let o = husk(&args);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(&want), "{args:?}: {}", stderr(&o));
    }
    let help = husk(&["run", "--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("125 when husk itself failed"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A rootfs of static busybox with relative applet links.
fn make_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (busybox-static; guest-image/install-deps.sh installs it)");
    for applet in ["sh", "echo", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    root
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

#[test]
fn husk_run_streams_output_and_exits_with_the_containers_code() {
    let test = "husk_run_streams_output_and_exits_with_the_containers_code";
    if !kvm_usable() {
        eprintln!("SKIP {test}: /dev/kvm is not usable here; VM tests need KVM");
        return;
    }
    let image = std::env::var_os("HUSK_GUEST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-image"));
    let (kernel, initrd) = (image.join("vmlinux"), image.join("initramfs.cpio.gz"));
    assert!(
        kernel.exists() && initrd.exists(),
        "guest image missing in {}: run `bash guest-image/build.sh` (./test.sh does)",
        image.display()
    );
    let dir = temp("real");
    let rootfs = make_rootfs(&dir);
    let (store, run_dir) = (dir.join("store"), dir.join("run"));
    let common = [
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--run-dir",
        run_dir.to_str().unwrap(),
        "--rootfs",
        rootfs.to_str().unwrap(),
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        ["run"]
            .iter()
            .chain(&common)
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };

    let o = husk(&with(&[
        "--guest-steps",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]));
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(o.stdout, b"out\n");
    let err = stderr(&o);
    assert!(err.contains("err\n"), "{err}");
    // --guest-steps: the agent's tables for the create and the start.
    let firsts: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in [
        "create", "validate", "cgroup", "start", "clone", "mounts", "exec", "total",
    ] {
        assert!(firsts.contains(&name), "no {name} row in {err}");
    }

    let data = b"through the container's stdin\n".repeat(1000);
    let o = husk_with_stdin(&with(&["-i", "--", "cat"]), &data);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout == data, "cat gave back {} bytes", o.stdout.len());

    // The sandboxes went away with their containers.
    assert_eq!(std::fs::read_dir(&run_dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
