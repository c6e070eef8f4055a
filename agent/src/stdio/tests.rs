//! Host tests: the listener on a Unix socket, real pipes and a real pty,
//! data written from threads (no child processes, no reaper).

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::reaper::cloexec_pipe;

const LONG: Duration = Duration::from_secs(10);

struct TestServer {
    server: StdioServer,
    path: PathBuf,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn server_with(name: &str, tune: impl FnOnce(&mut StdioConfig)) -> TestServer {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path =
        std::env::temp_dir().join(format!("husk-stdio-{}-{name}-{n}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut config = StdioConfig::at(Address::Unix(path.to_string_lossy().into_owned()));
    config.header_deadline = Duration::from_millis(300);
    tune(&mut config);
    let server = StdioServer::start(config).expect("starts");
    TestServer { server, path }
}

fn server(name: &str) -> TestServer {
    server_with(name, |_| {})
}

impl TestServer {
    fn connect(&self, header: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(&self.path).expect("connects");
        s.set_read_timeout(Some(LONG)).unwrap();
        s.write_all(header).unwrap();
        s
    }

    fn wait_waiting(&self, n: usize) {
        wait_until(|| self.server.registry().waiting() == n, "streams waiting");
    }
}

fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let end = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// The agent's end of a socket as a blocking stream with a read timeout.
fn blocking(fd: OwnedFd) -> UnixStream {
    let s = UnixStream::from(fd);
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s
}

/// Asserts the peer closed: end of file (or a reset) within the timeout.
fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("want EOF, got {other:?}"),
    }
}

fn key(c: &str, e: &str) -> ProcessKey {
    ProcessKey::new(c, e)
}

fn pair() -> (OwnedFd, UnixStream) {
    let (agent, host) = UnixStream::pair().unwrap();
    host.set_read_timeout(Some(LONG)).unwrap();
    (OwnedFd::from(agent), host)
}

fn file(fd: OwnedFd) -> std::fs::File {
    std::fs::File::from(fd)
}

fn output_only(k: ProcessKey, pipe: OwnedFd, sock: OwnedFd) -> ProcessIo {
    ProcessIo {
        key: k,
        stdout: Some((pipe, sock)),
        stderr: None,
        stdin: None,
        tty: None,
    }
}

// ---- listener, headers, registry ----

#[test]
fn bytes_after_the_header_stay_in_the_stream() {
    let t = server("after");
    let mut host = t.connect(b"c1 - stdin\nhello");
    let wanted = Wanted {
        stdin: true,
        ..Wanted::default()
    };
    let claimed = t
        .server
        .registry()
        .claim("c1", "-", wanted, soon())
        .unwrap();
    assert!(claimed.stdout.is_none() && claimed.stderr.is_none() && claimed.tty.is_none());
    let mut guest = blocking(claimed.stdin.unwrap());
    let mut got = [0u8; 5];
    guest.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    guest.write_all(b"back").unwrap();
    host.read_exact(&mut got[..4]).unwrap();
    assert_eq!(&got[..4], b"back");
}

#[test]
fn claim_waits_for_streams_that_arrive_after_it() {
    let t = server("before");
    let registry = std::sync::Arc::clone(t.server.registry());
    let wanted = Wanted {
        stdout: true,
        stderr: true,
        ..Wanted::default()
    };
    let claim = std::thread::spawn(move || registry.claim("c", "e1", wanted, soon()));
    std::thread::sleep(Duration::from_millis(100));
    let _out = t.connect(b"c e1 stdout\n");
    std::thread::sleep(Duration::from_millis(50));
    let _err = t.connect(b"c e1 stderr\n");
    let claimed = claim.join().unwrap().unwrap();
    assert!(claimed.stdout.is_some() && claimed.stderr.is_some());
    assert_eq!(t.server.registry().waiting(), 0);
}

#[test]
fn claim_timeout_names_the_missing_and_closes_the_rest() {
    let t = server("claimtimeout");
    let mut out = t.connect(b"c - stdout\n");
    t.wait_waiting(1);
    let wanted = Wanted {
        stdout: true,
        stderr: true,
        ..Wanted::default()
    };
    let start = Instant::now();
    let deadline = start + Duration::from_millis(200);
    let err = t.server.registry().claim("c", "-", wanted, deadline);
    assert!(start.elapsed() >= Duration::from_millis(200));
    match err {
        Err(e @ StdioError::NotAttached { .. }) => {
            assert_eq!(e.code(), ttrpc::Code::DEADLINE_EXCEEDED);
            assert_eq!(e.to_string(), "c/-: streams not attached in time: stderr");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.server.registry().waiting(), 0);
    assert_closed(&mut out);
}

#[test]
fn claim_checks_its_arguments() {
    let t = server("claimargs");
    let r = t.server.registry();
    let tty_and_more = Wanted {
        tty: true,
        stdin: true,
        ..Wanted::default()
    };
    assert!(matches!(
        r.claim("c", "-", tty_and_more, soon()),
        Err(StdioError::TtyWithOthers)
    ));
    let e = r.claim("c/x", "-", Wanted::default(), soon()).unwrap_err();
    assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
    assert!(r.claim("c", "", Wanted::default(), soon()).is_err());
    // Nothing wanted: nothing to wait for.
    let c = r.claim("c", "-", Wanted::default(), soon()).unwrap();
    assert!(c.stdin.is_none() && c.tty.is_none());
}

#[test]
fn bad_headers_close_the_connection() {
    let t = server("bad");
    let too_long = vec![b'a'; 250];
    let cases: [&[u8]; 5] = [
        b"c - stdio\n",
        b"c/1 - stdout\n",
        b"c - stdout extra\n",
        b"\n",
        &too_long,
    ];
    for h in cases {
        let mut s = t.connect(h);
        assert_closed(&mut s);
    }
    assert_eq!(t.server.registry().waiting(), 0);
}

#[test]
fn a_header_may_arrive_in_pieces() {
    let t = server("pieces");
    let mut s = t.connect(b"c - st");
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"dout").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"\n").unwrap();
    t.wait_waiting(1);
    let wanted = Wanted {
        stdout: true,
        ..Wanted::default()
    };
    assert!(t.server.registry().claim("c", "-", wanted, soon()).is_ok());
}

