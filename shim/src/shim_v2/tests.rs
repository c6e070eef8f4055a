//! The Task service ([`Tasks`], and [`TaskService`] over ttrpc) against a
//! fake guest ([`fake`]): the state machine, the error codes containerd
//! reads, the events and their fields, exec ids, stdin, the VM ending
//! under its tasks, and an exit never reported before its output.
//!
//! Stdio goes through real FIFOs, opened the way containerd opens them
//! (the output FIFOs' read ends O_NONBLOCK before Create). Every wait is
//! bounded: a test that would hang fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod boundary;
mod fake;

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use husk_shim_protos::shim::{
    CloseIORequest, ConnectRequest, CreateTaskRequest, DeleteRequest, DeleteResponse,
    ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, ResumeRequest, StartRequest,
    StateRequest, StateResponse, StatsRequest, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use husk_shim_protos::task::Status;
use husk_shim_protos::task_events::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use protobuf::well_known_types::any::Any;
use protobuf::{MessageField, MessageFull};
use ttrpc::Code;

use self::fake::{Fake, FakeFactory};
use super::error::TaskError;
use super::events::{topic, Recorder};
use super::tasks::{Tasks, VM_GONE_EXIT};

/// The longest a test waits for anything.
const BOUND: Duration = Duration::from_secs(5);

const CONFIG: &str = r#"{
    "ociVersion": "1.0.2",
    "process": {"args": ["/bin/sh"], "cwd": "/"},
    "root": {"path": "rootfs"},
    "annotations": {"io.husk.config.vcpus": "2"},
    "linux": {"resources": {"memory": {"limit": 268435456}}}
}"#;

/// A Tasks over the fake, its recorded events, and a temp dir.
struct H {
    tasks: Arc<Tasks>,
    rec: Arc<Recorder>,
    vms: Arc<Mutex<Vec<Arc<Fake>>>>,
    fail_first_create: Arc<Mutex<Option<Code>>>,
    dir: PathBuf,
}

/// containerd's side of one process's stdio.
#[derive(Debug)]
struct Io {
    stdin: String,
    stdout: String,
    stderr: String,
    /// The read ends of stdout and stderr (O_NONBLOCK).
    out: File,
    err: File,
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path for the call's duration.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "{path:?}");
}

fn open_nonblock_read(path: &str) -> File {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap()
}

/// What the FIFO holds now (it never reads EOF: the shim holds it open).
fn drain(f: &mut File) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return got,
            Err(e) => panic!("reading a FIFO: {e}"),
        }
    }
}

