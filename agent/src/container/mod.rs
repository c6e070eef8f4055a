//! OCI containers in the guest: the agent creates them itself (no runc).
//!
//! - [`ContainerSpec::validate`] checks a runtime spec up front into a
//!   [`Plan`] (errors name the field; [`SpecError::code`] maps to ttrpc).
//! - [`Containers`] is the registry the RPC layer calls: create, start,
//!   exec, signal, wait, pids, stats, pause/resume, update, remove, resize.
//! - A process is started by `child/`: clone(CLONE_VM | CLONE_VFORK | new
//!   namespaces) on its own stack, only raw calls in the child; its exit
//!   comes through the agent's [`Reaper`] (one waitpid for all).
//! - One monitor thread for the whole registry (`monitor.rs`) polls the
//!   exit watches and each container's `memory.events`, records exits, and
//!   publishes [`Event`]s (exits, OOM kills).
//!
//! `create` prepares (cgroup, pty, every string); the process is cloned by
//! `start` (CLONE_VFORK suspends the cloning thread until exec, so a child
//! cannot wait for `start` without holding an agent thread). See
//! `agent/CONTAINERS.md` for the spec fields and costs.
//!
//! This file holds the registry's state, create and remove; `start.rs`
//! exec registration and starts, `control.rs` everything asked of a
//! running container, `stdio.rs` and `exit.rs` a process's stdio and exit.

mod caps;
pub mod cgroup;
mod child;
mod control;
mod error;
mod exit;
mod in_root;
mod monitor;
mod mounts;
mod pty;
mod seccomp;
mod spec;
mod start;
mod stdio;
mod syscalls;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

pub use cgroup::{CpuStats, IoStats, MemoryStats, PidsStats, Stats};
pub use error::{ContainerError, SpecError};
pub use exit::{ExitInfo, ExitNotify};
pub use monitor::Event;
pub use spec::{
    validate_id, CgroupLayout, ContainerSpec, Plan, ProcessPlan, AGENT_BINARY, CRI_CONTAINER_TYPE,
    CRI_SANDBOX, PAUSE_ARG,
};
pub use stdio::Stdio;

use crate::accounting::Meter;
use crate::reaper::{cloexec_pipe, Reaper};
use exit::{wait_cell, ExitCell};
use monitor::{monitor, publish, OomState, Watch};
use stdio::{dup_pair, prepare_stdio, PreparedStdio};

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

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// Registers container `plan.id` in state Created: its cgroup (limits
    /// applied), its stdio (a pty when asked: the master is returned).
    /// Nothing runs yet.
    pub fn create(&self, plan: Plan, stdio: Stdio) -> Result<Option<OwnedFd>, ContainerError> {
        self.create_metered(plan, stdio, &mut Meter::off())
    }

    /// [`Self::create`], its steps measured into `meter`: `cgroup` (the
    /// pod cgroup checked, the container's made, its limits written:
    /// counts the files written) and `register` (stdio or pty, the OOM
    /// watch, the table).
    pub fn create_metered(
        &self,
        plan: Plan,
        stdio: Stdio,
        meter: &mut Meter,
    ) -> Result<Option<OwnedFd>, ContainerError> {
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
        let (cgroup, written) = match self
            .prepare_pod_cgroup()
            .map_err(ContainerError::io(&id, "prepare the pod cgroup"))?
        {
            Some(parent) => {
                let (cg, written) =
                    cgroup::Cgroup::create(&parent, &id, &plan.resources).map_err(|e| match e {
                        cgroup::CgroupError::Spec(s) => ContainerError::Spec(s),
                        cgroup::CgroupError::Io { what, source } => ContainerError::Io {
                            id: id.clone(),
                            what,
                            source,
                        },
                    })?;
                (Some(cg), written)
            }
            None if plan.wants_cgroup_limits => {
                return Err(ContainerError::NoCgroups {
                    id,
                    what: "linux.resources",
                })
            }
            None => (None, 0),
        };
        meter.mark_counting("cgroup", written as u64, "files");
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
        drop(table);
        meter.mark("register");
        Ok(theirs)
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
