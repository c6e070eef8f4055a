//! `husk agent ping|exec|mount|umount` against a fake hybrid-vsock muxer
//! serving the real agent service (fake guest facts; `exec` runs commands
//! on this host), and with nobody there.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::{socket_path, FakeMuxer, Mode};
use husk_agent::testing::{FakeFacts, FakeSysfs};
use husk_agent_protocol::{API_VERSION, EXEC_OUTPUT_CAP};

fn husk(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs husk")
}

#[test]
fn ping_prints_what_the_agent_reports() {
    let mux = FakeMuxer::start("cli", Mode::Agent);
    let o = husk(&["agent", "ping", "--uds", mux.uds_path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let f = FakeFacts::default();
    let want = format!(
        "agent_version: {}\napi_version: {}\nkernel_release: {}\nboot_id: {}\n\
         instance_id: {}\nhostname: {}\n\
         mem_total_kib: {}\nmem_available_kib: {}\nuptime_s: 1.50\n",
        env!("CARGO_PKG_VERSION"),
        API_VERSION,
        f.kernel_release,
        f.boot_id,
        f.boot_id,
        f.hostname,
        f.mem.total_kib,
        f.mem.available_kib
    );
    assert_eq!(out, want);
}

#[test]
fn ping_without_an_agent_says_so_and_exits_1() {
    let path = socket_path("cli-absent");
    let o = husk(&[
        "agent",
        "ping",
        "--uds",
        path.to_str().unwrap(),
        "--timeout",
        "0.3",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!(
            "husk: agent not reachable over vsock at {} (port 1024) within 300ms",
            path.display()
        )),
        "{e}"
    );
}

#[test]
fn ping_rejects_a_bad_timeout() {
    for t in ["0", "-1", "nan"] {
        let arg = format!("--timeout={t}");
        let o = husk(&["agent", "ping", "--uds", "/x.sock", &arg]);
        assert_eq!(o.status.code(), Some(1), "--timeout {t}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("--timeout must be a positive"),
            "--timeout {t}"
        );
    }
}

/// `husk agent exec --uds <mux> ARGS...` with `input` on husk's stdin.
fn exec(mux: &FakeMuxer, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["agent", "exec", "--uds", mux.uds_path.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs husk");
    // husk may not read it (no --stdin): a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exec_passes_output_and_exit_code_through() {
    let mux = FakeMuxer::start("cli-exec", Mode::Agent);
    let o = exec(&mux, &["--", "echo", "hello"], b"");
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "hello\n".into())
    );
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));

    let o = exec(
        &mux,
        &["--", "sh", "-c", "echo out; echo err >&2; exit 7"],
        b"",
    );
    assert_eq!(o.status.code(), Some(7));
    assert_eq!(
        (text(&o.stdout), text(&o.stderr)),
        ("out\n".into(), "err\n".into())
    );

    let o = exec(&mux, &["--", "sh", "-c", "kill -KILL $$"], b"");
    assert_eq!(o.status.code(), Some(128 + 9));
    assert!(
        text(&o.stderr).contains("husk: sh: killed by signal 9"),
        "{}",
        text(&o.stderr)
    );

    let o = exec(&mux, &["--timeout", "0.3", "--", "sleep", "30"], b"");
    assert_eq!(o.status.code(), Some(124));
    assert!(
        text(&o.stderr).contains("husk: sleep: killed after --timeout 300ms"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn exec_forwards_stdin_only_when_asked() {
    let mux = FakeMuxer::start("cli-stdin", Mode::Agent);
    let o = exec(&mux, &["--", "cat"], b"not forwarded");
    assert_eq!((o.status.code(), text(&o.stdout)), (Some(0), String::new()));
    let o = exec(&mux, &["--stdin", "--", "cat"], b"forwarded\n");
    assert_eq!(
        (o.status.code(), text(&o.stdout)),
        (Some(0), "forwarded\n".into())
    );
}

#[test]
fn exec_env_cwd_and_truncation() {
    let mux = FakeMuxer::start("cli-env", Mode::Agent);
    let o = exec(
        &mux,
        &[
            "--env",
            "A=1",
            "--env",
            "B=x y",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo $A $B; pwd",
        ],
        b"",
    );
    assert_eq!(text(&o.stdout), "1 x y\n/tmp\n", "{}", text(&o.stderr));
    let o = exec(&mux, &["--", "head", "-c", "2000000", "/dev/zero"], b"");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(o.stdout.len(), EXEC_OUTPUT_CAP);
    assert!(
        text(&o.stderr).contains(&format!(
            "husk: head: stdout truncated to its first {EXEC_OUTPUT_CAP} bytes"
        )),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn exec_failures() {
    let mux = FakeMuxer::start("cli-exec-err", Mode::Agent);
    let o = exec(&mux, &["--", "no-such-program-husk"], b"");
    assert_eq!(o.status.code(), Some(127));
    assert!(
        text(&o.stderr)
            .contains("NOT_FOUND: exec: argv[0] \"no-such-program-husk\": not found in PATH"),
        "{}",
        text(&o.stderr)
    );
    let o = exec(&mux, &["--env", "NOEQUALS", "--", "true"], b"");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("INVALID_ARGUMENT: exec: env: env[0]"),
        "{}",
        text(&o.stderr)
    );
    // No command: clap's usage error.
    let o = exec(&mux, &[], b"");
    assert_eq!(o.status.code(), Some(2));
    for bad in ["--timeout=0", "--connect-timeout=-1"] {
        let o = exec(&mux, &[bad, "--", "true"], b"");
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert!(
            text(&o.stderr).contains("must be a positive number of seconds"),
            "{bad}"
        );
    }
    let path = socket_path("cli-exec-absent");
    let o = husk(&[
        "agent",
        "exec",
        "--uds",
        path.to_str().unwrap(),
        "--connect-timeout",
        "0.2",
        "--",
        "true",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("agent not reachable over vsock"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn mount_and_umount() {
    let sys = FakeSysfs::new("cli");
    sys.disk("vda", Some("root"));
    sys.disk("vdb", Some("data"));
    let facts = FakeFacts {
        sysfs_root: sys.root().to_owned(),
        ..FakeFacts::default()
    };
    let mux = FakeMuxer::start_with_facts("cli-mount", facts.clone());
    let uds = mux.uds_path.to_str().unwrap();
    let o = husk(&[
        "agent",
        "mount",
        "--uds",
        uds,
        "--disk",
        "data",
        "--target",
        "/mnt/data",
        "--ro",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stdout),
        "mounted /dev/vdb on /mnt/data (ext4, read-only)\n"
    );
    let o = husk(&[
        "agent",
        "mount",
        "--uds",
        uds,
        "--share",
        "rootfs",
        "--target",
        "/run/c",
        "--options",
        "dax",
    ]);
    assert_eq!(
        text(&o.stdout),
        "mounted rootfs on /run/c (virtiofs)\n",
        "{}",
        text(&o.stderr)
    );
    {
        let applied = facts.applied();
        assert_eq!(applied.mounts.len(), 2);
        assert!(applied.mounts[0].read_only);
        assert_eq!(applied.mounts[1].options, "dax");
    }

    let o = husk(&["agent", "umount", "--uds", uds, "--target", "/mnt/data"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(o.stdout.is_empty());
    let o = husk(&["agent", "umount", "--uds", uds, "--target", "/mnt/data"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("NOT_FOUND: unmount: unmounting /mnt/data"),
        "{}",
        text(&o.stderr)
    );

    let o = husk(&[
        "agent", "mount", "--uds", uds, "--disk", "nope", "--target", "/mnt/x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("no virtio-blk disk with serial \"nope\" (found: vda serial \"root\", vdb serial \"data\")"),
        "{}",
        text(&o.stderr)
    );
    // Exactly one of --disk and --share.
    for args in [
        &["--target", "/m"][..],
        &["--disk", "d", "--share", "s", "--target", "/m"],
    ] {
        let o = husk(&[&["agent", "mount", "--uds", uds][..], args].concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
}
