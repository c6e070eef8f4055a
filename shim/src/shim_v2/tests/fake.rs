//! A fake guest for the Task service's tests: containers and processes
//! in memory, whose processes the test ends (with a code, or by a
//! signal) and whose stdio streams are socket pairs the test holds the
//! guest's ends of.

use std::collections::{HashMap, VecDeque};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use husk_shim_protos::mount::Mount;

use crate::agent_client::{
    AgentClientError, ContainerEvent, ContainerStats, GuestStep, GuestSteps, ProcessExit,
    ProcessStreams, SignalTarget, Started, Stdio, TtySize,
};
use crate::shim_v2::error::TaskError;
use crate::shim_v2::guest::{ContainerApi, PodFactory, PodRequest, PodVm};
use crate::shim_v2::spec::Volume;

/// The longest any fake call blocks (a `wait_process` nobody ends): a
/// stuck test fails rather than hangs.
const FAKE_BOUND: Duration = Duration::from_secs(30);

/// A process: its container and exec id (None: the container's own).
pub type Key = (String, Option<String>);

pub fn key(cid: &str, exec: Option<&str>) -> Key {
    (cid.to_owned(), exec.map(str::to_owned))
}

/// The guest's ends of a process's stdio.
#[derive(Debug, Default)]
pub struct GuestEnds {
    /// What the process reads.
    pub stdin: Option<UnixStream>,
    /// What the process writes.
    pub stdout: Option<UnixStream>,
    pub stderr: Option<UnixStream>,
    pub tty: Option<UnixStream>,
}

