//! The VMM's event loop thread: waits for the guest's reset, vCPU exits and
//! host requests, and stops the VM in order.

use std::os::fd::AsRawFd;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use husk_devices::legacy::ConsoleWatch;
use vmm_sys_util::eventfd::EventFd;

use crate::api::{Envelope, Reply, VmInfo, VmmRequest, VmmResponse};
use crate::device_manager::Subscriber;
use crate::exit::ExitReason;
use crate::runstate::{RunState, Timeline, VmOutcome};
use crate::snapshot_sources::{Captured, SnapshotFacts, SnapshotSources};
use crate::stats::VmCounters;

/// The console text of a kernel panic.
pub const PANIC_MARKER: &str = "Kernel panic - not syncing";

/// Signal used to kick vCPU threads out of KVM_RUN.
fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The vCPU kick signal's handler is missing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KickHandlerError {
    #[error("cannot install the handler of signal {signal} (vCPU kicks): errno {errno}")]
    Install { signal: i32, errno: i32 },
    #[error("the handler of signal {signal} (vCPU kicks) was replaced by other code in this process; a kick would kill the process")]
    Replaced { signal: i32 },
}

/// Installs the (empty) kick handler once per process, so the signal
/// interrupts KVM_RUN with EINTR instead of killing the process. Every
/// caller gets the outcome of that one installation, and then a check that
/// the handler is still the one in place (something else in the process
/// may have reset it since: a kick would then kill the process).
pub(crate) fn install_kick_handler() -> Result<(), KickHandlerError> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let signal = kick_signal();
    once(&INSTALLED, || {
        vmm_sys_util::signal::register_signal_handler(signal, on_kick).map_err(|e| e.errno())
    })
    .map_err(|errno| KickHandlerError::Install { signal, errno })?;
    if !kick_handler_in_place() {
        return Err(KickHandlerError::Replaced { signal });
    }
    Ok(())
}

/// The result of the first `install` through `cell`, for every caller.
fn once(
    cell: &OnceLock<Result<(), i32>>,
    install: impl FnOnce() -> Result<(), i32>,
) -> Result<(), i32> {
    *cell.get_or_init(install)
}

/// Whether the kick signal's current disposition is `on_kick`.
fn kick_handler_in_place() -> bool {
    // SAFETY: a zeroed sigaction is a valid out value for the query.
    let mut current: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a query only (no new action); `current` is a valid out pointer.
    let rc = unsafe { libc::sigaction(kick_signal(), std::ptr::null(), &mut current) };
    let ours = on_kick as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);
    rc == 0 && current.sa_flags & libc::SA_SIGINFO != 0 && current.sa_sigaction == ours as usize
}

/// Static facts the controller reports.
pub(crate) struct Facts {
    pub name: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub pvm_compat: bool,
    pub cmdline: String,
    pub ready_marker: String,
}

pub(crate) struct Controller {
    pub(crate) facts: Facts,
    /// Finished (final counts kept, KVM stats fds closed) once the vCPUs
    /// have stopped.
    pub(crate) counters: Arc<VmCounters>,
    pub(crate) state: Arc<RunState>,
    pub(crate) reset_evt: EventFd,
    pub(crate) api_evt: EventFd,
    pub(crate) requests: Receiver<Envelope>,
    pub(crate) console: Arc<ConsoleWatch>,
    pub(crate) started: Instant,
    pub(crate) sources: SnapshotSources,
    pub(crate) vcpu_threads: Vec<libc::pthread_t>,
}

impl Controller {
    fn kick_vcpus(&self) {
        for t in &self.vcpu_threads {
            // SAFETY: pthread_kill with the id of a vCPU thread that is not
            // joined before the controller ends; the handler does nothing.
            unsafe { libc::pthread_kill(*t, kick_signal()) };
        }
    }

    fn pause(&mut self) -> Result<VmmResponse, String> {
        if self.state.pause_requested() {
            return Ok(VmmResponse::Paused);
        }
        self.state.request_pause(self.vcpu_threads.len());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .state
            .wait_parked(self.vcpu_threads.len(), Duration::from_millis(5))
        {
            if Instant::now() > deadline {
                self.state.resume();
                return Err("vCPUs did not park within 10 s".into());
            }
            self.kick_vcpus();
        }
        tracing::info!(vm = %self.facts.name, "paused");
        Ok(VmmResponse::Paused)
    }

    fn resume(&mut self) -> Result<VmmResponse, String> {
        self.state.resume();
        tracing::info!(vm = %self.facts.name, "resumed");
        Ok(VmmResponse::Resumed)
    }

