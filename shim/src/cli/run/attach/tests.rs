//! `attach` against a fake guest: a hybrid-vsock muxer on a Unix socket
//! that hands port 1024 to a ttrpc server with a fake container agent and
//! keeps the stdio streams of port 1027 for the fake's "processes".

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use husk_agent_protocol::agent::{
    Empty, ResizeTtyRequest, SignalProcessRequest, StartContainerRequest, StartContainerResponse,
    WaitProcessRequest, WaitProcessResponse,
};
use husk_agent_protocol::agent_ttrpc::{create_agent, Agent};
use husk_agent_protocol::{AGENT_VSOCK_PORT, STDIO_VSOCK_PORT};

use super::*;

const LONG: Duration = Duration::from_secs(30);

#[derive(Default)]
struct State {
    /// Streams by `<container> <exec> <kind>`.
    streams: HashMap<String, UnixStream>,
    /// Exits by container: (exit_code, signal).
    exits: HashMap<String, (i32, i32)>,
    signals: Vec<u32>,
    resizes: Vec<(u32, u32)>,
}

#[derive(Default)]
struct Fake {
    state: Mutex<State>,
    changed: Condvar,
}

impl Fake {
    /// Waits until `f` gives something.
    fn until<T>(&self, mut f: impl FnMut(&mut State) -> Option<T>) -> T {
        let mut st = self.state.lock().unwrap();
        loop {
            if let Some(v) = f(&mut st) {
                return v;
            }
            let (g, t) = self.changed.wait_timeout(st, LONG).unwrap();
            assert!(!t.timed_out(), "the fake guest waited too long");
            st = g;
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }

    fn stream(&self, id: &str, kind: &str) -> UnixStream {
        let key = format!("{id} - {kind}");
        self.until(|st| st.streams.remove(&key))
    }

    /// The "processes", by container id.
    fn run(self: Arc<Self>, id: String) {
        match id.as_str() {
            // Echoes stdin after its EOF, says so on stderr, exits 3 -
            // and reports the exit before its output is out.
            "echo" => {
                let mut input = Vec::new();
                self.stream(&id, "stdin").read_to_end(&mut input).unwrap();
                let (mut out, mut err) = (self.stream(&id, "stdout"), self.stream(&id, "stderr"));
                self.update(|st| {
                    st.exits.insert(id.clone(), (3, 0));
                });
                std::thread::sleep(Duration::from_millis(200));
                out.write_all(&input.repeat(1000)).unwrap();
                err.write_all(b"err\n").unwrap();
            }
            // Runs until a signal ends it.
            "sig" => {
                let mut out = self.stream(&id, "stdout");
                out.write_all(b"ready\n").unwrap();
                let sig = self.until(|st| st.signals.first().copied());
                out.write_all(b"bye\n").unwrap();
                drop(out);
                let sig = i32::try_from(sig).unwrap();
                // Its unused stderr ends with it.
                drop(self.stream(&id, "stderr"));
                self.update(|st| {
                    st.exits.insert(id.clone(), (128 + sig, sig));
                });
            }
            // A terminal: echoes a line, then reports its resize.
            "tty" => {
                let mut tty = self.stream(&id, "tty");
                let mut line = String::new();
                BufReader::new(tty.try_clone().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                tty.write_all(format!("got {}", line).as_bytes()).unwrap();
                let (r, c) = self.until(|st| st.resizes.first().copied());
                tty.write_all(format!("size {r} {c}\r\n").as_bytes())
                    .unwrap();
                drop(tty);
                self.update(|st| {
                    st.exits.insert(id.clone(), (0, 0));
                });
            }
            other => panic!("no fake process {other}"),
        }
    }
}

struct Svc(Arc<Fake>);

impl Agent for Svc {
    fn start_container(
        &self,
        _: &ttrpc::TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let fake = Arc::clone(&self.0);
        std::thread::spawn(move || fake.run(req.container_id));
        Ok(StartContainerResponse {
            pid: 42,
            ..Default::default()
        })
    }

    fn wait_process(
        &self,
        _: &ttrpc::TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        let (exit_code, signal) = self.0.until(|st| st.exits.get(&req.container_id).copied());
        Ok(WaitProcessResponse {
            exit_code,
            signal,
            ..Default::default()
        })
    }

    fn signal_process(
        &self,
        _: &ttrpc::TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        assert!(req.exec_id.is_empty() && !req.all);
        self.0.update(|st| st.signals.push(req.signal));
        Ok(Empty::new())
    }

    fn resize_tty(&self, _: &ttrpc::TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        self.0.update(|st| st.resizes.push((req.rows, req.cols)));
        Ok(Empty::new())
    }
}

/// The fake guest: its vsock socket, the fake, and the ttrpc server.
struct Guest {
    dir: PathBuf,
    vsock: PathBuf,
    fake: Arc<Fake>,
    server: Option<ttrpc::Server>,
}

impl Guest {
    fn start() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "husk-attach-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = Arc::new(Fake::default());
        let rpc_path = dir.join("rpc.sock");
        let mut server = ttrpc::Server::new()
            .bind(&format!("unix://{}", rpc_path.display()))
            .unwrap()
            .register_service(create_agent(Arc::new(Svc(Arc::clone(&fake)))));
        server.start().unwrap();
        let vsock = dir.join("v.sock");
        let listener = UnixListener::bind(&vsock).unwrap();
        let muxer_fake = Arc::clone(&fake);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (fake, rpc_path) = (Arc::clone(&muxer_fake), rpc_path.clone());
                std::thread::spawn(move || mux(conn, &fake, &rpc_path));
            }
        });
        Self {
            dir,
            vsock,
            fake,
            server: Some(server),
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn mux(mut host: UnixStream, fake: &Fake, rpc_path: &std::path::Path) {
    let line = read_line(&mut host);
    if line == format!("CONNECT {AGENT_VSOCK_PORT}") {
        let guest = UnixStream::connect(rpc_path).unwrap();
        host.write_all(b"OK 1\n").unwrap();
        let (mut h2, mut g2) = (host.try_clone().unwrap(), guest.try_clone().unwrap());
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut h2, &mut g2);
            let _ = g2.shutdown(Shutdown::Both);
        });
        let (mut g, mut h) = (guest, host);
        let _ = std::io::copy(&mut g, &mut h);
        let _ = h.shutdown(Shutdown::Both);
    } else if line == format!("CONNECT {STDIO_VSOCK_PORT}") {
        host.write_all(b"OK 2\n").unwrap();
        let header = read_line(&mut host);
        fake.update(|st| {
            st.streams.insert(header, host);
        });
    }
}

