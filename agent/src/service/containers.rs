//! The container RPCs (API 4): protobuf requests converted once at the
//! edge, then the container library ([`Containers`]) and the stdio streams
//! ([`Registry`] claims, [`Pump`] attaches).
//!
//! A process's stdio goes through three states kept here, beside the
//! library's own table ([`ProcIo`]): `Pending` from CreateContainer /
//! ExecProcess (the agent's pipe ends or pty master and the host's sockets,
//! held until the process exists), `Starting` while `start` clones it, and
//! `Attached` (the pump copies it; WaitProcess waits on its drain). The
//! lock over that map is only held for map operations, never across a
//! blocking call, so SignalProcess, ResizeTty and CloseStdin can be
//! answered on the server's I/O thread.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use husk_agent_protocol::agent::{
    ContainerStatsResponse, CreateContainerRequest, ExecProcessRequest, Stdio as StdioMsg,
    WaitProcessResponse,
};
use husk_agent_protocol::INIT_EXEC_ID;
use thiserror::Error;
use ttrpc::Code;

use crate::accounting::{Meter, Step};
use crate::container::{
    validate_id, ContainerError, Containers, Event, ExitInfo, SpecError, Stats, Stdio,
};
use crate::log::log;
use crate::reaper::{cloexec_pipe, ExitStatus};
use crate::stdio::{
    Claimed, DrainHandle, ProcessIo, ProcessKey, Pump, Registry, StdioError, Wanted, CLAIM_TIMEOUT,
    OUTPUT_GRACE,
};

/// How often a WaitProcess on a process that has not exited checks that
/// its container still exists, as a backstop: removing a container (or an
/// exec) wakes its waiters at once. Long, because every wakeup of an idle
/// guest costs emulated kernel work on PVM hosts: a 2 s recheck per waiter
/// made each idle CRI pod hold ~0.5-0.9% of a host core.
const WAIT_RECHECK: Duration = Duration::from_secs(300);
/// The longest WaitProcess waits for a concurrent StartContainer /
/// ExecProcess to hand the process's stdio to the pump.
const ATTACH_WAIT: Duration = Duration::from_secs(60);

/// Why a container RPC failed; [`code`](Self::code) is its ttrpc code.
#[derive(Debug, Error)]
pub enum ContainerRpcError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("containers are unavailable in this agent: {0}")]
    Unavailable(String),
}

impl ContainerRpcError {
    pub fn code(&self) -> Code {
        match self {
            Self::Container(e) => e.code(),
            Self::Stdio(e) => e.code(),
            Self::Invalid { .. } => Code::INVALID_ARGUMENT,
            Self::Io { .. } => Code::INTERNAL,
            Self::Unavailable(_) => Code::FAILED_PRECONDITION,
        }
    }
}

impl From<SpecError> for ContainerRpcError {
    fn from(e: SpecError) -> Self {
        Self::Container(e.into())
    }
}

type Result<T> = std::result::Result<T, ContainerRpcError>;

