//! The host side of the agent API: ttrpc over the VMM's hybrid-vsock Unix
//! socket.
//!
//! Hybrid vsock (as in Firecracker and Cloud Hypervisor): the host connects to
//! the VM's Unix socket, writes `CONNECT <port>\n`, and reads one line that
//! must be `OK <something>\n`; from then on the stream is a connection to the
//! guest's vsock `port`. The agent serves ttrpc on
//! [`AGENT_VSOCK_PORT`](husk_agent_protocol::AGENT_VSOCK_PORT).
//!
//! Protobuf types stay inside this module: callers get [`AgentVersion`],
//! [`GuestInfo`], for a guest restored from a template [`ReidentifyOutcome`]
//! for the [`Identity`] they send, [`Mounted`] for a [`MountSpec`] and
//! [`ExecOutput`] for an [`ExecCommand`].

mod containers;
mod guest_ops;
mod identity;
mod network;
pub mod stdio;
mod steps;

use std::io::{self, Read, Write};
use std::os::fd::IntoRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use husk_agent_protocol::agent::{
    GuestInfoRequest, HealthRequest, ShutdownRequest, UnmountRequest, VersionRequest,
};
use husk_agent_protocol::agent_ttrpc::AgentClient as RpcClient;
use husk_agent_protocol::{AGENT_VSOCK_PORT, EXEC_STDIN_MAX};
use thiserror::Error;
use ttrpc::context::{self, Context};

pub use containers::{ContainerEvent, ContainerStats, ProcessExit, SignalTarget, Stdio, TtySize};
pub use guest_ops::{ExecCommand, ExecOutput, ExecStatus, MountSource, MountSpec, Mounted};
pub use identity::{uuid_v4, Identity, ReidentifyOutcome, FRESH_SEED_LEN};
pub use network::{network_request, NetworkConfigured};
pub use stdio::{ProcessStreams, StdioError, StreamKind};
pub use steps::{GuestStep, GuestSteps, Started, ACCOUNTING_STEP};

/// The longest handshake reply line accepted, `\n` included.
pub const HANDSHAKE_LINE_MAX: usize = 64;
/// Pause between connection attempts.
const RETRY_INTERVAL: Duration = Duration::from_millis(50);
/// How long one attempt waits for the reply line (the guest's vsock answers
/// it; tens of ms even on emulated hosts).
const REPLY_BOUND: Duration = Duration::from_secs(3);
/// Default bound on one call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How much longer than its command's timeout an `Exec` call may take: the
/// agent waits up to 5 s for a killed command to be reaped, plus transfer.
pub const EXEC_CALL_MARGIN: Duration = Duration::from_secs(15);

/// Why one hybrid-vsock handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("send CONNECT: {0}")]
    Send(io::Error),
    #[error("no reply within {0:?}")]
    NoReply(Duration),
    #[error("read the reply: {0}")]
    Read(io::Error),
    #[error("connection closed before the reply line")]
    Closed,
    #[error("reply line longer than {HANDSHAKE_LINE_MAX} bytes")]
    TooLong,
    #[error("reply {0:?} is not `OK <port>`")]
    NotOk(String),
}

impl HandshakeError {
    /// Worth another try before the deadline: everything except a socket
    /// path the system rejects outright.
    fn retryable(&self) -> bool {
        !matches!(self, Self::Connect(e) if e.kind() == io::ErrorKind::InvalidInput)
    }
}

