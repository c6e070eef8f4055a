//! The monitor thread, one for the whole registry (not one per container
//! or process): it polls the exit watches and each container's
//! `memory.events`, records exits, and publishes [`Event`]s (exits, OOM
//! kills) to the registry's subscribers.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::time::SystemTime;

use super::exit::{ExitCell, ExitInfo};
use super::{cgroup, lock, Inner, State};
use crate::reaper::{ExitStatus, ExitWatch};

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

/// A container's OOM bookkeeping, shared by the registry and the monitor.
#[derive(Default)]
pub(super) struct OomState {
    /// Cleared by remove: the monitor drops the OOM watch.
    pub(super) removed: AtomicBool,
    /// The `oom_kill` count already published as events: whoever sees a
    /// higher count (the monitor on POLLPRI, or remove's last look before
    /// the cgroup goes) raises it with `fetch_max` and publishes the
    /// difference, so no kill is reported twice or lost to a remove that
    /// came before the kernel's (rate-limited) change notification.
    reported: AtomicU64,
}

impl OomState {
    /// The OOM event for a count of `now` kills, if it is news.
    pub(super) fn news(&self, id: &str, now: u64) -> Option<Event> {
        let before = self.reported.fetch_max(now, Ordering::SeqCst);
        (now > before).then(|| Event::Oom {
            id: id.to_owned(),
            count: now - before,
        })
    }
}

/// Sent to the monitor thread.
pub(super) enum Watch {
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

/// Sends `events` to every live subscriber (dropping the gone ones).
pub(super) fn publish(inner: &Inner, events: Vec<Event>) {
    if !events.is_empty() {
        let mut subs = lock(&inner.subscribers);
        subs.retain(|s| events.iter().all(|e| s.send(e.clone()).is_ok()));
    }
}

/// The monitor thread: see the module docs; it ends when the registry
/// goes or closes the channel.
pub(super) fn monitor(inner: std::sync::Weak<Inner>, rx: Receiver<Watch>, mut wake: File) {
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