#[derive(Debug, Clone)]
pub struct FakeProc {
    pub pid: u32,
    pub started: bool,
    pub exit: Option<ProcessExit>,
    pub stdio: Stdio,
    /// An exec's OCI process (JSON).
    pub spec: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Inner {
    /// Container id → its spec (config.json) and rootfs path.
    pub containers: HashMap<String, (Vec<u8>, String)>,
    pub procs: HashMap<Key, FakeProc>,
    /// Streams opened and not yet ended.
    pub streams: HashMap<Key, GuestEnds>,
    pub next_pid: u32,
    /// Why the VM ended, once it did.
    pub ended: Option<String>,
    pub powered_off: bool,
    /// Signals are taken and do nothing (a guest stuck in its kernel).
    pub deaf: bool,
    pub attached: Vec<String>,
    /// Container id → the volumes attached (until detached).
    pub volumes: HashMap<String, Vec<Volume>>,
    /// The next attach_volumes fails (INVALID_ARGUMENT).
    pub fail_volumes: bool,
    pub detached: Vec<String>,
    pub removed: Vec<String>,
    pub paused: Vec<String>,
    pub resumed: Vec<String>,
    pub signals: Vec<(String, String, i32)>,
    pub resized: Vec<(Key, TtySize)>,
    pub updates: Vec<(String, Vec<u8>)>,
    pub events: VecDeque<ContainerEvent>,
    /// The next create_container fails with this code.
    pub fail_create: Option<ttrpc::Code>,
    /// start_container holds (after `starting` is set) while this is set.
    pub hold_start: bool,
    pub starting: bool,
    /// pause_container: the container's process exits during the call
    /// with this code (and the call returns a little later).
    pub exit_on_pause: Option<i32>,
    /// A hostile agent: wait_event answers at once, every time.
    pub flood: Option<Flood>,
    /// wait_event calls so far.
    pub event_calls: usize,
    /// The next this many connects fail (a loaded host).
    pub fail_connects: usize,
    /// The next this many wait_process calls fail in transport.
    pub fail_waits: usize,
    /// create_container holds (after `creating_now` is set) while set.
    pub hold_create: bool,
    pub creating_now: bool,
    /// power_off takes this long.
    pub power_off_delay: Duration,
    /// Bumped when every connection breaks (calls in flight fail).
    pub cuts: u64,
}

/// What a flooding agent answers WaitEvent with.
#[derive(Debug, Clone)]
pub enum Flood {
    /// An OOM event for this container id.
    Oom(String),
    /// No event (the long poll cut short).
    Nothing,
}

/// One fake VM.
pub struct Fake {
    pub id: String,
    pub request: PodRequest,
    /// Whether every earlier VM had powered off when this one started.
    pub previous_off: bool,
    m: Mutex<Inner>,
    cv: Condvar,
}

fn rpc(method: &'static str, code: ttrpc::Code, message: impl Into<String>) -> AgentClientError {
    AgentClientError::Rpc {
        method,
        code,
        message: message.into(),
    }
}

impl Fake {
    fn new(id: String, request: PodRequest, previous_off: bool) -> Arc<Self> {
        Arc::new(Self {
            id,
            request,
            previous_off,
            m: Mutex::new(Inner {
                next_pid: 100,
                ..Default::default()
            }),
            cv: Condvar::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits on the fake's condition until `done` or `until`.
    fn wait_until<'a>(
        &self,
        mut g: MutexGuard<'a, Inner>,
        until: Instant,
        mut done: impl FnMut(&Inner) -> bool,
    ) -> MutexGuard<'a, Inner> {
        while !done(&g) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        g
    }

    /// The test takes the guest's ends of a process's stdio.
    pub fn take_streams(&self, cid: &str, exec: Option<&str>) -> GuestEnds {
        self.lock()
            .streams
            .remove(&key(cid, exec))
            .unwrap_or_else(|| panic!("no streams for {cid} {exec:?}"))
    }

    /// The process exits with `code` (its stdio ends, as when a process
    /// exits, except for the ends the test took).
    pub fn exit(&self, cid: &str, exec: Option<&str>, code: i32) {
        let mut g = self.lock();
        end_process(&mut g, &key(cid, exec), code, None);
        self.cv.notify_all();
    }

    /// Every connection to the agent breaks: calls in flight fail.
    pub fn cut_connections(&self) {
        self.lock().cuts += 1;
        self.cv.notify_all();
    }

    /// Lets a held create_container go on.
    pub fn release_create(&self) {
        self.lock().hold_create = false;
        self.cv.notify_all();
    }

    /// Waits until create_container is called (and held).
    pub fn await_creating(&self) {
        let g = self.lock();
        let g = self.wait_until(g, Instant::now() + Duration::from_secs(5), |g| {
            g.creating_now
        });
        assert!(g.creating_now, "create_container never called");
    }

    /// Lets a held start_container go on.
    pub fn release_start(&self) {
        self.lock().hold_start = false;
        self.cv.notify_all();
    }

    pub fn pid(&self, cid: &str, exec: Option<&str>) -> u32 {
        self.lock().procs[&key(cid, exec)].pid
    }

    /// The VM ends under its tasks.
    pub fn end_vm(&self, why: &str) {
        let mut g = self.lock();
        g.ended = Some(why.to_owned());
        g.streams.clear();
        self.cv.notify_all();
    }

    /// The guest reports an OOM kill in `cid`.
    pub fn oom(&self, cid: &str) {
        self.lock().events.push_back(ContainerEvent::Oom {
            container_id: cid.to_owned(),
        });
        self.cv.notify_all();
    }
}

fn end_process(g: &mut Inner, k: &Key, code: i32, signal: Option<i32>) -> bool {
    let Some(p) = g.procs.get_mut(k) else {
        return false;
    };
    if p.exit.is_some() {
        return false;
    }
    p.exit = Some(ProcessExit {
        exit_code: code,
        signal,
        exited_at_unix_ns: 0,
        oom_killed: false,
    });
    g.streams.remove(k);
    true
}

/// The agent's API on a fake VM (one per "connection").
pub struct FakeApi(pub Arc<Fake>);

impl FakeApi {
    fn alive(&self, method: &'static str) -> Result<MutexGuard<'_, Inner>, AgentClientError> {
        let g = self.0.lock();
        if g.ended.is_some() {
            return Err(rpc(method, ttrpc::Code::UNAVAILABLE, "the VM is gone"));
        }
        Ok(g)
    }
}

impl ContainerApi for FakeApi {
    fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &str,
        stdio: Stdio,
    ) -> Result<GuestSteps, AgentClientError> {
        let mut g = self.alive("CreateContainer")?;
        g.creating_now = true;
        self.0.cv.notify_all();
        let mut g = self
            .0
            .wait_until(g, Instant::now() + FAKE_BOUND, |g| !g.hold_create);
        g.creating_now = false;
        if let Some(code) = g.fail_create.take() {
            return Err(rpc("CreateContainer", code, "process.args: empty"));
        }
        if g.containers.contains_key(id) {
            return Err(rpc("CreateContainer", ttrpc::Code::ALREADY_EXISTS, id));
        }
        g.containers
            .insert(id.to_owned(), (spec_json.to_vec(), rootfs.to_owned()));
        g.procs.insert(
            key(id, None),
            FakeProc {
                pid: 0,
                started: false,
                exit: None,
                stdio,
                spec: Vec::new(),
            },
        );
        Ok(GuestSteps(vec![GuestStep {
            name: "validate".into(),
            wall_us: 1,
            ..GuestStep::default()
        }]))
    }