#[test]
fn a_slow_or_silent_header_is_dropped_at_its_deadline() {
    let t = server("slow");
    let start = Instant::now();
    let mut silent = t.connect(b"");
    let mut partial = t.connect(b"c - std");
    assert_closed(&mut silent);
    assert_closed(&mut partial);
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(t.server.registry().waiting(), 0);
}

#[test]
fn a_second_stream_for_a_key_is_refused() {
    let t = server("dup");
    let mut first = t.connect(b"c - stdout\n");
    t.wait_waiting(1);
    let mut second = t.connect(b"c - stdout\n");
    assert_closed(&mut second);
    let wanted = Wanted {
        stdout: true,
        ..Wanted::default()
    };
    let claimed = t.server.registry().claim("c", "-", wanted, soon()).unwrap();
    let mut guest = blocking(claimed.stdout.unwrap());
    guest.write_all(b"to the first").unwrap();
    let mut got = [0u8; 12];
    first.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"to the first");
}

#[test]
fn unclaimed_streams_are_closed_after_their_ttl() {
    let t = server_with("ttl", |c| c.unclaimed_ttl = Duration::from_millis(200));
    let mut s = t.connect(b"c - stderr\n");
    t.wait_waiting(1);
    let start = Instant::now();
    assert_closed(&mut s);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(t.server.registry().waiting(), 0);
}

#[test]
fn the_registry_is_bounded() {
    let t = server_with("full", |c| c.max_unclaimed = 2);
    let _a = t.connect(b"c a stdout\n");
    let _b = t.connect(b"c b stdout\n");
    t.wait_waiting(2);
    let mut c = t.connect(b"c c stdout\n");
    assert_closed(&mut c);
}

// ---- the pump ----

/// Writes `lines` numbered lines of `tag` into `w`, then closes it.
fn write_lines(w: OwnedFd, tag: &'static str, lines: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut w = file(w);
        for i in 0..lines {
            writeln!(w, "{tag} {i}").unwrap();
        }
    })
}

fn read_all(mut s: UnixStream) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        s.read_to_end(&mut v).unwrap();
        v
    })
}

