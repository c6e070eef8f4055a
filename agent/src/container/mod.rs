//! OCI containers in the guest: the agent creates them itself (no runc).
//!
//! - [`ContainerSpec::validate`] checks a runtime spec up front into a
//!   [`Plan`] (errors name the field; [`SpecError::code`] maps to ttrpc).
//! - [`Containers`] is the registry the RPC layer calls: create, start,
//!   exec, signal, wait, pids, stats, pause/resume, update, remove, resize.
//! - A process is started by `child.rs`: clone(CLONE_VM | CLONE_VFORK | new
//!   namespaces) on its own stack, only raw calls in the child; its exit
//!   comes through the agent's [`Reaper`] (one waitpid for all).
//! - One monitor thread for the whole registry (not one per container or
//!   process) polls the exit watches and each container's `memory.events`,
//!   records exits, and publishes [`Event`]s (exits, OOM kills).
//!
//! `create` prepares (cgroup, pty, every string); the process is cloned by
//! `start` (CLONE_VFORK suspends the cloning thread until exec, so a child
//! cannot wait for `start` without holding an agent thread). See
//! `agent/CONTAINERS.md` for the spec fields and costs.

mod caps;
pub mod cgroup;
mod child;
mod error;
mod mounts;
mod pty;
mod seccomp;
mod spec;
mod syscalls;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

pub use cgroup::{CpuStats, IoStats, MemoryStats, PidsStats, Stats};
pub use error::{ContainerError, SpecError};
pub use spec::{
    validate_id, CgroupLayout, ContainerSpec, Plan, ProcessPlan, AGENT_BINARY, CRI_CONTAINER_TYPE,
    CRI_SANDBOX, PAUSE_ARG,
};

use crate::reaper::{cloexec_pipe, ExitStatus, ExitWatch, Reaper};
use child::{Launch, LaunchError, StdioFds, Step};

/// How long remove and pause wait for the kernel.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Where containers' cgroups go.
#[derive(Debug, Clone)]
pub struct Config {
    /// The cgroup v2 mount; `None`: no cgroups (specs with limits are
    /// refused, stats/pause/update answer FAILED_PRECONDITION).
    pub cgroup_root: Option<PathBuf>,
    /// The pod level under the root.
    pub cgroup_parent: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cgroup_root: Some(PathBuf::from("/sys/fs/cgroup")),
            cgroup_parent: "husk".to_owned(),
        }
    }
}

impl Config {
    /// The layout [`ContainerSpec::validate_with`] needs.
    pub fn layout(&self) -> CgroupLayout<'_> {
        CgroupLayout {
            root: self.cgroup_root.as_deref(),
            parent: &self.cgroup_parent,
        }
    }
}

/// The process's stdio as the caller hands it in.
#[derive(Debug)]
pub enum Stdio {
    /// The caller's pipe (or socket, file) ends; no stdin: /dev/null.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A pty: the agent opens one (an exec's of its container's devpts,
    /// see [`pty`]); the slave is the process's stdio and controlling
    /// terminal, the master comes back to the caller.
    Terminal,
    /// /dev/null for all three.
    Null,
}

/// A container's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        }
    }
}

/// How a process ended, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub status: ExitStatus,
    pub exited_at: SystemTime,
}

impl ExitInfo {
    /// The exit code containerd reports: the code, or 128 + signal.
    pub fn exit_code(&self) -> u32 {
        match self.status {
            ExitStatus::Exited(c) => c as u32,
            ExitStatus::Signaled(s) => 128 + s as u32,
        }
    }
}

/// What the monitor publishes (see [`Containers::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A container's process exited (`exec_id` None: its init).
    Exited {
        id: String,
        exec_id: Option<String>,
        pid: libc::pid_t,
        info: ExitInfo,
    },
    /// The container's cgroup counted `count` more OOM kills.
    Oom { id: String, count: u64 },
}

/// A process in the registry's process table, as listed by [`Containers::pids`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: libc::pid_t,
    /// The exec id if the agent started it as one (`None`: the init or a
    /// descendant).
    pub exec_id: Option<String>,
}

/// The container's view returned by [`Containers::state`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStatus {
    pub state: State,
    pub pid: Option<libc::pid_t>,
    pub exit: Option<ExitInfo>,
}

/// A process's exit, shared by waiters and the monitor.
#[derive(Default)]
struct ExitCell {
    slot: Mutex<ExitSlot>,
    cond: Condvar,
}

#[derive(Default)]
struct ExitSlot {
    info: Option<ExitInfo>,
    /// Its container was removed (a process never started never exits):
    /// waiters stop waiting on it.
    orphaned: bool,
    /// Write ends of [`ExitNotify`] pipes: closed on exit.
    notify: Vec<OwnedFd>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ExitCell {
    fn set(&self, info: ExitInfo) {
        let mut s = lock(&self.slot);
        s.info = Some(info);
        s.notify.clear();
        self.cond.notify_all();
    }

    fn get(&self) -> Option<ExitInfo> {
        lock(&self.slot).info
    }

    fn orphan(&self) {
        lock(&self.slot).orphaned = true;
        self.cond.notify_all();
    }
}

/// A pollable exit notification: its fd reaches end of file (POLLIN/POLLHUP)
/// once the process has exited; then [`Containers::wait`] answers at once.
pub struct ExitNotify {
    read: File,
}

impl ExitNotify {
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.read.as_fd()
    }
}