/// Reads `f` until it holds `want` bytes, at most [`BOUND`].
fn read_exactly(f: &mut File, want: usize) -> Vec<u8> {
    let end = Instant::now() + BOUND;
    let mut got = Vec::new();
    while got.len() < want {
        got.extend(drain(f));
        assert!(
            Instant::now() < end,
            "{} of {want} bytes within {BOUND:?}",
            got.len()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    got
}

/// `Any` → `M`, checking that the Any names `M` the way containerd does.
fn decode<M: MessageFull>(any: &Any) -> M {
    assert_eq!(any.type_url, husk_shim_protos::type_url::<M>());
    M::parse_from_bytes(&any.value).unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, TaskError>) -> Code {
    r.expect_err("expected an error").code()
}

fn req_id<T: Default>(f: impl FnOnce(&mut T)) -> T {
    let mut t = T::default();
    f(&mut t);
    t
}

impl H {
    fn new(name: &str) -> Self {
        Self::with_kill_confirm(name, super::tasks::KILL_CONFIRM)
    }

    fn with_kill_confirm(name: &str, kill_confirm: Duration) -> Self {
        Self::with_graces(name, kill_confirm, super::tasks::AGENT_LOST)
    }

    fn with_graces(name: &str, kill_confirm: Duration, agent_lost: Duration) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "husk-shimv2-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let factory = FakeFactory::default();
        let vms = factory.vms.clone();
        let fail_first_create = factory.fail_first_create.clone();
        let rec = Arc::new(Recorder::default());
        let tasks = Tasks::with_graces(Box::new(factory), rec.clone(), kill_confirm, agent_lost);
        Self {
            tasks,
            rec,
            vms,
            fail_first_create,
            dir,
        }
    }

    /// The VM started last.
    fn vm(&self) -> Arc<Fake> {
        self.vms
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no VM started")
    }

    fn vm_count(&self) -> usize {
        self.vms.lock().unwrap().len()
    }

    /// A bundle with `config` as its config.json (None: none).
    fn bundle(&self, id: &str, config: Option<&str>) -> String {
        let b = self.dir.join(format!("bundle-{id}"));
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        if let Some(c) = config {
            std::fs::write(b.join("config.json"), c).unwrap();
        }
        b.to_str().unwrap().to_owned()
    }

    /// FIFOs for a process (`stdin`: one for stdin too), read ends open.
    fn fifos(&self, name: &str, stdin: bool) -> Io {
        let path = |s: &str| self.dir.join(format!("{name}-{s}"));
        for s in ["out", "err"] {
            mkfifo(&path(s));
        }
        let stdin = if stdin {
            mkfifo(&path("in"));
            path("in").to_str().unwrap().to_owned()
        } else {
            String::new()
        };
        let stdout = path("out").to_str().unwrap().to_owned();
        let stderr = path("err").to_str().unwrap().to_owned();
        Io {
            out: open_nonblock_read(&stdout),
            err: open_nonblock_read(&stderr),
            stdin,
            stdout,
            stderr,
        }
    }

    fn create_req(&self, id: &str, io: &Io) -> CreateTaskRequest {
        CreateTaskRequest {
            id: id.to_owned(),
            bundle: self.bundle(id, Some(CONFIG)),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            ..Default::default()
        }
    }

    /// Creates `id` with FIFOs; returns them.
    fn create(&self, id: &str) -> Io {
        let io = self.fifos(id, false);
        self.tasks.create(&self.create_req(id, &io)).unwrap();
        io
    }

    fn start(&self, id: &str, exec: &str) -> u32 {
        self.tasks
            .start(&StartRequest {
                id: id.into(),
                exec_id: exec.into(),
                ..Default::default()
            })
            .unwrap()
            .pid
    }

    fn state(&self, id: &str, exec: &str) -> Result<StateResponse, TaskError> {
        self.tasks.state(&StateRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        })
    }

    fn status(&self, id: &str, exec: &str) -> Status {
        self.state(id, exec).unwrap().status.enum_value().unwrap()
    }

    fn wait_async(&self, id: &str, exec: &str) -> mpsc::Receiver<Result<WaitResponse, TaskError>> {
        let (tx, rx) = mpsc::channel();
        let tasks = self.tasks.clone();
        let req = WaitRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        std::thread::spawn(move || {
            let _ = tx.send(tasks.wait(&req));
        });
        rx
    }

    /// Wait, bounded; the exit status.
    fn wait(&self, id: &str, exec: &str) -> u32 {
        self.wait_async(id, exec)
            .recv_timeout(BOUND)
            .unwrap_or_else(|_| panic!("Wait {id} {exec:?} did not return"))
            .unwrap()
            .exit_status
    }

    fn kill(&self, id: &str, exec: &str, signal: u32) -> Result<(), TaskError> {
        self.tasks.kill(&KillRequest {
            id: id.into(),
            exec_id: exec.into(),
            signal,
            ..Default::default()
        })
    }

    fn delete(&self, id: &str, exec: &str) -> Result<DeleteResponse, TaskError> {
        self.tasks.delete(&DeleteRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        })
    }

    fn exec_req(&self, id: &str, exec: &str, io: &Io) -> ExecProcessRequest {
        ExecProcessRequest {
            id: id.into(),
            exec_id: exec.into(),
            stdin: io.stdin.clone(),
            stdout: io.stdout.clone(),
            stderr: io.stderr.clone(),
            spec: MessageField::some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: format!(r#"{{"args":["/bin/{exec}"],"cwd":"/"}}"#).into_bytes(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn exec(&self, id: &str, exec: &str) -> Io {
        let io = self.fifos(&format!("{id}-{exec}"), false);
        self.tasks.exec(&self.exec_req(id, exec, &io)).unwrap();
        io
    }

    fn events(&self) -> Vec<(&'static str, Any)> {
        self.rec.events.lock().unwrap().clone()
    }

    fn topics(&self) -> Vec<&'static str> {
        self.events().into_iter().map(|(t, _)| t).collect()
    }

    /// The events on `topic`, decoded.
    fn of<M: MessageFull>(&self, topic: &str) -> Vec<M> {
        self.events()
            .iter()
            .filter(|(t, _)| *t == topic)
            .map(|(_, a)| decode::<M>(a))
            .collect()
    }

    /// Waits until `n` events on `topic` were published.
    fn await_events(&self, topic: &str, n: usize) {
        let end = Instant::now() + BOUND;
        while self.topics().iter().filter(|t| **t == topic).count() < n {
            assert!(
                Instant::now() < end,
                "{n} {topic} within {BOUND:?}; got {:?}",
                self.topics()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for H {
    fn drop(&mut self) {
        self.tasks.teardown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// create → CREATED → start → RUNNING → exit → Wait → STOPPED → delete,
/// with the events in order and their fields, the output on the FIFO,
/// and the VM powered off after the last delete.
#[test]
fn lifecycle() {
    let h = H::new("life");
    let mut io = h.create("c1");
    assert_eq!(h.vm_count(), 1);
    // The VM is sized from the first spec.
    let vm = h.vm();
    assert_eq!(vm.request.memory_limit, Some(268_435_456));
    assert_eq!(vm.request.annotations["io.husk.config.vcpus"], "2");
    assert_eq!(vm.lock().attached, ["c1"]);
    assert_eq!(
        vm.lock().procs[&fake::key("c1", None)].stdio,
        crate::agent_client::Stdio::pipes(false),
        "the streams containerd gave FIFOs for"
    );
    assert_eq!(
        vm.lock().containers["c1"].1,
        "/run/husk/containers/c1/rootfs"
    );

    let s = h.state("c1", "").unwrap();
    assert_eq!(s.status.enum_value(), Ok(Status::CREATED));
    assert_eq!((s.id.as_str(), s.pid), ("c1", 0));
    assert_eq!(s.bundle, h.bundle("c1", None));
    assert_eq!(s.stdout, io.stdout);

    let pid = h.start("c1", "");
    // containerd gets the shim's pid: the guest's names another process
    // on the host.
    assert_eq!(pid, std::process::id());
    let guest_pid = vm.pid("c1", None);
    assert_ne!(guest_pid, pid);
    let s = h.state("c1", "").unwrap();
    assert_eq!(s.status.enum_value(), Ok(Status::RUNNING));
    assert_eq!(s.pid, pid);
    assert_eq!(
        h.tasks
            .pids(&req_id(|r: &mut PidsRequest| r.id = "c1".into()))
            .unwrap()
            .processes
            .iter()
            .map(|p| p.pid)
            .collect::<Vec<_>>(),
        [guest_pid],
        "Pids lists what runs in the guest"
    );
    assert_eq!(
        h.tasks
            .connect(&req_id(|r: &mut ConnectRequest| r.id = "c1".into()))
            .unwrap()
            .task_pid,
        pid
    );

    // Wait blocks while it runs.
    let waiting = h.wait_async("c1", "");
    assert!(waiting.recv_timeout(Duration::from_millis(100)).is_err());

    let mut ends = vm.take_streams("c1", None);
    ends.stdout.as_mut().unwrap().write_all(b"hello\n").unwrap();
    ends.stderr.as_mut().unwrap().write_all(b"oops\n").unwrap();
    drop(ends);
    vm.exit("c1", None, 3);
    let w = waiting.recv_timeout(BOUND).expect("Wait returned").unwrap();
    assert_eq!(w.exit_status, 3);
    assert!(w.exited_at.is_some());
    assert_eq!(read_exactly(&mut io.out, 6), b"hello\n");
    assert_eq!(read_exactly(&mut io.err, 5), b"oops\n");

    let s = h.state("c1", "").unwrap();
    assert_eq!(s.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!((s.exit_status, s.pid), (3, pid));
    h.await_events(topic::EXIT, 1);

    let d = h.delete("c1", "").unwrap();
    assert_eq!((d.exit_status, d.pid), (3, pid));
    assert!(h.tasks.is_empty());
    assert_eq!(code(h.state("c1", "")), Code::NOT_FOUND);

    assert_eq!(
        h.topics(),
        [topic::CREATE, topic::START, topic::EXIT, topic::DELETE]
    );
    let ev = h.events();
    let create: TaskCreate = decode(&ev[0].1);
    assert_eq!(ev[0].1.type_url, "containerd.events.TaskCreate");
    assert_eq!(create.container_id, "c1");
    assert_eq!(create.bundle, h.bundle("c1", None));
    assert_eq!(create.io.stdout, io.stdout);
    assert_eq!(create.io.stderr, io.stderr);
    let start: TaskStart = decode(&ev[1].1);
    assert_eq!(ev[1].1.type_url, "containerd.events.TaskStart");
    assert_eq!((start.container_id.as_str(), start.pid), ("c1", pid));
    let exit: TaskExit = decode(&ev[2].1);
    assert_eq!(ev[2].1.type_url, "containerd.events.TaskExit");
    assert_eq!(exit.container_id, "c1");
    assert_eq!(exit.id, "c1");
    assert_eq!((exit.pid, exit.exit_status), (pid, 3));
    assert!(exit.exited_at.is_some());
    let delete: TaskDelete = decode(&ev[3].1);
    assert_eq!(ev[3].1.type_url, "containerd.events.TaskDelete");
    assert_eq!(delete.container_id, "c1");
    assert_eq!((delete.pid, delete.exit_status), (pid, 3));

    // The last delete powers the VM off, and the guest forgot it all.
    h.tasks.join_power_off();
    let g = vm.lock();
    assert!(g.powered_off);
    assert_eq!(g.removed, ["c1"]);
    assert_eq!(g.detached, ["c1"]);
    assert!(g.containers.is_empty());
}

#[test]
fn pause_and_resume() {
    let h = H::new("pause");
    h.create("c1");
    let pause = || {
        h.tasks
            .pause(&req_id(|r: &mut PauseRequest| r.id = "c1".into()))
    };
    let resume = || {
        h.tasks
            .resume(&req_id(|r: &mut ResumeRequest| r.id = "c1".into()))
    };
    // Not running yet.
    assert_eq!(code(pause()), Code::FAILED_PRECONDITION);
    h.start("c1", "");
    assert_eq!(code(resume()), Code::FAILED_PRECONDITION);
    pause().unwrap();
    assert_eq!(h.status("c1", ""), Status::PAUSED);
    assert_eq!(code(pause()), Code::FAILED_PRECONDITION);
    // A paused task is still running: it cannot be deleted.
    assert_eq!(code(h.delete("c1", "")), Code::FAILED_PRECONDITION);
    resume().unwrap();
    assert_eq!(h.status("c1", ""), Status::RUNNING);
    assert_eq!(code(resume()), Code::FAILED_PRECONDITION);
    let vm = h.vm();
    assert_eq!(vm.lock().paused, ["c1"]);
    assert_eq!(vm.lock().resumed, ["c1"]);
    assert_eq!(
        h.topics(),
        [topic::CREATE, topic::START, topic::PAUSED, topic::RESUMED]
    );
    let paused: Vec<TaskPaused> = h.of(topic::PAUSED);
    assert_eq!(paused[0].container_id, "c1");
    let resumed: Vec<TaskResumed> = h.of(topic::RESUMED);
    assert_eq!(resumed[0].container_id, "c1");
}

/// The process exits while Pause is in flight: it stays STOPPED (a
/// PAUSED left over would refuse its Delete for good).
#[test]
fn exit_during_pause() {
    let h = H::new("pauseexit");
    h.create("c1");
    h.start("c1", "");
    h.vm().lock().exit_on_pause = Some(7);
    let waiting = h.wait_async("c1", "");
    h.tasks
        .pause(&req_id(|r: &mut PauseRequest| r.id = "c1".into()))
        .unwrap();
    let w = waiting.recv_timeout(BOUND).expect("Wait returned").unwrap();
    assert_eq!(w.exit_status, 7);
    assert_eq!(h.status("c1", ""), Status::STOPPED);
    assert_eq!(h.delete("c1", "").unwrap().exit_status, 7);
}

/// A Kill that comes while Start is in flight signals the started
/// process in the guest (it does not end the task on the host alone, to
/// have Start mark it running again), and the task exits once.
#[test]
fn kill_during_start() {
    let h = H::new("killstart");
    h.create("c1");
    let vm = h.vm();
    vm.lock().hold_start = true;
    let (tasks, (stx, srx)) = (h.tasks.clone(), mpsc::channel());
    std::thread::spawn(move || {
        let _ = stx.send(tasks.start(&req_id(|r: &mut StartRequest| r.id = "c1".into())));
    });
    let end = Instant::now() + BOUND;
    while !vm.lock().starting {
        assert!(Instant::now() < end, "start_container never called");
        std::thread::sleep(Duration::from_millis(2));
    }
    let (tasks, (ktx, krx)) = (h.tasks.clone(), mpsc::channel());
    std::thread::spawn(move || {
        let _ = ktx.send(tasks.kill(&KillRequest {
            id: "c1".into(),
            signal: 9,
            ..Default::default()
        }));
    });
    std::thread::sleep(Duration::from_millis(50));
    vm.release_start();
    let pid = srx
        .recv_timeout(BOUND)
        .expect("Start returned")
        .unwrap()
        .pid;
    krx.recv_timeout(BOUND).expect("Kill returned").unwrap();
    assert_eq!(
        vm.lock().signals,
        [("c1".to_owned(), "Init".to_owned(), 9)],
        "the guest's process got the signal"
    );
    assert_eq!(h.wait("c1", ""), 137);
    h.await_events(topic::EXIT, 1);
    std::thread::sleep(Duration::from_millis(100));
    let exits: Vec<TaskExit> = h.of(topic::EXIT);
    assert_eq!(exits.len(), 1, "one TaskExit");
    assert_eq!((exits[0].pid, exits[0].exit_status), (pid, 137));
    assert_eq!(h.status("c1", ""), Status::STOPPED);
}

/// A running process is signalled in the guest; it ends with 128+sig; a
/// stopped one is NOT_FOUND; a running one cannot be deleted.
#[test]
fn kill_running() {
    let h = H::new("kill");
    h.create("c1");
    let pid = h.start("c1", "");
    assert_eq!(code(h.delete("c1", "")), Code::FAILED_PRECONDITION);
    assert_eq!(code(h.kill("c1", "", 999)), Code::INVALID_ARGUMENT);
    // Signal 0 probes and ends nothing.
    h.kill("c1", "", 0).unwrap();
    assert_eq!(h.status("c1", ""), Status::RUNNING);
    h.kill("c1", "", 15).unwrap();
    assert_eq!(h.wait("c1", ""), 143);
    assert_eq!(
        h.vm().lock().signals,
        [
            ("c1".to_owned(), "Init".to_owned(), 0),
            ("c1".to_owned(), "Init".to_owned(), 15)
        ]
    );
    assert_eq!(h.status("c1", ""), Status::STOPPED);
    h.await_events(topic::EXIT, 1);
    let exit = &h.of::<TaskExit>(topic::EXIT)[0];
    assert_eq!((exit.pid, exit.exit_status), (pid, 143));
    assert_eq!(code(h.kill("c1", "", 9)), Code::NOT_FOUND);
    assert_eq!(h.delete("c1", "").unwrap().exit_status, 143);
}

/// A guest that takes a SIGKILL and never ends the container (stuck in
/// its kernel): after the grace the pod's VM is powered off and every
/// process of the pod is reported ended, so StopContainer returns. A
/// SIGTERM alone never does that.
#[test]
fn sigkill_the_guest_cannot_carry_out_stops_the_vm() {
    let h = H::with_kill_confirm("deaf", Duration::from_millis(300));
    h.create("c1");
    h.start("c1", "");
    h.create("c2");
    h.start("c2", "");
    h.vm().lock().deaf = true;
    h.kill("c1", "", 15).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(!h.vm().lock().powered_off);
    assert_eq!(h.status("c1", ""), Status::RUNNING);
    h.kill("c1", "", 9).unwrap();
    assert_eq!(h.wait("c1", ""), super::tasks::VM_GONE_EXIT);
    assert_eq!(h.wait("c2", ""), super::tasks::VM_GONE_EXIT);
    assert!(h.vm().lock().powered_off);
}

/// A task created and never started: a kill ends it (nothing runs to
/// signal), Wait returns, it cannot start any more, delete reports it.
#[test]
fn kill_created_never_started() {
    let h = H::new("killc");
    h.create("c1");
    let waiting = h.wait_async("c1", "");
    h.kill("c1", "", 9).unwrap();
    let w = waiting.recv_timeout(BOUND).expect("Wait returned").unwrap();
    assert_eq!(w.exit_status, 137);
    assert_eq!(h.status("c1", ""), Status::STOPPED);
    assert!(h.vm().lock().signals.is_empty());
    assert_eq!(
        code(
            h.tasks
                .start(&req_id(|r: &mut StartRequest| r.id = "c1".into()))
        ),
        Code::FAILED_PRECONDITION
    );
    let exit = &h.of::<TaskExit>(topic::EXIT)[0];
    assert_eq!((exit.id.as_str(), exit.exit_status), ("c1", 137));
    assert_eq!(h.delete("c1", "").unwrap().exit_status, 137);
    assert!(h.tasks.is_empty());
    assert_eq!(
        h.topics(),
        [topic::CREATE, topic::EXIT, topic::DELETE],
        "no TaskStart for a task never started"
    );
}

/// The codes containerd reads for requests that cannot be served.
#[test]
fn error_codes() {
    let h = H::new("codes");
    let io = h.fifos("c1", false);

    // Refused before any VM starts.
    let mut bad = h.create_req("c1", &io);
    bad.id = "a/b".into();
    assert_eq!(code(h.tasks.create(&bad)), Code::INVALID_ARGUMENT);
    bad.id = String::new();
    assert_eq!(code(h.tasks.create(&bad)), Code::INVALID_ARGUMENT);
    let mut missing = h.create_req("c1", &io);
    missing.bundle = h.bundle("nocfg", None);
    assert_eq!(code(h.tasks.create(&missing)), Code::INVALID_ARGUMENT);
    let mut garbage = h.create_req("c1", &io);
    garbage.bundle = h.bundle("garbage", Some("{not json"));
    assert_eq!(code(h.tasks.create(&garbage)), Code::INVALID_ARGUMENT);
    let mut uri = h.create_req("c1", &io);
    uri.stdout = "binary:///usr/bin/logger".into();
    assert_eq!(code(h.tasks.create(&uri)), Code::INVALID_ARGUMENT);
    let mut checkpoint = h.create_req("c1", &io);
    checkpoint.checkpoint = "/some/image".into();
    assert_eq!(code(h.tasks.create(&checkpoint)), Code::UNIMPLEMENTED);
    assert_eq!(h.vm_count(), 0, "no VM for a request refused");
    assert!(h.topics().is_empty());

    // Unknown task.
    assert_eq!(code(h.state("nope", "")), Code::NOT_FOUND);
    assert_eq!(code(h.kill("nope", "", 9)), Code::NOT_FOUND);
    assert_eq!(code(h.delete("nope", "")), Code::NOT_FOUND);
    let rx = h.wait_async("nope", "");
    assert_eq!(
        rx.recv_timeout(BOUND).unwrap().unwrap_err().code(),
        Code::NOT_FOUND
    );
    assert_eq!(
        code(
            h.tasks
                .start(&req_id(|r: &mut StartRequest| r.id = "nope".into()))
        ),
        Code::NOT_FOUND
    );
    assert_eq!(
        code(h.tasks.exec(&h.exec_req("nope", "e1", &io))),
        Code::NOT_FOUND
    );

    h.tasks.create(&h.create_req("c1", &io)).unwrap();
    assert_eq!(
        code(h.tasks.create(&h.create_req("c1", &io))),
        Code::ALREADY_EXISTS
    );
    // Exec into a container not running.
    assert_eq!(
        code(h.tasks.exec(&h.exec_req("c1", "e1", &io))),
        Code::FAILED_PRECONDITION
    );
    h.start("c1", "");
    // A second start.
    assert_eq!(
        code(
            h.tasks
                .start(&req_id(|r: &mut StartRequest| r.id = "c1".into()))
        ),
        Code::FAILED_PRECONDITION
    );

    // Unknown exec.
    assert_eq!(code(h.state("c1", "nope")), Code::NOT_FOUND);
    assert_eq!(code(h.kill("c1", "nope", 9)), Code::NOT_FOUND);
    assert_eq!(code(h.delete("c1", "nope")), Code::NOT_FOUND);
    assert_eq!(
        code(h.tasks.start(&StartRequest {
            id: "c1".into(),
            exec_id: "nope".into(),
            ..Default::default()
        })),
        Code::NOT_FOUND
    );
    let rx = h.wait_async("c1", "nope");
    assert_eq!(
        rx.recv_timeout(BOUND).unwrap().unwrap_err().code(),
        Code::NOT_FOUND
    );
    assert!(matches!(
        h.state("c1", "nope"),
        Err(TaskError::ExecNotFound { .. })
    ));

    // Exec requests.
    let eio = h.fifos("e1", false);
    assert_eq!(
        code(h.tasks.exec(&h.exec_req("c1", "bad/id", &eio))),
        Code::INVALID_ARGUMENT
    );
    let mut nospec = h.exec_req("c1", "e1", &eio);
    nospec.spec = MessageField::none();
    assert_eq!(code(h.tasks.exec(&nospec)), Code::INVALID_ARGUMENT);
    h.tasks.exec(&h.exec_req("c1", "e1", &eio)).unwrap();
    assert_eq!(
        code(h.tasks.exec(&h.exec_req("c1", "e1", &eio))),
        Code::ALREADY_EXISTS
    );

    // Update needs resources; stats reach the guest.
    assert_eq!(
        code(
            h.tasks
                .update(&req_id(|r: &mut UpdateTaskRequest| r.id = "c1".into()))
        ),
        Code::INVALID_ARGUMENT
    );
    let stats = h
        .tasks
        .stats(&req_id(|r: &mut StatsRequest| r.id = "c1".into()))
        .unwrap();
    assert_eq!(
        stats.stats.type_url, "io.containerd.cgroups.v2.Metrics",
        "containerd decodes cgroup v2 stats by this name"
    );
}

/// The agent's refusal of a create keeps its code, and leaves nothing
/// behind: no task, the rootfs detached, the VM started for it off.
#[test]
fn agent_error_keeps_its_code_and_leaves_nothing() {
    let h = H::new("agenterr");
    *h.fail_first_create.lock().unwrap() = Some(Code::INVALID_ARGUMENT);
    let io = h.fifos("c1", false);
    let e = h
        .tasks
        .create(&h.create_req("c1", &io))
        .expect_err("the agent refused");
    assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    assert!(e.to_string().contains("process.args"), "{e}");
    match ttrpc::Error::from(e) {
        ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), Code::INVALID_ARGUMENT),
        other => panic!("{other:?}"),
    }
    assert!(h.tasks.is_empty());
    assert_eq!(code(h.state("c1", "")), Code::NOT_FOUND);
    assert!(h.topics().is_empty(), "no TaskCreate: {:?}", h.topics());
    h.tasks.join_power_off();
    let vm = h.vm();
    {
        let g = vm.lock();
        assert_eq!(g.attached, ["c1"]);
        assert_eq!(g.detached, ["c1"]);
        assert!(g.containers.is_empty());
        assert!(g.powered_off, "the VM started for the refused task");
    }

    // With another task in the pod, the VM stays.
    h.create("c0");
    let vm = h.vm();
    assert_eq!(h.vm_count(), 2);
    vm.lock().fail_create = Some(Code::FAILED_PRECONDITION);
    assert_eq!(
        code(h.tasks.create(&h.create_req("c1", &h.fifos("c1b", false)))),
        Code::FAILED_PRECONDITION
    );
    h.tasks.join_power_off();
    let g = vm.lock();
    assert_eq!(g.detached, ["c1"]);
    assert!(!g.powered_off, "c0 still needs the VM");
    drop(g);
    assert_eq!(h.status("c0", ""), Status::CREATED);
}

/// Two execs in one container: their own pids, exit codes, Wait and
/// events; deleting one leaves the other.
#[test]
fn exec_ids() {
    let h = H::new("exec");
    h.create("c1");
    let init = h.start("c1", "");
    h.exec("c1", "e1");
    h.exec("c1", "e2");
    assert_eq!(h.status("c1", "e1"), Status::CREATED);
    let s = h.state("c1", "e1").unwrap();
    assert_eq!((s.id.as_str(), s.exec_id.as_str()), ("e1", "e1"));
    let p1 = h.start("c1", "e1");
    let p2 = h.start("c1", "e2");
    assert_eq!([init, p1, p2], [std::process::id(); 3]);
    let vm = h.vm();
    let guest = |e: Option<&str>| vm.pid("c1", e);
    assert!(guest(Some("e1")) != guest(Some("e2")) && guest(Some("e1")) != guest(None));
    let vm = h.vm();
    assert_eq!(vm.lock().procs[&fake::key("c1", Some("e1"))].spec, {
        br#"{"args":["/bin/e1"],"cwd":"/"}"#.to_vec()
    });
    assert_eq!(h.status("c1", "e1"), Status::RUNNING);
    assert_eq!(h.state("c1", "e2").unwrap().pid, p2);

    let w1 = h.wait_async("c1", "e1");
    vm.exit("c1", Some("e2"), 2);
    assert_eq!(h.wait("c1", "e2"), 2);
    assert!(
        w1.recv_timeout(Duration::from_millis(50)).is_err(),
        "e1 still runs"
    );
    assert_eq!(h.status("c1", "e1"), Status::RUNNING);
    vm.exit("c1", Some("e1"), 1);
    assert_eq!(w1.recv_timeout(BOUND).unwrap().unwrap().exit_status, 1);
    assert_eq!(h.status("c1", ""), Status::RUNNING);

    h.await_events(topic::EXIT, 2);
    assert_eq!(
        h.topics(),
        [
            topic::CREATE,
            topic::START,
            topic::EXEC_ADDED,
            topic::EXEC_ADDED,
            topic::EXEC_STARTED,
            topic::EXEC_STARTED,
            topic::EXIT,
            topic::EXIT
        ]
    );
    let added: Vec<TaskExecAdded> = h.of(topic::EXEC_ADDED);
    assert_eq!(
        added
            .iter()
            .map(|a| (a.container_id.as_str(), a.exec_id.as_str()))
            .collect::<Vec<_>>(),
        [("c1", "e1"), ("c1", "e2")]
    );
    let started: Vec<TaskExecStarted> = h.of(topic::EXEC_STARTED);
    assert_eq!(
        started
            .iter()
            .map(|a| (a.container_id.as_str(), a.exec_id.as_str(), a.pid))
            .collect::<Vec<_>>(),
        [("c1", "e1", p1), ("c1", "e2", p2)]
    );
    let exits: Vec<TaskExit> = h.of(topic::EXIT);
    assert_eq!(
        exits
            .iter()
            .map(|e| (e.container_id.as_str(), e.id.as_str(), e.pid, e.exit_status))
            .collect::<Vec<_>>(),
        [("c1", "e2", p2, 2), ("c1", "e1", p1, 1)]
    );

    assert_eq!(code(h.kill("c1", "e2", 9)), Code::NOT_FOUND);
    let d = h.delete("c1", "e1").unwrap();
    assert_eq!((d.pid, d.exit_status), (p1, 1));
    assert_eq!(code(h.state("c1", "e1")), Code::NOT_FOUND);
    assert_eq!(h.status("c1", "e2"), Status::STOPPED);
    // An exec's delete is no TaskDelete; the container is still there.
    assert!(!h.topics().contains(&topic::DELETE));
    // A running exec is killed by its own id.
    h.exec("c1", "e3");
    h.start("c1", "e3");
    h.kill("c1", "e3", 9).unwrap();
    assert_eq!(h.wait("c1", "e3"), 137);
    assert_eq!(h.status("c1", ""), Status::RUNNING);

    vm.exit("c1", None, 0);
    assert_eq!(h.wait("c1", ""), 0);
    // No exec into a stopped container.
    let io = h.fifos("late", false);
    assert_eq!(
        code(h.tasks.exec(&h.exec_req("c1", "late", &io))),
        Code::FAILED_PRECONDITION
    );
    // Deleting the container takes its execs along.
    h.delete("c1", "").unwrap();
    assert!(h.tasks.is_empty());
    assert!(vm.lock().procs.is_empty());
}

/// The exit is reported only once the process's output is all in the
/// FIFO, even when the output is still coming after the guest reported
/// the exit.
#[test]
fn output_before_exit() {
    const TOTAL: usize = 1 << 20;
    const CHUNK: usize = 64 << 10;
    let h = H::new("order");
    let mut io = h.fifos("c1", false);
    // The FIFO holds the whole output, so nobody needs to read it while
    // it is written: what it holds when Wait returns is what got through.
    // SAFETY: fcntl on an open fd of ours.
    let size = unsafe { libc::fcntl(io.out.as_raw_fd(), libc::F_SETPIPE_SZ, TOTAL as i32) };
    assert!(
        usize::try_from(size).is_ok_and(|s| s >= TOTAL),
        "F_SETPIPE_SZ: {}",
        std::io::Error::last_os_error()
    );
    h.tasks.create(&h.create_req("c1", &io)).unwrap();
    h.start("c1", "");
    let vm = h.vm();
    let ends = vm.take_streams("c1", None);
    let waiting = h.wait_async("c1", "");
    // The guest reports the exit first...
    vm.exit("c1", None, 0);
    // ...and the output trickles in after it, then its stream closes.
    let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
    let expected = data.clone();
    let writer = std::thread::spawn(move || {
        let mut out = ends.stdout.unwrap();
        for chunk in data.chunks(CHUNK) {
            out.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(15));
        }
        std::thread::sleep(Duration::from_millis(100));
        drop(out);
        drop(ends.stderr);
    });
    let w = waiting.recv_timeout(BOUND).expect("Wait returned").unwrap();
    let got = drain(&mut io.out);
    assert_eq!(
        got.len(),
        TOTAL,
        "Wait returned with {} of {TOTAL} output bytes in the FIFO",
        got.len()
    );
    assert!(got == expected, "the output arrived garbled");
    assert_eq!(w.exit_status, 0);
    writer.join().unwrap();
    h.await_events(topic::EXIT, 1);
}

/// The VM ending under its tasks ends every process (255), each with its
/// TaskExit; the tasks can be deleted; the next create starts a new VM.
#[test]
fn vm_end_ends_every_process() {
    let h = H::new("vmend");
    h.create("c1");
    h.start("c1", "");
    h.create("c2");
    h.start("c2", "");
    h.exec("c2", "e1");
    h.start("c2", "e1");
    h.create("c3");
    let vm = h.vm();
    assert_eq!(h.vm_count(), 1, "one VM for the pod");
    vm.end_vm("the guest panicked");
    for (id, exec) in [("c1", ""), ("c2", ""), ("c2", "e1"), ("c3", "")] {
        assert_eq!(h.wait(id, exec), VM_GONE_EXIT, "{id} {exec}");
        assert_eq!(h.status(id, exec), Status::STOPPED);
    }
    h.await_events(topic::EXIT, 4);
    // Waiters that lose their process afterwards publish nothing more.
    std::thread::sleep(Duration::from_millis(100));
    let mut exits: Vec<(String, String, u32)> = h
        .of::<TaskExit>(topic::EXIT)
        .into_iter()
        .map(|e| (e.container_id, e.id, e.exit_status))
        .collect();
    exits.sort();
    assert_eq!(
        exits,
        [
            ("c1".into(), "c1".into(), 255),
            ("c2".into(), "c2".into(), 255),
            ("c2".into(), "e1".into(), 255),
            ("c3".into(), "c3".into(), 255),
        ]
    );
    // Exec into a container whose VM is gone.
    let io = h.fifos("x", false);
    assert_eq!(
        code(h.tasks.exec(&h.exec_req("c1", "x", &io))),
        Code::FAILED_PRECONDITION
    );
    for id in ["c1", "c2", "c3"] {
        assert_eq!(h.delete(id, "").unwrap().exit_status, 255);
    }
    assert!(h.tasks.is_empty());
    h.create("c4");
    assert_eq!(h.vm_count(), 2, "a new VM for the next task");
    h.start("c4", "");
}

#[test]
fn oom_event() {
    let h = H::new("oom");
    h.create("c1");
    h.start("c1", "");
    h.vm().oom("c1");
    h.await_events(topic::OOM, 1);
    let (_, any) = h
        .events()
        .into_iter()
        .find(|(t, _)| *t == topic::OOM)
        .unwrap();
    assert_eq!(any.type_url, "containerd.events.TaskOOM");
    let oom: TaskOOM = decode(&any);
    assert_eq!(oom.container_id, "c1");
}

/// What containerd writes on the stdin FIFO reaches the process; CloseIO
/// ends its stdin (EOF) while containerd still holds the FIFO open.
#[test]
fn stdin_and_close_io() {
    let h = H::new("stdin");
    let io = h.fifos("c1", true);
    h.tasks.create(&h.create_req("c1", &io)).unwrap();
    // containerd's writer (the shim's reader is open since Create: a
    // non-blocking open for writing fails rather than blocks if not).
    let mut w = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&io.stdin)
        .unwrap();
    h.start("c1", "");
    let vm = h.vm();
    let ends = vm.take_streams("c1", None);
    let mut stdin = ends.stdin.unwrap();
    stdin.set_read_timeout(Some(BOUND)).unwrap();
    w.write_all(b"typed\n").unwrap();
    let mut buf = [0u8; 6];
    stdin.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"typed\n");

    w.write_all(b"more").unwrap();
    h.tasks
        .close_io(&CloseIORequest {
            id: "c1".into(),
            stdin: true,
            ..Default::default()
        })
        .unwrap();
    let mut rest = Vec::new();
    stdin
        .read_to_end(&mut rest)
        .expect("stdin ends after CloseIO");
    assert_eq!(rest, b"more");
    drop(w);
    drop(ends.stdout);
    drop(ends.stderr);
    vm.exit("c1", None, 0);
    assert_eq!(h.wait("c1", ""), 0);
}

/// Through ttrpc as containerd calls it: the codes reach the client as
/// statuses, and Shutdown ends the shim only with no task left.
#[test]
fn service_over_ttrpc() {
    use husk_shim_protos::shim::{CheckpointTaskRequest, ShutdownRequest};
    use husk_shim_protos::shim_ttrpc::{create_task, TaskClient};

    let h = H::new("svc");
    let (tx, shut) = mpsc::channel();
    let tx = Mutex::new(tx);
    let service = super::service::TaskService {
        tasks: h.tasks.clone(),
        on_shutdown: Box::new(move || {
            let _ = tx.lock().unwrap().send(());
        }),
    };
    let sock = h.dir.join("shim.sock");
    let addr = format!("unix://{}", sock.display());
    let mut server = ttrpc::Server::new()
        .bind(&addr)
        .unwrap()
        .register_service(create_task(Arc::new(service)));
    server.start().unwrap();
    let client = TaskClient::new(ttrpc::Client::connect(&addr).unwrap());
    let ctx = || ttrpc::context::with_timeout(BOUND.as_nanos() as i64);
    let status_code = |e: ttrpc::Error| match e {
        ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("{other:?}"),
    };

    let e = client
        .state(ctx(), &req_id(|r: &mut StateRequest| r.id = "nope".into()))
        .unwrap_err();
    assert_eq!(status_code(e), Code::NOT_FOUND);
    let io = h.fifos("c1", false);
    client.create(ctx(), &h.create_req("c1", &io)).unwrap();
    let e = client.create(ctx(), &h.create_req("c1", &io)).unwrap_err();
    assert_eq!(status_code(e), Code::ALREADY_EXISTS);
    let e = client
        .checkpoint(ctx(), &CheckpointTaskRequest::default())
        .unwrap_err();
    assert_eq!(status_code(e), Code::UNIMPLEMENTED);
    let pid = client
        .start(ctx(), &req_id(|r: &mut StartRequest| r.id = "c1".into()))
        .unwrap()
        .pid;
    let e = client
        .delete(ctx(), &req_id(|r: &mut DeleteRequest| r.id = "c1".into()))
        .unwrap_err();
    assert_eq!(status_code(e), Code::FAILED_PRECONDITION);

    client.shutdown(ctx(), &ShutdownRequest::default()).unwrap();
    assert!(shut.try_recv().is_err(), "no shutdown with a task left");

    client
        .kill(
            ctx(),
            &KillRequest {
                id: "c1".into(),
                signal: 9,
                ..Default::default()
            },
        )
        .unwrap();
    let w = client
        .wait(ctx(), &req_id(|r: &mut WaitRequest| r.id = "c1".into()))
        .unwrap();
    assert_eq!(w.exit_status, 137);
    let d = client
        .delete(ctx(), &req_id(|r: &mut DeleteRequest| r.id = "c1".into()))
        .unwrap();
    assert_eq!((d.pid, d.exit_status), (pid, 137));
    client.shutdown(ctx(), &ShutdownRequest::default()).unwrap();
    shut.recv_timeout(BOUND)
        .expect("Shutdown with no task left");
    assert!(h.vm().lock().powered_off);
    server.shutdown();
}

/// A Wait on a task deleted before it ever ran returns (it held a ttrpc
/// thread for good before).
#[test]
fn wait_returns_when_a_created_task_is_deleted() {
    let h = H::new("waitdel");
    h.create("c1");
    let waiting = h.wait_async("c1", "");
    std::thread::sleep(Duration::from_millis(50));
    h.delete("c1", "").unwrap();
    let w = waiting.recv_timeout(BOUND).expect("Wait returned");
    assert!(w.is_ok() || code(w) == Code::NOT_FOUND);
    assert!(h.tasks.is_empty());
}

/// A create with `config` as its spec.
fn create_with(h: &H, id: &str, config: &str) -> Result<Io, TaskError> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let io = h.fifos(&format!("{id}-{}", N.fetch_add(1, Ordering::SeqCst)), false);
    let mut req = h.create_req(id, &io);
    req.bundle = h.bundle(id, Some(config));
    h.tasks.create(&req).map(|_| io)
}

/// The spec the guest got for `id`.
fn guest_spec(vm: &Fake, id: &str) -> serde_json::Value {
    serde_json::from_slice(&vm.lock().containers[id].0).unwrap()
}

/// A bind mount reaches the agent with its source in the pod share, its
/// volume is attached on the host, and both go with the task's Delete.
#[test]
fn bind_volumes_reach_the_guest_and_go_with_delete() {
    let h = H::new("volumes");
    let config = r#"{
        "process": {"args": ["/bin/sh"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind", "ro"]}
        ]
    }"#;
    create_with(&h, "c1", config).unwrap();
    let vm = h.vm();
    let spec = guest_spec(&vm, "c1");
    assert_eq!(spec["mounts"][0]["source"], "proc");
    assert_eq!(spec["mounts"][1]["source"], "/run/husk/pod/c1/mounts/1");
    assert_eq!(
        spec["mounts"][1]["options"],
        serde_json::json!(["rbind", "ro"])
    );
    {
        let g = vm.lock();
        let v = &g.volumes["c1"];
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].source, Path::new("/srv/data"));
        assert!(v[0].read_only && v[0].recursive);
    }
    h.delete("c1", "").unwrap();
    let g = vm.lock();
    assert!(g.volumes.is_empty());
    assert_eq!(g.detached, ["c1"]);
}

