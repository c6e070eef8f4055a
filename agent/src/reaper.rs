//! Who reaps the agent's children, so that `Exec` gets its command's exit
//! status even though PID 1 also reaps every orphan in the guest.
//!
//! Exactly one place calls waitpid for a given child:
//!
//! - [`ReapMode::AllChildren`] (PID 1): the main thread calls
//!   [`Reaper::reap_all`] on each SIGCHLD, which collects every exited child
//!   with `waitpid(-1, WNOHANG)` and hands the status of a registered one to
//!   its waiter; orphans are just collected.
//! - [`ReapMode::PerChild`] (anywhere else: host tests, where waitpid(-1)
//!   would steal the children of unrelated code in the same process): a thread
//!   per registered child waits for that pid only.
//!
//! The race: a child can exit, and `reap_all` can collect it, before its
//! spawner has registered it. [`Reaper::spawn`] therefore starts the child
//! *under the registry lock* and registers it before unlocking; `reap_all` looks a pid up
//! under the same lock, so it waits until the pid is registered. Commands
//! are never started with `std::process::Command`, which waits for its own
//! children (and asserts on the result when exec fails).
//!
//! A waiter is the read end of a pipe: the status arrives as 4 bytes, then
//! the write end closes, so the waiter can poll it with its other pipes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::log::log;

/// How children are reaped; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReapMode {
    /// PID 1: [`Reaper::reap_all`] on SIGCHLD reaps every child.
    AllChildren,
    /// Not PID 1: a thread per child waits for that pid only.
    PerChild,
}

/// The registry of children whose exit status someone waits for.
pub struct Reaper {
    mode: ReapMode,
    /// pid -> the write end of its waiter's pipe.
    children: Mutex<HashMap<libc::pid_t, File>>,
}

/// The waiting end for one child's exit status: readable (4 bytes, then
/// end of file) once the child has been reaped.
pub struct ExitWatch {
    pid: libc::pid_t,
    read: File,
}

/// Creates a pipe, both ends close-on-exec.
pub fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded: both are open descriptors that nothing else
    // owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

impl Reaper {
    pub fn new(mode: ReapMode) -> Self {
        Self {
            mode,
            children: Mutex::new(HashMap::new()),
        }
    }

    /// The mode for this process: [`ReapMode::AllChildren`] as PID 1,
    /// [`ReapMode::PerChild`] otherwise.
    pub fn for_this_process() -> Self {
        Self::new(if std::process::id() == 1 {
            ReapMode::AllChildren
        } else {
            ReapMode::PerChild
        })
    }

    pub fn mode(&self) -> ReapMode {
        self.mode
    }

    fn children(&self) -> MutexGuard<'_, HashMap<libc::pid_t, File>> {
        // Only inserts and removes happen under the lock: a poisoned map is
        // still whole.
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a child with `start` (a fork or clone that returns the new
    /// pid, and never returns in the child) under the registry lock and
    /// registers it before any reaper can look for it. Returns the pid and
    /// its exit watch.
    ///
    /// If `start` succeeds but the watch cannot be set up, the child is
    /// killed and reaped here, and the error returned.
    pub fn spawn(
        &self,
        start: impl FnOnce() -> io::Result<libc::pid_t>,
    ) -> io::Result<(libc::pid_t, ExitWatch)> {
        let (read, write) = cloexec_pipe()?;
        let pid = {
            let mut children = self.children();
            let pid = start()?;
            children.insert(pid, File::from(write));
            pid
        };
        let watch = ExitWatch {
            pid,
            read: File::from(read),
        };
        if self.mode == ReapMode::PerChild {
            if let Err(e) = self.start_waiter(pid) {
                // Nobody else will reap it: do it now.
                self.children().remove(&pid);
                // SAFETY: kill takes no pointers; `pid` is our unreaped
                // child, so the pid cannot have been reused.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = wait_for(pid);
                return Err(e);
            }
        }
        Ok((pid, watch))
    }

    fn start_waiter(&self, pid: libc::pid_t) -> io::Result<()> {
        // The thread needs the registry: hand it the write end instead.
        let write = self
            .children()
            .remove(&pid)
            .ok_or_else(|| io::Error::other(format!("pid {pid} vanished from the registry")))?;
        let result = std::thread::Builder::new()
            .name(format!("wait-{pid}"))
            .spawn(move || {
                let status = wait_for(pid);
                match status {
                    Ok(status) => deliver(pid, write, status),
                    Err(e) => log(&format!("waitpid {pid}: {e}")),
                }
            });
        result.map(drop)
    }

    /// Reaps every exited child (`waitpid(-1, WNOHANG)` until none is
    /// left) and hands each registered one's status to its waiter. For
    /// [`ReapMode::AllChildren`]: call it on SIGCHLD, from one thread.
    pub fn reap_all(&self) {
        loop {
            let mut status = 0;
            // SAFETY: `status` is a valid out pointer.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                // 0: children left, none exited; -1: ECHILD, none at all.
                break;
            }
            // Blocks while a spawn holds the lock, i.e. until a child that
            // just exited is registered.
            let waiter = self.children().remove(&pid);
            if let Some(write) = waiter {
                deliver(pid, write, status);
            }
        }
    }
}

