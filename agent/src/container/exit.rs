//! A process's exit as waiters see it: set once by the monitor, waited on
//! (a condition variable) or polled (a pipe closed on exit).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::lock;
use crate::reaper::ExitStatus;

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

/// A process's exit, shared by waiters and the monitor.
#[derive(Default)]
pub(super) struct ExitCell {
    pub(super) slot: Mutex<ExitSlot>,
    pub(super) cond: Condvar,
}

#[derive(Default)]
pub(super) struct ExitSlot {
    pub(super) info: Option<ExitInfo>,
    /// Its container was removed (a process never started never exits):
    /// waiters stop waiting on it.
    pub(super) orphaned: bool,
    /// Write ends of [`ExitNotify`] pipes: closed on exit.
    pub(super) notify: Vec<OwnedFd>,
}

impl ExitCell {
    pub(super) fn set(&self, info: ExitInfo) {
        let mut s = lock(&self.slot);
        s.info = Some(info);
        s.notify.clear();
        self.cond.notify_all();
    }

    pub(super) fn get(&self) -> Option<ExitInfo> {
        lock(&self.slot).info
    }

    pub(super) fn orphan(&self) {
        lock(&self.slot).orphaned = true;
        self.cond.notify_all();
    }
}

/// A pollable exit notification: its fd reaches end of file (POLLIN/POLLHUP)
/// once the process has exited; then [`Containers::wait`] answers at once.
pub struct ExitNotify {
    pub(super) read: File,
}

impl ExitNotify {
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.read.as_fd()
    }
}

pub(super) fn wait_cell(cell: &ExitCell, timeout: Duration) -> Option<ExitInfo> {
    let slot = lock(&cell.slot);
    let (slot, _) = cell
        .cond
        .wait_timeout_while(slot, timeout, |s| s.info.is_none())
        .unwrap_or_else(PoisonError::into_inner);
    slot.info
}
