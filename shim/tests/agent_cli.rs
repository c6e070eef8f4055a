//! `husk agent ping` against a fake hybrid-vsock muxer serving the real
//! agent service (fake guest facts), and with nobody there.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::process::{Command, Output};

use common::{socket_path, FakeMuxer, Mode};
use husk_agent::testing::FakeFacts;
use husk_agent_protocol::API_VERSION;

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
