//! The monitor's server: one thread blocked in `accept` on the pod's
//! monitor socket, answering one short request per connection.
//!
//! Bounded everywhere: a request head of at most
//! [`http::MAX_REQUEST`](super::http::MAX_REQUEST) bytes, read and write
//! timeouts per connection, connections served one at a time (a client
//! that stalls holds the next one back by the timeout at most), peers
//! other than root (or the shim's own user) closed unanswered. Nothing
//! runs between requests: the thread sleeps in `accept` until a client
//! comes or the server is dropped (`shutdown(2)` of the listener wakes
//! it).

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use super::http::{self, ReadError, Refusal, Route};
use super::{metrics, PodStats, SOCKET};

/// Where the counters come from (the pod VM's `StatsReader`; a fake in
/// tests).
pub trait StatsSource: Send + Sync + 'static {
    fn pod_stats(&self) -> PodStats;
}

impl<F: Fn() -> PodStats + Send + Sync + 'static> StatsSource for F {
    fn pod_stats(&self) -> PodStats {
        self()
    }
}

/// How long a connection may take to send its request, and to take the
/// answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the monitor did not start.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("monitor socket {path}: {what}: {source}")]
    Io {
        path: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A running monitor; dropping it stops its thread (and, for
/// [`start_at`](Self::start_at), removes its socket).
pub struct MonitorServer {
    /// A duplicate of the listener, to shut it down.
    listener: OwnedFd,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The socket's name in its directory, for removal, with the
    /// directory (a duplicate of the caller's descriptor).
    entry: Option<(OwnedFd, String)>,
    path: PathBuf,
}

impl std::fmt::Debug for MonitorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorServer")
            .field("path", &self.path)
            .finish()
    }
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> MonitorError {
    let path = path.display().to_string();
    move |source| MonitorError::Io { path, what, source }
}

/// Gives the calling thread its own umask, 0177: what it binds is 0600
/// from the start (no chmod after, on a path).
fn private_umask() -> io::Result<()> {
    // SAFETY: unshare(CLONE_FS) copies this thread's cwd/root/umask into a
    // private fs_struct; it touches no memory of ours.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: umask cannot fail; it now affects this thread only.
    unsafe { libc::umask(0o177) };
    Ok(())
}

/// Binds [`SOCKET`] in the directory `dir` (a descriptor: the name is
/// created beneath it, through `/proc/self/fd`, and an existing entry of
/// that name, a link included, is an error: bind never follows it), on
/// the calling thread, which must have a private umask.
fn bind_at(dir: BorrowedFd<'_>) -> io::Result<UnixListener> {
    let path = format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd());
    UnixListener::bind(path)
}

/// Whether the peer is root or the shim's own user.
fn peer_allowed(s: &UnixStream) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of `len` bytes; both pointers are
    // valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    rc == 0 && (cred.uid == 0 || cred.uid == euid)
}

/// Answers one connection.
fn handle(mut s: UnixStream, source: &dyn StatsSource, timeout: Duration) {
    if !peer_allowed(&s) {
        tracing::debug!("monitor: a peer that is not root; closed");
        return;
    }
    if s.set_read_timeout(Some(timeout)).is_err() || s.set_write_timeout(Some(timeout)).is_err() {
        return;
    }
    let request = match http::read_head(&mut s) {
        Ok(head) => http::parse(&head),
        Err(ReadError::Refused(r)) => Err(r),
        Err(ReadError::Io(e)) => {
            tracing::debug!(error = %e, "monitor: no request");
            return;
        }
    };
    let response = match request {
        Ok(req) => {
            let stats = source.pod_stats();
            let (body, ctype) = match req.route {
                Route::Metrics => (metrics::render(&stats).into_bytes(), metrics::CONTENT_TYPE),
                Route::Stats => match serde_json::to_vec_pretty(&stats) {
                    Ok(mut b) => {
                        b.push(b'\n');
                        (b, "application/json")
                    }
                    Err(e) => {
                        let body = format!("encoding the stats: {e}\n");
                        let r = http::response(
                            (500, "Internal Server Error"),
                            "text/plain",
                            body.as_bytes(),
                            req.head_only,
                        );
                        let _ = s.write_all(&r);
                        return;
                    }
                },
            };
            http::response((200, "OK"), ctype, &body, req.head_only)
        }
        Err(refusal) => {
            let status = refusal.status();
            let body = match refusal {
                Refusal::NotFound => "try GET /metrics or GET /stats\n".to_string(),
                _ => format!("{}\n", status.1),
            };
            http::response(status, "text/plain", body.as_bytes(), false)
        }
    };
    let _ = s.write_all(&response);
}

