//! Host tests: the agent service on a Unix socket with real containers
//! (root only; a SKIP line otherwise) from a busybox rootfs, stdio streams
//! through the stdio server on a Unix socket.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use husk_agent_protocol::agent::{
    CreateContainerRequest, ExecProcessRequest, ListPidsRequest, RemoveContainerRequest,
    SignalProcessRequest, StartContainerRequest, Stdio as StdioMsg, WaitProcessRequest,
};
use husk_agent_protocol::agent_ttrpc::AgentClient;
use serde_json::json;
use ttrpc::{context, Code};

use super::*;
use crate::container::Config;
use crate::reaper::{ReapMode, Reaper};
use crate::rpc::listen::Address;
use crate::stdio::{StdioConfig, StdioServer};
use crate::testing::{FakeFacts, UnixAgent};

fn is_root() -> bool {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() == 0 }
}

/// busybox and its applets in a temporary directory, shared by runs.
fn rootfs() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let done = std::env::temp_dir().join("husk-wire-rootfs");
        if done.join("bin/sh").exists() {
            return done;
        }
        let dir = std::env::temp_dir().join(format!("husk-wire-rootfs.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
        // Relative links (`--install -s` makes absolute ones, to a path
        // that is not there inside the container).
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
            }
        }
        if std::fs::rename(&dir, &done).is_err() {
            // Another run got there first.
            let _ = std::fs::remove_dir_all(&dir);
        }
        done
    })
}

fn spec(args: &[&str]) -> Vec<u8> {
    json!({
        "ociVersion": "1.1.0",
        "root": {"path": "rootfs"},
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]}
    })
    .to_string()
    .into_bytes()
}

struct Fixture {
    agent: UnixAgent,
    client: AgentClient,
    stdio_path: PathBuf,
    // Dropped after the agent (fields drop in order).
    _stdio: StdioServer,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.stdio_path);
        let _ = &self.agent;
    }
}

fn fixture(name: &str) -> Fixture {
    let stdio_path =
        std::env::temp_dir().join(format!("husk-wire-{}-{name}.sock", std::process::id()));
    let _ = std::fs::remove_file(&stdio_path);
    let stdio = StdioServer::start(StdioConfig::at(Address::Unix(
        stdio_path.to_string_lossy().into_owned(),
    )))
    .unwrap();
    let reaper = Arc::new(Reaper::new(ReapMode::PerChild));
    let config = Config {
        cgroup_root: None,
        cgroup_parent: String::new(),
    };
    let containers = Containers::new(Arc::clone(&reaper), config).unwrap();
    let service = ContainerService::new(
        containers,
        Arc::clone(stdio.registry()),
        stdio.pump().clone(),
    );
    let agent =
        UnixAgent::start_with_containers(name, FakeFacts::default(), reaper, service).unwrap();
    let client = AgentClient::new(ttrpc::Client::connect(&agent.address()).unwrap());
    Fixture {
        agent,
        client,
        stdio_path,
        _stdio: stdio,
    }
}

impl Fixture {
    /// Opens a stream as the host does: connect, header line.
    fn stream(&self, cid: &str, eid: &str, kind: &str) -> UnixStream {
        let mut s = UnixStream::connect(&self.stdio_path).unwrap();
        s.write_all(format!("{cid} {eid} {kind}\n").as_bytes())
            .unwrap();
        s
    }

    fn create(&self, id: &str, args: &[&str], stdout: bool) -> ttrpc::Result<()> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            spec_json: spec(args),
            rootfs: rootfs().to_string_lossy().into_owned(),
            stdio: Some(StdioMsg {
                stdout,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        self.client.create_container(ctx(), &req).map(|_| ())
    }

    fn start(&self, id: &str) -> ttrpc::Result<u32> {
        let req = StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client.start_container(ctx(), &req).map(|r| r.pid)
    }

    fn wait(&self, id: &str, exec_id: &str) -> ttrpc::Result<WaitProcessResponse> {
        let req = WaitProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.client.wait_process(ctx(), &req)
    }

    fn remove(&self, id: &str) -> ttrpc::Result<()> {
        let req = RemoveContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client.remove_container(ctx(), &req).map(|_| ())
    }

    fn pids(&self, id: &str) -> ttrpc::Result<Vec<u32>> {
        let req = ListPidsRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.client.list_pids(ctx(), &req).map(|r| r.pids)
    }
}

fn ctx() -> context::Context {
    context::with_duration(std::time::Duration::from_secs(30))
}

fn code(r: ttrpc::Result<impl std::fmt::Debug>) -> (Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message),
        other => panic!("want an RPC status, got {other:?}"),
    }
}

