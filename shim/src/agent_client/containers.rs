//! The container API (agent API 4): typed calls on
//! [`AgentClient`](super::AgentClient) for `CreateContainer` ...
//! `WaitEvent`, with host-side types ([`Stdio`], [`ProcessExit`],
//! [`ContainerStats`], [`ContainerEvent`]); no protobuf type reaches the
//! caller.
//!
//! A process is named by its container id and, for a process started by
//! [`exec_process`](super::AgentClient::exec_process), its exec id; `None`
//! is the container's own process. The agent's errors keep their ttrpc
//! code ([`AgentClientError::Rpc`]): `NOT_FOUND` for an unknown container
//! or exec id, `ALREADY_EXISTS` for an id in use, `INVALID_ARGUMENT`
//! naming the field, `FAILED_PRECONDITION` for the wrong state.
//!
//! Stdio travels on vsock streams of its own, opened before the process
//! is made: see [`super::stdio`].

use std::time::Duration;

use husk_agent_protocol::agent::{
    CloseStdinRequest, ContainerStatsRequest, ContainerStatsResponse, CreateContainerRequest,
    ExecProcessRequest, ListPidsRequest, PauseContainerRequest, RemoveContainerRequest,
    ResizeTtyRequest, ResumeContainerRequest, SignalProcessRequest, StartContainerRequest,
    Stdio as StdioMsg, UpdateResourcesRequest, WaitEventRequest, WaitProcessRequest,
    WaitProcessResponse,
};
use ttrpc::context;

use super::steps::{GuestSteps, Started};
use super::{classify, AgentClient, AgentClientError};

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Which stdio streams a process gets; a stream not asked for is
/// `/dev/null` in the guest. Each stream asked for must be opened
/// ([`ProcessStreams::open`](super::ProcessStreams::open)) before the
/// process is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio {
    /// One `tty` stream both ways (a pseudo-terminal) instead of
    /// stdin/stdout/stderr.
    pub terminal: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// The terminal's first size (terminal only; `None`: 24x80).
    pub tty_size: Option<TtySize>,
}

impl Stdio {
    /// No streams: everything is `/dev/null`.
    pub fn null() -> Self {
        Self::default()
    }

    /// stdout and stderr, and stdin when `stdin`.
    pub fn pipes(stdin: bool) -> Self {
        Self {
            stdin,
            stdout: true,
            stderr: true,
            ..Self::default()
        }
    }

    /// A terminal of `size` (`None`: 24x80).
    pub fn tty(size: Option<TtySize>) -> Self {
        Self {
            terminal: true,
            tty_size: size,
            ..Self::default()
        }
    }