/// What can go wrong talking to the agent.
#[derive(Debug, Error)]
pub enum AgentClientError {
    #[error(
        "agent not reachable over vsock at {} (port {port}) within {deadline:?}: last error: {last}",
        path.display()
    )]
    Unreachable {
        path: PathBuf,
        port: u32,
        deadline: Duration,
        last: HandshakeError,
    },
    #[error("agent connection at {} (port {port}): {source}", path.display())]
    Setup {
        path: PathBuf,
        port: u32,
        source: ttrpc::Error,
    },
    #[error("agent {method}: no reply within {timeout:?}")]
    Timeout {
        method: &'static str,
        timeout: Duration,
    },
    #[error("agent {method} failed: {code:?}: {message}")]
    Rpc {
        method: &'static str,
        code: ttrpc::Code,
        message: String,
    },
    #[error("agent {method}: {source}")]
    Transport {
        method: &'static str,
        source: ttrpc::Error,
    },
    #[error("agent {method}: {what} is {len} bytes, at most {max}")]
    TooLarge {
        method: &'static str,
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// What `Version` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentVersion {
    pub agent_version: String,
    pub api_version: u32,
}

/// What `GuestInfo` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestInfo {
    pub agent_version: String,
    pub kernel_release: String,
    pub boot_id: String,
    /// The agent's identity: the boot_id until a `Reidentify`, then the
    /// instance id it was given (empty from an agent older than API 2).
    pub instance_id: String,
    pub hostname: String,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    pub uptime_seconds: f64,
}

/// One hybrid-vsock handshake: connects to `uds_path`, asks for `port`, and
/// returns the stream once the reply is `OK ...`. Reads the reply byte by
/// byte, so nothing past its line is consumed; waits at most `reply_bound`
/// for it. The returned stream is blocking, without timeouts.
pub fn hybrid_vsock_connect(
    uds_path: &Path,
    port: u32,
    reply_bound: Duration,
) -> Result<UnixStream, HandshakeError> {
    let mut s = UnixStream::connect(uds_path).map_err(HandshakeError::Connect)?;
    // A zero timeout is an error to set_*_timeout.
    let bound = reply_bound.max(Duration::from_millis(1));
    s.set_write_timeout(Some(bound))
        .and_then(|()| s.set_read_timeout(Some(bound)))
        .map_err(HandshakeError::Connect)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(HandshakeError::Send)?;
    let line = read_reply(&mut s, bound)?;
    if !line.starts_with("OK ") {
        return Err(HandshakeError::NotOk(line));
    }
    s.set_write_timeout(None)
        .and_then(|()| s.set_read_timeout(None))
        .map_err(HandshakeError::Connect)?;
    Ok(s)
}

/// Reads one `\n`-terminated line (returned without it), one byte at a time.
fn read_reply(r: &mut impl Read, bound: Duration) -> Result<String, HandshakeError> {
    let mut line = Vec::with_capacity(HANDSHAKE_LINE_MAX);
    let mut byte = [0u8; 1];
    while line.len() < HANDSHAKE_LINE_MAX {
        match r.read(&mut byte) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HandshakeError::NoReply(bound))
            }
            Err(e) => return Err(HandshakeError::Read(e)),
        }
    }
    Err(HandshakeError::TooLong)
}

/// A connection to one guest's agent.
pub struct AgentClient {
    rpc: RpcClient,
    call_timeout: Duration,
}

impl AgentClient {
    /// Connects to the agent through the VM's hybrid-vsock socket at
    /// `uds_path`, retrying every 50 ms until `deadline` has passed (the
    /// socket may not exist yet, or the agent may not listen yet).
    pub fn connect(
        uds_path: impl AsRef<Path>,
        deadline: Duration,
    ) -> Result<Self, AgentClientError> {
        Self::connect_port(uds_path, AGENT_VSOCK_PORT, deadline)
    }