/// The process's prepared stdio until it is started.
struct PreparedStdio {
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
    ctty: bool,
}

struct Proc {
    plan: Arc<ProcessPlan>,
    stdio: Option<PreparedStdio>,
    pty_master: Option<OwnedFd>,
    pid: Option<libc::pid_t>,
    exit: Arc<ExitCell>,
    starting: bool,
}

struct Container {
    plan: Arc<Plan>,
    state: State,
    cgroup: Option<cgroup::Cgroup>,
    init: Proc,
    execs: HashMap<String, Proc>,
    oom: Arc<OomState>,
}

/// A container's OOM bookkeeping, shared by the registry and the monitor.
#[derive(Default)]
struct OomState {
    /// Cleared by remove: the monitor drops the OOM watch.
    removed: AtomicBool,
    /// The `oom_kill` count already published as events: whoever sees a
    /// higher count (the monitor on POLLPRI, or remove's last look before
    /// the cgroup goes) raises it with `fetch_max` and publishes the
    /// difference, so no kill is reported twice or lost to a remove that
    /// came before the kernel's (rate-limited) change notification.
    reported: AtomicU64,
}

impl OomState {
    /// The OOM event for a count of `now` kills, if it is news.
    fn news(&self, id: &str, now: u64) -> Option<Event> {
        let before = self.reported.fetch_max(now, Ordering::SeqCst);
        (now > before).then(|| Event::Oom {
            id: id.to_owned(),
            count: now - before,
        })
    }
}

/// Sent to the monitor thread.
enum Watch {
    Exit {
        id: String,
        exec_id: Option<String>,
        watch: ExitWatch,
        cell: Arc<ExitCell>,
    },
    Oom {
        id: String,
        events: File,
        state: Arc<OomState>,
    },
}

struct Inner {
    reaper: Arc<Reaper>,
    config: Config,
    table: Mutex<HashMap<String, Container>>,
    to_monitor: Mutex<Sender<Watch>>,
    wake: File,
    subscribers: Mutex<Vec<Sender<Event>>>,
    /// The pod cgroup once prepared (the agent's own directory: made once,
    /// usually before the template snapshot; not re-checked per create).
    pod_cgroup: OnceLock<PathBuf>,
}

/// The registry of the guest's containers. See the module docs.
pub struct Containers {
    inner: Arc<Inner>,
    monitor: Option<JoinHandle<()>>,
}

fn process_label(exec_id: Option<&str>) -> String {
    exec_id.map_or(String::new(), |e| format!(" process {e:?}"))
}

