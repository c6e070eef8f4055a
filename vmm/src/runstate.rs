//! State shared by the vCPU threads, the controller and the handle: the
//! stop flag, the first exit reason, and the final outcome.

use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use std::os::fd::AsRawFd;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::exit::ExitReason;
use crate::snapshot::VcpuState;

/// When things happened during a VM's life.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    /// `start` was called.
    pub started: Option<Instant>,
    /// The boot vCPU entered KVM_RUN for the first time.
    pub first_run: Option<Instant>,
    /// The guest wrote its first console byte / completed its first line.
    pub first_console_byte: Option<Instant>,
    pub first_console_line: Option<Instant>,
    /// The ready marker appeared on the console.
    pub ready: Option<Instant>,
    /// The VM stopped.
    pub stopped: Option<Instant>,
}

impl Timeline {
    /// `t` relative to `origin`, if both are known.
    pub fn since(origin: Instant, t: Option<Instant>) -> Option<Duration> {
        t.and_then(|t| t.checked_duration_since(origin))
    }
}

/// How a VM ended.
#[derive(Debug, Clone)]
pub struct VmOutcome {
    pub reason: ExitReason,
    pub timeline: Timeline,
    /// The last console lines, for error reports.
    pub console_tail: Vec<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shared run state.
pub struct RunState {
    /// Set when the VM is stopping; vCPU threads leave their loop.
    pub stop: AtomicBool,
    exit: Mutex<Option<ExitReason>>,
    /// Written when an exit reason is reported (watched by the controller).
    pub exit_evt: EventFd,
    first_run: OnceLock<Instant>,
    outcome: Mutex<Option<VmOutcome>>,
    done: Condvar,
    /// Written once the outcome is published and never read, so it stays
    /// readable: owners poll/epoll their clones ([`ExitNotifier`]).
    done_evt: EventFd,
    /// Set while the host wants the vCPUs parked (pause, snapshot).
    pause: AtomicBool,
    parked: Mutex<Parked>,
    park_changed: Condvar,
}

/// vCPUs parked for a pause, with the state each saved as it parked.
#[derive(Default)]
struct Parked {
    count: usize,
    states: Vec<Option<Result<VcpuState, String>>>,
}

impl RunState {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            stop: AtomicBool::new(false),
            exit: Mutex::new(None),
            exit_evt: EventFd::new(EFD_NONBLOCK)?,
            first_run: OnceLock::new(),
            outcome: Mutex::new(None),
            done: Condvar::new(),
            done_evt: EventFd::new(EFD_NONBLOCK)?,
            pause: AtomicBool::new(false),
            parked: Mutex::new(Parked::default()),
            park_changed: Condvar::new(),
        })
    }

    /// Records why the VM stops; the first report wins.
    pub fn report(&self, reason: ExitReason) {
        let mut e = lock(&self.exit);
        if e.is_none() {
            *e = Some(reason);
        }
        drop(e);
        if let Err(err) = self.exit_evt.write(1) {
            tracing::error!(error = %err, "cannot signal the VM exit event");
        }
    }

    /// The reported exit reason, if any.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        lock(&self.exit).clone()
    }

    pub(crate) fn vcpu_started(&self) {
        let _ = self.first_run.set(Instant::now());
    }

    pub fn first_run(&self) -> Option<Instant> {
        self.first_run.get().copied()
    }

    /// Whether vCPUs should park.
    pub(crate) fn pause_requested(&self) -> bool {
        self.pause.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Asks the vCPUs to park (they must be kicked out of KVM_RUN too).
    pub(crate) fn request_pause(&self, vcpus: usize) {
        let mut p = lock(&self.parked);
        p.states = (0..vcpus).map(|_| None).collect();
        self.pause.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Called by vCPU `id` with its saved state: waits while paused.
    pub(crate) fn park(&self, id: u8, state: Result<VcpuState, String>) {
        let mut p = lock(&self.parked);
        if let Some(slot) = p.states.get_mut(usize::from(id)) {
            *slot = Some(state);
        }
        p.count += 1;
        self.park_changed.notify_all();
        while self.pause_requested() && !self.stop.load(std::sync::atomic::Ordering::Acquire) {
            p = self
                .park_changed
                .wait(p)
                .unwrap_or_else(PoisonError::into_inner);
        }
        p.count -= 1;
    }

    /// Waits until `n` vCPUs are parked.
    pub(crate) fn wait_parked(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = lock(&self.parked);
        while p.count < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            p = self
                .park_changed
                .wait_timeout(p, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// The states the parked vCPUs saved.
    pub(crate) fn parked_states(&self) -> Vec<Option<Result<VcpuState, String>>> {
        lock(&self.parked).states.clone()
    }

    /// Lets parked vCPUs run again.
    pub(crate) fn resume(&self) {
        self.pause
            .store(false, std::sync::atomic::Ordering::Release);
        let _p = lock(&self.parked);
        self.park_changed.notify_all();
    }

    /// Wakes parked vCPUs so they see the stop flag.
    pub(crate) fn wake_parked(&self) {
        let _p = lock(&self.parked);
        self.park_changed.notify_all();
    }

    /// Publishes the final outcome and wakes waiters.
    pub(crate) fn finish(&self, outcome: VmOutcome) {
        *lock(&self.outcome) = Some(outcome);
        self.done.notify_all();
        if let Err(err) = self.done_evt.write(1) {
            tracing::error!(error = %err, "cannot signal the VM's end to its owner");
        }
    }

    /// A notifier that becomes ready when the outcome is published.
    pub fn exit_notifier(&self) -> std::io::Result<ExitNotifier> {
        Ok(ExitNotifier {
            fd: self.done_evt.try_clone()?,
        })
    }

    /// The outcome once the VM has fully stopped.
    pub fn outcome(&self) -> Option<VmOutcome> {
        lock(&self.outcome).clone()
    }

    /// Waits for the outcome; None on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<VmOutcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut g = lock(&self.outcome);
        loop {
            if let Some(o) = g.as_ref() {
                return Some(o.clone());
            }
            g = match deadline {
                None => self.done.wait(g).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.done
                        .wait_timeout(g, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}

/// Tells its owner that a VM has ended, without polling: its descriptor
/// becomes readable (and stays so) once the VM's outcome is published, so
/// it can sit in the owner's epoll set, or [`wait`](Self::wait) blocks on
/// it. Each notifier is its own descriptor; dropping it closes that.
#[derive(Debug)]
pub struct ExitNotifier {
    fd: EventFd,
}

impl ExitNotifier {
    /// Blocks until the VM has ended (true) or `timeout` passed (false);
    /// `None` waits for as long as it takes.
    pub fn wait(&self, timeout: Option<Duration>) -> bool {
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let ms = match (timeout, deadline) {
                (None, _) | (Some(_), None) => -1,
                (Some(_), Some(d)) => {
                    let left = d.saturating_duration_since(Instant::now());
                    // Round up: a sub-millisecond rest must still wait.
                    i32::try_from(
                        left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0),
                    )
                    .unwrap_or(i32::MAX)
                }
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, alive for the call.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc > 0 {
                return true;
            }
            if rc == 0 {
                return false;
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                tracing::error!(error = %std::io::Error::last_os_error(), "poll on a VM exit notifier");
                return false;
            }
        }
    }

    /// Whether the VM has ended (does not block).
    pub fn has_ended(&self) -> bool {
        self.wait(Some(Duration::ZERO))
    }
}

impl std::os::fd::AsRawFd for ExitNotifier {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn exit_notifier_fires_once_the_outcome_is_published_and_stays_ready() {
        let state = std::sync::Arc::new(RunState::new().unwrap());
        let early = state.exit_notifier().unwrap();
        assert!(!early.wait(Some(Duration::from_millis(20))));
        assert!(!early.has_ended());
        let s = state.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s.finish(VmOutcome {
                reason: ExitReason::HostRequest,
                timeline: Timeline::default(),
                console_tail: Vec::new(),
            });
        });
        assert!(early.wait(None), "a blocking wait returns when the VM ends");
        t.join().unwrap();
        // Level-triggered: every notifier, old or new, stays ready.
        assert!(early.has_ended());
        assert!(state.exit_notifier().unwrap().has_ended());
        assert!(state.outcome().is_some());
    }
}