fn invalid(field: &'static str, reason: impl Into<String>) -> ContainerRpcError {
    ContainerRpcError::Invalid {
        field,
        reason: reason.into(),
    }
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ContainerRpcError {
    move |source| ContainerRpcError::Io { what, source }
}

/// A process's stdio as this layer holds it (see the module docs).
enum ProcIo {
    /// Made, not started: what the pump will get.
    Pending(Box<ProcessIo>),
    /// `start` runs (the pending io is with it).
    Starting,
    /// The pump has it.
    Attached(Arc<DrainHandle>),
    /// No streams (all /dev/null).
    Nothing,
}

/// Which streams, and the first terminal size, converted from [`StdioMsg`].
#[derive(Debug, Clone, Copy)]
struct WantedStdio {
    wanted: Wanted,
    size: Option<(u16, u16)>,
}

fn wanted_stdio(msg: Option<&StdioMsg>) -> Result<WantedStdio> {
    let Some(m) = msg else {
        return Ok(WantedStdio {
            wanted: Wanted::default(),
            size: None,
        });
    };
    let rows = u16::try_from(m.rows).map_err(|_| invalid("stdio.rows", "above 65535"))?;
    let cols = u16::try_from(m.cols).map_err(|_| invalid("stdio.cols", "above 65535"))?;
    if m.terminal {
        // One tty stream instead of the three (the host opens only it).
        Ok(WantedStdio {
            wanted: Wanted {
                tty: true,
                ..Wanted::default()
            },
            size: (rows != 0 && cols != 0).then_some((rows, cols)),
        })
    } else {
        Ok(WantedStdio {
            wanted: Wanted {
                stdin: m.stdin,
                stdout: m.stdout,
                stderr: m.stderr,
                tty: false,
            },
            size: None,
        })
    }
}

/// The RPC's exec id ("" = the container's own process) as the library
/// takes it.
fn exec_opt(exec_id: &str) -> Option<&str> {
    (!exec_id.is_empty()).then_some(exec_id)
}

/// The stdio key of a process.
fn key(id: &str, exec_id: &str) -> ProcessKey {
    ProcessKey::new(
        id,
        if exec_id.is_empty() {
            INIT_EXEC_ID
        } else {
            exec_id
        },
    )
}

fn dev_null() -> Result<OwnedFd> {
    OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(io_err("open /dev/null"))
}

/// The library's [`Stdio`] for a claim, and the agent's ends with the
/// host's sockets for the pump. A tty's master comes from `create`/`exec`:
/// the socket is returned apart.
fn plumb(key: ProcessKey, claimed: Claimed) -> Result<(Stdio, ProcessIo, Option<OwnedFd>)> {
    let mut io = ProcessIo {
        key,
        stdout: None,
        stderr: None,
        stdin: None,
        tty: None,
    };
    if claimed.tty.is_some() {
        return Ok((Stdio::Terminal, io, claimed.tty));
    }
    if claimed.stdin.is_none() && claimed.stdout.is_none() && claimed.stderr.is_none() {
        return Ok((Stdio::Null, io, None));
    }
    let stdin = match claimed.stdin {
        Some(sock) => {
            let (r, w) = cloexec_pipe().map_err(io_err("stdin pipe"))?;
            io.stdin = Some((sock, w));
            Some(r)
        }
        None => None,
    };
    let output = |sock: Option<OwnedFd>, what| -> Result<(OwnedFd, Option<_>)> {
        match sock {
            Some(sock) => {
                let (r, w) = cloexec_pipe().map_err(io_err(what))?;
                Ok((w, Some((r, sock))))
            }
            None => Ok((dev_null()?, None)),
        }
    };
    let (stdout, out) = output(claimed.stdout, "stdout pipe")?;
    let (stderr, err) = output(claimed.stderr, "stderr pipe")?;
    io.stdout = out;
    io.stderr = err;
    Ok((
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        },
        io,
        None,
    ))
}

fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The container RPCs over one [`Containers`] registry and the stdio
/// server's registry and pump.
pub struct ContainerService {
    containers: Containers,
    streams: Arc<Registry>,
    pump: Pump,
    procs: Mutex<HashMap<ProcessKey, ProcIo>>,
    /// Signalled when a process leaves `Starting`.
    settled: Condvar,
    /// The library's events since this service was made (WaitEvent).
    events: Mutex<Receiver<Event>>,
}

impl ContainerService {
    pub fn new(containers: Containers, streams: Arc<Registry>, pump: Pump) -> Self {
        let events = Mutex::new(containers.events());
        Self {
            containers,
            streams,
            pump,
            procs: Mutex::new(HashMap::new()),
            settled: Condvar::new(),
            events,
        }
    }

    /// The container library (e.g. for `prepare_pod_cgroup`).
    pub fn containers(&self) -> &Containers {
        &self.containers
    }

    fn procs(&self) -> MutexGuard<'_, HashMap<ProcessKey, ProcIo>> {
        self.procs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_io(&self, key: ProcessKey, io: ProcIo) {
        self.procs().insert(key, io);
        self.settled.notify_all();
    }