impl Containers {
    /// A registry reaping through `reaper`; starts the monitor thread.
    pub fn new(reaper: Arc<Reaper>, config: Config) -> io::Result<Self> {
        let (wake_r, wake_w) = cloexec_pipe()?;
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            reaper,
            config,
            table: Mutex::new(HashMap::new()),
            to_monitor: Mutex::new(tx),
            wake: File::from(wake_w),
            subscribers: Mutex::new(Vec::new()),
            pod_cgroup: OnceLock::new(),
        });
        let weak = Arc::downgrade(&inner);
        let monitor = std::thread::Builder::new()
            .name("containers".into())
            .spawn(move || monitor(weak, rx, File::from(wake_r)))?;
        Ok(Self {
            inner,
            monitor: Some(monitor),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Validates a spec with this registry's cgroup layout.
    pub fn validate(&self, id: &str, spec_json: &[u8], rootfs: &Path) -> Result<Plan, SpecError> {
        ContainerSpec::validate_with(id, spec_json, rootfs, &self.inner.config.layout())
    }

    /// Creates the pod cgroup and enables the controllers: independent of
    /// any container (can run before a template snapshot). `create` calls
    /// it too (idempotent).
    pub fn prepare_pod_cgroup(&self) -> io::Result<Option<PathBuf>> {
        let Some(root) = &self.inner.config.cgroup_root else {
            return Ok(None);
        };
        if let Some(dir) = self.inner.pod_cgroup.get() {
            return Ok(Some(dir.clone()));
        }
        let dir = cgroup::prepare_parent(root, &self.inner.config.cgroup_parent)?;
        Ok(Some(self.inner.pod_cgroup.get_or_init(|| dir).clone()))
    }

    /// Events from now on (exits, OOM kills), for as long as the receiver
    /// lives.
    pub fn events(&self) -> Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        lock(&self.inner.subscribers).push(tx);
        rx
    }

    fn send(&self, w: Watch) {
        let _ = lock(&self.inner.to_monitor).send(w);
        let _ = (&self.inner.wake).write(&[1]);
    }

    fn table(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        lock(&self.inner.table)
    }

    /// The number of OOM kills the container's cgroup counted
    /// (`memory.events` alone: WaitProcess asks on every exit, and a full
    /// [`stats`](Self::stats) reads seven cgroup files).
    pub fn oom_kills(&self, id: &str) -> Result<u64, ContainerError> {
        let (cg, _) = self.cgroup_of(id, "memory.events")?;
        let text = cgroup::read_small(&cg.dir.join("memory.events"))
            .map_err(ContainerError::io(id, "read memory.events"))?;
        Ok(cgroup::keyed(&text, "oom_kill").unwrap_or(0))
    }

    /// Registers container `plan.id` in state Created: its cgroup (limits
    /// applied), its stdio (a pty when asked: the master is returned).
    /// Nothing runs yet.
    pub fn create(&self, plan: Plan, stdio: Stdio) -> Result<Option<OwnedFd>, ContainerError> {
        let id = plan.id.clone();
        if self.table().contains_key(&id) {
            return Err(ContainerError::AlreadyExists { id });
        }
        if plan.process.terminal != matches!(stdio, Stdio::Terminal) {
            return Err(SpecError::new(
                "process.terminal",
                "must match the stdio the caller gives (Terminal iff terminal: true)",
            )
            .into());
        }
        let cgroup = match self
            .prepare_pod_cgroup()
            .map_err(ContainerError::io(&id, "prepare the pod cgroup"))?
        {
            Some(parent) => Some(
                cgroup::Cgroup::create(&parent, &id, &plan.resources).map_err(|e| match e {
                    cgroup::CgroupError::Spec(s) => ContainerError::Spec(s),
                    cgroup::CgroupError::Io { what, source } => ContainerError::Io {
                        id: id.clone(),
                        what,
                        source,
                    },
                })?,
            ),
            None if plan.wants_cgroup_limits => {
                return Err(ContainerError::NoCgroups {
                    id,
                    what: "linux.resources",
                })
            }
            None => None,
        };
        let cleanup = |cg: &Option<cgroup::Cgroup>| {
            if let Some(cg) = cg {
                let _ = std::fs::remove_dir(&cg.dir);
            }
        };
        let (prepared, master) = match prepare_stdio(stdio, plan.process.console_size, None) {
            Ok(x) => x,
            Err(e) => {
                cleanup(&cgroup);
                return Err(ContainerError::io(&id, "set up stdio")(e));
            }
        };
        let (ours, theirs) = match dup_pair(master) {
            Ok(x) => x,
            Err(e) => {
                cleanup(&cgroup);
                return Err(ContainerError::io(&id, "dup the pty master")(e));
            }
        };
        let oom = Arc::new(OomState::default());
        if let Some(events) = cgroup.as_ref().and_then(cgroup::Cgroup::memory_events) {
            self.send(Watch::Oom {
                id: id.clone(),
                events,
                state: Arc::clone(&oom),
            });
        }
        let process = Arc::new(plan.process.clone());
        let c = Container {
            plan: Arc::new(plan),
            state: State::Created,
            cgroup,
            init: Proc {
                plan: process,
                stdio: Some(prepared),
                pty_master: ours,
                pid: None,
                exit: Arc::default(),
                starting: false,
            },
            execs: HashMap::new(),
            oom,
        };
        let mut table = self.table();
        if table.contains_key(&id) {
            cleanup(&c.cgroup);
            return Err(ContainerError::AlreadyExists { id });
        }
        table.insert(id, c);
        Ok(theirs)
    }

    /// Registers an exec'd process (OCI `Process` JSON) in a running
    /// container; [`start`](Self::start) with its exec id runs it.
    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: Stdio,
    ) -> Result<Option<OwnedFd>, ContainerError> {
        spec::validate_id("exec_id", exec_id)?;
        let plan = ProcessPlan::from_json(process_json)?;
        if plan.terminal != matches!(stdio, Stdio::Terminal) {
            return Err(SpecError::new(
                "process.terminal",
                "must match the stdio the caller gives (Terminal iff terminal: true)",
            )
            .into());
        }
        let init_pid = {
            let table = self.table();
            let c = get(&table, id)?;
            if c.execs.contains_key(exec_id) {
                return Err(ContainerError::ProcessExists {
                    id: id.to_owned(),
                    exec_id: exec_id.to_owned(),
                });
            }
            if !matches!(c.state, State::Running) {
                return Err(state_error(id, None, c.state, "want running to exec"));
            }
            // The agent's pause has no mount namespace of its own (and
            // takes no exec).
            c.init.pid.filter(|_| !c.plan.light_sandbox)
        };
        let (prepared, master) = prepare_stdio(stdio, plan.console_size, init_pid)
            .map_err(ContainerError::io(id, "set up stdio"))?;
        let (ours, theirs) =
            dup_pair(master).map_err(ContainerError::io(id, "dup the pty master"))?;
        let mut table = self.table();
        let c = get_mut(&mut table, id)?;
        if c.execs.contains_key(exec_id) {
            return Err(ContainerError::ProcessExists {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            });
        }
        c.execs.insert(
            exec_id.to_owned(),
            Proc {
                plan: Arc::new(plan),
                stdio: Some(prepared),
                pty_master: ours,
                pid: None,
                exit: Arc::default(),
                starting: false,
            },
        );
        Ok(theirs)
    }

    /// Starts the container's init (`exec_id` None) or a registered exec;
    /// returns its pid (the agent's view) once it has exec'd.
    pub fn start(&self, id: &str, exec_id: Option<&str>) -> Result<libc::pid_t, ContainerError> {
        // Take what the launch needs; the table is not locked during the
        // clone (seconds in an emulated guest).
        let (plan, process, stdio, cgroup_procs, init_pid, cell) = {
            let mut table = self.table();
            let c = get_mut(&mut table, id)?;
            let state = c.state;
            let plan = Arc::clone(&c.plan);
            let cgroup_procs = c.cgroup.as_ref().map(cgroup::Cgroup::procs_path);
            let init_pid = c.init.pid;
            let p = proc_mut(c, id, exec_id)?;
            if p.pid.is_some() || p.starting || p.stdio.is_none() {
                return Err(state_error(id, exec_id, state, "already started"));
            }
            match (exec_id, state) {
                (None, State::Created) | (Some(_), State::Running) => {}
                (None, s) => return Err(state_error(id, None, s, "want created to start")),
                (Some(_), s) => {
                    return Err(state_error(id, None, s, "want running to start an exec"))
                }
            }
            p.starting = true;
            let stdio = p.stdio.take();
            (
                plan,
                Arc::clone(&p.plan),
                stdio,
                cgroup_procs,
                init_pid,
                Arc::clone(&p.exit),
            )
        };
        let result = self.launch(
            id,
            exec_id,
            &plan,
            &process,
            stdio.as_ref(),
            cgroup_procs.as_deref(),
            init_pid,
        );
        let mut table = self.table();
        let Some(c) = table.get_mut(id) else {
            return Err(ContainerError::NotFound { id: id.to_owned() });
        };
        let (pid, watch) = match result {
            Ok(x) => x,
            Err(e) => {
                if let Ok(p) = proc_mut(c, id, exec_id) {
                    p.starting = false;
                    p.stdio = stdio;
                }
                return Err(e);
            }
        };
        if let Ok(p) = proc_mut(c, id, exec_id) {
            p.starting = false;
            p.pid = Some(pid);
        }
        if exec_id.is_none() {
            // The monitor may already have seen it exit.
            c.state = if cell.get().is_some() {
                State::Stopped
            } else {
                State::Running
            };
        }
        drop(table);
        drop(stdio);
        self.send(Watch::Exit {
            id: id.to_owned(),
            exec_id: exec_id.map(str::to_owned),
            watch,
            cell,
        });
        Ok(pid)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        id: &str,
        exec_id: Option<&str>,
        plan: &Plan,
        process: &ProcessPlan,
        stdio: Option<&PreparedStdio>,
        cgroup_procs: Option<&Path>,
        init_pid: Option<libc::pid_t>,
    ) -> Result<(libc::pid_t, ExitWatch), ContainerError> {
        let io_err = |what: &str| ContainerError::io(id, what.to_owned());
        let stdio =
            stdio.ok_or_else(|| state_error(id, exec_id, State::Created, "has no stdio"))?;
        let procs = match cgroup_procs {
            Some(p) => Some(
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(io_err("open cgroup.procs"))?,
            ),
            None => None,
        };
        let mut setns = Vec::new();
        let mut join_pid = None;
        if exec_id.is_some() && plan.light_sandbox {
            return Err(SpecError::new(
                "exec",
                "the pod's sandbox container is the agent's pause (no image, no mount namespace): nothing to exec into",
            )
            .into());
        }
        if exec_id.is_some() {
            let pid =
                init_pid.ok_or_else(|| state_error(id, None, State::Created, "has no init"))?;
            // Every namespace of the init; the pid one on our thread.
            for (name, kind) in [
                ("ipc", libc::CLONE_NEWIPC),
                ("uts", libc::CLONE_NEWUTS),
                ("net", libc::CLONE_NEWNET),
                ("cgroup", libc::CLONE_NEWCGROUP),
                ("mnt", libc::CLONE_NEWNS),
            ] {
                let f = File::open(format!("/proc/{pid}/ns/{name}"))
                    .map_err(io_err("open the init's namespaces"))?;
                setns.push((OwnedFd::from(f), kind));
            }
            join_pid = Some(OwnedFd::from(
                File::open(format!("/proc/{pid}/ns/pid"))
                    .map_err(io_err("open the init's pid namespace"))?,
            ));
        } else {
            for (kind, path, field) in &plan.namespaces.join {
                let f = File::open(path).map_err(|e| {
                    ContainerError::Spec(SpecError::missing(
                        field,
                        format!("{}: {e}", path.display()),
                    ))
                })?;
                setns.push((OwnedFd::from(f), *kind));
            }
            if let Some(p) = &plan.namespaces.join_pid {
                join_pid = Some(OwnedFd::from(File::open(p).map_err(|e| {
                    ContainerError::Spec(SpecError::missing(
                        "linux.namespaces (pid).path",
                        format!("{}: {e}", p.display()),
                    ))
                })?));
            }
        }
        let is_init = exec_id.is_none();
        let launch = Launch {
            process,
            seccomp: &plan.seccomp,
            clone_flags: if is_init {
                plan.namespaces.clone_flags
            } else {
                0
            },
            setns: &setns,
            join_pid: join_pid.as_ref(),
            unshare_cgroup: is_init && plan.namespaces.new_cgroup,
            cgroup_procs: procs.as_ref(),
            root: (is_init && !plan.light_sandbox).then_some(&plan.root),
            hostname: if is_init {
                plan.hostname.as_deref()
            } else {
                None
            },
            domainname: if is_init {
                plan.domainname.as_deref()
            } else {
                None
            },
            sysctl: if is_init { &plan.sysctl } else { &[] },
            stdio: StdioFds {
                stdin: stdio.stdin.as_raw_fd(),
                stdout: stdio.stdout.as_raw_fd(),
                stderr: stdio.stderr.as_raw_fd(),
                ctty: stdio.ctty,
            },
        };
        child::launch(&self.inner.reaper, &launch).map_err(|e| match e {
            LaunchError::Agent(what, source) => ContainerError::Io {
                id: id.to_owned(),
                what: what.to_owned(),
                source,
            },
            LaunchError::Child(f) => ContainerError::Start {
                id: id.to_owned(),
                process: exec_id.map_or("the init".to_owned(), |e| format!("exec {e:?}")),
                step: describe(&f.step, f.index as usize, plan, process),
                source: f.error,
            },
        })
    }

    /// Sends `sig` to the process (`exec_id` None: the init), or with
    /// `all` to every process in the container's cgroup.
    pub fn signal(
        &self,
        id: &str,
        exec_id: Option<&str>,
        sig: i32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let table = self.table();
        let c = get(&table, id)?;
        if all {
            let Some(cg) = &c.cgroup else {
                return Err(ContainerError::NoCgroups {
                    id: id.to_owned(),
                    what: "signal all",
                });
            };
            for pid in cg
                .pids()
                .map_err(ContainerError::io(id, "read cgroup.procs"))?
            {
                // SAFETY: kill takes no pointers.
                unsafe { libc::kill(pid, sig) };
            }
            return Ok(());
        }
        let p = proc_ref(c, id, exec_id)?;
        let (Some(pid), None) = (p.pid, p.exit.get()) else {
            return Err(ContainerError::ProcessNotFound {
                id: id.to_owned(),
                exec_id: format!("{} (not running)", exec_id.unwrap_or("init")),
            });
        };
        // SAFETY: kill takes no pointers; the pid is not reaped (its exit
        // is unrecorded) while we hold the table... the monitor records
        // exits without the table lock, so a just-reaped pid could be
        // reused only after a full pid wrap: accepted.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(ContainerError::io(id, format!("kill {pid}"))(
                io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// A pollable exit notification for the process.
    pub fn exit_notify(
        &self,
        id: &str,
        exec_id: Option<&str>,
    ) -> Result<ExitNotify, ContainerError> {
        let cell = {
            let table = self.table();
            Arc::clone(&proc_ref(get(&table, id)?, id, exec_id)?.exit)
        };
        let (r, w) = cloexec_pipe().map_err(ContainerError::io(id, "pipe"))?;
        let mut slot = lock(&cell.slot);
        if slot.info.is_none() {
            slot.notify.push(w);
        }
        Ok(ExitNotify {
            read: File::from(r),
        })
    }

    /// The exit, if the process has exited.
    pub fn exit_info(
        &self,
        id: &str,
        exec_id: Option<&str>,
    ) -> Result<Option<ExitInfo>, ContainerError> {
        let table = self.table();
        Ok(proc_ref(get(&table, id)?, id, exec_id)?.exit.get())
    }

    /// Blocks until the process has exited (at most `timeout` when given:
    /// then `Ok(None)`).
    pub fn wait(
        &self,
        id: &str,
        exec_id: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Option<ExitInfo>, ContainerError> {
        let cell = {
            let table = self.table();
            Arc::clone(&proc_ref(get(&table, id)?, id, exec_id)?.exit)
        };
        let mut slot = lock(&cell.slot);
        let until = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if let Some(info) = slot.info {
                return Ok(Some(info));
            }
            if slot.orphaned {
                return Ok(None);
            }
            slot = match until {
                None => cell.cond.wait(slot).unwrap_or_else(PoisonError::into_inner),
                Some(u) => {
                    let left = u.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(None);
                    }
                    cell.cond
                        .wait_timeout(slot, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }

    /// The container's state, init pid and exit.
    pub fn state(&self, id: &str) -> Result<ContainerStatus, ContainerError> {
        let table = self.table();
        let c = get(&table, id)?;
        Ok(ContainerStatus {
            state: c.state,
            pid: c.init.pid,
            exit: c.init.exit.get(),
        })
    }

    /// The ids of all containers.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.table().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// TIOCSWINSZ on the process's pty.
    pub fn resize(
        &self,
        id: &str,
        exec_id: Option<&str>,
        rows: u16,
        cols: u16,
    ) -> Result<(), ContainerError> {
        let table = self.table();
        let p = proc_ref(get(&table, id)?, id, exec_id)?;
        let Some(m) = &p.pty_master else {
            return Err(state_error(id, exec_id, State::Running, "has no terminal"));
        };
        pty::resize(m, rows, cols).map_err(ContainerError::io(id, "resize the terminal"))
    }

    /// The processes in the container's cgroup (or its known processes
    /// without cgroups).
    pub fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>, ContainerError> {
        let table = self.table();
        let c = get(&table, id)?;
        let known = |pid| {
            c.execs
                .iter()
                .find(|(_, p)| p.pid == Some(pid))
                .map(|(e, _)| e.clone())
        };
        let pids = match &c.cgroup {
            Some(cg) => cg
                .pids()
                .map_err(ContainerError::io(id, "read cgroup.procs"))?,
            None => std::iter::once(&c.init)
                .chain(c.execs.values())
                .filter(|p| p.exit.get().is_none())
                .filter_map(|p| p.pid)
                .collect(),
        };
        Ok(pids
            .into_iter()
            .map(|pid| ProcessInfo {
                pid,
                exec_id: known(pid),
            })
            .collect())
    }

    fn cgroup_of(
        &self,
        id: &str,
        what: &'static str,
    ) -> Result<(cgroup::Cgroup, State), ContainerError> {
        let table = self.table();
        let c = get(&table, id)?;
        match &c.cgroup {
            Some(cg) => Ok((cg.clone(), c.state)),
            None => Err(ContainerError::NoCgroups {
                id: id.to_owned(),
                what,
            }),
        }
    }

    /// cgroup v2 statistics.
    pub fn stats(&self, id: &str) -> Result<Stats, ContainerError> {
        let (cg, _) = self.cgroup_of(id, "stats")?;
        cg.stats()
            .map_err(ContainerError::io(id, "read cgroup stats"))
    }

    /// Freezes the container (cgroup.freeze) and waits until frozen.
    pub fn pause(&self, id: &str) -> Result<(), ContainerError> {
        self.freeze(id, true)
    }

    pub fn resume(&self, id: &str) -> Result<(), ContainerError> {
        self.freeze(id, false)
    }

    fn freeze(&self, id: &str, frozen: bool) -> Result<(), ContainerError> {
        let (cg, state) = self.cgroup_of(id, "pause/resume")?;
        let (from, to) = if frozen {
            (State::Running, State::Paused)
        } else {
            (State::Paused, State::Running)
        };
        if state != from {
            return Err(state_error(
                id,
                None,
                state,
                if frozen {
                    "want running to pause"
                } else {
                    "want paused to resume"
                },
            ));
        }
        cg.freeze(frozen, KILL_WAIT)
            .map_err(ContainerError::io(id, "cgroup.freeze"))?;
        let mut table = self.table();
        if let Some(c) = table.get_mut(id) {
            if c.state == from {
                c.state = to;
            }
        }
        Ok(())
    }

    /// Applies a `LinuxResources` JSON document to the container's cgroup.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let r: oci_spec::runtime::LinuxResources = spec::decode("resources", resources_json)?;
        let writes = cgroup::resource_writes("resources", &r)?;
        let (cg, _) = self.cgroup_of(id, "update")?;
        cg.apply(&writes).map_err(|e| match e {
            cgroup::CgroupError::Spec(s) => ContainerError::Spec(s),
            cgroup::CgroupError::Io { what, source } => ContainerError::Io {
                id: id.to_owned(),
                what,
                source,
            },
        })
    }

    /// Forgets an exec'd process that has exited (containerd's
    /// DeleteProcess); kills it first if it still runs.
    pub fn remove_exec(&self, id: &str, exec_id: &str) -> Result<Option<ExitInfo>, ContainerError> {
        let cell = {
            let table = self.table();
            let p = proc_ref(get(&table, id)?, id, Some(exec_id))?;
            if let (Some(pid), None) = (p.pid, p.exit.get()) {
                // SAFETY: kill takes no pointers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            Arc::clone(&p.exit)
        };
        let info = if lock(&self.inner.table)
            .get(id)
            .and_then(|c| c.execs.get(exec_id))
            .is_some_and(|p| p.pid.is_some())
        {
            wait_cell(&cell, KILL_WAIT)
        } else {
            None
        };
        if let Some(c) = self.table().get_mut(id) {
            c.execs.remove(exec_id);
        }
        cell.orphan();
        Ok(info)
    }

    /// Kills whatever remains, waits for the exits, removes the cgroup and
    /// forgets the container. The container's mounts live in its own mount
    /// namespace and go with its last process.
    pub fn remove(&self, id: &str) -> Result<(), ContainerError> {
        let (cg, cells, oom) = {
            let table = self.table();
            let c = get(&table, id)?;
            if c.init.starting || c.execs.values().any(|p| p.starting) {
                return Err(state_error(id, None, c.state, "is starting"));
            }
            let cells: Vec<_> = std::iter::once(&c.init)
                .chain(c.execs.values())
                .filter(|p| p.pid.is_some())
                .map(|p| (p.pid, Arc::clone(&p.exit)))
                .collect();
            (c.cgroup.clone(), cells, Arc::clone(&c.oom))
        };
        match &cg {
            Some(cg) => {
                // Frozen tasks die only once thawed.
                let _ = std::fs::write(cg.dir.join("cgroup.freeze"), "0");
                cg.kill_all()
                    .map_err(ContainerError::io(id, "cgroup.kill"))?;
            }
            None => {
                for (pid, cell) in &cells {
                    if let (Some(pid), None) = (pid, cell.get()) {
                        // SAFETY: kill takes no pointers.
                        unsafe { libc::kill(*pid, libc::SIGKILL) };
                    }
                }
            }
        }
        for (pid, cell) in &cells {
            if wait_cell(cell, KILL_WAIT).is_none() {
                return Err(ContainerError::io(
                    id,
                    format!("pid {pid:?} still there {KILL_WAIT:?} after SIGKILL"),
                )(io::Error::from(io::ErrorKind::TimedOut)));
            }
        }
        if let Some(cg) = &cg {
            // The last look at the OOM count before the cgroup goes.
            if let Some(ev) = cgroup::read_small(&cg.dir.join("memory.events"))
                .ok()
                .and_then(|t| cgroup::keyed(&t, "oom_kill"))
                .and_then(|n| oom.news(id, n))
            {
                publish(&self.inner, vec![ev]);
            }
            cg.remove(KILL_WAIT).map_err(ContainerError::io(
                id,
                format!("remove {}", cg.dir.display()),
            ))?;
        }
        if let Some(c) = self.table().remove(id) {
            c.oom.removed.store(true, Ordering::SeqCst);
            let _ = (&self.inner.wake).write(&[1]);
            // Waiters on a process that never started learn it now.
            for p in std::iter::once(&c.init).chain(c.execs.values()) {
                p.exit.orphan();
            }
        }
        Ok(())
    }
}

impl Drop for Containers {
    fn drop(&mut self) {
        // Closing the channel and waking the monitor stops it.
        {
            let (tx, _) = mpsc::channel();
            *lock(&self.inner.to_monitor) = tx;
        }
        let _ = (&self.inner.wake).write(&[1]);
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
    }
}

fn wait_cell(cell: &ExitCell, timeout: Duration) -> Option<ExitInfo> {
    let slot = lock(&cell.slot);
    let (slot, _) = cell
        .cond
        .wait_timeout_while(slot, timeout, |s| s.info.is_none())
        .unwrap_or_else(PoisonError::into_inner);
    slot.info
}

fn state_error(
    id: &str,
    exec_id: Option<&str>,
    state: State,
    want: &'static str,
) -> ContainerError {
    ContainerError::State {
        id: id.to_owned(),
        process: process_label(exec_id),
        state: state.name(),
        want,
    }
}

fn get<'a>(
    table: &'a HashMap<String, Container>,
    id: &str,
) -> Result<&'a Container, ContainerError> {
    table
        .get(id)
        .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })
}