/// Signals from a queue; `wake` ends it.
#[derive(Default)]
struct Queue(Mutex<VecDeque<Option<i32>>>, Condvar);

impl Queue {
    fn of(sigs: &[i32]) -> Self {
        let q = Queue::default();
        q.0.lock().unwrap().extend(sigs.iter().map(|s| Some(*s)));
        q
    }
}

impl SignalSource for Queue {
    fn next(&self) -> Option<i32> {
        let mut q = self.0.lock().unwrap();
        loop {
            if let Some(s) = q.pop_front() {
                return s;
            }
            q = self.1.wait(q).unwrap();
        }
    }
    fn wake(&self) {
        self.0.lock().unwrap().push_back(None);
        self.1.notify_all();
    }
}

/// A shared buffer to write the host's output into.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn host_io(stdin: &'static [u8]) -> (HostIo, Sink, Sink) {
    let (out, err) = (Sink::default(), Sink::default());
    let io = HostIo {
        stdin: Box::new(stdin),
        stdout: Box::new(out.clone()),
        stderr: Box::new(err.clone()),
        tty_size: || {
            Some(TtySize {
                rows: 50,
                cols: 132,
            })
        },
    };
    (io, out, err)
}

/// Opens the streams, starts the process and attaches to it.
fn go(g: &Guest, id: &str, stdio: Stdio, sigs: &Queue, io: HostIo) -> ProcessExit {
    let agent = AgentClient::connect(&g.vsock, LONG).unwrap();
    let streams = ProcessStreams::open(&g.vsock, id, None, &stdio).unwrap();
    agent.start_container(id).unwrap();
    attach(&agent, id, streams, stdio, sigs, io).unwrap()
}

#[test]
fn output_is_all_out_before_the_exit_code() {
    let g = Guest::start();
    let (io, out, err) = host_io(b"hello\n");
    let exit = go(&g, "echo", Stdio::pipes(true), &Queue::default(), io);
    assert_eq!(exit.shell_code(), 3);
    // The fake reported the exit first; attach still waited for EOF.
    assert_eq!(out.text(), "hello\n".repeat(1000));
    assert_eq!(err.text(), "err\n");
}

#[test]
fn signals_reach_the_process_and_winch_only_a_terminal() {
    let g = Guest::start();
    let (io, out, _) = host_io(b"");
    let sigs = Queue::of(&[libc::SIGWINCH, libc::SIGTERM]);
    let exit = go(&g, "sig", Stdio::pipes(false), &sigs, io);
    assert_eq!((exit.signal, exit.shell_code()), (Some(libc::SIGTERM), 143));
    assert_eq!(out.text(), "ready\nbye\n");
    let st = g.fake.state.lock().unwrap();
    assert_eq!(st.signals, [15]);
    assert!(st.resizes.is_empty(), "{:?}", st.resizes);
}

#[test]
fn a_terminal_is_one_stream_both_ways_and_follows_the_host_size() {
    let g = Guest::start();
    let (io, out, err) = host_io(b"ls\n");
    let stdio = Stdio {
        stdin: true,
        stdout: true,
        ..Stdio::tty(Some(TtySize { rows: 24, cols: 80 }))
    };
    let exit = go(&g, "tty", stdio, &Queue::of(&[libc::SIGWINCH]), io);
    assert_eq!(exit.shell_code(), 0);
    assert_eq!(out.text(), "got ls\nsize 50 132\r\n");
    assert_eq!(err.text(), "");
}
