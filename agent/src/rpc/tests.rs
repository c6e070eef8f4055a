//! The server end to end over a Unix socket, with the real agent service
//! (fake facts) and ttrpc's own sync client.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::Path;
use std::time::Duration;

use husk_agent_protocol::agent::{ExecRequest, VersionRequest};
use husk_agent_protocol::agent_ttrpc::AgentClient;
use ttrpc::context;
use ttrpc::proto::{Code, Request};

use crate::testing::{FakeFacts, UnixAgent};
use crate::AGENT_VERSION;

fn ctx() -> context::Context {
    context::with_duration(Duration::from_secs(20))
}

fn raw_request(method: &str, payload: Vec<u8>) -> Request {
    Request {
        service: "husk.agent.v1.Agent".into(),
        method: method.into(),
        payload,
        timeout_nano: 20_000_000_000,
        ..Default::default()
    }
}

fn rpc_code(e: ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message),
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn a_quick_call_is_answered_while_an_exec_blocks_the_same_connection() {
    let agent = UnixAgent::start("rpc-concurrent", FakeFacts::default()).unwrap();
    let client = ttrpc::Client::connect(&agent.address()).unwrap();
    let c = AgentClient::new(client.clone());
    let dir = std::env::temp_dir().join(format!("husk-rpc-conc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (started, go) = (dir.join("started"), dir.join("go"));
    let script = format!(
        "touch {s}; while [ ! -e {g} ]; do sleep 0.01; done; echo done",
        s = started.display(),
        g = go.display()
    );
    let c2 = c.clone();
    let exec = std::thread::spawn(move || {
        let req = ExecRequest {
            argv: vec!["sh".into(), "-c".into(), script],
            ..Default::default()
        };
        c2.exec(ctx(), &req)
    });
    wait_for(&started);
    // The command waits for us: were calls on this connection served one
    // at a time, this would never be answered.
    let v = c.version(ctx(), &VersionRequest::new()).unwrap();
    assert_eq!(v.agent_version, AGENT_VERSION);
    std::fs::write(&go, "").unwrap();
    let r = exec.join().unwrap().unwrap();
    assert_eq!(r.stdout, b"done\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn wait_for(path: &Path) {
    for _ in 0..2000 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn bad_requests_get_an_error_and_the_connection_stays() {
    let agent = UnixAgent::start("rpc-bad", FakeFacts::default()).unwrap();
    let client = ttrpc::Client::connect(&agent.address()).unwrap();
    let (code, msg) = rpc_code(client.request(raw_request("Nope", vec![])).unwrap_err());
    assert_eq!(code, Code::INVALID_ARGUMENT);
    assert_eq!(msg, "/husk.agent.v1.Agent/Nope does not exist");
    // A payload that is not a VersionRequest (a truncated varint), inline,
    // and one that is not an ExecRequest, on a worker.
    for method in ["Version", "Exec"] {
        let e = client
            .request(raw_request(method, vec![0x08, 0xff]))
            .unwrap_err();
        let (code, msg) = rpc_code(e);
        assert_eq!(code, Code::INVALID_ARGUMENT, "{method}: {msg}");
        assert!(msg.starts_with("request not handled: "), "{method}: {msg}");
    }
    let c = AgentClient::new(client);
    let v = c.version(ctx(), &VersionRequest::new()).unwrap();
    assert_eq!(v.agent_version, AGENT_VERSION);
}

#[test]
fn many_connections_one_after_another_and_at_once() {
    let agent = UnixAgent::start("rpc-many", FakeFacts::default()).unwrap();
    for _ in 0..20 {
        let c = AgentClient::new(ttrpc::Client::connect(&agent.address()).unwrap());
        c.version(ctx(), &VersionRequest::new()).unwrap();
    }
    let clients: Vec<_> = (0..8)
        .map(|_| AgentClient::new(ttrpc::Client::connect(&agent.address()).unwrap()))
        .collect();
    let threads: Vec<_> = clients
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || {
                for _ in 0..10 {
                    c.version(ctx(), &VersionRequest::new()).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}