/// A volume that cannot be attached fails the create with its code and
/// leaves nothing: no task, the rootfs detached, the VM off.
#[test]
fn a_volume_that_fails_leaves_nothing() {
    let h = H::new("volfail");
    h.create("c0");
    let vm = h.vm();
    vm.lock().fail_volumes = true;
    let e = create_with(&h, "c1", CONFIG).expect_err("the volume failed");
    assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    assert!(e.to_string().contains("mounts[0] (/data)"), "{e}");
    assert_eq!(code(h.state("c1", "")), Code::NOT_FOUND);
    {
        let g = vm.lock();
        assert_eq!(g.attached, ["c0", "c1"]);
        assert_eq!(g.detached, ["c1"]);
        assert!(!g.containers.contains_key("c1"));
    }
    h.delete("c0", "").unwrap();
    h.tasks.join_power_off();
    assert!(vm.lock().powered_off);
}

/// A CRI pod: the sandbox's host netns becomes a new one in the guest;
/// an app container's host namespace paths become the sandbox's
/// `/proc/<guest pid>/ns/…`; before the sandbox runs that is
/// FAILED_PRECONDITION, and a spec the guest cannot use starts no VM.
#[test]
fn cri_namespaces_follow_the_sandbox_in_the_guest() {
    let h = H::new("crins");
    let spec = |kind: &str, ns: &str| {
        format!(
            r#"{{
            "process": {{"args": ["/pause"], "cwd": "/"}},
            "root": {{"path": "rootfs"}},
            "annotations": {{"io.kubernetes.cri.container-type": "{kind}",
                "io.kubernetes.cri.sandbox-id": "sb1"}},
            "linux": {{"namespaces": [{ns}]}}
        }}"#
        )
    };
    // Not CRI: a host namespace is refused before any VM starts.
    let e = create_with(
        &h,
        "x",
        r#"{"process": {"args": ["/x"]}, "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/n"}]}}"#,
    )
    .expect_err("a host netns");
    assert_eq!(e.code(), Code::INVALID_ARGUMENT);
    assert_eq!(h.vm_count(), 0);

    create_with(
        &h,
        "sb1",
        &spec(
            "sandbox",
            r#"{"type": "pid"}, {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}"#,
        ),
    )
    .unwrap();
    let vm = h.vm();
    // The pod's network is the guest's own (eth0): no entry at all.
    assert_eq!(
        guest_spec(&vm, "sb1")["linux"]["namespaces"],
        serde_json::json!([{"type": "pid"}, {"type": "mount"}])
    );
    // CRI's: the sandbox task's pid as containerd got it (the shim's).
    let shim = std::process::id();
    let app = spec(
        "container",
        &format!(
            r#"{{"type": "pid"}}, {{"type": "mount"}}, {{"type": "ipc", "path": "/proc/{shim}/ns/ipc"}},
           {{"type": "network", "path": "/var/run/netns/cni-1"}}"#
        ),
    );
    // The sandbox has no process yet.
    assert_eq!(
        code(create_with(&h, "app1", &app)),
        Code::FAILED_PRECONDITION
    );
    let pid = h.start("sb1", "");
    assert_eq!(pid, shim);
    let guest_pid = vm.pid("sb1", None);
    create_with(&h, "app1", &app).unwrap();
    let ns = &guest_spec(&vm, "app1")["linux"]["namespaces"];
    assert_eq!(
        ns[2]["path"],
        format!("/proc/{guest_pid}/ns/ipc"),
        "the reported pid is the sandbox's guest pid in the guest"
    );
    assert_eq!(ns[3]["path"], format!("/proc/{guest_pid}/ns/net"));
    // A pid that is no task of this pod (in the guest: any process).
    let stray = spec("container", r#"{"type": "ipc", "path": "/proc/77/ns/ipc"}"#);
    assert_eq!(
        code(create_with(&h, "app2", &stray)),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(h.vm_count(), 1);
}
