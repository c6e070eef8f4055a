//! The Task service's state: the pod's VM (started with its first task,
//! powered off with its last) and its containers and their processes,
//! with the state machine containerd expects (created → running ⇄ paused →
//! stopped → deleted) and the events it publishes.
//!
//! Each started process has a waiter thread on an agent connection of its
//! own; when the process ends, the waiter waits (bounded) for its stdout
//! and stderr to reach containerd's FIFOs, then marks it stopped, wakes
//! `Wait` and publishes `TaskExit`: an exit is never reported before its
//! output. A VM that ends ends every process (exit 255).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use husk_shim_protos::shim::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest,
    PidsResponse, ResizePtyRequest, ResumeRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use husk_shim_protos::task::{ProcessInfo, Status};
use husk_shim_protos::task_events::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use protobuf::MessageField;

use super::error::TaskError;
use super::events::{timestamp, to_any, topic, Publisher};
use super::guest::{PodFactory, PodRequest, PodVm};
use super::io::{check_output_path, IoCopy, StdioPaths};
use super::pod::GUEST_SHARE;
use super::spec;
use super::stats::to_metrics;
use crate::agent_client::stdio::is_valid_id;
use crate::agent_client::{AgentClientError, ContainerEvent, SignalTarget, TtySize};

/// How long an exit waits for its output to drain.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);
/// How long the guest gets to power off when the last task is deleted.
const POWER_OFF_DEADLINE: Duration = Duration::from_secs(10);
/// How long the guest has to report a SIGKILLed container's exit before
/// the pod's VM is stopped ([`Tasks::confirm_kill`]).
pub const KILL_CONFIRM: Duration = Duration::from_secs(30);
/// The power-off deadline then (the agent is asked first, half of it).
const KILL_POWER_OFF: Duration = Duration::from_secs(4);
/// How long one WaitEvent call waits in the guest for an OOM event (a
/// long poll: an idle pod's guest is not woken for nothing; the watcher
/// notices a replaced or stopped VM when the call returns or fails).
const OOM_POLL: Duration = Duration::from_secs(60);
/// The exit status of a process whose VM ended under it.
pub const VM_GONE_EXIT: u32 = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct Exit {
    status: u32,
    at: SystemTime,
}

struct ProcState {
    state: State,
    pid: u32,
    exit: Option<Exit>,
}