    /// Takes the paused VM's state; the requester writes it (see
    /// [`Reply::WriteSnapshot`]).
    fn capture(&mut self) -> Result<Captured, String> {
        if !self.state.pause_requested() {
            return Err(crate::snapshot::SnapshotError::NotPaused.to_string());
        }
        let mut vcpu_states = Vec::new();
        for (i, s) in self.state.parked_states().into_iter().enumerate() {
            match s {
                Some(Ok(st)) => vcpu_states.push(st),
                Some(Err(e)) => return Err(format!("vCPU {i}: {e}")),
                None => return Err(format!("vCPU {i} saved no state")),
            }
        }
        let facts = SnapshotFacts {
            mem_mib: self.facts.mem_mib,
            vcpus: self.facts.vcpus,
            pvm_compat: self.facts.pvm_compat,
            cmdline: self.facts.cmdline.clone(),
        };
        self.sources
            .capture(&facts, vcpu_states)
            .map_err(|e| e.to_string())
    }

    /// Answers a snapshot request: the state goes to the requester, and
    /// this loop waits (serving no device) until it has been written.
    fn snapshot(&mut self, dir: std::path::PathBuf, reply: &Sender<Reply>) {
        let captured = match self.capture() {
            Ok(c) => Box::new(c),
            Err(e) => {
                let _ = reply.send(Reply::Done(Err(e)));
                return;
            }
        };
        let (release, released) = mpsc::channel::<()>();
        let handed = reply.send(Reply::WriteSnapshot {
            captured,
            dir,
            release,
        });
        if handed.is_ok() {
            // Ends when the requester drops `release` (written, failed,
            // or gone).
            let _ = released.recv();
            tracing::info!(vm = %self.facts.name, "snapshot handed over");
        }
    }

    fn on_reset(&mut self) {
        let _ = self.reset_evt.read();
        let reason = match self.console.find_line(PANIC_MARKER) {
            Some(line) => ExitReason::GuestPanic { message: line },
            None => ExitReason::GuestShutdown,
        };
        tracing::info!(vm = %self.facts.name, %reason, "guest reset");
        self.state.report(reason);
    }

    fn on_requests(&mut self) {
        let _ = self.api_evt.read();
        while let Ok((req, reply)) = self.requests.try_recv() {
            let resp = match req {
                VmmRequest::Pause => self.pause(),
                VmmRequest::Resume => self.resume(),
                VmmRequest::Snapshot { dir } => {
                    self.snapshot(dir, &reply);
                    continue;
                }
                VmmRequest::Info => Ok(VmmResponse::Info(VmInfo {
                    name: self.facts.name.clone(),
                    vcpus: self.facts.vcpus,
                    mem_mib: self.facts.mem_mib,
                    pvm_compat: self.facts.pvm_compat,
                    cmdline: self.facts.cmdline.clone(),
                    uptime: self.started.elapsed(),
                    console_bytes: self.console.bytes(),
                    paused: self.state.pause_requested(),
                })),
                VmmRequest::Stop => {
                    tracing::info!(vm = %self.facts.name, "stop requested by the host");
                    self.state.report(ExitReason::HostRequest);
                    Ok(VmmResponse::Stopping)
                }
            };
            // The requester may have given up waiting; that is fine.
            let _ = reply.send(Reply::Done(resp));
        }
    }
}

impl MutEventSubscriber for Controller {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset_evt.as_raw_fd() {
            self.on_reset();
        } else if fd == self.api_evt.as_raw_fd() {
            self.on_requests();
        } else if fd == self.state.exit_evt.as_raw_fd() {
            let _ = self.state.exit_evt.read();
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [&self.reset_evt, &self.api_evt, &self.state.exit_evt] {
            if let Err(e) = ops.add(Events::new(fd, EventSet::IN)) {
                tracing::error!(vm = %self.facts.name, error = ?e, "cannot watch a VMM event");
                self.state.report(ExitReason::VcpuError {
                    vcpu: 0,
                    error: format!("event loop setup failed: {e:?}"),
                });
            }
        }
    }
}