    pub(super) fn to_msg(self) -> StdioMsg {
        let size = self.tty_size.filter(|_| self.terminal);
        StdioMsg {
            terminal: self.terminal,
            stdin: self.stdin,
            stdout: self.stdout,
            stderr: self.stderr,
            rows: size.map_or(0, |s| u32::from(s.rows)),
            cols: size.map_or(0, |s| u32::from(s.cols)),
            ..Default::default()
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Its exit status, or 128 + the signal that ended it.
    pub exit_code: i32,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// When it ended, ns since the Unix epoch (the guest's clock).
    pub exited_at_unix_ns: i64,
    /// The container's cgroup had an OOM kill.
    pub oom_killed: bool,
}

impl ProcessExit {
    /// The status as a shell reports it: the exit code, or 128 + the
    /// signal.
    pub fn shell_code(&self) -> i32 {
        match self.signal {
            Some(sig) => 128 + sig,
            None => self.exit_code,
        }
    }
}

impl From<WaitProcessResponse> for ProcessExit {
    fn from(r: WaitProcessResponse) -> Self {
        Self {
            exit_code: r.exit_code,
            signal: (r.signal != 0).then_some(r.signal),
            exited_at_unix_ns: r.exited_at_unix_ns,
            oom_killed: r.oom_killed,
        }
    }
}

/// A container's cgroup v2 figures; a controller that is off reads 0,
/// a limit of `None` is `max`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub cpu_usage_usec: u64,
    pub cpu_user_usec: u64,
    pub cpu_system_usec: u64,
    pub cpu_nr_periods: u64,
    pub cpu_nr_throttled: u64,
    pub cpu_throttled_usec: u64,
    pub memory_usage_bytes: u64,
    pub memory_working_set_bytes: u64,
    pub memory_limit_bytes: Option<u64>,
    pub memory_oom_kills: u64,
    pub pids_current: u64,
    pub pids_limit: Option<u64>,
    pub io_read_bytes: u64,
    pub io_write_bytes: u64,
    pub io_read_ops: u64,
    pub io_write_ops: u64,
    /// When the figures were read, ns since the Unix epoch.
    pub timestamp_unix_ns: i64,
}

impl From<ContainerStatsResponse> for ContainerStats {
    fn from(r: ContainerStatsResponse) -> Self {
        let limit = |v: u64| (v != 0).then_some(v);
        Self {
            cpu_usage_usec: r.cpu_usage_usec,
            cpu_user_usec: r.cpu_user_usec,
            cpu_system_usec: r.cpu_system_usec,
            cpu_nr_periods: r.cpu_nr_periods,
            cpu_nr_throttled: r.cpu_nr_throttled,
            cpu_throttled_usec: r.cpu_throttled_usec,
            memory_usage_bytes: r.memory_usage_bytes,
            memory_working_set_bytes: r.memory_working_set_bytes,
            memory_limit_bytes: limit(r.memory_limit_bytes),
            memory_oom_kills: r.memory_oom_kills,
            pids_current: r.pids_current,
            pids_limit: limit(r.pids_limit),
            io_read_bytes: r.io_read_bytes,
            io_write_bytes: r.io_write_bytes,
            io_read_ops: r.io_read_ops,
            io_write_ops: r.io_write_ops,
            timestamp_unix_ns: r.timestamp_unix_ns,
        }
    }
}

/// Something that happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerEvent {
    /// The container's cgroup had an OOM kill.
    Oom { container_id: String },
}

/// Which processes a signal goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalTarget<'a> {
    /// The container's own process.
    Init,
    /// A process started by `exec_process`.
    Exec(&'a str),
    /// Every process of the container.
    All,
}

/// The wire's exec id: "" is the container's own process.
/// The least bound on the calls that build or tear down a container in the
/// guest (namespaces, a dozen mounts, a cgroup, the exec; waiting for the
/// stdio streams): seconds of guest-kernel work where that kernel is
/// emulated (nested PVM hosts), far above the default call bound.
pub const CONTAINER_SETUP_BOUND: Duration = Duration::from_secs(120);

fn exec_field(exec_id: Option<&str>) -> String {
    exec_id.unwrap_or_default().to_owned()
}

