//! The agent protocol from bytes: every request and response message of
//! husk.agent.v1 (the agent decodes requests; the shim decodes responses,
//! which a compromised guest writes), the ttrpc frame header and envelope,
//! and the agent's own request validation (`Reidentify`, `Mount`, `Exec`).
//!
//! Checks: nothing panics; a decoded message re-encodes to bytes that
//! decode to an encoding of the same size; what validation accepts is within the
//! documented limits.
//!
//! Frames (10, 11) also go through the agent's own stream splitter.
//!
//! Input: a selector byte, then either a message (selectors 0..=9 and
//! 12..=17) or a ttrpc frame (10, 11): 10-byte header, then the payload.
//!
//! run.sh: -max_len=4096
#![no_main]

use husk_agent::exec::ExecSpec;
use husk_agent::identity::{NewIdentity, HOSTNAME_MAX, INSTANCE_ID_MAX, SEED_LEN};
use husk_agent::mount::MountSpec;
use husk_agent::rpc::frame::{Frame, FrameReader};
use husk_agent_protocol::agent::{
    ExecRequest, ExecResponse, GuestInfoRequest, GuestInfoResponse, HealthRequest, HealthResponse,
    MountRequest, MountResponse, ReidentifyRequest, ReidentifyResponse, ShutdownRequest,
    ShutdownResponse, UnmountRequest, UnmountResponse, VersionRequest, VersionResponse,
};
use libfuzzer_sys::fuzz_target;
use protobuf::Message;
use ttrpc::proto::{
    MessageHeader, MESSAGE_HEADER_LENGTH, MESSAGE_LENGTH_MAX, MESSAGE_TYPE_REQUEST,
    MESSAGE_TYPE_RESPONSE,
};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 18 {
        0 => {
            if let Some(r) = decode::<ReidentifyRequest>(rest) {
                validate(&r);
            }
        }
        1 => drop(decode::<VersionRequest>(rest)),
        2 => drop(decode::<HealthRequest>(rest)),
        3 => drop(decode::<GuestInfoRequest>(rest)),
        4 => drop(decode::<ShutdownRequest>(rest)),
        5 => drop(decode::<VersionResponse>(rest)),
        6 => drop(decode::<HealthResponse>(rest)),
        7 => drop(decode::<GuestInfoResponse>(rest)),
        8 => drop(decode::<ShutdownResponse>(rest)),
        9 => drop(decode::<ReidentifyResponse>(rest)),
        10 | 11 => frame(rest),
        12 => {
            if let Some(r) = decode::<MountRequest>(rest) {
                validate_mount(&r);
            }
        }
        13 => drop(
            decode::<UnmountRequest>(rest).map(|r| husk_agent::mount::validate_target(&r.target)),
        ),
        14 => {
            if let Some(r) = decode::<ExecRequest>(rest) {
                validate_exec(&r);
            }
        }
        15 => drop(decode::<MountResponse>(rest)),
        16 => drop(decode::<UnmountResponse>(rest)),
        _ => drop(decode::<ExecResponse>(rest)),
    }
});

/// Decodes `bytes` as `M`; a decoded message round-trips through its
/// encoding (compared by length: unknown fields are re-encoded in hash
/// order, and a NaN double never equals itself).
fn decode<M: Message>(bytes: &[u8]) -> Option<M> {
    let m = M::parse_from_bytes(bytes).ok()?;
    let once = m.write_to_bytes().expect("a decoded message encodes");
    let again = M::parse_from_bytes(&once).expect("an encoded message decodes");
    let twice = again.write_to_bytes().expect("encodes");
    assert_eq!(twice.len(), once.len(), "encoding is stable");
    Some(m)
}

