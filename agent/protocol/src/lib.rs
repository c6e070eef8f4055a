//! The husk agent API, shared by the guest agent and the shim.
//!
//! `proto/agent.proto` (package `husk.agent.v1`) is compiled by build.rs
//! (ttrpc-codegen, pure Rust) into protobuf 3 messages ([`agent`]) and the
//! ttrpc sync client and server ([`agent_ttrpc`]: `AgentClient`, the `Agent`
//! trait, `create_agent`).

#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/generated/mod.rs"));
}

pub use generated::{agent, agent_ttrpc};

pub mod stdio;

/// The vsock port the agent serves its ttrpc API on.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// The vsock port on the host (CID 2) the agent streams its log lines to.
pub const LOG_VSOCK_PORT: u32 = 1025;
/// The version of `agent.proto` this crate was built from; bump it when the
/// API gains or changes meaning.
///
/// 2: `Reidentify`, `GuestInfoResponse.instance_id`.
/// 3: `Mount`, `Unmount`, `Exec`.
/// 4: containers (`CreateContainer` ... `WaitEvent`) and their stdio
///    streams on [`STDIO_VSOCK_PORT`]; an older agent answers them "not
///    supported" (ttrpc NOT_FOUND for an unknown method).
/// 5: `ConfigureNetwork` (pod networking: the guest's eth0 made the pod's).
/// 6: `CreateContainerResponse.steps`, `StartContainerResponse.steps` (the
///    agent's accounting of a container's create and start).
pub const API_VERSION: u32 = 6;
/// The vsock port the agent takes containers' stdio streams on (one
/// connection per stream, opened by the host; see `agent.proto`).
pub const STDIO_VSOCK_PORT: u32 = 1027;
/// The exec id that names a container's own process in a stdio header.
pub const INIT_EXEC_ID: &str = "-";
/// What `Health` answers while the agent serves requests.
pub const HEALTH_SERVING: &str = "SERVING";
/// The most bytes of stdout, and of stderr, an `ExecResponse` carries. Both
/// together stay well below ttrpc's 4 MiB message limit.
pub const EXEC_OUTPUT_CAP: usize = 1 << 20;
/// The most bytes of `ExecRequest.stdin` the agent takes (ttrpc messages are
/// at most 4 MiB).
pub const EXEC_STDIN_MAX: usize = 2 << 20;
/// How long `Exec` lets a command run when the request says 0.
pub const EXEC_DEFAULT_TIMEOUT_MS: u32 = 60_000;
/// The PATH a command gets when the request's environment sets none.
pub const EXEC_DEFAULT_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

#[cfg(test)]
mod tests {
    use protobuf::Message;

    use super::agent::{GuestInfoResponse, ReidentifyRequest};

    #[test]
    fn guest_info_round_trips_and_ignores_unknown_fields() {
        let mut info = GuestInfoResponse::new();
        info.agent_version = "0.1.0".into();
        info.mem_total_kib = 131_072;
        info.uptime_seconds = 1.5;
        let mut bytes = info.write_to_bytes().expect("encodes");
        // A field a newer agent might add (number 99, varint 7) must not
        // break an older reader.
        bytes.extend_from_slice(&[0x98, 0x06, 0x07]);
        let back = GuestInfoResponse::parse_from_bytes(&bytes).expect("decodes");
        assert_eq!(back.agent_version, "0.1.0");
        assert_eq!(back.mem_total_kib, 131_072);
        assert!((back.uptime_seconds - 1.5).abs() < f64::EPSILON);
    }

    #[test]
    fn api_1_guest_info_has_no_instance_id() {
        // What an API 1 agent sends: fields 1..=7 only.
        let mut old = GuestInfoResponse::new();
        old.boot_id = "b".into();
        old.instance_id = String::new();
        let bytes = old.write_to_bytes().expect("encodes");
        let back = GuestInfoResponse::parse_from_bytes(&bytes).expect("decodes");
        assert_eq!(back.boot_id, "b");
        assert!(back.instance_id.is_empty());
    }

    #[test]
    fn reidentify_request_round_trips() {
        let mut r = ReidentifyRequest::new();
        r.rng_seed = vec![0xab; 64];
        r.hostname = "pod-1".into();
        r.instance_id = "id".into();
        r.time_unix_ns = -1;
        let back = ReidentifyRequest::parse_from_bytes(&r.write_to_bytes().expect("encodes"))
            .expect("decodes");
        assert_eq!(back, r);
    }
}