    fn start_container(&self, id: &str) -> Result<Started, AgentClientError> {
        let mut g = self.alive("StartContainer")?;
        g.starting = true;
        self.0.cv.notify_all();
        let mut g = self
            .0
            .wait_until(g, Instant::now() + FAKE_BOUND, |g| !g.hold_start);
        let pid = g.next_pid;
        let p = g
            .procs
            .get_mut(&key(id, None))
            .ok_or_else(|| rpc("StartContainer", ttrpc::Code::NOT_FOUND, id))?;
        if p.started {
            return Err(rpc("StartContainer", ttrpc::Code::FAILED_PRECONDITION, id));
        }
        p.started = true;
        p.pid = pid;
        g.next_pid += 1;
        Ok(Started {
            pid,
            steps: GuestSteps::default(),
        })
    }

    fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: Stdio,
    ) -> Result<u32, AgentClientError> {
        let mut g = self.alive("ExecProcess")?;
        match g.procs.get(&key(id, None)) {
            Some(p) if p.started && p.exit.is_none() => {}
            _ => return Err(rpc("ExecProcess", ttrpc::Code::FAILED_PRECONDITION, id)),
        }
        let k = key(id, Some(exec_id));
        if g.procs.contains_key(&k) {
            return Err(rpc("ExecProcess", ttrpc::Code::ALREADY_EXISTS, exec_id));
        }
        let pid = g.next_pid;
        g.next_pid += 1;
        g.procs.insert(
            k,
            FakeProc {
                pid,
                started: true,
                exit: None,
                stdio,
                spec: process_json.to_vec(),
            },
        );
        Ok(pid)
    }

    fn signal_process(
        &self,
        id: &str,
        target: SignalTarget<'_>,
        signal: i32,
    ) -> Result<(), AgentClientError> {
        let mut g = self.alive("SignalProcess")?;
        let keys: Vec<Key> = match target {
            SignalTarget::Init => vec![key(id, None)],
            SignalTarget::Exec(e) => vec![key(id, Some(e))],
            SignalTarget::All => g.procs.keys().filter(|k| k.0 == id).cloned().collect(),
        };
        g.signals
            .push((id.to_owned(), format!("{target:?}"), signal));
        let mut any = false;
        for k in &keys {
            if g.deaf {
                any |= g.procs.get(k).is_some_and(|p| p.exit.is_none());
            } else if signal == 0 {
                any |= g.procs.get(k).is_some_and(|p| p.exit.is_none());
            } else {
                any |= end_process(&mut g, k, 128 + signal, Some(signal));
            }
        }
        self.0.cv.notify_all();
        if any {
            Ok(())
        } else {
            Err(rpc(
                "SignalProcess",
                ttrpc::Code::NOT_FOUND,
                "no such process",
            ))
        }
    }