/// Runs the event loop until an exit is reported, then stops the vCPUs and
/// publishes the outcome.
pub(crate) fn run(controller: Controller, devices: Vec<Subscriber>, vcpus: Vec<JoinHandle<()>>) {
    let state = controller.state.clone();
    let counters = controller.counters.clone();
    let console = controller.console.clone();
    let name = controller.facts.name.clone();
    let marker = controller.facts.ready_marker.clone();
    let started = controller.started;
    let mut controller = controller;
    controller.vcpu_threads = vcpus.iter().map(|t| t.as_pthread_t()).collect();
    let controller: Subscriber = Arc::new(Mutex::new(controller));
    match EventManager::<Subscriber>::new() {
        Ok(mut mgr) => {
            mgr.add_subscriber(controller.clone());
            for d in devices {
                mgr.add_subscriber(d);
            }
            while state.exit_reason().is_none() {
                if let Err(e) = mgr.run_with_timeout(1000) {
                    tracing::error!(vm = %name, error = ?e, "event loop failed");
                    state.report(ExitReason::VcpuError {
                        vcpu: 0,
                        error: format!("event loop failed: {e:?}"),
                    });
                }
            }
        }
        Err(e) => state.report(ExitReason::VcpuError {
            vcpu: 0,
            error: format!("cannot create the event loop: {e:?}"),
        }),
    }
    // Drop the request receiver now (the event manager, which held the other
    // reference, is gone): later requests fail fast with NotRunning.
    drop(controller);
    stop_vcpus(&state, vcpus, &name);
    // The final counts (pread64 of the KVM stats fds, which then close).
    let stats = counters.finish();
    tracing::debug!(vm = %name, loop_exits = stats.loop_exits(), kvm_exits = ?stats.kvm_vcpu_sum("exits"),
        vcpu_cpu_ns = ?stats.vcpu_cpu_ns(), "VM counters at its end");
    let reason = state.exit_reason().unwrap_or(ExitReason::HostRequest);
    let timeline = Timeline {
        started: Some(started),
        first_run: state.first_run(),
        first_console_byte: console.first_byte(),
        first_console_line: console.first_line(),
        ready: console.marker(&marker),
        stopped: Some(Instant::now()),
    };
    tracing::info!(vm = %name, %reason, "VM stopped");
    state.finish(VmOutcome {
        reason,
        timeline,
        console_tail: console.tail(20),
    });
}

/// Stops vCPU threads started before a later setup step failed.
pub(crate) fn stop_started(state: &RunState, vcpus: Vec<JoinHandle<()>>) {
    stop_vcpus(state, vcpus, "(starting)");
}

/// Sets the stop flag and kicks each vCPU thread until it has left KVM_RUN.
fn stop_vcpus(state: &RunState, vcpus: Vec<JoinHandle<()>>, name: &str) {
    state.stop.store(true, Ordering::Release);
    state.wake_parked();
    for (i, t) in vcpus.into_iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !t.is_finished() {
            // SAFETY: pthread_kill with a valid, not yet joined thread handle;
            // the signal's handler is installed and does nothing.
            unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
            if Instant::now() > deadline {
                tracing::error!(vm = %name, vcpu = i, "vCPU thread does not stop; leaving it");
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if t.is_finished() && t.join().is_err() {
            tracing::error!(vm = %name, vcpu = i, "vCPU thread panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_installation_fails_every_caller() {
        let cell = OnceLock::new();
        assert_eq!(once(&cell, || Err(libc::EINVAL)), Err(libc::EINVAL));
        // Later callers get the first outcome, not a silent Ok.
        assert_eq!(once(&cell, || Ok(())), Err(libc::EINVAL));
        assert_eq!(once(&cell, || Ok(())), Err(libc::EINVAL));
        let ok = OnceLock::new();
        assert_eq!(once(&ok, || Ok(())), Ok(()));
        assert_eq!(once(&ok, || Err(libc::EINVAL)), Ok(()));
    }

    #[test]
    fn a_replaced_handler_is_detected() {
        install_kick_handler().unwrap();
        install_kick_handler().unwrap();
        // Someone else in the process resets the signal (no VM runs in
        // this test binary, so nothing kicks meanwhile).
        // SAFETY: a query only; `saved` is a valid out pointer.
        let mut saved: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        unsafe { libc::sigaction(kick_signal(), std::ptr::null(), &mut saved) };
        // SAFETY: resets the disposition of a signal nothing sends here.
        unsafe { libc::signal(kick_signal(), libc::SIG_DFL) };
        let replaced = install_kick_handler();
        // SAFETY: puts back the handler saved above (valid sigaction).
        unsafe { libc::sigaction(kick_signal(), &saved, std::ptr::null_mut()) };
        assert_eq!(
            replaced,
            Err(KickHandlerError::Replaced {
                signal: kick_signal()
            })
        );
        install_kick_handler().unwrap();
    }
}
