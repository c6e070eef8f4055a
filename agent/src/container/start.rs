//! Registering an exec and starting a process: the launch (namespaces to
//! join, the root it gets, the child's failure in words) around
//! [`child::launch`].

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::child::{self, Launch, LaunchError, Root, StdioFds, Step};
use super::monitor::Watch;
use super::stdio::{dup_pair, prepare_stdio, PreparedStdio};
use super::{
    cgroup, get, get_mut, proc_mut, spec, state_error, ContainerError, Containers, Plan, Proc,
    ProcessPlan, SpecError, State, Stdio,
};
use crate::accounting::Meter;
use crate::reaper::ExitWatch;

impl Containers {
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
            // The agent's pause takes no exec.
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
        self.start_metered(id, exec_id, &mut Meter::off())
    }

    /// [`Self::start`], its steps measured into `meter`: `prepare` (from
    /// the meter's last mark to the clone), `clone`, the child's steps
    /// (`join`, `setns`, `mounts`, `pivot_root`, `sysctl`,
    /// `masked_readonly` or `empty_root`, `creds`, `seccomp`: those that
    /// ran), `exec`.
    pub fn start_metered(
        &self,
        id: &str,
        exec_id: Option<&str>,
        meter: &mut Meter,
    ) -> Result<libc::pid_t, ContainerError> {
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
            meter,
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
        meter: &mut Meter,
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
                "the pod's sandbox container is the agent's pause (no image, an empty root): nothing to exec into",
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
        // A light sandbox's binary, from the guest's root: its own is empty.
        let binary = match (is_init && plan.light_sandbox, process.candidates.first()) {
            (false, _) => None,
            (true, None) => return Err(SpecError::new("process.args", "empty").into()),
            (true, Some(path)) => Some(OwnedFd::from(
                File::options()
                    .read(true)
                    .custom_flags(libc::O_PATH)
                    .open(std::ffi::OsStr::from_bytes(path.as_bytes()))
                    .map_err(io_err("open the pause binary"))?,
            )),
        };
        let root = match (&binary, is_init) {
            (Some(b), _) => Root::Empty {
                binary: b.as_raw_fd(),
            },
            (None, true) => Root::Rootfs(&plan.root),
            (None, false) => Root::Joined,
        };
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
            root,
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
        child::launch(&self.inner.reaper, &launch, meter).map_err(|e| match e {
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
            plan.root
                .devices
                .get(i)
                .map_or_else(String::new, |d| d.path.display())
        ),
        Step::Symlink => format!(
            "/dev symlink {}",
            plan.root
                .symlinks
                .get(i)
                .map_or_else(String::new, |s| s.1.display())
        ),
        Step::EmptyRoot => "mount the empty root".to_owned(),
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
