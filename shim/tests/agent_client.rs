//! `AgentClient` against a fake hybrid-vsock muxer serving the real agent
//! service (fake guest facts).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{socket_path, FakeMuxer, Mode};
use husk_agent::testing::{FakeFacts, FakeSysfs};
use husk_agent_protocol::{API_VERSION, EXEC_STDIN_MAX};
use husk_shim::agent_client::{
    AgentClient, AgentClientError, ExecCommand, ExecStatus, HandshakeError, Identity, MountSource,
    MountSpec, Mounted, ReidentifyOutcome, FRESH_SEED_LEN,
};

#[test]
fn version_health_guest_info_and_shutdown() {
    let mux = FakeMuxer::start("all", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(5)).unwrap();
    let v = c.version().unwrap();
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(v.api_version, API_VERSION);
    assert_eq!(c.health().unwrap(), "SERVING");
    let facts = FakeFacts::default();
    let i = c.guest_info().unwrap();
    assert_eq!(i.kernel_release, facts.kernel_release);
    assert_eq!(i.boot_id, facts.boot_id);
    assert_eq!(i.instance_id, facts.boot_id, "the boot_id until Reidentify");
    assert_eq!(i.hostname, facts.hostname);
    assert_eq!(i.mem_total_kib, facts.mem.total_kib);
    assert_eq!(i.mem_available_kib, facts.mem.available_kib);
    assert_eq!(i.uptime_seconds, facts.uptime_seconds);
    c.shutdown().unwrap();
    assert_eq!(mux.agent.shutdowns.load(Ordering::SeqCst), 1);
}

#[test]
fn waits_for_a_socket_that_appears_late() {
    let mux = FakeMuxer::start_after("late", Mode::Agent, Duration::from_millis(300));
    let start = Instant::now();
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(10)).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(c.health().unwrap(), "SERVING");
}

#[test]
fn no_socket_is_an_error_after_the_deadline_naming_the_path() {
    let path = socket_path("absent");
    let start = Instant::now();
    let Err(e) = AgentClient::connect(&path, Duration::from_millis(400)) else {
        panic!("connected to nothing");
    };
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "agent not reachable over vsock at {} (port 1024) within 400ms: last error: connect:",
            path.display()
        )),
        "{msg}"
    );
    assert!(msg.contains("No such file"), "{msg}");
}