#[test]
fn stdout_and_stderr_arrive_whole_and_in_order() {
    let t = server("outerr");
    let (out_r, out_w) = cloexec_pipe().unwrap();
    let (err_r, err_w) = cloexec_pipe().unwrap();
    let (out_s, out_host) = pair();
    let (err_s, err_host) = pair();
    let drain = t
        .server
        .pump()
        .attach(ProcessIo {
            key: key("c", "-"),
            stdout: Some((out_r, out_s)),
            stderr: Some((err_r, err_s)),
            stdin: None,
            tty: None,
        })
        .unwrap();
    let readers = (read_all(out_host), read_all(err_host));
    let writers = (
        write_lines(out_w, "out", 20_000),
        write_lines(err_w, "err", 20_000),
    );
    writers.0.join().unwrap();
    writers.1.join().unwrap();
    assert_eq!(drain.wait_drained(soon()), Drained::Complete);
    let out = readers.0.join().unwrap();
    let err = readers.1.join().unwrap();
    let want = |tag: &str| -> Vec<u8> {
        (0..20_000)
            .flat_map(|i| format!("{tag} {i}\n").into_bytes())
            .collect()
    };
    assert!(out == want("out"), "stdout differs");
    assert!(err == want("err"), "stderr differs");
    // Let go: the same process may attach again.
    wait_until(
        || t.server.pump().close_stdin(&key("c", "-")).is_err(),
        "release",
    );
}

/// FNV-1a, 64 bits.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

#[test]
fn fifty_mib_arrive_whole() {
    const TOTAL: usize = 50 << 20;
    const FNV0: u64 = 0xcbf2_9ce4_8422_2325;
    let t = server("50mib");
    let (r, w) = cloexec_pipe().unwrap();
    let (s, mut host) = pair();
    let drain = t
        .server
        .pump()
        .attach(output_only(key("big", "x"), r, s))
        .unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = file(w);
        let mut h = FNV0;
        let mut sent = 0usize;
        let mut seed = 1u32;
        let mut chunk = vec![0u8; 100_000];
        while sent < TOTAL {
            // Odd sizes, so reads and writes never line up.
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let n = (1 + (seed >> 8) as usize % chunk.len()).min(TOTAL - sent);
            for (i, b) in chunk[..n].iter_mut().enumerate() {
                *b = (sent + i).wrapping_mul(31) as u8 ^ (seed as u8);
            }
            w.write_all(&chunk[..n]).unwrap();
            h = fnv(h, &chunk[..n]);
            sent += n;
        }
        h
    });
    let mut h = FNV0;
    let mut got = 0usize;
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = host.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h = fnv(h, &buf[..n]);
        got += n;
    }
    assert_eq!(got, TOTAL);
    assert_eq!(h, writer.join().unwrap());
    assert_eq!(drain.wait_drained(soon()), Drained::Complete);
}

#[test]
fn stdin_eof_from_the_host_reaches_the_process() {
    let t = server("stdin");
    let (r, w) = cloexec_pipe().unwrap();
    let (s, mut host) = pair();
    let drain = t
        .server
        .pump()
        .attach(ProcessIo {
            key: key("c", "in"),
            stdout: None,
            stderr: None,
            stdin: Some((s, w)),
            tty: None,
        })
        .unwrap();
    host.write_all(b"abc").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    file(r).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"abc");
    assert_eq!(drain.wait_drained(soon()), Drained::Complete);
}

#[test]
fn close_stdin_ends_the_process_input() {
    let t = server("closestdin");
    let (r, w) = cloexec_pipe().unwrap();
    let (s, mut host) = pair();
    let k = key("c", "in2");
    let drain = t
        .server
        .pump()
        .attach(ProcessIo {
            key: k.clone(),
            stdout: None,
            stderr: None,
            stdin: Some((s, w)),
            tty: None,
        })
        .unwrap();
    host.write_all(b"xyz").unwrap();
    let mut r = file(r);
    let mut got = [0u8; 3];
    r.read_exact(&mut got).unwrap();
    t.server.pump().close_stdin(&k).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!((&got[..], &rest[..]), (&b"xyz"[..], &b""[..]));
    assert_closed(&mut host);
    assert_eq!(drain.wait_drained(soon()), Drained::Complete);
}