fn serve_loop(
    listener: UnixListener,
    source: Box<dyn StatsSource>,
    stop: Arc<AtomicBool>,
    timeout: Duration,
) {
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                if stop.load(Ordering::Acquire) {
                    break;
                }
                handle(s, source.as_ref(), timeout);
            }
            Err(_) if stop.load(Ordering::Acquire) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // Out of descriptors and the like: say so, and do not spin.
                tracing::warn!(error = %e, "monitor: accept failed");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

impl MonitorServer {
    /// Serves `source` on `listener` (bound by the caller).
    pub fn serve(
        listener: UnixListener,
        path: PathBuf,
        source: Box<dyn StatsSource>,
        timeout: Duration,
    ) -> Result<Self, MonitorError> {
        let dup = listener
            .as_fd()
            .try_clone_to_owned()
            .map_err(io_err(&path, "dup"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("husk-monitor".into())
            .spawn(move || serve_loop(listener, source, thread_stop, timeout))
            .map_err(io_err(&path, "spawning its thread"))?;
        Ok(Self {
            listener: dup,
            stop,
            thread: Some(thread),
            entry: None,
            path,
        })
    }

    /// Binds [`SOCKET`] in the directory `dir` (shown as `dir_path`) with
    /// mode 0600, from the server's own thread (its own umask), and
    /// serves `source` there.
    pub fn start_at(
        dir: BorrowedFd<'_>,
        dir_path: &Path,
        source: Box<dyn StatsSource>,
    ) -> Result<Self, MonitorError> {
        let path = dir_path.join(SOCKET);
        let dir = dir.try_clone_to_owned().map_err(io_err(&path, "dup"))?;
        let (tx, rx) = mpsc::channel::<io::Result<OwnedFd>>();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let bind_dir = dir.try_clone().map_err(io_err(&path, "dup"))?;
        let thread = std::thread::Builder::new()
            .name("husk-monitor".into())
            .spawn(move || {
                let bound = private_umask().and_then(|()| bind_at(bind_dir.as_fd()));
                drop(bind_dir);
                let listener = match bound.and_then(|l| Ok((l.as_fd().try_clone_to_owned()?, l))) {
                    Ok((dup, l)) => {
                        let _ = tx.send(Ok(dup));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                serve_loop(listener, source, thread_stop, IO_TIMEOUT);
            })
            .map_err(io_err(&path, "spawning its thread"))?;
        let listener = match rx.recv() {
            Ok(Ok(fd)) => fd,
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(io_err(&path, "binding")(e));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(io_err(&path, "binding")(io::Error::other(
                    "the monitor thread ended",
                )));
            }
        };
        Ok(Self {
            listener,
            stop,
            thread: Some(thread),
            entry: Some((dir, SOCKET.to_owned())),
            path,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for MonitorServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // SAFETY: shutdown of a socket descriptor we own; it wakes the
        // thread's accept (EINVAL) and fails nothing else.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some((dir, name)) = self.entry.take() {
            if let Err(e) = crate::shim_v2::host_fs::sys::unlink_at(dir.as_fd(), &name, false) {
                if e.raw_os_error() != Some(libc::ENOENT) {
                    tracing::warn!(path = %self.path.display(), error = %e, "removing the monitor socket");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