fn get_mut<'a>(
    table: &'a mut HashMap<String, Container>,
    id: &str,
) -> Result<&'a mut Container, ContainerError> {
    table
        .get_mut(id)
        .ok_or_else(|| ContainerError::NotFound { id: id.to_owned() })
}

fn proc_ref<'a>(
    c: &'a Container,
    id: &str,
    exec_id: Option<&str>,
) -> Result<&'a Proc, ContainerError> {
    match exec_id {
        None => Ok(&c.init),
        Some(e) => c
            .execs
            .get(e)
            .ok_or_else(|| ContainerError::ProcessNotFound {
                id: id.to_owned(),
                exec_id: e.to_owned(),
            }),
    }
}

fn proc_mut<'a>(
    c: &'a mut Container,
    id: &str,
    exec_id: Option<&str>,
) -> Result<&'a mut Proc, ContainerError> {
    match exec_id {
        None => Ok(&mut c.init),
        Some(e) => c
            .execs
            .get_mut(e)
            .ok_or_else(|| ContainerError::ProcessNotFound {
                id: id.to_owned(),
                exec_id: e.to_owned(),
            }),
    }
}

/// The caller's copy and ours of a pty master.
fn dup_pair(master: Option<OwnedFd>) -> io::Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    match master {
        Some(m) => {
            let theirs = m.try_clone()?;
            Ok((Some(m), Some(theirs)))
        }
        None => Ok((None, None)),
    }
}