#[test]
fn the_process_closing_stdin_ends_the_flow() {
    let t = server("stdinclosed");
    let (r, w) = cloexec_pipe().unwrap();
    let (s, mut host) = pair();
    let drain = t
        .server
        .pump()
        .attach(ProcessIo {
            key: key("c", "in3"),
            stdout: None,
            stderr: None,
            stdin: Some((s, w)),
            tty: None,
        })
        .unwrap();
    // The process exits without reading: its pipe's read end closes.
    drop(r);
    assert_eq!(drain.wait_drained(soon()), Drained::Complete);
    assert_closed(&mut host);
}

#[test]
fn a_pipe_held_by_someone_else_is_let_go_after_the_grace() {
    let t = server("held");
    let (r, w) = cloexec_pipe().unwrap();
    let (s, mut host) = pair();
    let drain = t
        .server
        .pump()
        .attach(output_only(key("c", "held"), r, s))
        .unwrap();
    // A "background child" keeps a copy of the write end.
    let held = w.try_clone().unwrap();
    let mut w = file(w);
    w.write_all(b"before exit\n").unwrap();
    drop(w);
    let exit = Instant::now();
    let how = drain.wait_drained(exit + Duration::from_millis(300));
    let took = exit.elapsed();
    assert_eq!(how, Drained::Forced);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"before exit\n");
    // The pump released the read end: the holder's writes fail now.
    let e = file(held).write_all(b"late").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
}

#[test]
fn output_the_host_stops_reading_is_discarded() {
    let t = server("hostclosed");
    let (r, w) = cloexec_pipe().unwrap();
    let (s, host) = pair();
    let drain = t
        .server
        .pump()
        .attach(output_only(key("c", "gone"), r, s))
        .unwrap();
    drop(host);
    // Far more than every buffer on the way: blocks forever unless the
    // pump reads on.
    let mut w = file(w);
    let chunk = vec![7u8; 64 * 1024];
    for _ in 0..64 {
        w.write_all(&chunk).unwrap();
    }
    drop(w);
    assert_eq!(drain.wait_drained(soon()), Drained::Complete);
}

#[test]
fn a_host_that_does_not_read_holds_the_process_back() {
    let t = server("backpressure");
    let (r, w) = cloexec_pipe().unwrap();
    let (s, mut host) = pair();
    let drain = t
        .server
        .pump()
        .attach(output_only(key("c", "slow"), r, s))
        .unwrap();
    let w = file(w);
    // SAFETY: F_SETFL on our open pipe end; no pointers.
    let rc = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    assert_eq!(rc, 0);
    let mut w = w;
    let chunk = vec![1u8; 16 * 1024];
    let mut written = 0usize;
    let mut blocked_since: Option<Instant> = None;
    loop {
        match w.write(&chunk) {
            Ok(n) => {
                written += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_millis(200) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{e}"),
        }
        assert!(written < 16 << 20, "the pump buffers without bound");
    }
    drop(w);
    let mut got = Vec::new();
    host.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), written);
    assert_eq!(drain.wait_drained(soon()), Drained::Complete);
}

fn openpty() -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty fills two ints; name, termios and winsize may be null.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty succeeded: two fresh descriptors nothing else owns.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    // SAFETY: termios is plain data filled by tcgetattr; cfmakeraw and
    // tcsetattr read it; the fd is the open slave.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(libc::tcgetattr(s.as_raw_fd(), &mut t), 0);
        libc::cfmakeraw(&mut t);
        assert_eq!(libc::tcsetattr(s.as_raw_fd(), libc::TCSANOW, &t), 0);
    }
    (m, s)
}

fn winsize(fd: &OwnedFd) -> (u16, u16) {
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize to the live pointer.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    assert_eq!(rc, 0);
    (ws.ws_row, ws.ws_col)
}

