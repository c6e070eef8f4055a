//! The request/response handle: the only way the host side (the `husk` CLI
//! now, the containerd shim later) talks to a running VMM.
//!
//! Requests travel over a channel to the VMM's event loop thread, which is
//! woken by an eventfd; each carries its own reply channel. Waiting for the
//! VM to end does not need the event loop.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_devices::legacy::ConsoleWatch;
use vmm_sys_util::eventfd::EventFd;

use crate::runstate::{ExitNotifier, RunState, VmOutcome};
use crate::snapshot_sources::Captured;
use crate::stats::{StatsReader, VmCounters, VmStats};

/// What the host can ask of a running VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmRequest {
    /// Describe the VM.
    Info,
    /// Stop the VM (the outcome is `ExitReason::HostRequest`).
    Stop,
    /// Park the vCPUs (the devices keep their state; guest time stops).
    Pause,
    /// Let paused vCPUs run again.
    Resume,
    /// Write a full snapshot of the paused VM into this directory.
    Snapshot { dir: std::path::PathBuf },
}

/// Replies to [`VmmRequest`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmResponse {
    Info(VmInfo),
    Stopping,
    Paused,
    Resumed,
    /// The snapshot is on disk; `memory_bytes` of guest RAM were written.
    Snapshot {
        memory_bytes: u64,
    },
}

/// A running VM's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmInfo {
    pub name: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub pvm_compat: bool,
    pub cmdline: String,
    pub uptime: Duration,
    pub console_bytes: u64,
    pub paused: bool,
}

/// Errors talking to the VMM.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("VM {vm} is not running (it stopped: {reason})")]
    NotRunning { vm: String, reason: String },
    #[error("VM {vm}: {request:?} failed: {reason}")]
    Failed {
        vm: String,
        request: VmmRequest,
        reason: String,
    },
    #[error("VM {vm} did not answer {request:?} within {timeout:?}")]
    Timeout {
        vm: String,
        request: VmmRequest,
        timeout: Duration,
    },
}

/// What the event loop answers.
pub(crate) enum Reply {
    Done(Result<VmmResponse, String>),
    /// A snapshot taken on the event loop for the requester's thread to
    /// write into `dir` (the event loop may not write outside the VM's
    /// shares); the event loop serves nothing until `release` is dropped,
    /// so the devices do not touch guest memory meanwhile.
    WriteSnapshot {
        captured: Box<Captured>,
        dir: PathBuf,
        release: Sender<()>,
    },
}

pub(crate) type Envelope = (VmmRequest, Sender<Reply>);

/// How long a request may wait for the event loop (a snapshot writes the
/// guest's memory).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Handle to a VMM running in this process.
pub struct VmmHandle {
    pub(crate) name: String,
    pub(crate) requests: Sender<Envelope>,
    pub(crate) kick: EventFd,
    pub(crate) state: Arc<RunState>,
    pub(crate) console: Arc<ConsoleWatch>,
    pub(crate) started: Instant,
    pub(crate) counters: Arc<VmCounters>,
    pub(crate) thread: Option<JoinHandle<()>>,
}

impl VmmHandle {
    /// The VM's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// When `start` was called.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The console observer (markers, last lines).
    pub fn console(&self) -> &Arc<ConsoleWatch> {
        &self.console
    }

    /// The VM's counters now (see [`crate::stats`]); once it has stopped,
    /// its final counts. Read on the calling thread: no request goes to
    /// the VMM thread, which may be busy (a snapshot) or gone.
    pub fn stats(&self) -> VmStats {
        self.counters.stats()
    }

    /// A reader of the counters for another thread (a monitor endpoint);
    /// it outlives the handle and keeps none of the VM's resources.
    pub fn stats_reader(&self) -> StatsReader {
        StatsReader(self.counters.clone())
    }

    fn not_running(&self) -> ApiError {
        ApiError::NotRunning {
            vm: self.name.clone(),
            reason: self
                .state
                .exit_reason()
                .map(|r| r.to_string())
                .unwrap_or_else(|| "unknown".into()),
        }
    }

    /// Sends `request` and waits for the reply. A snapshot's files are
    /// written on the calling thread.
    pub fn request(&self, request: VmmRequest) -> Result<VmmResponse, ApiError> {
        let (tx, rx): (Sender<Reply>, Receiver<Reply>) = mpsc::channel();
        if self.requests.send((request.clone(), tx)).is_err() || self.kick.write(1).is_err() {
            return Err(self.not_running());
        }
        let failed = |reason| ApiError::Failed {
            vm: self.name.clone(),
            request: request.clone(),
            reason,
        };
        match rx.recv_timeout(REQUEST_TIMEOUT) {
            Ok(Reply::Done(Ok(r))) => Ok(r),
            Ok(Reply::Done(Err(reason))) => Err(failed(reason)),
            Ok(Reply::WriteSnapshot {
                captured,
                dir,
                release,
            }) => {
                let written = captured.write(&dir);
                drop(release);
                let memory_bytes = written.map_err(|e| failed(e.to_string()))?;
                tracing::info!(vm = %self.name, dir = %dir.display(), memory_bytes, "snapshot written");
                Ok(VmmResponse::Snapshot { memory_bytes })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(self.not_running()),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ApiError::Timeout {
                vm: self.name.clone(),
                request,
                timeout: REQUEST_TIMEOUT,
            }),
        }
    }

    /// Asks the VM to stop; returns once the request is accepted (use
    /// [`wait`](Self::wait) for the outcome). Stopping a stopped VM is fine.
    pub fn stop(&self) -> Result<(), ApiError> {
        match self.request(VmmRequest::Stop) {
            Ok(_) => Ok(()),
            Err(ApiError::NotRunning { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until the VM has stopped (all its threads are done), or until
    /// `timeout` passes (None then).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<VmOutcome> {
        self.state.wait(timeout)
    }

    /// The outcome, if the VM has stopped.
    pub fn outcome(&self) -> Option<VmOutcome> {
        self.state.outcome()
    }

    /// A notifier that becomes ready when the VM has ended, however it
    /// ended (guest power-off, crash, host stop): for owners that must be
    /// told rather than ask.
    pub fn exit_notifier(&self) -> std::io::Result<ExitNotifier> {
        self.state.exit_notifier()
    }
}

/// How long dropping a handle waits for its VM to stop.
pub const DROP_STOP_TIMEOUT: Duration = Duration::from_secs(30);

impl Drop for VmmHandle {
    fn drop(&mut self) {
        // Dropping the handle stops the VM: nothing may outlive its owner.
        if self.state.outcome().is_none() {
            let _ = self.stop();
        }
        if self.state.wait(Some(DROP_STOP_TIMEOUT)).is_none() {
            // A VMM that does not stop must not hang its owner (the shim
            // serves other pods): leave its threads behind, loudly.
            tracing::error!(vm = %self.name, "VM did not stop within {DROP_STOP_TIMEOUT:?}; abandoning its threads");
            return;
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