    fn claim(&self, key: &ProcessKey, wanted: Wanted) -> Result<Claimed> {
        Ok(self.streams.claim(
            &key.container_id,
            &key.exec_id,
            wanted,
            Instant::now() + CLAIM_TIMEOUT,
        )?)
    }

    /// What the pump gets once the process exists.
    fn pending(io: ProcessIo, tty: Option<(OwnedFd, OwnedFd)>) -> ProcIo {
        let io = ProcessIo { tty, ..io };
        if io.stdin.is_none() && io.stdout.is_none() && io.stderr.is_none() && io.tty.is_none() {
            ProcIo::Nothing
        } else {
            ProcIo::Pending(Box::new(io))
        }
    }

    /// Hands `io` to the pump (the process's ends were closed by `start`).
    fn attach(&self, io: ProcIo) -> Result<ProcIo> {
        match io {
            ProcIo::Pending(io) => Ok(ProcIo::Attached(Arc::new(self.pump.attach(*io)?))),
            other => Ok(other),
        }
    }

    /// Creates the container; returns the agent's accounting of it
    /// (`validate`, `stdio`, `cgroup`, `register`, `accounting`).
    pub fn create(&self, req: &CreateContainerRequest) -> Result<Vec<Step>> {
        let mut meter = Meter::thread();
        let id = req.container_id.as_str();
        validate_id("container_id", id)?;
        let stdio = wanted_stdio(req.stdio.as_ref())?;
        if req.rootfs.is_empty() {
            return Err(invalid("rootfs", "empty"));
        }
        if self.containers.state(id).is_ok() {
            return Err(ContainerError::AlreadyExists { id: id.to_owned() }.into());
        }
        let mut plan = self
            .containers
            .validate(id, &req.spec_json, Path::new(&req.rootfs))?;
        if plan.process.terminal != stdio.wanted.tty {
            return Err(invalid(
                "stdio.terminal",
                format!(
                    "{} but the spec's process.terminal is {}",
                    stdio.wanted.tty, plan.process.terminal
                ),
            ));
        }
        if stdio.size.is_some() {
            plan.process.console_size = stdio.size;
        }
        meter.mark("validate");
        let key = key(id, "");
        let claimed = self.claim(&key, stdio.wanted)?;
        let streams = claimed.count();
        let (lib_stdio, io, tty_sock) = plumb(key.clone(), claimed)?;
        meter.mark_counting("stdio", streams, "streams");
        let master = self
            .containers
            .create_metered(plan, lib_stdio, &mut meter)?;
        let tty = match (master, tty_sock) {
            (Some(m), Some(s)) => Some((m, s)),
            _ => None,
        };
        self.set_io(key, Self::pending(io, tty));
        Ok(meter.finish())
    }

    /// Starts the process with `start`, then hands its stdio to the pump
    /// (`attach`, measured into `meter` as the start's last step).
    fn start_process(&self, id: &str, exec_id: &str, meter: &mut Meter) -> Result<u32> {
        let key = key(id, exec_id);
        let io = {
            let mut procs = self.procs();
            match procs.get(&key) {
                Some(ProcIo::Pending(_) | ProcIo::Nothing) => {
                    procs.insert(key.clone(), ProcIo::Starting)
                }
                _ => None,
            }
        };
        let pid = match self.containers.start_metered(id, exec_opt(exec_id), meter) {
            Ok(pid) => pid,
            Err(e) => {
                if let Some(io) = io {
                    self.set_io(key, io);
                }
                return Err(e.into());
            }
        };
        if let Some(io) = io {
            let attached = self.attach(io);
            // Even when the pump refused: the process runs, its exit can
            // be waited for (without output).
            let (state, result) = match attached {
                Ok(a) => (a, Ok(())),
                Err(e) => (ProcIo::Nothing, Err(e)),
            };
            self.set_io(key, state);
            result?;
        }
        meter.mark("attach");
        Ok(u32::try_from(pid).unwrap_or(0))
    }

    /// Starts the container's process; returns its pid and the agent's
    /// accounting of the start (see [`Containers::start_metered`], then
    /// `attach`, `accounting`).
    pub fn start(&self, id: &str) -> Result<(u32, Vec<Step>)> {
        let mut meter = Meter::thread();
        let pid = self.start_process(id, "", &mut meter)?;
        Ok((pid, meter.finish()))
    }

