//! Starting a container's process: clone(CLONE_VM | CLONE_VFORK | new
//! namespaces) on a stack of our own, like `exec.rs`, and in the child only
//! raw, async-signal-safe calls on data built before the clone (the
//! [`Plan`](super::Plan) and the [`Launch`] below). The agent's thread is
//! suspended until the child has exec'd or failed; a failure is reported as
//! (step, index, errno) on a close-on-exec pipe.
//!
//! Order in the child (runc's, minus what the VM makes moot):
//! signals to default, umask 0, setsid, stdio (+ controlling tty), join the
//! cgroup (write "0" to its cgroup.procs), oom_score_adj, setns into joined
//! namespaces, unshare the cgroup namespace, then for a new container: `/`
//! rslave (or per rootfsPropagation), bind the rootfs on itself, each mount
//! in order (mkdir/create the target, mount, remount for ro binds,
//! propagation), device nodes (mknod, bind from the guest's /dev where mknod
//! is refused) and /dev symlinks, pivot_root(".", ".") + detach the old
//! root, sysctls, masked paths, read-only paths, read-only root, hostname
//! (root.rs; a light sandbox instead gets sysctls, then an empty root);
//! then rlimits, chdir, [seccomp here if no_new_privs is off, as runc],
//! bounding set, KEEPCAPS + setgroups/setresgid/setresuid, capset, ambient,
//! no_new_privs, umask, seccomp (last before exec), signal mask, execve of
//! each PATH candidate in turn.
//!
//! A metered launch also accounts for its steps (`tally.rs`): the child
//! samples its own usage at each coarse step's end into a record in the
//! agent's memory (CLONE_VM), which the agent reads once the clone
//! returns. The failure report is `report.rs`.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

mod report;
mod root;
mod tally;

use super::caps::{CapHeader, CapSets, LINUX_CAPABILITY_VERSION_3};
use super::mounts::RootfsPlan;
use super::seccomp::Filters;
use super::spec::ProcessPlan;
use report::fail;
pub(super) use report::{ChildFailure, Step};
use tally::{ChildStep, Tally};

use crate::accounting::Meter;
use crate::exec::{clone_vfork_with, not_default_signals, reset_signals, ChildStack, SignalSet};
use crate::reaper::{cloexec_pipe, ExitWatch, Reaper};

/// The process's stdio as raw descriptors above 2 (owned by the caller of
/// [`launch`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct StdioFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// stdin is a pty slave to make the controlling terminal.
    pub ctty: bool,
}

/// The process's root file system.
pub(super) enum Root<'a> {
    /// An exec: its container's, with the mount namespace it joins.
    Joined,
    /// A new container's.
    Rootfs(&'a RootfsPlan),
    /// A light sandbox's: empty and read-only in a mount namespace of its
    /// own; `binary` (opened before, O_PATH) is exec'd.
    Empty { binary: RawFd },
}

/// What a launch needs besides the process plan.
pub(super) struct Launch<'a> {
    pub process: &'a ProcessPlan,
    pub seccomp: &'a Filters,
    /// CLONE_NEW* flags of new namespaces.
    pub clone_flags: libc::c_int,
    /// Namespaces to setns into in the child: (fd, type).
    pub setns: &'a [(OwnedFd, libc::c_int)],
    /// A pid namespace for the cloning thread's children.
    pub join_pid: Option<&'a OwnedFd>,
    pub unshare_cgroup: bool,
    /// The container cgroup's cgroup.procs, open for writing.
    pub cgroup_procs: Option<&'a File>,
    pub root: Root<'a>,
    pub hostname: Option<&'a CStr>,
    pub domainname: Option<&'a CStr>,
    pub sysctl: &'a [(CString, CString)],
    pub stdio: StdioFds,
}

/// Everything the child reads, with the pointer arrays built.
struct Setup<'a> {
    l: &'a Launch<'a>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    progs: Vec<libc::sock_fprog>,
    cap_header: CapHeader,
    cap_data: [super::caps::CapData; 2],
    report: RawFd,
    empty_mask: libc::sigset_t,
    /// The signals to put back to their default (asked before the clone).
    reset: &'static SignalSet,
    /// The child's own step accounting (written in the child).
    tally: Tally,
}

fn nul_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

