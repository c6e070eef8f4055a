//! The monitor server on temporary sockets, with a fake stats source.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::sync::atomic::AtomicU64;

use husk_vmm::stats::{InterruptStats, VcpuStats};
use husk_vmm::VmStats;

use super::*;
use crate::monitor::http::get;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("husk-monitor-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A source that counts how often it was asked.
fn fake() -> (Box<dyn StatsSource>, Arc<AtomicU64>) {
    let asked = Arc::new(AtomicU64::new(0));
    let a = asked.clone();
    let source = move || {
        let n = a.fetch_add(1, Ordering::SeqCst) + 1;
        PodStats {
            pod: "pod-a".into(),
            namespace: "default".into(),
            shim_pid: 42,
            vm: VmStats {
                vm: "pod-a".into(),
                running: true,
                uptime_ns: n,
                vcpus: vec![VcpuStats::default()],
                interrupts: vec![InterruptStats {
                    device: "vsock".into(),
                    kind: "queue".into(),
                    count: 11,
                }],
                ..Default::default()
            },
        }
    };
    (Box::new(source), asked)
}

fn raw(path: &Path, request: &[u8]) -> String {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn serve_temp(name: &str, timeout: Duration) -> (MonitorServer, PathBuf, Arc<AtomicU64>, PathBuf) {
    let dir = temp_dir(name);
    let path = dir.join(SOCKET);
    let listener = UnixListener::bind(&path).unwrap();
    let (source, asked) = fake();
    let server = MonitorServer::serve(listener, path.clone(), source, timeout).unwrap();
    (server, path, asked, dir)
}

#[test]
fn serves_metrics_and_stats() {
    let (server, path, asked, dir) = serve_temp("serve", IO_TIMEOUT);
    let body = get(&path, "/stats", Duration::from_secs(30)).unwrap();
    let stats: PodStats = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats.pod, "pod-a");
    assert_eq!(stats.vm.interrupts_of("vsock", "queue"), Some(11));
    let text = String::from_utf8(get(&path, "/metrics", Duration::from_secs(30)).unwrap()).unwrap();
    assert!(
        text.contains("husk_vm_interrupts_total{pod=\"pod-a\",device=\"vsock\",kind=\"queue\"} 11"),
        "{text}"
    );
    // HEAD: the same head, no body.
    let head = raw(&path, b"HEAD /stats HTTP/1.0\r\n\r\n");
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "{head}");
    assert_eq!(asked.load(Ordering::SeqCst), 3);
    drop(server);
    // Stopped: nobody accepts any more.
    assert!(get(&path, "/stats", Duration::from_secs(5)).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn hostile_requests_get_errors_and_the_server_goes_on() {
    let (server, path, asked, dir) = serve_temp("hostile", Duration::from_millis(200));
    for (req, status) in [
        (
            &b"POST /stats HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello"[..],
            "405",
        ),
        (b"GET /../../etc/passwd HTTP/1.0\r\n\r\n", "404"),
        (b"GET /stats HTTP/9.9\r\n\r\n", "400"),
        (b"\x00\x01\x02\n\n", "400"),
        (b"GET /stats", "400"),
    ] {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(req).unwrap();
        // No more to come (the unterminated one is answered at EOF).
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with(&format!("HTTP/1.0 {status} ")),
            "{}: {out}",
            String::from_utf8_lossy(req)
        );
    }
    // A head larger than the bound: refused (the server may close before
    // reading all of it; either way no stats are computed).
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let huge = format!(
        "GET /stats HTTP/1.0\r\nX: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = s.write_all(huge.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.0 431 "), "{out}");
    // A client that connects and says nothing, one that goes at once:
    // the next one is still served (after the first's timeout).
    let silent = UnixStream::connect(&path).unwrap();
    drop(UnixStream::connect(&path).unwrap());
    let body = get(&path, "/stats", Duration::from_secs(30)).unwrap();
    assert!(serde_json::from_slice::<PodStats>(&body).is_ok());
    drop(silent);
    assert_eq!(
        asked.load(Ordering::SeqCst),
        1,
        "only the good request asked"
    );
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn binds_by_descriptor_0600_and_removes_its_socket() {
    let dir = temp_dir("bind");
    let fd = crate::shim_v2::host_fs::sys::open_host_dir(&dir).unwrap();
    let (source, _) = fake();
    let server = MonitorServer::start_at(fd.as_fd(), &dir, source).unwrap();
    let path = dir.join(SOCKET);
    assert_eq!(server.path(), path);
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    // This thread's umask is untouched (the server's thread has its own).
    // SAFETY: umask is read by setting it and putting it back.
    let mine = unsafe { libc::umask(0o022) };
    // SAFETY: as above.
    unsafe { libc::umask(mine) };
    assert_ne!(mine, 0o177);
    assert!(get(&path, "/stats", Duration::from_secs(30)).is_ok());
    drop(server);
    assert!(std::fs::symlink_metadata(&path).is_err(), "socket left");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn never_binds_through_a_link() {
    let dir = temp_dir("link");
    let elsewhere = temp_dir("link-target");
    std::os::unix::fs::symlink(elsewhere.join("planted"), dir.join(SOCKET)).unwrap();
    let fd = crate::shim_v2::host_fs::sys::open_host_dir(&dir).unwrap();
    let (source, _) = fake();
    let err = MonitorServer::start_at(fd.as_fd(), &dir, source).unwrap_err();
    assert!(err.to_string().contains("binding"), "{err}");
    assert!(!elsewhere.join("planted").exists());
    // The link is the planter's, left as it was.
    assert!(std::fs::symlink_metadata(dir.join(SOCKET))
        .unwrap()
        .file_type()
        .is_symlink());
    std::fs::remove_dir_all(dir).unwrap();
    std::fs::remove_dir_all(elsewhere).unwrap();
}

/// A real HTTP client (curl, where installed) reads both endpoints.
#[test]
fn curl_reads_it() {
    let (server, path, _, dir) = serve_temp("curl", IO_TIMEOUT);
    let curl = |target: &str| {
        std::process::Command::new("curl")
            .args(["-sSf", "--max-time", "30", "--unix-socket"])
            .arg(&path)
            .arg(format!("http://localhost{target}"))
            .output()
    };
    let out = match curl("/metrics") {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIP curl_reads_it: no curl here ({e})");
            return;
        }
    };
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("# TYPE husk_vm_interrupts_total counter"),
        "{text}"
    );
    let out = curl("/stats").unwrap();
    assert!(out.status.success(), "{out:?}");
    let stats: PodStats = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats.pod, "pod-a");
    // A 404 is an error to curl -f.
    assert!(!curl("/nope").unwrap().status.success());
    drop(server);
    std::fs::remove_dir_all(dir).unwrap();
}