fn dev_null(write: bool) -> io::Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?
        .into())
}

/// The process's stdio; a pty of the container whose init is `init_pid`
/// when it joins a running one (an exec), see [`pty`].
fn prepare_stdio(
    stdio: Stdio,
    size: Option<(u16, u16)>,
    init_pid: Option<libc::pid_t>,
) -> io::Result<(PreparedStdio, Option<OwnedFd>)> {
    let (stdin, stdout, stderr, ctty, master) = match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let stdin = match stdin {
                Some(s) => s,
                None => dev_null(false)?,
            };
            (stdin, stdout, stderr, false, None)
        }
        Stdio::Null => (
            dev_null(false)?,
            dev_null(true)?,
            dev_null(true)?,
            false,
            None,
        ),
        Stdio::Terminal => {
            let (master, slave) = match init_pid {
                Some(pid) => pty::open_pty_in(pid, size)?,
                None => pty::open_pty(size)?,
            };
            (
                slave.try_clone()?,
                slave.try_clone()?,
                slave,
                true,
                Some(master),
            )
        }
    };
    Ok((
        PreparedStdio {
            stdin: child::above_stdio(stdin)?,
            stdout: child::above_stdio(stdout)?,
            stderr: child::above_stdio(stderr)?,
            ctty,
        },
        master,
    ))
}