/// What arrived on a stream already (the agent has closed it: EOF).
fn arrived(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn run_wait_exec_and_remove() {
    if !is_root() {
        eprintln!("SKIP service::containers: needs root");
        return;
    }
    let f = fixture("run");
    let mut out = f.stream("echo", "-", "stdout");
    f.create("echo", &["echo", "hello"], true).unwrap();
    assert!(f.start("echo").unwrap() > 0);
    let w = f.wait("echo", "").unwrap();
    assert_eq!((w.exit_code, w.signal, w.oom_killed), (0, 0, false));
    assert!(w.exited_at_unix_ns > 0);
    // WaitProcess answered after the output reached us, EOF included.
    assert_eq!(arrived(&mut out), "hello\n");
    f.remove("echo").unwrap();

    f.create("three", &["sh", "-c", "exit 3"], false).unwrap();
    f.start("three").unwrap();
    assert_eq!(f.wait("three", "").unwrap().exit_code, 3);
    f.remove("three").unwrap();

    // Exec into a running container; then a signal ends its init.
    f.create("long", &["sleep", "60"], false).unwrap();
    let init = f.start("long").unwrap();
    let mut out = f.stream("long", "e1", "stdout");
    let process = json!({"args": ["sh", "-c", "echo from exec"], "env": ["PATH=/bin"], "cwd": "/",
                         "user": {"uid": 0, "gid": 0}});
    let req = ExecProcessRequest {
        container_id: "long".into(),
        exec_id: "e1".into(),
        process_json: process.to_string().into_bytes(),
        stdio: Some(StdioMsg {
            stdout: true,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    assert!(f.client.exec_process(ctx(), &req).unwrap().pid > 0);
    assert_eq!(f.wait("long", "e1").unwrap().exit_code, 0);
    assert_eq!(arrived(&mut out), "from exec\n");
    assert!(f.pids("long").unwrap().contains(&init));
    let kill = SignalProcessRequest {
        container_id: "long".into(),
        signal: 9,
        ..Default::default()
    };
    f.client.signal_process(ctx(), &kill).unwrap();
    let w = f.wait("long", "").unwrap();
    assert_eq!((w.exit_code, w.signal), (137, 9));

    // Remove leaves nothing: the id is unknown, and free again.
    f.remove("long").unwrap();
    assert_eq!(code(f.pids("long")).0, Code::NOT_FOUND);
    assert_eq!(code(f.remove("long")).0, Code::NOT_FOUND);
    f.create("long", &["true"], false).unwrap();
    f.remove("long").unwrap();
}

#[test]
fn errors_keep_their_codes() {
    if !is_root() {
        eprintln!("SKIP service::containers: needs root");
        return;
    }
    let f = fixture("errors");
    assert_eq!(code(f.start("nope")).0, Code::NOT_FOUND);
    assert_eq!(code(f.wait("nope", "")).0, Code::NOT_FOUND);
    assert_eq!(code(f.pids("nope")).0, Code::NOT_FOUND);

    f.create("dup", &["true"], false).unwrap();
    assert_eq!(
        code(f.create("dup", &["true"], false)).0,
        Code::ALREADY_EXISTS
    );
    assert_eq!(code(f.wait("dup", "x")).0, Code::NOT_FOUND);
    // Exec into a container that is not running.
    let exec = |id: &str, eid: &str| ExecProcessRequest {
        container_id: id.into(),
        exec_id: eid.into(),
        process_json: br#"{"args":["true"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec(),
        ..Default::default()
    };
    assert_eq!(
        code(f.client.exec_process(ctx(), &exec("dup", "e"))).0,
        Code::FAILED_PRECONDITION
    );
    assert_eq!(
        code(f.client.exec_process(ctx(), &exec("nope", "e"))).0,
        Code::NOT_FOUND
    );
    let (c, m) = code(f.client.exec_process(ctx(), &exec("dup", "-")));
    assert_eq!(c, Code::INVALID_ARGUMENT);
    assert!(m.contains("exec_id"), "{m}");
    f.remove("dup").unwrap();

    let (c, m) = code(f.create("bad", &[], false));
    assert_eq!(c, Code::INVALID_ARGUMENT);
    assert!(m.contains("process.args"), "{m}");
    let (c, m) = code(f.create("bad id", &["true"], false));
    assert_eq!(c, Code::INVALID_ARGUMENT);
    assert!(m.contains("container_id"), "{m}");
    let sig = SignalProcessRequest {
        container_id: "x".into(),
        signal: 0,
        ..Default::default()
    };
    let (c, m) = code(f.client.signal_process(ctx(), &sig));
    assert_eq!(c, Code::INVALID_ARGUMENT);
    assert!(m.contains("signal"), "{m}");
}