#[test]
fn a_reply_that_is_not_ok_is_retried_then_reported() {
    let mux = FakeMuxer::start("garbage", Mode::Garbage);
    let Err(e) = AgentClient::connect(&mux.uds_path, Duration::from_millis(400)) else {
        panic!("connected through a muxer that never says OK");
    };
    assert!(
        mux.connects.load(Ordering::SeqCst) > 1,
        "no retry before the deadline"
    );
    match &e {
        AgentClientError::Unreachable { last, port, .. } => {
            assert_eq!(*port, 1024);
            assert!(
                matches!(last, HandshakeError::NotOk(l) if l == "HELLO THERE"),
                "{e}"
            );
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(e.to_string().contains("is not `OK <port>`"), "{e}");
}

#[test]
fn a_port_nobody_listens_on_is_unreachable() {
    let mux = FakeMuxer::start("port", Mode::Agent);
    let Err(e) = AgentClient::connect_port(&mux.uds_path, 1025, Duration::from_millis(200)) else {
        panic!("connected to port 1025");
    };
    let msg = e.to_string();
    assert!(
        msg.contains("(port 1025)") && msg.contains("closed before"),
        "{msg}"
    );
}

#[test]
fn calls_after_the_agent_goes_away_fail_fast() {
    let mux = FakeMuxer::start("gone", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(5))
        .unwrap()
        .with_call_timeout(Duration::from_secs(5));
    assert_eq!(c.health().unwrap(), "SERVING");
    drop(mux);
    let start = Instant::now();
    let e = c.version().unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(5), "{e}");
    assert!(
        matches!(
            e,
            AgentClientError::Transport {
                method: "Version",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn a_deadline_too_far_to_represent_is_no_deadline() {
    let mux = FakeMuxer::start("forever", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::MAX)
        .unwrap()
        .with_call_timeout(Duration::MAX);
    assert_eq!(c.health().unwrap(), "SERVING");
}

/// `xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx`, lowercase hex.
fn is_uuid_v4(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lens == [8, 4, 4, 4, 12]
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        && groups[2].starts_with('4')
        && groups[3].starts_with(['8', '9', 'a', 'b'])
}

#[test]
fn fresh_identities_are_random_and_well_formed() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let a = Identity::fresh("pod-1").unwrap();
    let b = Identity::fresh(String::from("pod-1")).unwrap();
    assert_eq!(a.hostname, "pod-1");
    assert_eq!(a.rng_seed.len(), 64);
    assert_eq!(FRESH_SEED_LEN, 64);
    assert!(is_uuid_v4(&a.instance_id), "{}", a.instance_id);
    assert!(is_uuid_v4(&b.instance_id), "{}", b.instance_id);
    assert_ne!(a.instance_id, b.instance_id);
    assert_ne!(a.rng_seed, b.rng_seed);
    assert!(a.rng_seed.iter().any(|&x| x != 0));
    let t = u128::try_from(a.time_unix_ns).unwrap();
    assert!(
        t >= before && t - before < 60_000_000_000,
        "{t} vs {before}"
    );
    assert!(!format!("{a:?}").contains(&format!("{:?}", a.rng_seed)));
}

#[test]
fn reidentify_round_trip() {
    let mux = FakeMuxer::start("reid", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(5)).unwrap();
    let facts = FakeFacts::default();
    let mut id = Identity::fresh("restored-1").unwrap();
    id.time_unix_ns = facts.realtime_ns + 250_000_000;
    let out = c.reidentify(&id).unwrap();
    assert_eq!(
        out,
        ReidentifyOutcome {
            boot_id: facts.boot_id.clone(),
            instance_id: id.instance_id.clone(),
            clock_step_ns: 250_000_000,
        }
    );
    let i = c.guest_info().unwrap();
    assert_eq!(i.instance_id, id.instance_id);
    assert_eq!(i.hostname, "restored-1");
    assert_eq!(i.boot_id, facts.boot_id);
}

#[test]
fn reidentify_refusal_names_the_field() {
    let mux = FakeMuxer::start("reid-bad", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(5)).unwrap();
    let id = Identity::fresh("-bad").unwrap();
    let e = c.reidentify(&id).unwrap_err();
    match &e {
        AgentClientError::Rpc {
            method: "Reidentify",
            code: ttrpc::Code::INVALID_ARGUMENT,
            message,
        } => assert!(message.contains("hostname"), "{message}"),
        other => panic!("unexpected error {other}"),
    }
    let i = c.guest_info().unwrap();
    assert_eq!(i.instance_id, i.boot_id, "identity unchanged");
}

#[test]
fn exec_runs_a_command_and_reports_how_it_ended() {
    let mux = FakeMuxer::start("exec", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(5))
        .unwrap()
        .with_call_timeout(Duration::from_secs(1));
    let mut cmd = ExecCommand::new(["sh", "-c", "cat; echo err >&2; exit 3"]);
    cmd.stdin = b"in\n".to_vec();
    let out = c.exec(&cmd).unwrap();
    assert_eq!(out.status, ExecStatus::Exited(3));
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"in\n"[..], &b"err\n"[..])
    );
    assert!(!out.stdout_truncated && !out.stderr_truncated);

    // Longer than the call timeout: the command's own bounds the call.
    let out = c.exec(&ExecCommand::new(["sleep", "1.5"])).unwrap();
    assert_eq!(out.status, ExecStatus::Exited(0));

    let mut cmd = ExecCommand::new(["sleep", "30"]);
    cmd.timeout = Duration::from_millis(200);
    assert_eq!(c.exec(&cmd).unwrap().status, ExecStatus::TimedOut);

    let out = c
        .exec(&ExecCommand::new(["sh", "-c", "kill -USR1 $$"]))
        .unwrap();
    assert_eq!(out.status, ExecStatus::Signaled(libc::SIGUSR1));
}

#[test]
fn exec_errors_keep_their_code() {
    let mux = FakeMuxer::start("exec-err", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(5)).unwrap();
    match c
        .exec(&ExecCommand::new(["no-such-program-husk"]))
        .unwrap_err()
    {
        AgentClientError::Rpc {
            method: "Exec",
            code: ttrpc::Code::NOT_FOUND,
            message,
        } => assert!(message.contains("\"no-such-program-husk\""), "{message}"),
        other => panic!("unexpected error {other}"),
    }
    let e = c.exec(&ExecCommand::new(Vec::<String>::new())).unwrap_err();
    assert!(
        matches!(&e, AgentClientError::Rpc { code: ttrpc::Code::INVALID_ARGUMENT, message, .. } if message.starts_with("exec: argv: empty")),
        "{e}"
    );
    let mut cmd = ExecCommand::new(["cat"]);
    cmd.stdin = vec![0; EXEC_STDIN_MAX + 1];
    let e = c.exec(&cmd).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "agent Exec: stdin is {} bytes, at most {EXEC_STDIN_MAX}",
            EXEC_STDIN_MAX + 1
        )
    );
}