/// Sends `status` to the waiter of `pid` and closes its pipe. The waiter may
/// have given up (a broken pipe): nothing to do then.
fn deliver(pid: libc::pid_t, mut write: File, status: libc::c_int) {
    // Four bytes into an empty pipe: never blocks, never short.
    if let Err(e) = write.write_all(&status.to_ne_bytes()) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            log(&format!("exit status of pid {pid}: {e}"));
        }
    }
}

/// Blocks until `pid` exits; returns its wait status.
fn wait_for(pid: libc::pid_t) -> io::Result<libc::c_int> {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            return Ok(status);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Sends `signal` to the process group `pgid`.
pub fn kill_group(pgid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes no pointers; a negative pid names a process group.
    if unsafe { libc::kill(-pgid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// How a child ended, from its wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    pub fn from_wait_status(status: libc::c_int) -> Self {
        if libc::WIFSIGNALED(status) {
            Self::Signaled(libc::WTERMSIG(status))
        } else {
            Self::Exited(libc::WEXITSTATUS(status))
        }
    }
}

impl ExitWatch {
    /// The child's pid.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Reads the status once [`fd`](Self::fd) is readable. `Ok(None)`: the
    /// pipe closed without one (the reaper lost the child, e.g. its
    /// waitpid failed).
    pub fn read_status(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut buf = [0u8; 4];
        match self.read.read_exact(&mut buf) {
            Ok(()) => Ok(Some(ExitStatus::from_wait_status(i32::from_ne_bytes(buf)))),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The descriptor to poll for the status.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    /// The raw descriptor, for poll(2).
    pub fn raw_fd(&self) -> i32 {
        self.read.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    /// Forks a child that exits with `code` at once (only async-signal-safe
    /// calls in the child).
    fn fork_exit(code: i32) -> io::Result<libc::pid_t> {
        // SAFETY: the child calls only _exit.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => {
                // SAFETY: _exit is async-signal-safe and never returns.
                unsafe { libc::_exit(code) }
            }
            pid => Ok(pid),
        }
    }

    #[test]
    fn per_child_delivers_the_exit_code() {
        let reaper = Reaper::new(ReapMode::PerChild);
        let (pid, mut watch) = reaper.spawn(|| fork_exit(7)).unwrap();
        assert_eq!(watch.pid(), pid);
        assert_eq!(watch.read_status().unwrap(), Some(ExitStatus::Exited(7)));
        assert!(reaper.children().is_empty());
    }

    #[test]
    fn a_failed_fork_registers_nothing() {
        let reaper = Reaper::new(ReapMode::AllChildren);
        let e = reaper
            .spawn(|| Err(io::Error::from_raw_os_error(libc::EAGAIN)))
            .err()
            .unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EAGAIN));
        assert!(reaper.children().is_empty());
    }

    #[test]
    fn delivery_to_a_registered_pid_and_orphans_are_dropped() {
        // The dispatch half of reap_all, without waitpid(-1) (which would
        // reap other tests' children in this process).
        let reaper = Reaper::new(ReapMode::AllChildren);
        let (_, mut watch) = reaper.spawn(|| Ok(4242)).unwrap();
        let write = reaper.children().remove(&4242).unwrap();
        deliver(4242, write, 3 << 8);
        assert_eq!(watch.read_status().unwrap(), Some(ExitStatus::Exited(3)));
        assert_eq!(watch.read_status().unwrap(), None, "then end of file");
    }

    #[test]
    fn wait_statuses() {
        assert_eq!(ExitStatus::from_wait_status(0), ExitStatus::Exited(0));
        assert_eq!(ExitStatus::from_wait_status(1 << 8), ExitStatus::Exited(1));
        assert_eq!(ExitStatus::from_wait_status(9), ExitStatus::Signaled(9));
        assert_eq!(
            ExitStatus::from_wait_status(0x80 | 11),
            ExitStatus::Signaled(11),
            "core dumped"
        );
    }
}