    pub fn exec(&self, req: &ExecProcessRequest) -> Result<u32> {
        let (id, exec_id) = (req.container_id.as_str(), req.exec_id.as_str());
        validate_id("exec_id", exec_id)?;
        if exec_id == INIT_EXEC_ID {
            return Err(invalid(
                "exec_id",
                "\"-\" names the container's own process",
            ));
        }
        let stdio = wanted_stdio(req.stdio.as_ref())?;
        // Unknown container: NOT_FOUND before waiting on streams.
        self.containers.state(id)?;
        let key = key(id, exec_id);
        let claimed = self.claim(&key, stdio.wanted)?;
        let (lib_stdio, io, tty_sock) = plumb(key.clone(), claimed)?;
        let master = self
            .containers
            .exec(id, exec_id, &req.process_json, lib_stdio)?;
        if let (Some((rows, cols)), Some(_)) = (stdio.size, &master) {
            if let Err(e) = self.containers.resize(id, Some(exec_id), rows, cols) {
                log(&format!("container {id} exec {exec_id}: first size: {e}"));
            }
        }
        let tty = match (master, tty_sock) {
            (Some(m), Some(s)) => Some((m, s)),
            _ => None,
        };
        self.set_io(key.clone(), Self::pending(io, tty));
        match self.start_process(id, exec_id, &mut Meter::off()) {
            // No console line: kubelet's exec probes would print one each.
            Ok(pid) => Ok(pid),
            Err(e) => {
                // Not started: forget it, so the host may retry the id; the
                // host's streams close.
                let _ = self.containers.remove_exec(id, exec_id);
                self.procs().remove(&key);
                Err(e)
            }
        }
    }

