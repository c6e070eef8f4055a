//! What the host asks of a running guest beyond its identity: mounts
//! ([`MountSpec`] → [`Mounted`], sent by
//! [`AgentClient::mount`](super::AgentClient::mount)) and commands run to
//! completion ([`ExecCommand`] → [`ExecOutput`], sent by
//! [`AgentClient::exec`](super::AgentClient::exec)).

use std::time::Duration;

use husk_agent_protocol::agent::{
    ExecRequest, ExecResponse, MountKind, MountRequest, MountResponse,
};
use husk_agent_protocol::EXEC_DEFAULT_TIMEOUT_MS;

/// What to mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSource {
    /// A virtio-blk disk: its serial (the GET_ID string the host gave it),
    /// or a `/dev/...` path.
    Disk(String),
    /// A virtio-fs share, by its tag.
    Share(String),
}

/// A mount in the guest. The agent checks it: `target` absolute without
/// `..`, a serial of at most 20 printable characters, a tag of at most 36
/// bytes, `fstype` of `[a-zA-Z0-9._-]` (always "virtiofs" for a share).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub source: MountSource,
    /// The guest path; the agent creates it (and its parents).
    pub target: String,
    /// `None`: ext4 for a disk, virtiofs for a share.
    pub fstype: Option<String>,
    pub read_only: bool,
    /// Filesystem options (mount(2) data), "" for none.
    pub options: String,
}

impl MountSpec {
    /// `source` on `target`, read-write, default type, no options.
    pub fn new(source: MountSource, target: impl Into<String>) -> Self {
        Self {
            source,
            target: target.into(),
            fstype: None,
            read_only: false,
            options: String::new(),
        }
    }

    pub(super) fn to_request(&self) -> MountRequest {
        let (kind, source) = match &self.source {
            MountSource::Disk(s) => (MountKind::MOUNT_KIND_BLOCK, s),
            MountSource::Share(t) => (MountKind::MOUNT_KIND_VIRTIOFS, t),
        };
        MountRequest {
            kind: kind.into(),
            source: source.clone(),
            target: self.target.clone(),
            fstype: self.fstype.clone().unwrap_or_default(),
            read_only: self.read_only,
            options: self.options.clone(),
            ..Default::default()
        }
    }
}

/// What `Mount` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// The block device (e.g. `/dev/vdb`) or the share's tag.
    pub device: String,
    /// The mount point, normalised.
    pub target: String,
    pub fstype: String,
}

impl From<MountResponse> for Mounted {
    fn from(r: MountResponse) -> Self {
        Self {
            device: r.device,
            target: r.target,
            fstype: r.fstype,
        }
    }
}

/// A command for the guest to run to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    /// argv[0] is an absolute path or a name in the environment's PATH.
    pub argv: Vec<String>,
    /// The whole environment, `KEY=VALUE` each (the agent adds a default
    /// PATH when it sets none).
    pub env: Vec<String>,
    /// `None`: `/`.
    pub cwd: Option<String>,
    /// Written to its stdin, then closed (at most
    /// [`EXEC_STDIN_MAX`](husk_agent_protocol::EXEC_STDIN_MAX) bytes).
    pub stdin: Vec<u8>,
    /// Killed (its whole process group) after this long; rounded up to
    /// whole ms, at least 1 ms.
    pub timeout: Duration,
}

impl ExecCommand {
    /// `argv` with no environment beyond PATH, in `/`, no stdin, the
    /// agent's default timeout (60 s).
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> Self {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            stdin: Vec::new(),
            timeout: Duration::from_millis(u64::from(EXEC_DEFAULT_TIMEOUT_MS)),
        }
    }

    /// The timeout as the request's `timeout_ms`.
    pub(super) fn timeout_ms(&self) -> u32 {
        let ms = self.timeout.as_micros().div_ceil(1000).max(1);
        u32::try_from(ms).unwrap_or(u32::MAX)
    }

    pub(super) fn to_request(&self) -> ExecRequest {
        ExecRequest {
            argv: self.argv.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone().unwrap_or_default(),
            stdin: self.stdin.clone(),
            timeout_ms: self.timeout_ms(),
            ..Default::default()
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecStatus {
    /// It exited with this code.
    Exited(i32),
    /// This signal ended it.
    Signaled(i32),
    /// Its timeout expired; its process group was killed.
    TimedOut,
}

impl ExecStatus {
    /// The status as a shell reports it: the exit code, 128 + the signal,
    /// or 124 for a timeout (as timeout(1) and `husk vm run` do).
    pub fn shell_code(self) -> i32 {
        match self {
            Self::Exited(code) => code,
            Self::Signaled(sig) => 128 + sig,
            Self::TimedOut => 124,
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub status: ExecStatus,
    /// At most [`EXEC_OUTPUT_CAP`](husk_agent_protocol::EXEC_OUTPUT_CAP)
    /// bytes each; the rest was dropped when the flag says so.
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

impl From<ExecResponse> for ExecOutput {
    fn from(r: ExecResponse) -> Self {
        let status = if r.timed_out {
            ExecStatus::TimedOut
        } else if r.signal != 0 {
            ExecStatus::Signaled(r.signal)
        } else {
            ExecStatus::Exited(r.exit_code)
        };
        Self {
            status,
            stdout: r.stdout,
            stderr: r.stderr,
            stdout_truncated: r.stdout_truncated,
            stderr_truncated: r.stderr_truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_up_to_whole_ms() {
        let mut c = ExecCommand::new(["true"]);
        assert_eq!(c.timeout_ms(), 60_000);
        c.timeout = Duration::ZERO;
        assert_eq!(c.timeout_ms(), 1, "0 would mean the default");
        c.timeout = Duration::from_micros(1500);
        assert_eq!(c.timeout_ms(), 2);
        c.timeout = Duration::from_secs(u64::MAX);
        assert_eq!(c.timeout_ms(), u32::MAX);
    }

    #[test]
    fn statuses() {
        let r = |exit_code, signal, timed_out| {
            ExecOutput::from(ExecResponse {
                exit_code,
                signal,
                timed_out,
                ..Default::default()
            })
            .status
        };
        assert_eq!(r(3, 0, false), ExecStatus::Exited(3));
        assert_eq!(r(-1, 15, false), ExecStatus::Signaled(15));
        assert_eq!(r(-1, 9, true), ExecStatus::TimedOut);
        assert_eq!(ExecStatus::Exited(3).shell_code(), 3);
        assert_eq!(ExecStatus::Signaled(15).shell_code(), 143);
        assert_eq!(ExecStatus::TimedOut.shell_code(), 124);
    }

    #[test]
    fn mount_requests() {
        let mut m = MountSpec::new(MountSource::Share("rootfs".into()), "/run/c");
        let r = m.to_request();
        assert_eq!(r.kind.enum_value(), Ok(MountKind::MOUNT_KIND_VIRTIOFS));
        assert_eq!((r.source.as_str(), r.fstype.as_str()), ("rootfs", ""));
        m.source = MountSource::Disk("data".into());
        m.fstype = Some("xfs".into());
        m.read_only = true;
        let r = m.to_request();
        assert_eq!(r.kind.enum_value(), Ok(MountKind::MOUNT_KIND_BLOCK));
        assert_eq!((r.fstype.as_str(), r.read_only), ("xfs", true));
    }
}