/// The failed step in words, naming the spec entry.
fn describe(step: &Step, i: usize, plan: &Plan, process: &ProcessPlan) -> String {
    let mount = || {
        plan.root
            .mounts
            .get(i)
            .map_or_else(|| format!("mounts[{i}]"), |m| m.what.clone())
    };
    let lossy = |c: Option<&std::ffi::CString>| {
        c.map_or(String::new(), |c| c.to_string_lossy().into_owned())
    };
    match step {
        Step::Mkdir => format!("{}: create the mount point", mount()),
        Step::CreateFile => format!("{}: create the mount point file", mount()),
        Step::Mount => format!("{}: mount", mount()),
        Step::Remount => format!("{}: remount with its flags", mount()),
        Step::Propagation => format!("{}: set propagation", mount()),
        Step::Device => format!(
            "device {}",
            lossy(plan.root.devices.get(i).map(|d| &d.path))
        ),
        Step::Symlink => format!(
            "/dev symlink {}",
            lossy(plan.root.symlinks.get(i).map(|s| &s.1))
        ),
        Step::Sysctl => format!("linux.sysctl {}", lossy(plan.sysctl.get(i).map(|s| &s.0))),
        Step::Masked => format!("linux.maskedPaths[{i}] {}", lossy(plan.root.masked.get(i))),
        Step::Readonly => format!(
            "linux.readonlyPaths[{i}] {}",
            lossy(plan.root.readonly.get(i))
        ),
        Step::Rlimit => format!("process.rlimits[{i}]"),
        Step::Setns => format!("setns into namespace #{i}"),
        Step::Bounding => format!("drop capability {i} from the bounding set"),
        Step::Ambient => format!("raise ambient capability {i}"),
        Step::Seccomp => format!("install seccomp filter #{i}"),
        Step::Chdir => format!("process.cwd {}", process.cwd.to_string_lossy()),
        Step::Exec => format!(
            "exec {}",
            process.candidates.get(i).map_or_else(
                || lossy(process.args.first()),
                |c| c.to_string_lossy().into_owned()
            )
        ),
        other => format!("{other:?}"),
    }
}