    pub fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| invalid("signal", format!("{signal}: want 1 to 64")))?;
        Ok(self.containers.signal(id, exec_opt(exec_id), sig, all)?)
    }

    /// The drain of a process whose exit was seen, once its stdio left
    /// `Starting`.
    fn drain_of(&self, key: &ProcessKey) -> Option<Arc<DrainHandle>> {
        let until = Instant::now() + ATTACH_WAIT;
        let mut procs = self.procs();
        loop {
            match procs.get(key) {
                Some(ProcIo::Attached(d)) => return Some(Arc::clone(d)),
                Some(ProcIo::Starting) => {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    procs = self
                        .settled
                        .wait_timeout(procs, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                _ => return None,
            }
        }
    }

    /// Blocks (on a worker) until the process exited and its output
    /// reached the host (or the grace period after the exit passed).
    pub fn wait(&self, id: &str, exec_id: &str) -> Result<WaitProcessResponse> {
        let info: ExitInfo = loop {
            if let Some(info) = self
                .containers
                .wait(id, exec_opt(exec_id), Some(WAIT_RECHECK))?
            {
                break info;
            }
        };
        if let Some(drain) = self.drain_of(&key(id, exec_id)) {
            let since = SystemTime::now()
                .duration_since(info.exited_at)
                .unwrap_or(Duration::ZERO);
            drain.wait_drained(Instant::now() + OUTPUT_GRACE.saturating_sub(since));
        }
        let signal = match info.status {
            ExitStatus::Signaled(s) => s,
            ExitStatus::Exited(_) => 0,
        };
        Ok(WaitProcessResponse {
            exit_code: i32::try_from(info.exit_code()).unwrap_or(i32::MAX),
            signal,
            exited_at_unix_ns: unix_ns(info.exited_at),
            oom_killed: self.oom_killed(id),
            ..Default::default()
        })
    }

    /// Whether the container's cgroup counted an OOM kill (memory.events);
    /// false without cgroups.
    fn oom_killed(&self, id: &str) -> bool {
        self.containers.oom_kills(id).is_ok_and(|n| n > 0)
    }

    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<()> {
        let rows = u16::try_from(rows).map_err(|_| invalid("rows", "above 65535"))?;
        let cols = u16::try_from(cols).map_err(|_| invalid("cols", "above 65535"))?;
        match self.pump.resize(&key(id, exec_id), rows, cols) {
            Ok(()) => Ok(()),
            // Not attached (not started yet, or its output ended): the
            // library holds the master too, and names an unknown process.
            Err(StdioError::NotFound(_)) => {
                Ok(self.containers.resize(id, exec_opt(exec_id), rows, cols)?)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn close_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        let key = key(id, exec_id);
        {
            let mut procs = self.procs();
            if let Some(ProcIo::Pending(io)) = procs.get_mut(&key) {
                // Not started: the process finds its stdin at EOF.
                io.stdin = None;
                return Ok(());
            }
        }
        match self.pump.close_stdin(&key) {
            Ok(()) => Ok(()),
            Err(StdioError::NotFound(_)) => {
                // No stdin stream (or done): nothing to close, if the
                // process exists.
                self.containers.exit_info(id, exec_opt(exec_id))?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn pids(&self, id: &str) -> Result<Vec<u32>> {
        Ok(self
            .containers
            .pids(id)?
            .into_iter()
            .filter_map(|p| u32::try_from(p.pid).ok())
            .collect())
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStatsResponse> {
        let Stats {
            cpu,
            memory,
            pids,
            io,
        } = self.containers.stats(id)?;
        let mut r = ContainerStatsResponse {
            cpu_usage_usec: cpu.usage_usec,
            cpu_user_usec: cpu.user_usec,
            cpu_system_usec: cpu.system_usec,
            cpu_nr_periods: cpu.nr_periods,
            cpu_nr_throttled: cpu.nr_throttled,
            cpu_throttled_usec: cpu.throttled_usec,
            timestamp_unix_ns: unix_ns(SystemTime::now()),
            ..Default::default()
        };
        if let Some(m) = memory {
            r.memory_usage_bytes = m.current;
            r.memory_working_set_bytes = m.working_set;
            r.memory_limit_bytes = m.limit.unwrap_or(0);
            r.memory_oom_kills = m.oom_kill;
        }
        if let Some(p) = pids {
            r.pids_current = p.current;
            r.pids_limit = p.limit.unwrap_or(0);
        }
        for d in io {
            r.io_read_bytes += d.rbytes;
            r.io_write_bytes += d.wbytes;
            r.io_read_ops += d.rios;
            r.io_write_ops += d.wios;
        }
        Ok(r)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        Ok(self.containers.pause(id)?)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        Ok(self.containers.resume(id)?)
    }

    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<()> {
        Ok(self.containers.update(id, resources_json)?)
    }

    /// Kills and releases the container (the library waits for the
    /// exits), then ends its processes' streams at once: output written
    /// before the kill still goes out within the pump's flush bound.
    pub fn remove(&self, id: &str) -> Result<()> {
        self.containers.remove(id)?;
        let mine: Vec<ProcIo> = {
            let mut procs = self.procs();
            let keys: Vec<ProcessKey> = procs
                .keys()
                .filter(|k| k.container_id == id)
                .cloned()
                .collect();
            keys.iter().filter_map(|k| procs.remove(k)).collect()
        };
        self.settled.notify_all();
        let now = Instant::now();
        for io in mine {
            if let ProcIo::Attached(d) = io {
                d.wait_drained(now);
            }
        }
        Ok(())
    }

    /// The next OOM event within `timeout_ms` (exits are skipped).
    pub fn wait_event(&self, timeout_ms: u32) -> Option<String> {
        let deadline = Instant::now() + Duration::from_millis(u64::from(timeout_ms));
        // Concurrent waiters take turns (each still ends by its deadline
        // plus the one before it).
        let rx = self.events.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = if left.is_zero() {
                rx.try_recv().map_err(|e| matches!(e, TryRecvError::Empty))
            } else {
                rx.recv_timeout(left)
                    .map_err(|e| matches!(e, RecvTimeoutError::Timeout))
            };
            match ev {
                Ok(Event::Oom { id, .. }) => return Some(id),
                Ok(Event::Exited { .. }) => {}
                Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests;