/// One process: a container's own (`exec_id` None) or an exec.
struct Process {
    container: String,
    exec_id: Option<String>,
    paths: StdioPaths,
    /// An exec's OCI `process` (JSON).
    spec: Vec<u8>,
    state: Mutex<ProcState>,
    cond: Condvar,
    io: Mutex<Option<IoCopy>>,
    /// Held through Start, Kill and Delete of this process, so that a
    /// Kill while Start is in flight signals the started process rather
    /// than finding it "created" and ending the task on the host alone.
    op: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Process {
    fn new(container: &str, exec_id: Option<String>, paths: StdioPaths, spec: Vec<u8>) -> Self {
        Self {
            container: container.to_owned(),
            exec_id,
            paths,
            spec,
            state: Mutex::new(ProcState {
                state: State::Created,
                pid: 0,
                exit: None,
            }),
            cond: Condvar::new(),
            io: Mutex::new(None),
            op: Mutex::new(()),
        }
    }

    /// The name containerd gives it: the exec id, or the container id.
    fn name(&self) -> &str {
        self.exec_id.as_deref().unwrap_or(&self.container)
    }

    fn what(&self) -> String {
        match &self.exec_id {
            Some(e) => format!("{} exec {e}", self.container),
            None => self.container.clone(),
        }
    }

    fn snapshot(&self) -> (State, u32, Option<Exit>) {
        let s = lock(&self.state);
        (s.state, s.pid, s.exit)
    }

    /// Marks it stopped with `status`; false when it already was.
    fn stop(&self, status: u32) -> bool {
        let mut s = lock(&self.state);
        if s.state == State::Stopped {
            return false;
        }
        s.state = State::Stopped;
        s.exit = Some(Exit {
            status,
            at: SystemTime::now(),
        });
        self.cond.notify_all();
        true
    }

    fn wait_stopped(&self) -> Exit {
        let mut s = lock(&self.state);
        loop {
            if let (State::Stopped, Some(e)) = (s.state, s.exit) {
                return e;
            }
            s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits up to `timeout` for it to stop; true when it has.
    fn wait_stopped_for(&self, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        let mut s = lock(&self.state);
        loop {
            if s.state == State::Stopped {
                return true;
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .cond
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn stop_io(&self) {
        if let Some(mut io) = lock(&self.io).take() {
            io.stop();
        }
    }
}

struct Container {
    id: String,
    bundle: String,
    rootfs: Vec<husk_shim_protos::mount::Mount>,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
}

/// The pod's VM while it runs.
struct PodSlot {
    vm: Arc<dyn PodVm>,
    /// Bumped per VM, so that a watcher of an old VM stands down.
    generation: u64,
}

/// The Task service's state for one pod.
pub struct Tasks {
    me: Weak<Tasks>,
    factory: Box<dyn PodFactory>,
    publisher: Arc<dyn Publisher>,
    pod: Mutex<Option<PodSlot>>,
    /// Held while the VM starts (the first Create), so one VM starts.
    pod_start: Mutex<u64>,
    /// Creates between getting the VM and registering their task (or
    /// failing): the VM must not power off under them.
    creating: Mutex<usize>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// A VM powering off after the last delete.
    stopping: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// See [`Self::confirm_kill`].
    kill_confirm: Duration,
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
        Arc::new_cyclic(|me| Self {
            kill_confirm,
            me: me.clone(),
            factory,
            publisher,
            pod: Mutex::new(None),
            pod_start: Mutex::new(0),
            creating: Mutex::new(0),
            containers: Mutex::new(HashMap::new()),
            stopping: Mutex::new(Vec::new()),
        })
    }

    /// Whether no task is left (Shutdown may end the shim).
    pub fn is_empty(&self) -> bool {
        lock(&self.containers).is_empty()
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

    fn vm(&self, task: &str) -> Result<Arc<dyn PodVm>, TaskError> {
        lock(&self.pod)
            .as_ref()
            .map(|s| s.vm.clone())
            .ok_or_else(|| TaskError::precondition(task, "the pod's VM is not running"))
    }

    /// The running VM, or a new one for `request`.
    /// Counts the caller as creating until it calls [`Self::created`].
    fn ensure_vm(&self, task: &str, request: &PodRequest) -> Result<Arc<dyn PodVm>, TaskError> {
        let mut generation = lock(&self.pod_start);
        if let Ok(vm) = self.vm(task) {
            *lock(&self.creating) += 1;
            return Ok(vm);
        }
        let vm = self.factory.start(request)?;
        *generation += 1;
        *lock(&self.pod) = Some(PodSlot {
            vm: vm.clone(),
            generation: *generation,
        });
        self.watch(vm.clone(), *generation);
        *lock(&self.creating) += 1;
        Ok(vm)
    }

    /// A create that got its VM from [`Self::ensure_vm`] is over.
    fn created(&self) {
        let mut n = lock(&self.creating);
        *n = n.saturating_sub(1);
    }

    /// The VM's end, and its OOM events. The watchers hold the VM only
    /// weakly (or not at all), so that the VM is released where the
    /// service lets go of it.
    fn watch(&self, vm: Arc<dyn PodVm>, generation: u64) {
        let me = self.me.clone();
        let weak = Arc::downgrade(&vm);
        let exits = std::thread::Builder::new()
            .name("husk-vm-watch".into())
            .spawn(move || loop {
                let Some(vm) = weak.upgrade() else {
                    return;
                };
                if let Some(why) = vm.wait_exit(Duration::from_secs(1)) {
                    drop(vm);
                    if let Some(t) = me.upgrade() {
                        t.vm_ended(generation, &why);
                    }
                    return;
                }
                drop(vm);
                match me.upgrade() {
                    Some(t) if t.current_generation() == Some(generation) => {}
                    _ => return,
                }
            });
        if let Err(e) = exits {
            tracing::error!(pod = vm.id(), error = %e, "cannot watch the VM");
        }
        let api = match vm.connect() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "no OOM events for this pod");
                return;
            }
        };
        let me = self.me.clone();
        let events = std::thread::Builder::new()
            .name("husk-oom-watch".into())
            .spawn(move || loop {
                match me.upgrade() {
                    Some(t) if t.current_generation() == Some(generation) => {}
                    _ => return,
                }
                match api.wait_event(OOM_POLL) {
                    Ok(Some(ContainerEvent::Oom { container_id })) => {
                        if let Some(t) = me.upgrade() {
                            tracing::info!(container = %container_id, "OOM kill");
                            t.publish(
                                topic::OOM,
                                to_any(&TaskOOM {
                                    container_id,
                                    ..Default::default()
                                }),
                            );
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "waiting for container events");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            });
        if let Err(e) = events {
            tracing::error!(error = %e, "cannot watch OOM events");
        }
    }

    fn current_generation(&self) -> Option<u64> {
        lock(&self.pod).as_ref().map(|s| s.generation)
    }

    /// The VM ended under its tasks: every process not stopped ends with
    /// [`VM_GONE_EXIT`].
    fn vm_ended(&self, generation: u64, why: &str) {
        {
            let mut pod = lock(&self.pod);
            match pod.as_ref() {
                Some(s) if s.generation == generation => *pod = None,
                _ => return,
            }
        }
        let containers: Vec<Arc<Container>> = lock(&self.containers).values().cloned().collect();
        if !containers.is_empty() {
            tracing::error!(outcome = why, "the pod's VM ended under its tasks");
        }
        for c in containers {
            let execs: Vec<Arc<Process>> = lock(&c.execs).values().cloned().collect();
            for p in execs.iter().chain(std::iter::once(&c.init)) {
                self.process_ended(p, VM_GONE_EXIT);
            }
        }
    }

    fn publish(&self, topic: &'static str, event: protobuf::well_known_types::any::Any) {
        self.publisher.publish(topic, event);
    }

    /// `p` ended with `status` (its output is through): stopped, waiters
    /// woken, TaskExit published, once.
    fn process_ended(&self, p: &Process, status: u32) {
        if !p.stop(status) {
            return;
        }
        let (_, pid, exit) = p.snapshot();
        let at = exit.map_or_else(SystemTime::now, |e| e.at);
        tracing::info!(process = %p.what(), status, "exited");
        self.publish(
            topic::EXIT,
            to_any(&TaskExit {
                container_id: p.container.clone(),
                id: p.name().to_owned(),
                pid,
                exit_status: status,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            }),
        );
    }

    /// Waits for a started process on a connection of its own.
    fn spawn_waiter(&self, vm: Arc<dyn PodVm>, p: Arc<Process>) {
        let me = self.me.clone();
        let spawned = std::thread::Builder::new()
            .name("husk-wait".into())
            .spawn(move || {
                let result = vm.connect().map_err(|e| e.to_string()).and_then(|api| {
                    api.wait_process(&p.container, p.exec_id.as_deref(), None)
                        .map_err(|e| e.to_string())
                });
                let status = match result {
                    Ok(exit) => u32::try_from(exit.shell_code()).unwrap_or(VM_GONE_EXIT),
                    Err(e) => {
                        tracing::warn!(process = %p.what(), error = %e, "lost the process");
                        VM_GONE_EXIT
                    }
                };
                if let Some(io) = lock(&p.io).as_mut() {
                    io.finish(OUTPUT_GRACE);
                }
                if let Some(t) = me.upgrade() {
                    t.process_ended(&p, status);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a waiter thread");
        }
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

    pub fn create(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse, TaskError> {
        let id = req.id.as_str();
        if !is_valid_id(id) {
            return Err(TaskError::invalid(
                id,
                "id: must be 1..=64 of [A-Za-z0-9_.-]",
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(TaskError::Unsupported("creating a task from a checkpoint"));
        }
        if lock(&self.containers).contains_key(id) {
            return Err(TaskError::AlreadyExists {
                task: id.to_owned(),
            });
        }
        for path in [&req.stdout, &req.stderr] {
            check_output_path(path).map_err(|m| TaskError::invalid(id, format!("stdio: {m}")))?;
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec_path = bundle.join("config.json");
        let spec_json = std::fs::read(&spec_path)
            .map_err(|e| TaskError::invalid(id, format!("bundle {}: {e}", spec_path.display())))?;
        let request = pod_request(id, &spec_json)?;
        // Before the VM: a spec the guest cannot use starts nothing.
        let guest = spec::adapt(id, &bundle, &spec_json, GUEST_SHARE, &|sid| {
            self.sandbox_pid(sid)
        })?;
        let vm = self.ensure_vm(id, &request)?;
        let rootfs = match vm.attach_rootfs(id, &bundle, &req.rootfs).and_then(|r| {
            vm.attach_volumes(id, &guest.volumes)
                .map(|()| r)
                .inspect_err(|_| {
                    vm.detach_rootfs(id);
                })
        }) {
            Ok(r) => r,
            Err(e) => {
                self.created();
                self.power_off_if_idle();
                return Err(e);
            }
        };
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Arc::new(Process::new(id, None, paths, Vec::new()));
        let created = self.attach_io(vm.as_ref(), &init).and_then(|stdio| {
            vm.api()
                .create_container(id, &guest.json, &rootfs, stdio)
                .map_err(|e| TaskError::agent(id, "create", e))
        });
        if let Err(e) = created {
            init.stop_io();
            vm.detach_rootfs(id);
            self.created();
            self.power_off_if_idle();
            return Err(e);
        }
        let c = Arc::new(Container {
            id: id.to_owned(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            init,
            execs: Mutex::new(HashMap::new()),
        });
        lock(&self.containers).insert(id.to_owned(), c.clone());
        self.created();
        tracing::info!(container = id, "created");
        self.publish(
            topic::CREATE,
            to_any(&TaskCreate {
                container_id: id.to_owned(),
                bundle: c.bundle.clone(),
                rootfs: c
                    .rootfs
                    .iter()
                    .map(|m| husk_shim_protos::task_events::mount::Mount {
                        type_: m.type_.clone(),
                        source: m.source.clone(),
                        target: m.target.clone(),
                        options: m.options.clone(),
                        ..Default::default()
                    })
                    .collect(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: 0,
                ..Default::default()
            }),
        );
        Ok(CreateTaskResponse::default())
    }

    pub fn start(&self, req: &StartRequest) -> Result<StartResponse, TaskError> {
        let (c, p) = self.process(&req.id, &req.exec_id)?;
        let _op = lock(&p.op);
        let vm = self.vm(&c.id)?;
        let (state, _, _) = p.snapshot();
        if state != State::Created {
            return Err(TaskError::precondition(
                &c.id,
                format!("{} is {state:?}, not created", p.what()),
            ));
        }
        let pid = match &p.exec_id {
            None => vm
                .api()
                .start_container(&c.id)
                .map_err(|e| TaskError::agent(&c.id, "start", e))?,
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
        self.spawn_waiter(vm, p.clone());
        tracing::info!(process = %p.what(), pid, "started");
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
            pid,
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

    /// A container SIGKILLed must end: when the guest has not reported
    /// its exit within [`KILL_CONFIRM`] (a guest stuck in its kernel, e.g.
    /// under a fork bomb with processes in uninterruptible waits), the
    /// pod's VM is stopped, which ends every process of the pod (their
    /// exits are published as the VM's end), so that containerd's
    /// StopContainer / StopPodSandbox return.
    fn confirm_kill(&self, p: &Arc<Process>) {
        let Some(generation) = self.current_generation() else {
            return;
        };
        let me = self.me.clone();
        let p = p.clone();
        let grace = self.kill_confirm;
        let spawned = std::thread::Builder::new()
            .name("husk-kill-watch".into())
            .spawn(move || {
                if p.wait_stopped_for(grace) {
                    return;
                }
                let Some(t) = me.upgrade() else {
                    return;
                };
                let vm = match lock(&t.pod).as_ref() {
                    Some(s) if s.generation == generation => s.vm.clone(),
                    _ => return,
                };
                tracing::error!(process = %p.what(), grace_s = grace.as_secs_f64(),
                    "the guest has not ended a SIGKILLed container; stopping the pod's VM");
                vm.power_off(KILL_POWER_OFF);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the kill watcher");
        }
    }

    pub fn exec(&self, req: &ExecProcessRequest) -> Result<(), TaskError> {
        let c = self.container(&req.id)?;
        let exec_id = req.exec_id.as_str();
        if !is_valid_id(exec_id) {
            return Err(TaskError::invalid(
                &c.id,
                "exec_id: must be 1..=64 of [A-Za-z0-9_.-]",
            ));
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
        // The container: every exec, the guest's side, the rootfs.
        for e in lock(&c.execs).drain().map(|(_, e)| e) {
            e.stop_io();
            e.stop(VM_GONE_EXIT);
        }
        if let Ok(vm) = self.vm(&c.id) {
            if let Err(e) = vm.api().remove_container(&c.id) {
                if !matches!(&e, AgentClientError::Rpc { code, .. } if *code == ttrpc::Code::NOT_FOUND)
                {
                    tracing::warn!(container = %c.id, error = %e, "removing the container in the guest");
                }
            }
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

    /// With no task left, the VM powers off (in the background; Shutdown
    /// waits for it).
    fn power_off_if_idle(&self) {
        let _starting = lock(&self.pod_start);
        if !lock(&self.containers).is_empty() || *lock(&self.creating) > 0 {
            return;
        }
        let Some(slot) = lock(&self.pod).take() else {
            return;
        };
        tracing::info!(pod = slot.vm.id(), "last task deleted; powering the VM off");
        let spawned = std::thread::Builder::new()
            .name("husk-power-off".into())
            .spawn(move || {
                slot.vm.power_off(POWER_OFF_DEADLINE);
                drop(slot);
            });
        match spawned {
            Ok(h) => lock(&self.stopping).push(h),
            Err(e) => tracing::error!(error = %e, "cannot start the power-off thread"),
        }
    }

    /// Waits until VMs powering off are gone (Shutdown).
    pub fn join_power_off(&self) {
        let handles: Vec<_> = lock(&self.stopping).drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }

    /// Ends everything now (the shim is going away): processes, VM.
    pub fn teardown(&self) {
        let containers: Vec<Arc<Container>> =
            lock(&self.containers).drain().map(|(_, c)| c).collect();
        for c in &containers {
            let execs: Vec<Arc<Process>> = lock(&c.execs).values().cloned().collect();
            for p in execs.iter().chain(std::iter::once(&c.init)) {
                p.stop_io();
                // Wait callers and containerd learn that it ended.
                self.process_ended(p, VM_GONE_EXIT);
            }
        }
        if let Some(slot) = lock(&self.pod).take() {
            slot.vm.power_off(POWER_OFF_DEADLINE);
        }
        self.join_power_off();
    }

    pub fn pids(&self, req: &PidsRequest) -> Result<PidsResponse, TaskError> {
        let c = self.container(&req.id)?;
        let vm = self.vm(&c.id)?;
        let pids = vm
            .api()
            .list_pids(&c.id)
            .map_err(|e| TaskError::agent(&c.id, "pids", e))?;
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
            task_pid: c.init.snapshot().1,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }
}

/// What the spec says about the pod's VM (its annotations, its memory
/// limit); a spec that is not JSON is refused here.
fn pod_request(id: &str, spec_json: &[u8]) -> Result<PodRequest, TaskError> {
    let v: serde_json::Value = serde_json::from_slice(spec_json)
        .map_err(|e| TaskError::invalid(id, format!("config.json: {e}")))?;
    let annotations = v
        .get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let memory_limit = v
        .pointer("/linux/resources/memory/limit")
        .and_then(serde_json::Value::as_i64);
    // A host path (not a guest /proc one this shim reported).
    let netns = v
        .pointer("/linux/namespaces")
        .and_then(serde_json::Value::as_array)
        .and_then(|list| {
            list.iter()
                .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
        })
        .and_then(|n| n.get("path").and_then(|p| p.as_str()))
        .filter(|p| !p.is_empty() && !p.starts_with("/proc/"))
        .map(std::path::PathBuf::from);
    Ok(PodRequest {
        annotations,
        memory_limit,
        netns,
        cgroups_path: super::host_cgroup::cgroups_path(&v),
    })
}