/// Sends `events` to every live subscriber (dropping the gone ones).
fn publish(inner: &Inner, events: Vec<Event>) {
    if !events.is_empty() {
        let mut subs = lock(&inner.subscribers);
        subs.retain(|s| events.iter().all(|e| s.send(e.clone()).is_ok()));
    }
}

/// The monitor thread: see the module docs.
fn monitor(inner: std::sync::Weak<Inner>, rx: Receiver<Watch>, mut wake: File) {
    let mut exits: Vec<Watch> = Vec::new();
    let mut ooms: Vec<Watch> = Vec::new();
    let mut open = true;
    loop {
        loop {
            match rx.try_recv() {
                Ok(w @ Watch::Exit { .. }) => exits.push(w),
                Ok(w @ Watch::Oom { .. }) => ooms.push(w),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        ooms.retain(|w| match w {
            Watch::Oom { state, .. } => !state.removed.load(Ordering::SeqCst),
            Watch::Exit { .. } => false,
        });
        if !open {
            return;
        }
        let mut fds = vec![libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        for w in &exits {
            if let Watch::Exit { watch, .. } = w {
                fds.push(libc::pollfd {
                    fd: watch.raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
        }
        for w in &ooms {
            if let Watch::Oom { events, .. } = w {
                fds.push(libc::pollfd {
                    fd: events.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                });
            }
        }
        // SAFETY: `fds` is a valid array of fds.len() pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            let mut buf = [0u8; 64];
            let _ = wake.read(&mut buf);
        }
        let Some(inner) = inner.upgrade() else { return };
        let mut events = Vec::new();
        let ready_exit: Vec<bool> = fds[1..=exits.len()]
            .iter()
            .map(|p| p.revents != 0)
            .collect();
        let ready_oom: Vec<bool> = fds[1 + exits.len()..]
            .iter()
            .map(|p| p.revents != 0)
            .collect();
        let mut kept = Vec::new();
        for (w, ready) in exits.drain(..).zip(ready_exit) {
            let Watch::Exit {
                id,
                exec_id,
                mut watch,
                cell,
            } = w
            else {
                continue;
            };
            if !ready {
                kept.push(Watch::Exit {
                    id,
                    exec_id,
                    watch,
                    cell,
                });
                continue;
            }
            let status = match watch.read_status() {
                Ok(Some(s)) => s,
                // Lost by the reaper: report it as killed.
                _ => ExitStatus::Signaled(libc::SIGKILL),
            };
            let info = ExitInfo {
                status,
                exited_at: SystemTime::now(),
            };
            // An init's exit is set under the table lock, after the
            // state: whoever it wakes reads the container as stopped.
            let mut table = exec_id.is_none().then(|| lock(&inner.table));
            if let Some(c) = table.as_mut().and_then(|t| t.get_mut(&id)) {
                c.state = State::Stopped;
            }
            cell.set(info);
            drop(table);
            events.push(Event::Exited {
                id,
                exec_id,
                pid: watch.pid(),
                info,
            });
        }
        exits = kept;
        for (w, ready) in ooms.iter().zip(ready_oom) {
            if let (
                Watch::Oom {
                    id,
                    events: f,
                    state,
                },
                true,
            ) = (w, ready)
            {
                events.extend(state.news(id, cgroup::oom_kills(f)));
            }
        }
        publish(&inner, events);
    }
}