    fn wait_process(
        &self,
        id: &str,
        exec_id: Option<&str>,
        bound: Option<Duration>,
    ) -> Result<ProcessExit, AgentClientError> {
        let k = key(id, exec_id);
        let until = Instant::now() + bound.unwrap_or(FAKE_BOUND).min(FAKE_BOUND);
        let mut g = self.alive("WaitProcess")?;
        if g.fail_waits > 0 {
            g.fail_waits -= 1;
            return Err(rpc(
                "WaitProcess",
                ttrpc::Code::UNAVAILABLE,
                "connection reset",
            ));
        }
        if !g.procs.contains_key(&k) {
            return Err(rpc("WaitProcess", ttrpc::Code::NOT_FOUND, id));
        }
        let cuts = g.cuts;
        let g = self.0.wait_until(g, until, |g| {
            g.ended.is_some() || g.cuts != cuts || g.procs.get(&k).is_none_or(|p| p.exit.is_some())
        });
        if g.cuts != cuts {
            return Err(rpc(
                "WaitProcess",
                ttrpc::Code::UNAVAILABLE,
                "connection reset",
            ));
        }
        match g.procs.get(&k).and_then(|p| p.exit) {
            Some(exit) => Ok(exit),
            None if g.ended.is_some() => Err(rpc(
                "WaitProcess",
                ttrpc::Code::UNAVAILABLE,
                "the VM is gone",
            )),
            None => Err(AgentClientError::Timeout {
                method: "WaitProcess",
                timeout: FAKE_BOUND,
            }),
        }
    }

    fn resize_tty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        size: TtySize,
    ) -> Result<(), AgentClientError> {
        self.alive("ResizeTty")?
            .resized
            .push((key(id, exec_id), size));
        Ok(())
    }

    fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), AgentClientError> {
        let mut g = self.alive("CloseStdin")?;
        if let Some(s) = g.streams.get_mut(&key(id, exec_id)) {
            s.stdin = None;
        }
        Ok(())
    }

    fn list_pids(&self, id: &str) -> Result<Vec<u32>, AgentClientError> {
        let g = self.alive("ListPids")?;
        let mut pids: Vec<u32> = g
            .procs
            .iter()
            .filter(|(k, p)| k.0 == id && p.started && p.exit.is_none())
            .map(|(_, p)| p.pid)
            .collect();
        pids.sort_unstable();
        Ok(pids)
    }

    fn container_stats(&self, id: &str) -> Result<ContainerStats, AgentClientError> {
        let g = self.alive("ContainerStats")?;
        if !g.containers.contains_key(id) {
            return Err(rpc("ContainerStats", ttrpc::Code::NOT_FOUND, id));
        }
        Ok(ContainerStats {
            memory_usage_bytes: 4096,
            ..Default::default()
        })
    }

    fn pause_container(&self, id: &str) -> Result<(), AgentClientError> {
        let mut g = self.alive("PauseContainer")?;
        g.paused.push(id.to_owned());
        if let Some(code) = g.exit_on_pause.take() {
            end_process(&mut g, &key(id, None), code, None);
            self.0.cv.notify_all();
            drop(g);
            // The shim's waiter sees the exit before the call returns.
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    fn resume_container(&self, id: &str) -> Result<(), AgentClientError> {
        self.alive("ResumeContainer")?.resumed.push(id.to_owned());
        Ok(())
    }

    fn update_resources(&self, id: &str, resources_json: &[u8]) -> Result<(), AgentClientError> {
        self.alive("UpdateResources")?
            .updates
            .push((id.to_owned(), resources_json.to_vec()));
        Ok(())
    }

    fn remove_container(&self, id: &str) -> Result<(), AgentClientError> {
        let mut g = self.alive("RemoveContainer")?;
        if g.containers.remove(id).is_none() {
            return Err(rpc("RemoveContainer", ttrpc::Code::NOT_FOUND, id));
        }
        g.procs.retain(|k, _| k.0 != id);
        g.streams.retain(|k, _| k.0 != id);
        g.removed.push(id.to_owned());
        Ok(())
    }

    fn wait_event(&self, wait: Duration) -> Result<Option<ContainerEvent>, AgentClientError> {
        let mut g = self.alive("WaitEvent")?;
        g.event_calls += 1;
        match g.flood.clone() {
            Some(Flood::Oom(id)) => return Ok(Some(ContainerEvent::Oom { container_id: id })),
            Some(Flood::Nothing) => return Ok(None),
            None => {}
        }
        let until = Instant::now() + wait.min(FAKE_BOUND);
        let mut g = self
            .0
            .wait_until(g, until, |g| !g.events.is_empty() || g.ended.is_some());
        Ok(g.events.pop_front())
    }
}

/// The fake's VM.
pub struct FakeVm {
    fake: Arc<Fake>,
    api: FakeApi,
}

impl PodVm for FakeVm {
    fn id(&self) -> &str {
        &self.fake.id
    }

    fn api(&self) -> &dyn ContainerApi {
        &self.api
    }

    fn connect(&self) -> Result<Box<dyn ContainerApi>, TaskError> {
        let mut g = self.fake.lock();
        if let Some(why) = &g.ended {
            return Err(TaskError::Pod {
                pod: self.fake.id.clone(),
                message: why.clone(),
            });
        }
        if g.fail_connects > 0 {
            g.fail_connects -= 1;
            return Err(TaskError::Pod {
                pod: self.fake.id.clone(),
                message: "connecting to the agent: timed out".into(),
            });
        }
        drop(g);
        Ok(Box::new(FakeApi(self.fake.clone())))
    }

    fn attach_rootfs(
        &self,
        cid: &str,
        bundle: &Path,
        _mounts: &[Mount],
    ) -> Result<String, TaskError> {
        if !bundle.join("config.json").exists() {
            return Err(TaskError::invalid(cid, "no config.json"));
        }
        self.fake.lock().attached.push(cid.to_owned());
        Ok(format!("/run/husk/containers/{cid}/rootfs"))
    }

    fn attach_volumes(&self, cid: &str, volumes: &[Volume]) -> Result<(), TaskError> {
        let mut g = self.fake.lock();
        if std::mem::take(&mut g.fail_volumes) {
            return Err(TaskError::invalid(
                cid,
                "mounts[0] (/data): source /nope: missing",
            ));
        }
        if !volumes.is_empty() {
            g.volumes.insert(cid.to_owned(), volumes.to_vec());
        }
        Ok(())
    }

    fn detach_rootfs(&self, cid: &str) {
        let mut g = self.fake.lock();
        g.volumes.remove(cid);
        g.detached.push(cid.to_owned());
    }

    fn open_streams(
        &self,
        cid: &str,
        exec_id: Option<&str>,
        stdio: &Stdio,
    ) -> Result<ProcessStreams, TaskError> {
        let mut host = ProcessStreams::default();
        let mut guest = GuestEnds::default();
        let pair =
            || UnixStream::pair().map_err(|e| TaskError::internal(cid, format!("socketpair: {e}")));
        if stdio.terminal {
            let (h, g) = pair()?;
            host.tty = Some(h);
            guest.tty = Some(g);
        } else {
            if stdio.stdin {
                let (h, g) = pair()?;
                host.stdin = Some(h);
                guest.stdin = Some(g);
            }
            if stdio.stdout {
                let (h, g) = pair()?;
                host.stdout = Some(h);
                guest.stdout = Some(g);
            }
            if stdio.stderr {
                let (h, g) = pair()?;
                host.stderr = Some(h);
                guest.stderr = Some(g);
            }
        }
        self.fake.lock().streams.insert(key(cid, exec_id), guest);
        Ok(host)
    }

    fn wait_exit(&self, timeout: Duration) -> Option<String> {
        let until = Instant::now() + timeout.min(FAKE_BOUND);
        let g = self.fake.lock();
        self.fake
            .wait_until(g, until, |g| g.ended.is_some())
            .ended
            .clone()
    }

    fn power_off(&self, _deadline: Duration) {
        let delay = self.fake.lock().power_off_delay;
        std::thread::sleep(delay);
        let mut g = self.fake.lock();
        g.powered_off = true;
        g.ended.get_or_insert_with(|| "powered off".to_owned());
        g.streams.clear();
        self.fake.cv.notify_all();
    }
}

/// Starts fake VMs; the test reads them back.
#[derive(Default)]
pub struct FakeFactory {
    pub vms: Arc<Mutex<Vec<Arc<Fake>>>>,
    /// The next VM's first create_container fails with this code.
    pub fail_first_create: Arc<Mutex<Option<ttrpc::Code>>>,
}

impl PodFactory for FakeFactory {
    fn start(&self, request: &PodRequest) -> Result<Arc<dyn PodVm>, TaskError> {
        let mut vms = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        let previous_off = vms.iter().all(|v| v.lock().powered_off);
        let fake = Fake::new(format!("pod{}", vms.len()), request.clone(), previous_off);
        fake.lock().fail_create = self
            .fail_first_create
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        vms.push(fake.clone());
        Ok(Arc::new(FakeVm {
            api: FakeApi(fake.clone()),
            fake,
        }))
    }
}