    /// [`connect`](Self::connect) to another guest port.
    pub fn connect_port(
        uds_path: impl AsRef<Path>,
        port: u32,
        deadline: Duration,
    ) -> Result<Self, AgentClientError> {
        let uds_path = uds_path.as_ref();
        // None: a deadline too far to represent, i.e. none.
        let end = Instant::now().checked_add(deadline);
        let remaining = || {
            end.map_or(Duration::MAX, |e| {
                e.saturating_duration_since(Instant::now())
            })
        };
        let unreachable = |last| AgentClientError::Unreachable {
            path: uds_path.to_owned(),
            port,
            deadline,
            last,
        };
        let mut last: Option<HandshakeError> = None;
        let stream = loop {
            let bound = remaining().min(REPLY_BOUND);
            match hybrid_vsock_connect(uds_path, port, bound) {
                Ok(s) => break s,
                Err(e) => {
                    tracing::debug!(path = %uds_path.display(), port, error = %e, "agent not reachable yet");
                    // An attempt the deadline cut short (down to 1 ms) says
                    // less about the agent than the one before it.
                    let cut_short = matches!(e, HandshakeError::NoReply(_)) && bound < REPLY_BOUND;
                    let e = match last.take() {
                        Some(earlier) if cut_short => earlier,
                        _ => e,
                    };
                    let remaining = remaining();
                    if !e.retryable() || remaining.is_zero() {
                        return Err(unreachable(e));
                    }
                    last = Some(e);
                    std::thread::sleep(RETRY_INTERVAL.min(remaining));
                }
            }
        };
        // ttrpc takes the descriptor over: on success the client closes it
        // when its last clone drops (closing it elsewhere too would make
        // ttrpc's Drop panic on EBADF). On error ttrpc 0.10 has not stored it
        // and does not close it; we do not close it either, as its docs
        // promise ownership: one descriptor leaks on that (EMFILE-class)
        // failure rather than risk a double close.
        let client =
            ttrpc::Client::new(stream.into_raw_fd()).map_err(|source| AgentClientError::Setup {
                path: uds_path.to_owned(),
                port,
                source,
            })?;
        Ok(Self {
            rpc: RpcClient::new(client),
            call_timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Bounds each call by `timeout` (default [`DEFAULT_CALL_TIMEOUT`]).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The agent's version and API version.
    pub fn version(&self) -> Result<AgentVersion, AgentClientError> {
        let r = self.call("Version", |c, ctx| c.version(ctx, &VersionRequest::new()))?;
        Ok(AgentVersion {
            agent_version: r.agent_version,
            api_version: r.api_version,
        })
    }

    /// The agent's health status (`"SERVING"`).
    pub fn health(&self) -> Result<String, AgentClientError> {
        let r = self.call("Health", |c, ctx| c.health(ctx, &HealthRequest::new()))?;
        Ok(r.status)
    }

    /// Facts about the guest.
    pub fn guest_info(&self) -> Result<GuestInfo, AgentClientError> {
        let r = self.call("GuestInfo", |c, ctx| {
            c.guest_info(ctx, &GuestInfoRequest::new())
        })?;
        Ok(GuestInfo {
            agent_version: r.agent_version,
            kernel_release: r.kernel_release,
            boot_id: r.boot_id,
            instance_id: r.instance_id,
            hostname: r.hostname,
            mem_total_kib: r.mem_total_kib,
            mem_available_kib: r.mem_available_kib,
            uptime_seconds: r.uptime_seconds,
        })
    }

    /// Gives a guest restored from a template its own identity: reseeds its
    /// RNG, sets its hostname, steps its clock and makes `identity`'s
    /// instance id the agent's. A field the agent refuses is an
    /// [`Rpc`](AgentClientError::Rpc) error with code `INVALID_ARGUMENT`
    /// naming it.
    pub fn reidentify(&self, identity: &Identity) -> Result<ReidentifyOutcome, AgentClientError> {
        let req = identity.to_request();
        let r = self.call("Reidentify", |c, ctx| c.reidentify(ctx, &req))?;
        Ok(r.into())
    }

    /// Mounts a disk (by serial or `/dev` path) or a virtio-fs share (by
    /// tag) in the guest. A field the agent refuses is an
    /// [`Rpc`](AgentClientError::Rpc) error with code `INVALID_ARGUMENT`
    /// naming it; an unknown serial `NOT_FOUND` (listing the disks there
    /// are); a failed mount `INTERNAL` naming device and mount point.
    pub fn mount(&self, spec: &MountSpec) -> Result<Mounted, AgentClientError> {
        let req = spec.to_request();
        let r = self.call("Mount", |c, ctx| c.mount(ctx, &req))?;
        Ok(r.into())
    }

    /// Syncs and unmounts `target` in the guest; `NOT_FOUND` when nothing is
    /// mounted there.
    pub fn unmount(&self, target: &str) -> Result<(), AgentClientError> {
        let req = UnmountRequest {
            target: target.to_owned(),
            ..Default::default()
        };
        self.call("Unmount", |c, ctx| c.unmount(ctx, &req))?;
        Ok(())
    }

    /// Runs `cmd` in the guest to completion or its timeout; the call
    /// itself is bounded by the larger of the call timeout and the
    /// command's plus [`EXEC_CALL_MARGIN`]. A command that fails is an
    /// answer ([`ExecStatus`]); an error means it did not run: `NOT_FOUND`
    /// for a program that is not there, `INVALID_ARGUMENT` naming a bad
    /// field.
    pub fn exec(&self, cmd: &ExecCommand) -> Result<ExecOutput, AgentClientError> {
        if cmd.stdin.len() > EXEC_STDIN_MAX {
            return Err(AgentClientError::TooLarge {
                method: "Exec",
                what: "stdin",
                len: cmd.stdin.len(),
                max: EXEC_STDIN_MAX,
            });
        }
        let req = cmd.to_request();
        let bound = self
            .call_timeout
            .max(cmd.timeout.saturating_add(EXEC_CALL_MARGIN));
        let r = self.call_within("Exec", bound, |c, ctx| c.exec(ctx, &req))?;
        Ok(r.into())
    }

    /// Makes a template VM's agent do, once before the snapshot, what the
    /// first requests of every VM restored from it would otherwise pay for:
    /// its request paths' code and data faulted in, its worker thread's
    /// stack and the facts it caches touched, one command started and
    /// reaped through `Exec` (the agent's own binary, `/proc/self/exe`,
    /// which is in every guest image and does nothing when it is not PID 1;
    /// its exit status is not checked), and one `Reidentify` that changes
    /// nothing visible: the same hostname (`localhost` if the kernel's
    /// default is not a valid one), the boot id as instance id (what the
    /// agent reports until it is given one), the host's clock, and fresh
    /// host entropy mixed into the template's RNG. On nested PVM hosts each
    /// first touch is an emulated page fault (~2.3 ms); see `perf/README.md`.
    ///
    /// Call it on the template VM after the agent answers and right before
    /// pausing it for the snapshot, on the connection that is then closed.
    /// Takes about as long as one `Exec` (~0.5 s on PVM hosts).
    pub fn warm_up(&self) -> Result<(), AgentClientError> {
        self.version()?;
        self.health()?;
        let info = self.guest_info()?;
        // The argument keeps a host test's agent (whose /proc/self/exe is
        // the test binary) from running its tests again: libtest refuses
        // the option at once.
        self.exec(&ExecCommand::new(["/proc/self/exe", "--husk-warm-up"]))?;
        let hostname = if identity::is_valid_hostname(&info.hostname) {
            info.hostname
        } else {
            "localhost".to_owned()
        };
        match Identity::fresh(hostname) {
            Ok(mut id) => {
                id.instance_id = info.boot_id;
                self.reidentify(&id)?;
            }
            // No host entropy (getrandom failed): skip this warm-up step
            // rather than fail the template.
            Err(e) => {
                tracing::warn!(error = %e, "warm-up: no fresh identity; Reidentify not warmed")
            }
        }
        self.guest_info()?;
        Ok(())
    }

    /// Asks the guest to power off; it replies first, then resets the VM.
    pub fn shutdown(&self) -> Result<(), AgentClientError> {
        self.shutdown_within(self.call_timeout)
    }

    /// [`shutdown`](Self::shutdown), the call bounded by `timeout`.
    pub fn shutdown_within(&self, timeout: Duration) -> Result<(), AgentClientError> {
        self.call_within("Shutdown", timeout, |c, ctx| {
            c.shutdown(ctx, &ShutdownRequest::new())
        })?;
        Ok(())
    }

    fn call<T>(
        &self,
        method: &'static str,
        f: impl FnOnce(&RpcClient, Context) -> ttrpc::Result<T>,
    ) -> Result<T, AgentClientError> {
        self.call_within(method, self.call_timeout, f)
    }

    fn call_within<T>(
        &self,
        method: &'static str,
        timeout: Duration,
        f: impl FnOnce(&RpcClient, Context) -> ttrpc::Result<T>,
    ) -> Result<T, AgentClientError> {
        let start = Instant::now();
        let nanos = i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX);
        f(&self.rpc, context::with_timeout(nanos))
            .map_err(|e| classify(method, timeout, start.elapsed(), e))
    }
}

/// The most bytes of an agent's error message kept (it reaches
/// containerd's replies and logs).
pub const GUEST_MESSAGE_MAX: usize = 4096;

/// Text from the guest made fit for replies and logs: control characters
/// (newlines, escape sequences) written as escapes, at most `max` bytes
/// (cut at a character boundary, saying how much was cut).
pub fn guest_text(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 32);
    let mut cut_at = None;
    for (i, c) in text.char_indices() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            cut_at = Some(i);
            break;
        }
    }
    if let Some(i) = cut_at {
        out.push_str(&format!("… ({} more bytes)", text.len() - i));
    }
    out
}

