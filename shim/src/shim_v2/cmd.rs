//! The binary's three faces, as containerd 1.6 runs them:
//!
//! - `start` (cwd: the bundle): finds or starts the pod's shim and prints
//!   its ttrpc address. The pod is the spec's
//!   `io.kubernetes.cri.sandbox-id` annotation, else `io.husk.pod`, else
//!   the task id; its socket is `/run/containerd/s/<sha256(containerd
//!   address/namespace/pod)>`. A shim already listening there is reused;
//!   otherwise this binary is started again as `serve`, detached (new
//!   session), with the bound socket as fd 3, and `start` exits.
//! - `serve`: the shim itself (see [`serve`]).
//! - `delete` (cwd: the bundle): cleans up after a shim that died: its
//!   pod's directory and socket, unless the pod's shim still answers; prints
//!   a `DeleteResponse`.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use husk_shim_protos::shim::DeleteResponse;
use protobuf::{Message, MessageField};
use sha2::{Digest, Sha256};

use super::config::Config;
use super::events::{timestamp, Publisher, Recorder, RemotePublisher};
use super::host_cgroup;
use super::host_fs;
use super::pod::{pod_dir, SandboxFactory};
use super::service::TaskService;
use super::tasks::Tasks;

/// Where containerd's shims put their sockets.
const SOCKET_DIR: &str = "/run/containerd/s";
/// The listening socket's descriptor in `serve`.
const LISTEN_FD: i32 = 3;
/// The annotations that name a task's pod, in order.
pub const POD_ANNOTATIONS: &[&str] = &["io.kubernetes.cri.sandbox-id", "io.husk.pod"];

/// containerd's flags.
#[derive(Debug, Default, Clone)]
pub struct Args {
    pub namespace: String,
    pub address: String,
    pub publish_binary: String,
    pub id: String,
    pub bundle: Option<PathBuf>,
    pub debug: bool,
    pub action: String,
}

/// Parses Go-style flags (`-name value`, `-name=value`, `--name`).
pub fn parse_args(args: &[OsString]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = args.iter().map(|s| s.to_string_lossy().into_owned());
    while let Some(arg) = it.next() {
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if !a.action.is_empty() {
                return Err(format!("unexpected argument {arg:?}"));
            }
            a.action = arg;
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.to_owned(), None),
        };
        if name == "debug" || name == "v" {
            a.debug |= name == "debug" && inline.as_deref() != Some("false");
            if name == "v" {
                a.action = "version".into();
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .ok_or_else(|| format!("flag -{name} needs a value"))?,
        };
        match name.as_str() {
            "namespace" => a.namespace = value,
            "address" => a.address = value,
            "publish-binary" => a.publish_binary = value,
            "id" => a.id = value,
            "bundle" => a.bundle = Some(value.into()),
            // Flags of other containerd versions, harmless here.
            "socket" | "ttrpc-address" => {}
            _ => return Err(format!("unknown flag -{name}")),
        }
    }
    Ok(a)
}

/// The pod a bundle's task belongs to.
pub fn pod_of(bundle: &Path, id: &str) -> String {
    std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| {
            let ann = v.get("annotations")?.as_object()?.clone();
            POD_ANNOTATIONS
                .iter()
                .find_map(|k| ann.get(*k)?.as_str().map(str::to_owned))
        })
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| id.to_owned())
}

/// The pod's shim socket.
pub fn socket_path(address: &str, namespace: &str, pod: &str) -> PathBuf {
    let h = Sha256::digest(format!("{address}/{namespace}/{pod}").as_bytes());
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    Path::new(SOCKET_DIR).join(hex)
}

fn bundle_dir(args: &Args) -> Result<PathBuf, String> {
    match &args.bundle {
        Some(b) => Ok(b.clone()),
        None => std::env::current_dir().map_err(|e| format!("the bundle (cwd): {e}")),
    }
}

fn check(args: &Args) -> Result<(), String> {
    if args.namespace.is_empty() || args.id.is_empty() {
        return Err("-namespace and -id are required".into());
    }
    Ok(())
}