#[test]
fn mount_and_unmount() {
    let sys = FakeSysfs::new("client");
    sys.disk("vda", Some("root"));
    sys.disk("vdb", Some("data"));
    let facts = FakeFacts {
        sysfs_root: sys.root().to_owned(),
        ..FakeFacts::default()
    };
    let mux = FakeMuxer::start_with_facts("mount", facts.clone());
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(5)).unwrap();
    let mut spec = MountSpec::new(MountSource::Disk("data".into()), "/mnt/data");
    spec.read_only = true;
    let m = c.mount(&spec).unwrap();
    assert_eq!(
        m,
        Mounted {
            device: "/dev/vdb".into(),
            target: "/mnt/data".into(),
            fstype: "ext4".into(),
        }
    );
    assert!(facts.applied().mounts[0].read_only);
    let m = c
        .mount(&MountSpec::new(
            MountSource::Share("rootfs".into()),
            "/run/c",
        ))
        .unwrap();
    assert_eq!(
        (m.device.as_str(), m.fstype.as_str()),
        ("rootfs", "virtiofs")
    );

    c.unmount("/mnt/data").unwrap();
    assert_eq!(facts.applied().mounts.len(), 1);
    let e = c.unmount("/mnt/data").unwrap_err();
    assert!(
        matches!(
            &e,
            AgentClientError::Rpc {
                method: "Unmount",
                code: ttrpc::Code::NOT_FOUND,
                ..
            }
        ),
        "{e}"
    );
    let e = c
        .mount(&MountSpec::new(MountSource::Disk("nope".into()), "/mnt/x"))
        .unwrap_err();
    match e {
        AgentClientError::Rpc {
            method: "Mount",
            code: ttrpc::Code::NOT_FOUND,
            message,
        } => assert_eq!(
            message,
            "mount: no virtio-blk disk with serial \"nope\" \
             (found: vda serial \"root\", vdb serial \"data\")"
        ),
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn warm_up_runs_and_leaves_the_connection_usable() {
    let mux = FakeMuxer::start("warm", Mode::Agent);
    let c = AgentClient::connect(&mux.uds_path, Duration::from_secs(5)).unwrap();
    c.warm_up().unwrap();
    assert_eq!(c.health().unwrap(), "SERVING");
    // Its Reidentify changed nothing visible.
    let facts = FakeFacts::default();
    let i = c.guest_info().unwrap();
    assert_eq!(i.instance_id, facts.boot_id);
    assert_eq!(i.hostname, facts.hostname);
}