fn validate(r: &ReidentifyRequest) {
    if let Ok(id) = NewIdentity::validate(&r.rng_seed, &r.hostname, &r.instance_id, r.time_unix_ns)
    {
        assert!(SEED_LEN.contains(&id.rng_seed.len()));
        assert!((1..=HOSTNAME_MAX).contains(&id.hostname.len()));
        assert!((1..=INSTANCE_ID_MAX).contains(&id.instance_id.len()));
        assert!(id
            .hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
        assert!(id.instance_id.bytes().all(|b| b.is_ascii_graphic()));
        assert!(id.time_unix_ns > 0);
    }
}

/// What the agent accepts for a mount: an absolute target without `..`.
fn validate_mount(r: &MountRequest) {
    if let Ok(spec) = MountSpec::validate(
        r.kind.enum_value().ok(),
        &r.source,
        &r.target,
        &r.fstype,
        r.read_only,
        &r.options,
    ) {
        assert!(spec.target.is_absolute());
        assert!(!spec
            .target
            .components()
            .any(|c| c == std::path::Component::ParentDir));
    }
}

/// What the agent accepts for a command: a non-empty argv, within limits.
fn validate_exec(r: &ExecRequest) {
    if let Ok(spec) = ExecSpec::validate(r) {
        assert!(!spec.argv.is_empty());
        assert!(spec.stdin.len() <= husk_agent_protocol::EXEC_STDIN_MAX);
    }
}

/// A ttrpc frame: the header's length is checked before any payload is
/// trusted; requests dispatch on the method name as the server does.
/// The agent's own frame splitter (`husk_agent::rpc::frame`) over the same
/// bytes as a stream, fed in chunks of a size the first byte picks: each
/// whole frame's payload is as long as its header says, and frames never
/// account for more bytes than came in.
fn stream(bytes: &[u8]) {
    let Some((&chunk, rest)) = bytes.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let mut reader = FrameReader::new();
    let mut taken = 0usize;
    for piece in rest.chunks(chunk) {
        reader.push(piece);
        while let Some(f) = reader.next_frame() {
            match f {
                Frame::Message(h, payload) => {
                    assert_eq!(payload.len(), h.length as usize);
                    taken += MESSAGE_HEADER_LENGTH + payload.len();
                }
                Frame::Oversize(h) => {
                    assert!(h.length as usize > MESSAGE_LENGTH_MAX);
                    taken += MESSAGE_HEADER_LENGTH;
                }
            }
        }
    }
    assert!(taken <= rest.len());
}

fn frame(bytes: &[u8]) {
    stream(bytes);
    if bytes.len() < MESSAGE_HEADER_LENGTH {
        return;
    }
    let (head, rest) = bytes.split_at(MESSAGE_HEADER_LENGTH);
    let header = MessageHeader::from(head);
    // As the sync channel does: an oversized frame is discarded unread.
    let Ok(len) = usize::try_from(header.length) else {
        return;
    };
    if len > MESSAGE_LENGTH_MAX || len > rest.len() {
        return;
    }
    let payload = &rest[..len];
    match header.type_ {
        MESSAGE_TYPE_REQUEST => {
            let Some(req) = decode::<ttrpc::Request>(payload) else {
                return;
            };
            let p = &req.payload;
            match req.method.as_str() {
                "Reidentify" => {
                    if let Some(r) = decode::<ReidentifyRequest>(p) {
                        validate(&r);
                    }
                }
                "Version" => drop(decode::<VersionRequest>(p)),
                "Health" => drop(decode::<HealthRequest>(p)),
                "GuestInfo" => drop(decode::<GuestInfoRequest>(p)),
                "Shutdown" => drop(decode::<ShutdownRequest>(p)),
                "Mount" => {
                    if let Some(r) = decode::<MountRequest>(p) {
                        validate_mount(&r);
                    }
                }
                "Unmount" => drop(decode::<UnmountRequest>(p)),
                "Exec" => {
                    if let Some(r) = decode::<ExecRequest>(p) {
                        validate_exec(&r);
                    }
                }
                _ => {}
            }
        }
        MESSAGE_TYPE_RESPONSE => {
            let Some(resp) = decode::<ttrpc::Response>(payload) else {
                return;
            };
            let p = &resp.payload;
            drop(decode::<VersionResponse>(p));
            drop(decode::<HealthResponse>(p));
            drop(decode::<GuestInfoResponse>(p));
            drop(decode::<ReidentifyResponse>(p));
            drop(decode::<MountResponse>(p));
            drop(decode::<ExecResponse>(p));
        }
        _ => {}
    }
}
