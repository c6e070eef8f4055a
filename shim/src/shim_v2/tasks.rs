//! The Task service's state: the pod's containers and their processes,
//! with the state machine containerd expects (created → running ⇄ paused →
//! stopped → deleted) and the events it publishes.
//!
//! - `create`: Create, and the ids it reserves.
//! - `process`: a process's state, a container's processes.
//! - `supervisor`: the pod's VM (started with the first task, powered
//!   off with the last), its end, each process's waiter.
//! - `oom`: the guest's OOM events, validated and rate-limited.
//!
//! Each started process has a waiter thread on an agent connection of its
//! own; when the process ends, the waiter waits (bounded) for its stdout
//! and stderr to reach containerd's FIFOs, then marks it stopped, wakes
//! `Wait` and publishes `TaskExit`: an exit is never reported before its
//! output. A VM that ends ends every process (exit 255).
//!
//! containerd is told the shim's pid as every started process's pid
//! ([`reported_pid`], as Kata does): a guest pid names an unrelated
//! process on the host. CRI builds app containers' namespace paths from
//! it (`/proc/<pid>/ns/…`); [`super::spec`] maps them back to the sandbox's guest
//! pid.

mod create;
mod oom;
mod process;
mod supervisor;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use husk_shim_protos::shim::{
    CloseIORequest, ConnectRequest, ConnectResponse, DeleteRequest, DeleteResponse,
    ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest,
    ResumeRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use husk_shim_protos::task::{ProcessInfo, Status};
use husk_shim_protos::task_events::{
    TaskDelete, TaskExecAdded, TaskExecStarted, TaskPaused, TaskResumed, TaskStart,
};
use protobuf::MessageField;

pub use self::create::is_task_id;
use self::create::{Creating, ID_RULE};
use self::process::{lock, Container, Exit, Process, State};
use self::supervisor::PodSlot;
pub use self::supervisor::{AGENT_LOST, KILL_CONFIRM, VM_GONE_EXIT};
use super::error::TaskError;
use super::events::{timestamp, to_any, topic, Publisher};
use super::guest::{PodFactory, PodVm};
use super::io::{check_output_path, IoCopy, StdioPaths};
use super::stats::to_metrics;
use crate::agent_client::{AgentClientError, SignalTarget, TtySize};

/// The most pids a Pids reply lists (the guest sends the list).
pub const MAX_PIDS: usize = 64 << 10;
/// How long a container's Delete waits for its execs' own exits (the
/// guest kills them with the container) before reporting them killed.
const EXEC_END_GRACE: Duration = Duration::from_secs(1);

/// The pid containerd is told for a process whose guest pid is `guest`:
/// the shim's own once it started (0 before). On the host a guest pid
/// names an unrelated process.
pub fn reported_pid(guest: u32) -> u32 {
    if guest == 0 {
        0
    } else {
        std::process::id()
    }
}

/// The Task service's state for one pod.
pub struct Tasks {
    me: Weak<Tasks>,
    factory: Box<dyn PodFactory>,
    publisher: Arc<dyn Publisher>,
    pod: Mutex<Option<PodSlot>>,
    /// Held while the VM starts (the first Create), so one VM starts.
    /// Lock order: `pod_start`, `containers`, `creating`.
    pod_start: Mutex<u64>,
    creating: Mutex<Creating>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// A VM powering off after the last delete.
    stopping: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// See `Self::confirm_kill`.
    kill_confirm: Duration,
    /// See [`AGENT_LOST`].
    agent_lost: Duration,
}

impl Tasks {
    pub fn new(factory: Box<dyn PodFactory>, publisher: Arc<dyn Publisher>) -> Arc<Self> {
        Self::with_kill_confirm(factory, publisher, KILL_CONFIRM)
    }

    /// [`Self::new`] with another grace for SIGKILLed containers.
    pub fn with_kill_confirm(
        factory: Box<dyn PodFactory>,
        publisher: Arc<dyn Publisher>,
        kill_confirm: Duration,
    ) -> Arc<Self> {
        Self::with_graces(factory, publisher, kill_confirm, AGENT_LOST)
    }