/// Sorts a ttrpc error: the agent's own status, our timeout, or transport.
fn classify(
    method: &'static str,
    timeout: Duration,
    elapsed: Duration,
    e: ttrpc::Error,
) -> AgentClientError {
    match e {
        ttrpc::Error::RpcStatus(s) => AgentClientError::Rpc {
            method,
            code: s.code(),
            message: guest_text(&s.message, GUEST_MESSAGE_MAX),
        },
        // The sync client reports its timeout only as text ("Receive packet
        // from Receiver timeout"): tell it by the clock instead.
        ttrpc::Error::Others(_) if elapsed >= timeout => {
            AgentClientError::Timeout { method, timeout }
        }
        source => AgentClientError::Transport { method, source },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::io::Cursor;

    use super::*;

    fn reply(bytes: &[u8]) -> (Result<String, HandshakeError>, Vec<u8>) {
        let mut c = Cursor::new(bytes.to_vec());
        let r = read_reply(&mut c, REPLY_BOUND);
        let pos = c.position() as usize;
        (r, bytes[pos..].to_vec())
    }

    #[test]
    fn reply_line_is_read_without_consuming_more() {
        let (r, rest) = reply(b"OK 1073741824\n\x00\x00\x00\x10ttrpc");
        assert_eq!(r.unwrap(), "OK 1073741824");
        assert_eq!(rest, b"\x00\x00\x00\x10ttrpc");
    }

    #[test]
    fn reply_line_errors() {
        assert!(matches!(reply(b"").0, Err(HandshakeError::Closed)));
        assert!(matches!(reply(b"OK 12").0, Err(HandshakeError::Closed)));
        let long = [b'x'; HANDSHAKE_LINE_MAX + 1];
        let (r, rest) = reply(&long);
        assert!(matches!(r, Err(HandshakeError::TooLong)));
        assert_eq!(rest.len(), 1, "stops reading at the bound");
        let mut just_fits = vec![b'x'; HANDSHAKE_LINE_MAX - 1];
        just_fits.push(b'\n');
        assert_eq!(reply(&just_fits).0.unwrap().len(), HANDSHAKE_LINE_MAX - 1);
    }

    #[test]
    fn handshake_rejects_a_reply_that_is_not_ok() {
        let dir = std::env::temp_dir().join(format!("husk-hs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            for reply in [&b"ERR no listener\n"[..], b"OK 5\n"] {
                let (mut s, _) = listener.accept().unwrap();
                let mut line = [0u8; 13];
                s.read_exact(&mut line).unwrap();
                assert_eq!(&line, b"CONNECT 1024\n");
                s.write_all(reply).unwrap();
                // The client may already have hung up after a bad reply.
                let _ = s.write_all(b"after");
            }
        });
        let e = hybrid_vsock_connect(&path, 1024, REPLY_BOUND).unwrap_err();
        assert_eq!(
            e.to_string(),
            "reply \"ERR no listener\" is not `OK <port>`"
        );
        let mut s = hybrid_vsock_connect(&path, 1024, REPLY_BOUND).unwrap();
        let mut after = [0u8; 5];
        s.read_exact(&mut after).unwrap();
        assert_eq!(&after, b"after");
        server.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn silent_peer_is_no_reply_within_the_bound() {
        let dir = std::env::temp_dir().join(format!("husk-hs-silent-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        let e = hybrid_vsock_connect(&path, 1024, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, HandshakeError::NoReply(_)), "{e}");
        assert!(start.elapsed() < Duration::from_secs(2));
        drop(listener);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_are_sorted() {
        let t = Duration::from_millis(100);
        let rpc = ttrpc::Error::RpcStatus(ttrpc::get_status(ttrpc::Code::INTERNAL, "boom"));
        assert!(matches!(
            classify("GuestInfo", t, Duration::ZERO, rpc),
            AgentClientError::Rpc {
                code: ttrpc::Code::INTERNAL,
                ..
            }
        ));
        let late = ttrpc::Error::Others("Receive packet from Receiver timeout: x".into());
        let e = classify("Version", t, t, late);
        assert_eq!(e.to_string(), "agent Version: no reply within 100ms");
        let closed = ttrpc::Error::Socket("socket error EOF".into());
        assert!(matches!(
            classify("Health", t, Duration::ZERO, closed),
            AgentClientError::Transport {
                method: "Health",
                ..
            }
        ));
    }

    /// An agent's error message is escaped and cut before it reaches a
    /// reply or a log.
    #[test]
    fn guest_messages_are_escaped_and_capped() {
        assert_eq!(guest_text("plain: fine", 100), "plain: fine");
        assert_eq!(
            guest_text("a\nb\r\x1b[31mc\u{7f}", 100),
            "a\\nb\\r\\u{1b}[31mc\\u{7f}"
        );
        let long = "é".repeat(1 << 20);
        let t = guest_text(&long, GUEST_MESSAGE_MAX);
        assert!(t.len() <= GUEST_MESSAGE_MAX + 40, "{}", t.len());
        assert!(t.ends_with(&format!(
            "… ({} more bytes)",
            long.len() - GUEST_MESSAGE_MAX
        )));
        let e = classify(
            "CreateContainer",
            Duration::from_secs(1),
            Duration::ZERO,
            ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INTERNAL,
                "x\n".repeat(1 << 20),
            )),
        );
        match e {
            AgentClientError::Rpc { code, message, .. } => {
                assert_eq!(code, ttrpc::Code::INTERNAL);
                assert!(message.len() <= GUEST_MESSAGE_MAX + 40);
                assert!(!message.contains('\n'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unreachable_message_names_path_port_deadline_and_cause() {
        let e = AgentClientError::Unreachable {
            path: "/x.sock".into(),
            port: 1024,
            deadline: Duration::from_secs(30),
            last: HandshakeError::Closed,
        };
        assert_eq!(
            e.to_string(),
            "agent not reachable over vsock at /x.sock (port 1024) within 30s: \
             last error: connection closed before the reply line"
        );
    }
}