impl AgentClient {
    /// Creates container `id` from its OCI runtime spec (`config.json`
    /// bytes) on the root file system at guest path `rootfs`; its process
    /// is made by [`start_container`](Self::start_container). The streams
    /// `stdio` asks for must be open by now. Returns the agent's accounting
    /// of the create (none from an agent before API 6).
    pub fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &str,
        stdio: Stdio,
    ) -> Result<GuestSteps, AgentClientError> {
        let req = CreateContainerRequest {
            container_id: id.to_owned(),
            spec_json: spec_json.to_vec(),
            rootfs: rootfs.to_owned(),
            stdio: Some(stdio.to_msg()).into(),
            ..Default::default()
        };
        let r = self.call_within(
            "CreateContainer",
            self.call_timeout.max(CONTAINER_SETUP_BOUND),
            |c, ctx| c.create_container(ctx, &req),
        )?;
        Ok(GuestSteps::from_msgs(&r.steps))
    }

    /// Starts container `id`'s process; returns its pid in the guest and
    /// the agent's accounting of the start.
    pub fn start_container(&self, id: &str) -> Result<Started, AgentClientError> {
        let req = StartContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        let r = self.call_within(
            "StartContainer",
            self.call_timeout.max(CONTAINER_SETUP_BOUND),
            |c, ctx| c.start_container(ctx, &req),
        )?;
        Ok(Started {
            pid: r.pid,
            steps: GuestSteps::from_msgs(&r.steps),
        })
    }

    /// Starts another process (an OCI `process` object, JSON) in running
    /// container `id`, named `exec_id`; returns its pid in the guest.
    pub fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: Stdio,
    ) -> Result<u32, AgentClientError> {
        let req = ExecProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
            process_json: process_json.to_vec(),
            stdio: Some(stdio.to_msg()).into(),
            ..Default::default()
        };
        let r = self.call_within(
            "ExecProcess",
            self.call_timeout.max(CONTAINER_SETUP_BOUND),
            |c, ctx| c.exec_process(ctx, &req),
        )?;
        Ok(r.pid)
    }

    /// Sends `signal` to a process of container `id`, or to all of them.
    pub fn signal_process(
        &self,
        id: &str,
        target: SignalTarget<'_>,
        signal: i32,
    ) -> Result<(), AgentClientError> {
        let signal = u32::try_from(signal).map_err(|_| AgentClientError::Rpc {
            method: "SignalProcess",
            code: ttrpc::Code::INVALID_ARGUMENT,
            message: format!("container {id}: signal {signal} is negative"),
        })?;
        let (exec_id, all) = match target {
            SignalTarget::Init => (None, false),
            SignalTarget::Exec(e) => (Some(e), false),
            SignalTarget::All => (None, true),
        };
        let req = SignalProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_field(exec_id),
            signal,
            all,
            ..Default::default()
        };
        self.call("SignalProcess", |c, ctx| c.signal_process(ctx, &req))?;
        Ok(())
    }

    /// Waits for a process of container `id` to end (`exec_id` `None`: the
    /// container's own). The agent answers only once its stdout and stderr
    /// have reached the host. Not bounded by the call timeout (a process
    /// runs as long as it runs): `bound` `None` waits as long as it takes,
    /// `Some(t)` gives up with [`Timeout`](AgentClientError::Timeout) after
    /// `t`.
    pub fn wait_process(
        &self,
        id: &str,
        exec_id: Option<&str>,
        bound: Option<Duration>,
    ) -> Result<ProcessExit, AgentClientError> {
        let req = WaitProcessRequest {
            container_id: id.to_owned(),
            exec_id: exec_field(exec_id),
            ..Default::default()
        };
        let r = match bound {
            Some(t) => self.call_within("WaitProcess", t, |c, ctx| c.wait_process(ctx, &req))?,
            None => self.call_unbounded("WaitProcess", |c, ctx| c.wait_process(ctx, &req))?,
        };
        Ok(r.into())
    }

    /// Sets the terminal size of a process started with a tty.
    pub fn resize_tty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        size: TtySize,
    ) -> Result<(), AgentClientError> {
        let req = ResizeTtyRequest {
            container_id: id.to_owned(),
            exec_id: exec_field(exec_id),
            rows: u32::from(size.rows),
            cols: u32::from(size.cols),
            ..Default::default()
        };
        self.call("ResizeTty", |c, ctx| c.resize_tty(ctx, &req))?;
        Ok(())
    }

    /// Ends a process's stdin (the process reads EOF).
    pub fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), AgentClientError> {
        let req = CloseStdinRequest {
            container_id: id.to_owned(),
            exec_id: exec_field(exec_id),
            ..Default::default()
        };
        self.call("CloseStdin", |c, ctx| c.close_stdin(ctx, &req))?;
        Ok(())
    }

    /// The guest pids of container `id`'s processes.
    pub fn list_pids(&self, id: &str) -> Result<Vec<u32>, AgentClientError> {
        let req = ListPidsRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        let r = self.call("ListPids", |c, ctx| c.list_pids(ctx, &req))?;
        Ok(r.pids)
    }

    /// Container `id`'s cgroup statistics.
    pub fn container_stats(&self, id: &str) -> Result<ContainerStats, AgentClientError> {
        let req = ContainerStatsRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        let r = self.call("ContainerStats", |c, ctx| c.container_stats(ctx, &req))?;
        Ok(r.into())
    }

    /// Freezes every process of container `id`.
    pub fn pause_container(&self, id: &str) -> Result<(), AgentClientError> {
        let req = PauseContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.call_within(
            "PauseContainer",
            self.call_timeout.max(CONTAINER_SETUP_BOUND),
            |c, ctx| c.pause_container(ctx, &req),
        )?;
        Ok(())
    }

    /// Thaws every process of container `id`.
    pub fn resume_container(&self, id: &str) -> Result<(), AgentClientError> {
        let req = ResumeContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.call_within(
            "ResumeContainer",
            self.call_timeout.max(CONTAINER_SETUP_BOUND),
            |c, ctx| c.resume_container(ctx, &req),
        )?;
        Ok(())
    }

    /// New limits for container `id`: an OCI `LinuxResources` object, JSON.
    pub fn update_resources(
        &self,
        id: &str,
        resources_json: &[u8],
    ) -> Result<(), AgentClientError> {
        let req = UpdateResourcesRequest {
            container_id: id.to_owned(),
            resources_json: resources_json.to_vec(),
            ..Default::default()
        };
        self.call("UpdateResources", |c, ctx| c.update_resources(ctx, &req))?;
        Ok(())
    }

    /// Kills what is left of container `id` and releases it.
    pub fn remove_container(&self, id: &str) -> Result<(), AgentClientError> {
        let req = RemoveContainerRequest {
            container_id: id.to_owned(),
            ..Default::default()
        };
        self.call_within(
            "RemoveContainer",
            self.call_timeout.max(CONTAINER_SETUP_BOUND),
            |c, ctx| c.remove_container(ctx, &req),
        )?;
        Ok(())
    }

    /// The next container event, waiting up to `wait` (rounded up to whole
    /// ms, at most `u32::MAX` ms); `None` when the wait ends without one.
    /// The call is bounded by `wait` plus the call timeout.
    pub fn wait_event(&self, wait: Duration) -> Result<Option<ContainerEvent>, AgentClientError> {
        let ms = u32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(u32::MAX);
        let req = WaitEventRequest {
            timeout_ms: ms,
            ..Default::default()
        };
        let bound = Duration::from_millis(u64::from(ms)).saturating_add(self.call_timeout);
        let r = self.call_within("WaitEvent", bound, |c, ctx| c.wait_event(ctx, &req))?;
        Ok(r.has_event.then_some(ContainerEvent::Oom {
            container_id: r.oom_container_id,
        }))
    }

    /// A call with no deadline at all (ttrpc's timeout 0).
    fn call_unbounded<T>(
        &self,
        method: &'static str,
        f: impl FnOnce(&super::RpcClient, context::Context) -> ttrpc::Result<T>,
    ) -> Result<T, AgentClientError> {
        // Duration::MAX: no error is ever read as our own timeout.
        f(&self.rpc, context::with_timeout(0))
            .map_err(|e| classify(method, Duration::MAX, Duration::ZERO, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_messages() {
        let m = Stdio::pipes(true).to_msg();
        assert!(m.stdin && m.stdout && m.stderr && !m.terminal);
        assert_eq!((m.rows, m.cols), (0, 0));
        let m = Stdio::tty(Some(TtySize {
            rows: 50,
            cols: 132,
        }))
        .to_msg();
        assert!(m.terminal && !m.stdin && !m.stdout);
        assert_eq!((m.rows, m.cols), (50, 132));
        // A size without a terminal means nothing.
        let s = Stdio {
            tty_size: Some(TtySize { rows: 1, cols: 1 }),
            ..Stdio::null()
        };
        assert_eq!((s.to_msg().rows, s.to_msg().cols), (0, 0));
    }

    #[test]
    fn exits() {
        let exit = |exit_code, signal| {
            ProcessExit::from(WaitProcessResponse {
                exit_code,
                signal,
                ..Default::default()
            })
        };
        assert_eq!(exit(3, 0).shell_code(), 3);
        assert_eq!(exit(3, 0).signal, None);
        assert_eq!(exit(143, 15).signal, Some(15));
        assert_eq!(exit(143, 15).shell_code(), 143);
        // An agent that left exit_code at -1: the signal decides.
        assert_eq!(exit(-1, 9).shell_code(), 137);
    }

    #[test]
    fn stats_limits_of_zero_are_max() {
        let s = ContainerStats::from(ContainerStatsResponse {
            memory_limit_bytes: 0,
            pids_limit: 64,
            ..Default::default()
        });
        assert_eq!((s.memory_limit_bytes, s.pids_limit), (None, Some(64)));
    }
}