    /// [`Self::new`] with other graces for SIGKILLed containers and for
    /// an unreachable agent ([`AGENT_LOST`]).
    pub fn with_graces(
        factory: Box<dyn PodFactory>,
        publisher: Arc<dyn Publisher>,
        kill_confirm: Duration,
        agent_lost: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            kill_confirm,
            agent_lost,
            me: me.clone(),
            factory,
            publisher,
            pod: Mutex::new(None),
            pod_start: Mutex::new(0),
            creating: Mutex::new(Creating::default()),
            containers: Mutex::new(HashMap::new()),
            stopping: Mutex::new(Vec::new()),
        })
    }

    /// Whether no task is left and none is being created.
    pub fn is_empty(&self) -> bool {
        let containers = lock(&self.containers);
        containers.is_empty() && lock(&self.creating).ids.is_empty()
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound {
                task: id.to_owned(),
            })
    }

    fn process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<Container>, Arc<Process>), TaskError> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
        let p = lock(&c.execs)
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::ExecNotFound {
                task: id.to_owned(),
                exec: exec_id.to_owned(),
            })?;
        Ok((c, p))
    }

    /// The guest pid of the pod's sandbox task `sid` while it runs (CRI
    /// app containers join its namespaces).
    fn sandbox_pid(&self, sid: &str) -> Option<u32> {
        let c = lock(&self.containers).get(sid).cloned()?;
        match c.init.snapshot() {
            (State::Running | State::Paused, pid, _) if pid != 0 => Some(pid),
            _ => None,
        }
    }

    fn publish(&self, topic: &'static str, event: protobuf::well_known_types::any::Any) {
        self.publisher.publish(topic, event);
    }

    /// Opens the streams and starts copying them for `p`.
    fn attach_io(
        &self,
        vm: &dyn PodVm,
        p: &Process,
    ) -> Result<crate::agent_client::Stdio, TaskError> {
        let stdio = p.paths.to_stdio(None);
        let streams = vm.open_streams(&p.container, p.exec_id.as_deref(), &stdio)?;
        let io = IoCopy::start(&p.what(), streams, &p.paths)
            .map_err(|e| TaskError::internal(&p.container, format!("stdio: {e}")))?;
        *lock(&p.io) = Some(io);
        Ok(stdio)
    }

    pub fn start(&self, req: &StartRequest) -> Result<StartResponse, TaskError> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let _op = lock(&p.op);
        let (vm, generation) = self.slot(&c.id)?;
        let (state, _, _) = p.snapshot();
        if state != State::Created {
            return Err(TaskError::precondition(
                &c.id,
                format!("{} is {state:?}, not created", p.what()),
            ));
        }
        let pid = match &p.exec_id {
            None => {
                let started = vm
                    .api()
                    .start_container(&c.id)
                    .map_err(|e| TaskError::agent(&c.id, "start", e))?;
                create::log_guest_steps(&c, "start", &started.steps);
                started.pid
            }
            Some(exec_id) => {
                if c.init.snapshot().0 != State::Running {
                    return Err(TaskError::precondition(
                        &c.id,
                        "the container is not running",
                    ));
                }
                let stdio = self.attach_io(vm.as_ref(), &p)?;
                match vm.api().exec_process(&c.id, exec_id, &p.spec, stdio) {
                    Ok(pid) => pid,
                    Err(e) => {
                        p.stop_io();
                        return Err(TaskError::agent(&c.id, "exec", e));
                    }
                }
            }
        };
        {
            let mut s = lock(&p.state);
            // The VM may have ended under it meanwhile: a stop stays.
            if s.state == State::Created {
                s.state = State::Running;
            }
            s.pid = pid;
        }
        self.spawn_waiter(vm, generation, p.clone());
        tracing::info!(process = %p.what(), guest_pid = pid, "started");
        let pid = reported_pid(pid);
        match &p.exec_id {
            None => self.publish(
                topic::START,
                to_any(&TaskStart {
                    container_id: c.id.clone(),
                    pid,
                    ..Default::default()
                }),
            ),
            Some(e) => self.publish(
                topic::EXEC_STARTED,
                to_any(&TaskExecStarted {
                    container_id: c.id.clone(),
                    exec_id: e.clone(),
                    pid,
                    ..Default::default()
                }),
            ),
        }
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    pub fn state(&self, req: &StateRequest) -> Result<StateResponse, TaskError> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let (state, pid, exit) = p.snapshot();
        Ok(StateResponse {
            id: p.name().to_owned(),
            bundle: c.bundle.clone(),
            pid: reported_pid(pid),
            status: match state {
                State::Created => Status::CREATED,
                State::Running => Status::RUNNING,
                State::Paused => Status::PAUSED,
                State::Stopped => Status::STOPPED,
            }
            .into(),
            stdin: p.paths.stdin.clone(),
            stdout: p.paths.stdout.clone(),
            stderr: p.paths.stderr.clone(),
            terminal: p.paths.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| timestamp(e.at)).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    pub fn wait(&self, req: &WaitRequest) -> Result<WaitResponse, TaskError> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        let exit = p.wait_stopped();
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    pub fn kill(&self, req: &KillRequest) -> Result<(), TaskError> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|s| (0..=64).contains(s))
            .ok_or_else(|| {
                TaskError::invalid(&c.id, format!("signal {} is not one", req.signal))
            })?;
        let _op = lock(&p.op);
        let (state, _, _) = p.snapshot();
        match state {
            // Never started: nothing runs; a kill ends it.
            State::Created if signal != 0 => {
                p.stop_io();
                self.process_ended(&p, 128 + signal as u32);
                Ok(())
            }
            State::Created => Ok(()),
            State::Stopped if !req.all => Err(TaskError::NotFound {
                task: format!("{}: process already finished", p.what()),
            }),
            _ => {
                let target = match (&p.exec_id, req.all) {
                    (_, true) => SignalTarget::All,
                    (None, false) => SignalTarget::Init,
                    (Some(e), false) => SignalTarget::Exec(e),
                };
                let vm = self.vm(&c.id)?;
                vm.api()
                    .signal_process(&c.id, target, signal)
                    .map_err(|e| TaskError::agent(&c.id, "kill", e))?;
                if signal == libc::SIGKILL && p.exec_id.is_none() {
                    self.confirm_kill(&p);
                }
                Ok(())
            }
        }
    }

    pub fn exec(&self, req: &ExecProcessRequest) -> Result<(), TaskError> {
        let c = self.container(&req.id)?;
        let exec_id = req.exec_id.as_str();
        if !is_task_id(exec_id) {
            return Err(TaskError::invalid(&c.id, format!("exec_id: {ID_RULE}")));
        }
        if c.init.snapshot().0 != State::Running {
            return Err(TaskError::precondition(
                &c.id,
                "the container is not running",
            ));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| TaskError::invalid(&c.id, "spec: missing"))?;
        for path in [&req.stdout, &req.stderr] {
            check_output_path(path)
                .map_err(|m| TaskError::invalid(&c.id, format!("stdio: {m}")))?;
        }
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(exec_id) {
                return Err(TaskError::AlreadyExists {
                    task: format!("{} exec {exec_id}", c.id),
                });
            }
            let paths = StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            };
            execs.insert(
                exec_id.to_owned(),
                Arc::new(Process::new(&c.id, Some(exec_id.to_owned()), paths, spec)),
            );
        }
        self.publish(
            topic::EXEC_ADDED,
            to_any(&TaskExecAdded {
                container_id: c.id.clone(),
                exec_id: exec_id.to_owned(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    pub fn delete(&self, req: &DeleteRequest) -> Result<DeleteResponse, TaskError> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let _op = lock(&p.op);
        let (state, pid, exit) = p.snapshot();
        if matches!(state, State::Running | State::Paused) {
            return Err(TaskError::precondition(
                &c.id,
                format!("{} is running; kill it first", p.what()),
            ));
        }
        let exit = exit.unwrap_or(Exit {
            status: 0,
            at: SystemTime::now(),
        });
        let pid = reported_pid(pid);
        let response = DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        };
        p.stop_io();
        // A process deleted before it ran: its Wait callers get its end.
        p.stop(exit.status);
        if let Some(exec_id) = &p.exec_id {
            lock(&c.execs).remove(exec_id);
            return Ok(response);
        }
        // The container: the guest's side (which ends what is left of
        // its execs), every exec's end, the rootfs.
        let execs: Vec<Arc<Process>> = lock(&c.execs).drain().map(|(_, e)| e).collect();
        let vm = self.vm(&c.id).ok();
        if let Some(vm) = &vm {
            if let Err(e) = vm.api().remove_container(&c.id) {
                if !matches!(&e, AgentClientError::Rpc { code, .. } if *code == ttrpc::Code::NOT_FOUND)
                {
                    tracing::warn!(container = %c.id, error = %e, "removing the container in the guest");
                }
            }
        }
        self.end_execs(&execs);
        if let Some(vm) = &vm {
            vm.detach_rootfs(&c.id);
        }
        lock(&self.containers).remove(&c.id);
        tracing::info!(container = %c.id, "deleted");
        self.publish(
            topic::DELETE,
            to_any(&TaskDelete {
                container_id: c.id.clone(),
                pid,
                exit_status: exit.status,
                exited_at: MessageField::some(timestamp(exit.at)),
                id: c.id.clone(),
                ..Default::default()
            }),
        );
        self.power_off_if_idle();
        Ok(response)
    }

    /// A deleted container's execs that still run: their waiters get a
    /// moment to report their own exits (the guest killed them with the
    /// container); the rest are reported killed (SIGKILL), each with its
    /// TaskExit.
    fn end_execs(&self, execs: &[Arc<Process>]) {
        let end = Instant::now() + EXEC_END_GRACE;
        for e in execs {
            e.wait_stopped_for(end.saturating_duration_since(Instant::now()));
            e.stop_io();
            self.process_ended(e, 128 + libc::SIGKILL as u32);
        }
    }

    pub fn pids(&self, req: &PidsRequest) -> Result<PidsResponse, TaskError> {
        let c = self.container(&req.id)?;
        let vm = self.vm(&c.id)?;
        let mut pids = vm
            .api()
            .list_pids(&c.id)
            .map_err(|e| TaskError::agent(&c.id, "pids", e))?;
        if pids.len() > MAX_PIDS {
            tracing::warn!(container = %c.id, listed = pids.len(), kept = MAX_PIDS,
                "the guest listed too many pids; the list is cut");
            pids.truncate(MAX_PIDS);
        }
        // Guest pids: what runs in the container, as the guest sees it.
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    pub fn pause(&self, req: &PauseRequest) -> Result<(), TaskError> {
        let c = self.container(&req.id)?;
        if c.init.snapshot().0 != State::Running {
            return Err(TaskError::precondition(
                &c.id,
                "the container is not running",
            ));
        }
        self.vm(&c.id)?
            .api()
            .pause_container(&c.id)
            .map_err(|e| TaskError::agent(&c.id, "pause", e))?;
        {
            let mut s = lock(&c.init.state);
            // It may have exited during the call: an exit stays (a
            // PAUSED over it would refuse its Delete for good).
            if s.state == State::Running {
                s.state = State::Paused;
            }
        }
        self.publish(
            topic::PAUSED,
            to_any(&TaskPaused {
                container_id: c.id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    pub fn resume(&self, req: &ResumeRequest) -> Result<(), TaskError> {
        let c = self.container(&req.id)?;
        if c.init.snapshot().0 != State::Paused {
            return Err(TaskError::precondition(
                &c.id,
                "the container is not paused",
            ));
        }
        self.vm(&c.id)?
            .api()
            .resume_container(&c.id)
            .map_err(|e| TaskError::agent(&c.id, "resume", e))?;
        {
            let mut s = lock(&c.init.state);
            if s.state == State::Paused {
                s.state = State::Running;
            }
        }
        self.publish(
            topic::RESUMED,
            to_any(&TaskResumed {
                container_id: c.id.clone(),
                ..Default::default()
            }),
        );
        Ok(())
    }

    pub fn resize_pty(&self, req: &ResizePtyRequest) -> Result<(), TaskError> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        if !p.paths.terminal {
            return Err(TaskError::precondition(
                &c.id,
                format!("{} has no terminal", p.what()),
            ));
        }
        let size = TtySize {
            rows: u16::try_from(req.height).unwrap_or(u16::MAX),
            cols: u16::try_from(req.width).unwrap_or(u16::MAX),
        };
        if p.snapshot().0 == State::Stopped {
            return Ok(());
        }
        self.vm(&c.id)?
            .api()
            .resize_tty(&c.id, p.exec_id.as_deref(), size)
            .map_err(|e| TaskError::agent(&c.id, "resize", e))
    }

    pub fn close_io(&self, req: &CloseIORequest) -> Result<(), TaskError> {
        let (_, p) = self.process(&req.id, &req.exec_id)?;
        if req.stdin {
            if let Some(io) = lock(&p.io).as_ref() {
                io.close_stdin();
            }
        }
        Ok(())
    }

    pub fn update(&self, req: &UpdateTaskRequest) -> Result<(), TaskError> {
        let c = self.container(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| TaskError::invalid(&c.id, "resources: missing"))?;
        self.vm(&c.id)?
            .api()
            .update_resources(&c.id, &resources)
            .map_err(|e| TaskError::agent(&c.id, "update", e))
    }

    pub fn stats(&self, req: &StatsRequest) -> Result<StatsResponse, TaskError> {
        let c = self.container(&req.id)?;
        let s = self
            .vm(&c.id)?
            .api()
            .container_stats(&c.id)
            .map_err(|e| TaskError::agent(&c.id, "stats", e))?;
        Ok(StatsResponse {
            stats: MessageField::some(to_any(&to_metrics(&s))),
            ..Default::default()
        })
    }

    pub fn connect(&self, req: &ConnectRequest) -> Result<ConnectResponse, TaskError> {
        let c = self.container(&req.id)?;
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: reported_pid(c.init.snapshot().1),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }
}
