//! The patched ttrpc sync client (third_party/ttrpc/PATCHES.md): an idle
//! client's receiver thread sleeps until something arrives, instead of
//! waking every 10 ms as upstream 0.10's did (~500 wake-ups a second per
//! idle pod's shim), and it ends when the client is dropped.
//!
//! No VM: the peer is a Unix socket that accepts and stays silent. The
//! client is made on a thread with a name of its own; the receiver thread
//! ttrpc spawns without a name inherits it, which is how it is found in
//! /proc/self/task.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

const PROBE: &str = "ttrpc-probe";

/// Thread ids of this process whose name is [`PROBE`].
fn probe_threads() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let tid = e.expect("task entry").file_name();
        let tid = tid.to_string_lossy().into_owned();
        let comm =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/comm")).unwrap_or_default();
        if comm.trim_end() == PROBE {
            out.push(tid);
        }
    }
    out
}

/// Voluntary context switches of thread `tid` (each sleep it woke from).
fn switches(tid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn an_idle_client_sleeps_and_a_dropped_one_ends() {
    let dir = std::env::temp_dir().join(format!("husk-ttrpc-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("peer.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    // The peer accepts and never writes.
    let peer = std::thread::spawn(move || listener.accept().map(|(s, _)| s));

    let (made_tx, made_rx) = std::sync::mpsc::channel();
    let (drop_tx, drop_rx) = std::sync::mpsc::channel::<()>();
    let addr = format!("unix://{}", Path::new(&sock).display());
    let owner = std::thread::Builder::new()
        .name(PROBE.into())
        .spawn(move || {
            let client = ttrpc::Client::connect(&addr).expect("connect");
            made_tx.send(()).expect("made");
            // Held until the test says so, then dropped here.
            let _ = drop_rx.recv();
            drop(client);
        })
        .expect("spawn the client's owner");
    made_rx.recv().expect("client made");
    let _conn = peer.join().expect("peer thread").expect("accept");

    // ttrpc's threads (sender and receiver) carry the owner's name; the
    // owner itself sleeps in recv, once.
    std::thread::sleep(Duration::from_millis(100));
    let threads = probe_threads();
    assert!(
        threads.len() >= 2,
        "expected the owner and ttrpc's threads named {PROBE}, found {threads:?}"
    );
    let before: Vec<(String, u64)> = threads
        .iter()
        .filter_map(|t| Some((t.clone(), switches(t)?)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    for (tid, b) in &before {
        let a = switches(tid).unwrap_or(*b);
        // Upstream's receiver: ~50 wake-ups in 500 ms.
        assert!(
            a - b <= 3,
            "thread {tid} ({PROBE}) woke {} times in 500 ms while the client was idle",
            a - b
        );
    }

    drop_tx.send(()).expect("drop the client");
    owner.join().expect("owner thread");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = probe_threads();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ttrpc threads still there 5 s after the client was dropped: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
