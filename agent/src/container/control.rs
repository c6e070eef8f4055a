//! Acting on and asking about running containers and processes: signals,
//! exits and waits, state, terminal size, processes, cgroup stats,
//! freezing, resource updates, and forgetting an exec.

use std::fs::File;
use std::io;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::exit::{wait_cell, ExitInfo, ExitNotify};
use super::{
    cgroup, get, lock, proc_ref, pty, spec, state_error, ContainerError, ContainerStatus,
    Containers, ProcessInfo, State, Stats, KILL_WAIT,
};
use crate::reaper::cloexec_pipe;

impl Containers {
    /// The number of OOM kills the container's cgroup counted
    /// (`memory.events` alone: WaitProcess asks on every exit, and a full
    /// [`stats`](Self::stats) reads seven cgroup files).
    pub fn oom_kills(&self, id: &str) -> Result<u64, ContainerError> {
        let (cg, _) = self.cgroup_of(id, "memory.events")?;
        let text = cgroup::read_small(&cg.dir.join("memory.events"))
            .map_err(ContainerError::io(id, "read memory.events"))?;
        Ok(cgroup::keyed(&text, "oom_kill").unwrap_or(0))
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
}