pub(super) enum LaunchError {
    /// Before or around the clone, in the agent.
    Agent(&'static str, io::Error),
    Child(ChildFailure),
}

/// Restores the cloning thread's pid namespace on drop.
struct PidNsGuard {
    own: OwnedFd,
}

impl Drop for PidNsGuard {
    fn drop(&mut self) {
        // SAFETY: setns on an open namespace descriptor.
        if unsafe { libc::setns(self.own.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
            crate::log::log(&format!(
                "container: restoring this thread's pid namespace failed: {}; its later children land in a container's",
                io::Error::last_os_error()
            ));
        }
    }
}

fn open_own_pid_ns() -> io::Result<OwnedFd> {
    Ok(File::open("/proc/thread-self/ns/pid")?.into())
}

/// Starts the process; returns its pid and exit watch once it has exec'd.
/// `meter` gets the steps from here on: `prepare` (everything since its
/// last mark), `clone`, the child's own, `exec`.
pub(super) fn launch(
    reaper: &Reaper,
    l: &Launch<'_>,
    meter: &mut Meter,
) -> Result<(libc::pid_t, ExitWatch), LaunchError> {
    let (report_r, report_w) = cloexec_pipe().map_err(|e| LaunchError::Agent("pipe", e))?;
    let progs = l
        .seccomp
        .programs
        .iter()
        .map(|p| libc::sock_fprog {
            len: p.len() as libc::c_ushort,
            filter: p.as_ptr().cast_mut().cast(),
        })
        .collect();
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    let empty_mask = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    let setup = Setup {
        l,
        argv: nul_terminated(&l.process.args),
        envp: nul_terminated(&l.process.env),
        progs,
        cap_header: CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        },
        cap_data: l.process.caps.as_ref().map(CapSets::capset_data).unwrap_or(
            [super::caps::CapData {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            }; 2],
        ),
        report: report_w.as_raw_fd(),
        empty_mask,
        reset: not_default_signals(),
        tally: Tally::new(meter.is_on()),
    };
    let own_pid_ns = match l.join_pid {
        Some(_) => {
            Some(open_own_pid_ns().map_err(|e| LaunchError::Agent("open our pid namespace", e))?)
        }
        None => None,
    };
    let stack = ChildStack::new().map_err(|e| LaunchError::Agent("map the child stack", e))?;
    meter.mark("prepare");
    let before = meter.last().copied();
    let mut woke = None;
    let spawned = reaper.spawn(|| {
        let _guard = match (l.join_pid, own_pid_ns) {
            (Some(ns), Some(own)) => {
                // SAFETY: setns on an open namespace descriptor; this
                // thread's later children only (restored by the guard).
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWPID) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                Some(PidNsGuard { own })
            }
            _ => None,
        };
        let pid = clone_vfork(&stack, &setup);
        woke = meter.sample();
        pid
    });
    let (pid, mut watch) = spawned.map_err(|e| LaunchError::Agent("clone", e))?;
    drop(report_w);
    if let Some(failure) = report::read(File::from(report_r))? {
        // It exits 127 at once: collect it so nothing is left over.
        let _ = watch.read_status();
        return Err(LaunchError::Child(failure));
    }
    if let (Some(before), Some(woke)) = (before, woke) {
        let namespaces = setup.l.clone_flags.count_ones();
        let label = |i: usize| match &setup.l.root {
            Root::Rootfs(plan) => plan
                .mounts
                .get(i)
                .map_or_else(|| format!("mounts[{i}]"), |m| m.label.clone()),
            _ => format!("mounts[{i}]"),
        };
        let (steps, child_ns, child_calls) = setup.tally.steps(&before, &woke, namespaces, &label);
        for s in steps {
            meter.push(s);
        }
        meter.add_cost(child_ns, child_calls);
        meter.resume_at(woke);
    }
    Ok((pid, watch))
}

/// Starts `child_main(setup)` with clone(CLONE_VM | CLONE_VFORK) plus the
/// container's namespace flags ([`clone_vfork_with`]).
fn clone_vfork(stack: &ChildStack, setup: &Setup<'_>) -> io::Result<libc::pid_t> {
    // SAFETY: child_entry only runs child_main on `setup`, which outlives
    // the call (CLONE_VFORK: we are suspended until it exec'd or exited);
    // the stack is ours and unused by anything else.
    unsafe {
        clone_vfork_with(
            stack,
            setup.l.clone_flags,
            child_entry,
            std::ptr::from_ref(setup).cast_mut().cast(),
        )
    }
}

extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: clone_vfork passes a Setup that stays alive and unchanged
    // until clone returns, i.e. past our exec or exit.
    unsafe { child_main(&*arg.cast::<Setup<'_>>()) }
}

/// errno of the last failed call (read from this thread's slot: the parent
/// thread is suspended, so nothing else writes it).
fn errno() -> i32 {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Writes `value` to the file at `path` (open, write, close).
///
/// # Safety
/// Only raw calls; for the child.
unsafe fn write_path(path: &CStr, value: &[u8]) -> Result<(), i32> {
    // SAFETY: a NUL-terminated path; the descriptor is ours.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(errno());
        }
        let n = libc::write(fd, value.as_ptr().cast(), value.len());
        let e = errno();
        libc::close(fd);
        if n < 0 {
            return Err(e);
        }
    }
    Ok(())
}

/// A raw `syscall`'s result as the c_int the checks take (-1 on error).
fn raw_rc(rc: libc::c_long) -> libc::c_int {
    if rc < 0 {
        -1
    } else {
        0
    }
}

/// The child. See the module docs for the order.
///
/// # Safety
/// Runs in a clone(CLONE_VM | CLONE_VFORK) child: only raw calls on the
/// prepared `s`.
unsafe fn child_main(s: &Setup<'_>) -> libc::c_int {
    let l = s.l;
    let p = l.process;
    let r = s.report;
    let t = &s.tally;
    t.enter();
    let check = |rc: libc::c_int, step: Step, index: usize| {
        if rc < 0 {
            fail(r, step, index, errno());
        }
    };
    // SAFETY: (whole block) raw system calls on descriptors, pointers and
    // NUL-terminated strings prepared before the clone; nothing allocates.
    unsafe {
        // Only the signals not at their default in the agent (the child
        // inherits the agent's dispositions), as Exec's children do.
        reset_signals(s.reset);
        libc::umask(0);
        check(libc::setsid(), Step::Setsid, 0);
        let io = l.stdio;
        if libc::dup2(io.stdin, 0) < 0
            || libc::dup2(io.stdout, 1) < 0
            || libc::dup2(io.stderr, 2) < 0
        {
            fail(r, Step::Stdio, 0, errno());
        }
        if io.ctty {
            check(libc::ioctl(0, libc::TIOCSCTTY, 0), Step::Ctty, 0);
        }
        if let Some(procs) = l.cgroup_procs {
            if libc::write(procs.as_raw_fd(), c"0".as_ptr().cast(), 1) < 0 {
                fail(r, Step::Cgroup, 0, errno());
            }
        }
        if let Some(adj) = &p.oom_score_adj {
            if let Err(e) = write_path(c"/proc/self/oom_score_adj", adj.as_bytes()) {
                fail(r, Step::OomScoreAdj, 0, e);
            }
        }
        t.mark(
            ChildStep::Join,
            u32::from(l.cgroup_procs.is_some()) + u32::from(p.oom_score_adj.is_some()),
        );
        for (i, (fd, kind)) in l.setns.iter().enumerate() {
            check(libc::setns(fd.as_raw_fd(), *kind), Step::Setns, i);
        }
        if l.unshare_cgroup {
            check(libc::unshare(libc::CLONE_NEWCGROUP), Step::UnshareCgroup, 0);
        }
        let joined = l.setns.len() + usize::from(l.unshare_cgroup);
        if joined > 0 {
            t.mark(ChildStep::Setns, joined as u32);
        }
        // Under the container's /proc/sys; a light sandbox's before its
        // empty root, under the guest's, whose namespaced files are this
        // process's namespaces'.
        let sysctls = || {
            for (i, (path, value)) in l.sysctl.iter().enumerate() {
                if let Err(e) = write_path(path, value.as_bytes()) {
                    fail(r, Step::Sysctl, i, e);
                }
            }
            if !l.sysctl.is_empty() {
                t.mark(ChildStep::Sysctl, l.sysctl.len() as u32);
            }
        };
        match l.root {
            Root::Rootfs(root) => {
                root::setup_root(r, t, root);
                sysctls();
                root::finish_root(r, t, root);
                t.mark(ChildStep::Paths, 0);
            }
            Root::Empty { .. } => {
                sysctls();
                root::empty_root(r, t);
                t.mark(ChildStep::EmptyRoot, 0);
            }
            Root::Joined => sysctls(),
        }
        if let Some(h) = l.hostname {
            check(
                libc::sethostname(h.as_ptr(), h.to_bytes().len()),
                Step::Hostname,
                0,
            );
        }
        if let Some(d) = l.domainname {
            check(
                libc::setdomainname(d.as_ptr(), d.to_bytes().len()),
                Step::Domainname,
                0,
            );
        }
        for (i, (res, lim)) in p.rlimits.iter().enumerate() {
            check(libc::setrlimit(*res as _, lim), Step::Rlimit, i);
        }
        check(libc::chdir(p.cwd.as_ptr()), Step::Chdir, 0);
        let early_seccomp = !p.no_new_privs;
        if early_seccomp {
            install_seccomp(s);
        }
        if let Some(caps) = &p.caps {
            for cap in &caps.drop_bounding {
                let rc = libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(*cap), 0, 0, 0);
                // EINVAL: not a capability of this kernel.
                if rc < 0 && errno() != libc::EINVAL {
                    fail(r, Step::Bounding, *cap as usize, errno());
                }
            }
            libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
        }
        // Raw system calls, not glibc's wrappers: glibc makes credential
        // changes process-wide by signalling every thread it knows of and
        // waiting for each to follow (setxid broadcast). This child shares
        // the agent's memory, so glibc still sees the agent's threads, which
        // are in another process: the child would wait forever.
        check(
            raw_rc(libc::syscall(
                libc::SYS_setgroups,
                p.additional_gids.len(),
                p.additional_gids.as_ptr(),
            )),
            Step::Setgroups,
            0,
        );
        check(
            raw_rc(libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid)),
            Step::Setresgid,
            0,
        );
        check(
            raw_rc(libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid)),
            Step::Setresuid,
            0,
        );
        if let Some(caps) = &p.caps {
            libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
            let rc = libc::syscall(libc::SYS_capset, &s.cap_header, s.cap_data.as_ptr());
            if rc < 0 {
                fail(r, Step::Capset, 0, errno());
            }
            for cap in &caps.ambient {
                let rc = libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                    libc::c_ulong::from(*cap),
                    0,
                    0,
                );
                check(rc, Step::Ambient, *cap as usize);
            }
        }
        if p.no_new_privs {
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
                Step::NoNewPrivs,
                0,
            );
        }
        libc::umask(p.umask);
        t.mark(ChildStep::Creds, 0);
        if !early_seccomp {
            install_seccomp(s);
        }
        if libc::sigprocmask(libc::SIG_SETMASK, &s.empty_mask, std::ptr::null_mut()) != 0 {
            fail(r, Step::SigMask, 0, errno());
        }
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        t.mark(
            ChildStep::Seccomp,
            if early_seccomp {
                0
            } else {
                s.progs.len() as u32
            },
        );
        if let Root::Empty { binary } = l.root {
            t.exec();
            libc::syscall(
                libc::SYS_execveat,
                binary,
                c"".as_ptr(),
                s.argv.as_ptr(),
                s.envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            fail(r, Step::Exec, 0, errno());
        }
        // execvpe without allocating: each prepared candidate in turn; a
        // missing one is skipped, a refused one remembered (as execvp).
        let mut saved = libc::ENOENT;
        for (i, cand) in p.candidates.iter().enumerate() {
            t.exec();
            libc::execve(cand.as_ptr(), s.argv.as_ptr(), s.envp.as_ptr());
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => saved = libc::EACCES,
                e => fail(r, Step::Exec, i, e),
            }
        }
        fail(r, Step::Exec, 0, saved)
    }
}

/// Installs the seccomp programs, in order.
///
/// # Safety
/// For the child: raw calls on prepared programs.
unsafe fn install_seccomp(s: &Setup<'_>) {
    for (i, prog) in s.progs.iter().enumerate() {
        // SAFETY: a sock_fprog pointing into a BPF program that outlives
        // the child's use of it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                s.l.seccomp.flags,
                prog as *const libc::sock_fprog,
            )
        };
        if rc < 0 {
            fail(s.report, Step::Seccomp, i, errno());
        }
    }
}

/// `fd` duplicated above 2, close-on-exec (so placing stdio cannot clobber
/// it).
pub(super) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on an open descriptor; the result is checked.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
