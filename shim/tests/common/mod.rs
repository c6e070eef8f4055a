//! A fake hybrid-vsock muxer (what the VMM's vsock device offers the host):
//! a Unix socket that takes `CONNECT <port>\n`, answers, and then carries the
//! stream to the real agent service (husk-agent's `UnixAgent`, fake facts).

#![allow(dead_code)] // each test file uses a part
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use husk_agent::testing::{FakeFacts, UnixAgent};

pub mod ctr;

/// How the muxer answers a `CONNECT` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `OK 1024\n` for `CONNECT 1024`, then the agent's stream.
    Agent,
    /// A line that is not `OK ...`, then close.
    Garbage,
}

pub struct FakeMuxer {
    pub uds_path: PathBuf,
    /// Connections accepted so far.
    pub connects: Arc<AtomicUsize>,
    pub agent: UnixAgent,
    stop: Arc<AtomicBool>,
}

/// A fresh socket path in the temp dir (nothing there yet).
pub fn socket_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let p = std::env::temp_dir().join(format!("husk-mux-{}-{name}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

impl FakeMuxer {
    pub fn start(name: &str, mode: Mode) -> Self {
        Self::start_after(name, mode, Duration::ZERO)
    }

    /// Like [`start`](Self::start), but the socket appears only after
    /// `delay` (as when the VM is still starting).
    pub fn start_after(name: &str, mode: Mode, delay: Duration) -> Self {
        Self::start_with(name, mode, delay, FakeFacts::default())
    }

    /// Like [`start`](Self::start), with these guest facts (shared with the
    /// caller's clone: what the agent applies shows there).
    pub fn start_with_facts(name: &str, facts: FakeFacts) -> Self {
        Self::start_with(name, Mode::Agent, Duration::ZERO, facts)
    }

    fn start_with(name: &str, mode: Mode, delay: Duration, facts: FakeFacts) -> Self {
        let agent = UnixAgent::start(name, facts).unwrap();
        let uds_path = socket_path(name);
        let connects = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let listener = (delay.is_zero()).then(|| UnixListener::bind(&uds_path).unwrap());
        {
            let (path, connects, stop, agent_path) = (
                uds_path.clone(),
                Arc::clone(&connects),
                Arc::clone(&stop),
                agent.path.clone(),
            );
            thread::spawn(move || {
                let listener = listener.unwrap_or_else(|| {
                    thread::sleep(delay);
                    UnixListener::bind(&path).unwrap()
                });
                for s in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(s) = s else { continue };
                    connects.fetch_add(1, Ordering::SeqCst);
                    let agent_path = agent_path.clone();
                    thread::spawn(move || serve(s, mode, &agent_path));
                }
            });
        }
        Self {
            uds_path,
            connects,
            agent,
            stop,
        }
    }
}

impl Drop for FakeMuxer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.uds_path);
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

fn read_line(s: &mut UnixStream) -> Option<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.len() < 64 {
        match s.read(&mut b) {
            Ok(1) if b[0] == b'\n' => return String::from_utf8(line).ok(),
            Ok(1) => line.push(b[0]),
            _ => return None,
        }
    }
    None
}

fn serve(mut host: UnixStream, mode: Mode, agent_path: &Path) {
    let Some(line) = read_line(&mut host) else {
        return;
    };
    if mode == Mode::Garbage {
        let _ = host.write_all(b"HELLO THERE\n");
        return;
    }
    if line != "CONNECT 1024" {
        // What Firecracker does for a port nobody listens on: close.
        return;
    }
    let Ok(guest) = UnixStream::connect(agent_path) else {
        return;
    };
    if host.write_all(b"OK 1024\n").is_err() {
        return;
    }
    splice(host, guest);
}

/// Copies both ways until either side closes.
fn splice(a: UnixStream, b: UnixStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    let one = thread::spawn(move || copy_then_close(a, b2));
    copy_then_close(b, a2);
    let _ = one.join();
}

fn copy_then_close(mut from: UnixStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