#[test]
fn a_tty_carries_both_ways_and_resizes() {
    let t = server("tty");
    let (master, slave) = openpty();
    let (s, mut host) = pair();
    let k = key("c", "tty");
    let drain = t
        .server
        .pump()
        .attach(ProcessIo {
            key: k.clone(),
            stdout: None,
            stderr: None,
            stdin: None,
            tty: Some((master, s)),
        })
        .unwrap();
    let mut proc_side = file(slave.try_clone().unwrap());
    host.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    proc_side.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    proc_side.write_all(b"pong").unwrap();
    host.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");

    t.server.pump().resize(&k, 40, 120).unwrap();
    assert_eq!(winsize(&slave), (40, 120));
    assert!(matches!(
        t.server.pump().resize(&key("c", "none"), 1, 1),
        Err(StdioError::NotFound(_))
    ));

    // Output written just before the "process" exits still arrives; the
    // master's EIO once every slave fd is closed is the end of file.
    proc_side.write_all(b"bye").unwrap();
    drop(proc_side);
    drop(slave);
    assert_eq!(drain.wait_drained(soon()), Drained::Complete);
    let mut rest = Vec::new();
    host.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye");
}

#[test]
fn handle_errors() {
    let t = server("errors");
    let p = t.server.pump();
    let k = key("c", "e");
    assert!(matches!(p.close_stdin(&k), Err(StdioError::NotFound(_))));
    let (r, _w) = cloexec_pipe().unwrap();
    let (s, _host) = pair();
    let drain = p.attach(output_only(k.clone(), r, s)).unwrap();
    let (r2, _w2) = cloexec_pipe().unwrap();
    let (s2, _host2) = pair();
    let e = p.attach(output_only(k.clone(), r2, s2)).unwrap_err();
    assert_eq!(e.code(), ttrpc::Code::ALREADY_EXISTS);
    let e = p.resize(&k, 1, 1).unwrap_err();
    assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION);
    let (m, _slave) = openpty();
    let (r3, _w3) = cloexec_pipe().unwrap();
    let (s3, _h3) = pair();
    let (s4, _h4) = pair();
    let both = ProcessIo {
        key: key("c", "both"),
        stdout: Some((r3, s3)),
        stderr: None,
        stdin: None,
        tty: Some((m, s4)),
    };
    assert!(matches!(p.attach(both), Err(StdioError::TtyWithOthers)));
    // A deadline already passed forces the end at once.
    assert_eq!(drain.wait_drained(Instant::now()), Drained::Forced);
}

#[test]
fn dropping_the_server_ends_waits() {
    let t = server("drop");
    let (r, _w) = cloexec_pipe().unwrap();
    let (s, mut host) = pair();
    let drain = t
        .server
        .pump()
        .attach(output_only(key("c", "d"), r, s))
        .unwrap();
    let pump = t.server.pump().clone();
    drop(t);
    assert_eq!(drain.wait_drained(soon()), Drained::Forced);
    assert_closed(&mut host);
    let (r, _w) = cloexec_pipe().unwrap();
    let (s, _host) = pair();
    assert!(matches!(
        pump.attach(output_only(key("c", "late"), r, s)),
        Err(StdioError::Stopped)
    ));
}

/// CPU time (user + system clock ticks) of thread `tid` of this process.
fn thread_ticks(tid: libc::pid_t) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // Fields after the ")" that ends the name: state is field 3, utime 14.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn an_idle_pump_sleeps() {
    let t = server("idle");
    let (r, _w) = cloexec_pipe().unwrap();
    let (s, _host) = pair();
    let (_r2, w2) = cloexec_pipe().unwrap();
    let (s2, _host2) = pair();
    let (m, _slave) = openpty();
    let (s3, _host3) = pair();
    let p = t.server.pump();
    let _a = p.attach(output_only(key("i", "a"), r, s)).unwrap();
    let _b = p
        .attach(ProcessIo {
            key: key("i", "b"),
            stdout: None,
            stderr: None,
            stdin: Some((s2, w2)),
            tty: None,
        })
        .unwrap();
    let _c = p
        .attach(ProcessIo {
            key: key("i", "c"),
            stdout: None,
            stderr: None,
            stdin: None,
            tty: Some((m, s3)),
        })
        .unwrap();
    let _waiting = t.connect(b"i z stdout\n");
    t.wait_waiting(1);
    std::thread::sleep(Duration::from_millis(50));
    let before = thread_ticks(t.server.tid);
    std::thread::sleep(Duration::from_millis(500));
    let used = thread_ticks(t.server.tid) - before;
    assert!(
        used <= 2,
        "the idle stdio thread used {used} ticks in 500 ms"
    );
}