/// `start`: prints the pod's shim address, starting the shim if needed.
pub fn start(args: &Args) -> Result<String, String> {
    check(args)?;
    let bundle = bundle_dir(args)?;
    let pod = pod_of(&bundle, &args.id);
    let sock = socket_path(&args.address, &args.namespace, &pod);
    let address = format!("unix://{}", sock.display());
    std::fs::create_dir_all(SOCKET_DIR).map_err(|e| format!("{SOCKET_DIR}: {e}"))?;
    // One `start` at a time (a lock on the socket directory itself: no
    // file of ours beside containerd's sockets).
    let lock_path = Path::new(SOCKET_DIR);
    let lock = std::fs::File::open(lock_path).map_err(|e| format!("{SOCKET_DIR}: {e}"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` drops.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "locking {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    if UnixStream::connect(&sock).is_ok() {
        tracing::info!(pod = %pod, %address, "reusing the pod's shim");
        write_address(&bundle, &address)?;
        return Ok(address);
    }
    let _ = std::fs::remove_file(&sock);
    let listener =
        UnixListener::bind(&sock).map_err(|e| format!("binding {}: {e}", sock.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["-namespace", &args.namespace, "-address", &args.address])
        .args(["-publish-binary", &args.publish_binary, "-id", &args.id]);
    if args.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve")
        .current_dir(&bundle)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let fd = listener.as_raw_fd();
    // SAFETY: between fork and exec the closure calls only async-signal-
    // safe functions (setsid, dup2, fcntl) on descriptors that exist.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if fd == LISTEN_FD {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, LISTEN_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| format!("starting the shim: {e}"))?;
    tracing::info!(pod = %pod, pid = child.id(), %address, "shim started");
    write_address(&bundle, &address)?;
    let _ = std::fs::write(bundle.join("shim.pid"), child.id().to_string());
    Ok(address)
}

/// containerd reads `<bundle>/address` when it reconnects after a restart.
fn write_address(bundle: &Path, address: &str) -> Result<(), String> {
    let p = bundle.join("address");
    std::fs::write(&p, address).map_err(|e| format!("{}: {e}", p.display()))
}

/// How long `delete` waits for a killed shim to leave its host cgroup.
const DEAD_CGROUP_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `delete`: cleans up after a dead shim; returns the DeleteResponse.
pub fn delete(args: &Args) -> Result<Vec<u8>, String> {
    check(args)?;
    let bundle = bundle_dir(args)?;
    let pod = pod_of(&bundle, &args.id);
    let sock = socket_path(&args.address, &args.namespace, &pod);
    // A killed shim's socket keeps taking connections (into its backlog)
    // until the process is done exiting, which with a VM's memory to unmap
    // takes a while: the pid it was started with must be alive too.
    if UnixStream::connect(&sock).is_ok() && !recorded_shim_dead(&bundle) {
        tracing::info!(pod = %pod, task = %args.id, "the pod's shim still runs; it owns the pod");
    } else {
        // Nothing answers there: the socket is stale whatever else fails.
        let _ = std::fs::remove_file(&sock);
        let config = Config::load().map_err(|e| e.to_string())?;
        let dir = pod_dir(&config.run_dir, &args.namespace, &pod);
        // The dead shim's mounts died with its mount namespace. The walk
        // never follows a link or enters a mount point: a mount seen there
        // is someone else's, and the directory is kept.
        if dir.exists() {
            host_fs::remove_host_tree(&dir).map_err(|e| e.to_string())?;
            tracing::info!(pod = %pod, dir = %dir.display(), "removed the dead shim's pod directory");
        }
        // The pod's host cgroup, joined by the dead shim (the sandbox's
        // spec names it), now empty.
        if pod == args.id && config.host_cgroups {
            let spec = std::fs::read(bundle.join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            if let Some(path) = spec.as_ref().and_then(host_cgroup::cgroups_path) {
                // A killed shim with a VM takes a moment to leave it (its
                // guest memory is unmapped as it dies).
                let h = host_cgroup::host_hierarchies();
                let end = std::time::Instant::now() + DEAD_CGROUP_WAIT;
                loop {
                    let removed = host_cgroup::remove_leaf(&path, &h);
                    if !removed.is_empty() {
                        tracing::info!(pod = %pod, cgroup = %path, "removed the dead shim's host cgroup");
                    }
                    let left = host_cgroup::leaf_dirs(&path, &h);
                    if left.is_empty() || std::time::Instant::now() >= end {
                        if !left.is_empty() {
                            tracing::warn!(pod = %pod, cgroups = ?left, "the dead shim's host cgroup is still in use; left");
                        }
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
    let r = DeleteResponse {
        pid: 0,
        exit_status: 128 + 9,
        exited_at: MessageField::some(timestamp(SystemTime::now())),
        ..Default::default()
    };
    r.write_to_bytes().map_err(|e| e.to_string())
}

/// Whether the bundle's `shim.pid` (written by the `start` that spawned
/// the shim) names a process that is gone or exiting (a zombie, or
/// PF_EXITING: killed, its memory still being unmapped). False without the
/// file (a bundle of a later container of the pod).
fn recorded_shim_dead(bundle: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(bundle.join("shim.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return false;
    };
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => process_exiting(&stat),
        Err(_) => true,
    }
}

/// From a `/proc/<pid>/stat` line: the process is a zombie or dead, or its
/// main thread is exiting.
fn process_exiting(stat: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    // The fields after the command (which may hold spaces and parentheses).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("");
    // flags is field 9 of stat, the 7th after the command.
    let flags = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(0);
    matches!(state, "Z" | "X" | "x") || flags & PF_EXITING != 0
}

/// A private mount namespace (before any thread exists): the shim's
/// rootfs mounts die with it; host mounts still propagate in.
fn private_mounts() -> Result<(), String> {
    // SAFETY: unshare and mount with valid arguments; the process is
    // single-threaded here (serve's first step).
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(format!(
                "unshare(CLONE_NEWNS): {}",
                std::io::Error::last_os_error()
            ));
        }
        let root = c"/";
        let none = c"none";
        if libc::mount(
            none.as_ptr(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        ) != 0
        {
            return Err(format!(
                "making / rslave: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Blocks SIGTERM and SIGINT in this thread and every thread made after;
/// returns the set for `sigwait`.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: sigset operations on a local set; pthread_sigmask with it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The log: `<bundle>/log`, containerd's FIFO, opened read-write so that
/// a containerd restart does not turn writes into EPIPE.
fn open_log() -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("log")
        .ok()
}

/// `serve`: the shim. Returns when containerd's Shutdown (or SIGTERM)
/// ends it.
pub fn serve(args: &Args) -> Result<(), String> {
    check(args)?;
    private_mounts()?;
    let stop_signals = block_stop_signals();
    let config = Config::load().map_err(|e| e.to_string())?;
    init_log(args.debug || config.debug);
    let bundle = bundle_dir(args)?;
    let pod = pod_of(&bundle, &args.id);
    tracing::info!(pod = %pod, namespace = %args.namespace, pid = std::process::id(), "shim serving");
    // SAFETY: fd 3 is the listening socket `start` passed; nothing else
    // in this process owns it.
    let listener = unsafe { OwnedFd::from_raw_fd(LISTEN_FD) };
    let publisher: Arc<dyn Publisher> = match std::env::var("TTRPC_ADDRESS") {
        Ok(a) if !a.is_empty() => Arc::new(
            RemotePublisher::new(a, args.namespace.clone())
                .map_err(|e| format!("event thread: {e}"))?,
        ),
        _ => {
            tracing::warn!("no TTRPC_ADDRESS: events are not forwarded");
            Arc::new(Recorder::default())
        }
    };
    let factory = SandboxFactory {
        config,
        namespace: args.namespace.clone(),
        pod: pod.clone(),
    };
    let tasks = Tasks::new(Box::new(factory), publisher);
    let (tx, rx) = mpsc::channel::<&'static str>();
    let tx_shutdown = std::sync::Mutex::new(tx.clone());
    let service = TaskService {
        tasks: tasks.clone(),
        on_shutdown: Box::new(move || {
            let _ = tx_shutdown
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .send("shutdown");
        }),
    };
    let methods = husk_shim_protos::shim_ttrpc::create_task(Arc::new(service));
    let mut server = ttrpc::Server::new()
        .add_listener(listener.as_raw_fd())
        .map_err(|e| format!("ttrpc listener: {e}"))?
        .register_service(methods)
        .set_thread_count_max(512);
    server.start().map_err(|e| format!("ttrpc server: {e}"))?;
    std::thread::Builder::new()
        .name("husk-signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: the set is valid; sig is a valid out pointer.
            if unsafe { libc::sigwait(&stop_signals, &mut sig) } == 0 {
                let _ = tx.send("signal");
            }
        })
        .map_err(|e| format!("signal thread: {e}"))?;
    let why = rx.recv().unwrap_or("channel closed");
    tracing::info!(why, "shim exiting");
    // Let the Shutdown reply go out.
    std::thread::sleep(Duration::from_millis(50));
    tasks.teardown();
    server.shutdown();
    drop(listener);
    let sock = socket_path(&args.address, &args.namespace, &pod);
    let _ = std::fs::remove_file(&sock);
    Ok(())
}

fn init_log(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HUSK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match open_log() {
        Some(f) => {
            let f = std::sync::Mutex::new(f);
            builder
                .with_writer(move || LogWriter(f.lock().ok().and_then(|g| g.try_clone().ok())))
                .init();
        }
        None => builder.with_writer(std::io::sink).init(),
    }
}

/// Writes a log line to the FIFO; drops it when the FIFO is full (a
/// containerd that does not read must not stop the shim).
struct LogWriter(Option<std::fs::File>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.0 {
            Some(f) => match f.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(buf.len()),
                r => r,
            },
            None => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn exiting_processes_from_their_stat_line() {
        // pid (comm) state ppid pgrp session tty tpgid flags ...
        let line = |comm: &str, state: &str, flags: u64| {
            format!("42 ({comm}) {state} 1 42 42 0 -1 {flags} 0 0 0 0 0 0")
        };
        assert!(!process_exiting(&line("shim", "S", 0x40_0100)));
        assert!(process_exiting(&line("shim", "S", 0x40_0104)));
        assert!(process_exiting(&line("a) b", "Z", 0)));
        assert!(!process_exiting(&line("a) R (b", "R", 0)));
        assert!(!process_exiting("garbage"));
        // This process runs; a pid that is not there is dead.
        let dir = std::env::temp_dir().join(format!("husk-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!recorded_shim_dead(&dir), "no file: not known dead");
        std::fs::write(dir.join("shim.pid"), std::process::id().to_string()).unwrap();
        assert!(!recorded_shim_dead(&dir));
        std::fs::write(dir.join("shim.pid"), "999999999").unwrap();
        assert!(recorded_shim_dead(&dir));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flags_like_containerd_passes_them() {
        let a = parse_args(&os(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "abc",
            "-debug",
            "start",
        ]))
        .unwrap();
        assert_eq!(
            (a.namespace.as_str(), a.id.as_str(), a.action.as_str()),
            ("k8s.io", "abc", "start")
        );
        assert!(a.debug);
        let a = parse_args(&os(&["--namespace=x", "-id=y", "-bundle", "/b", "delete"])).unwrap();
        assert_eq!(a.bundle.as_deref(), Some(Path::new("/b")));
        assert!(parse_args(&os(&["-bogus", "1"])).is_err());
        assert!(parse_args(&os(&["-id"])).is_err());
        assert!(parse_args(&os(&["start", "delete"])).is_err());
    }

    #[test]
    fn pods_group_tasks() {
        let d = std::env::temp_dir().join(format!("husk-podof-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(pod_of(&d, "t1"), "t1");
        std::fs::write(
            d.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"sb1","io.husk.pod":"x"}}"#,
        )
        .unwrap();
        assert_eq!(pod_of(&d, "t1"), "sb1");
        std::fs::write(
            d.join("config.json"),
            r#"{"annotations":{"io.husk.pod":"x"}}"#,
        )
        .unwrap();
        assert_eq!(pod_of(&d, "t1"), "x");
        std::fs::remove_dir_all(&d).unwrap();
        let a = socket_path("/run/containerd/containerd.sock", "k8s.io", "sb1");
        assert_ne!(a, socket_path("/other.sock", "k8s.io", "sb1"));
        assert!(a.to_string_lossy().len() < 108);
    }
}
