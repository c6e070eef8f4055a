//! A task's processes as the Task service tracks them: the container's
//! own and its execs, each with its state (created → running ⇄ paused →
//! stopped), its guest pid, its exit and its stdio copy.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use super::super::io::{IoCopy, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

pub(super) struct ProcState {
    pub state: State,
    /// The guest's pid (0 until started). Never shown to containerd,
    /// which gets [`super::reported_pid`]: on the host this number names
    /// an unrelated process.
    pub pid: u32,
    pub exit: Option<Exit>,
}

/// One process: a container's own (`exec_id` None) or an exec.
pub(super) struct Process {
    pub container: String,
    pub exec_id: Option<String>,
    pub paths: StdioPaths,
    /// An exec's OCI `process` (JSON).
    pub spec: Vec<u8>,
    pub state: Mutex<ProcState>,
    cond: Condvar,
    pub io: Mutex<Option<IoCopy>>,
    /// Held through Start, Kill and Delete of this process, so that a
    /// Kill while Start is in flight signals the started process rather
    /// than finding it "created" and ending the task on the host alone.
    pub op: Mutex<()>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Process {
    pub fn new(container: &str, exec_id: Option<String>, paths: StdioPaths, spec: Vec<u8>) -> Self {
        Self {
            container: container.to_owned(),
            exec_id,
            paths,
            spec,
            state: Mutex::new(ProcState {
                state: State::Created,
                pid: 0,
                exit: None,
            }),
            cond: Condvar::new(),
            io: Mutex::new(None),
            op: Mutex::new(()),
        }
    }

    /// The name containerd gives it: the exec id, or the container id.
    pub fn name(&self) -> &str {
        self.exec_id.as_deref().unwrap_or(&self.container)
    }

    pub fn what(&self) -> String {
        match &self.exec_id {
            Some(e) => format!("{} exec {e}", self.container),
            None => self.container.clone(),
        }
    }

    pub fn snapshot(&self) -> (State, u32, Option<Exit>) {
        let s = lock(&self.state);
        (s.state, s.pid, s.exit)
    }

    pub fn is_stopped(&self) -> bool {
        lock(&self.state).state == State::Stopped
    }

    /// Marks it stopped with `status`; false when it already was.
    pub fn stop(&self, status: u32) -> bool {
        let mut s = lock(&self.state);
        if s.state == State::Stopped {
            return false;
        }
        s.state = State::Stopped;
        s.exit = Some(Exit {
            status,
            at: SystemTime::now(),
        });
        self.cond.notify_all();
        true
    }

    pub fn wait_stopped(&self) -> Exit {
        let mut s = lock(&self.state);
        loop {
            if let (State::Stopped, Some(e)) = (s.state, s.exit) {
                return e;
            }
            s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits up to `timeout` for it to stop; true when it has.
    pub fn wait_stopped_for(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut s = lock(&self.state);
        loop {
            if s.state == State::Stopped {
                return true;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .cond
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    pub fn stop_io(&self) {
        if let Some(mut io) = lock(&self.io).take() {
            io.stop();
        }
    }
}

pub(super) struct Container {
    pub id: String,
    /// The pod it belongs to (its spec's pod annotation, else its id): for
    /// log lines.
    pub pod: String,
    pub bundle: String,
    pub rootfs: Vec<husk_shim_protos::mount::Mount>,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    /// Its execs, then its own process.
    pub fn processes(&self) -> Vec<Arc<Process>> {
        let mut all: Vec<Arc<Process>> = lock(&self.execs).values().cloned().collect();
        all.push(self.init.clone());
        all
    }
}
