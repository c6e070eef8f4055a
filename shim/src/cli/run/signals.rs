//! Signals to `husk run`, as a stream of numbers: SIGINT and SIGTERM (to
//! forward to the container) and SIGWINCH (to resize its terminal). The
//! handlers write the signal's number to a pipe (async-signal-safe); a
//! thread reads them with [`Signals::next`].

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// The pipe's write end, for the handlers (-1: none yet). Never closed:
/// the handlers stay installed until the process exits.
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);
/// The last SIGINT/SIGTERM received (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The byte [`Signals::wake`] writes: no signal is 0.
const WAKE: u8 = 0;

extern "C" fn on_signal(sig: libc::c_int) {
    if sig == libc::SIGINT || sig == libc::SIGTERM {
        STOP_SIGNAL.store(sig, Ordering::SeqCst);
    }
    let fd = WRITE_FD.load(Ordering::SeqCst);
    if fd < 0 {
        return;
    }
    // SAFETY: errno is thread-local; saving and restoring it keeps the
    // interrupted code's value.
    let errno = unsafe { *libc::__errno_location() };
    // Signal numbers fit a byte.
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; the buffer is one valid byte.
    // The pipe is non-blocking: when it is full the signal is dropped
    // (a reader that far behind has plenty queued).
    unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// The signals received, in order.
#[derive(Debug)]
pub struct Signals {
    read: File,
}

impl Signals {
    /// Installs the handlers (process-wide: `husk run` is the process).
    /// One per process.
    pub fn install() -> io::Result<Signals> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fds[0] is the read end pipe2 just made; we own it.
        let read = unsafe { File::from_raw_fd(fds[0]) };
        // SAFETY: fcntl on the write end we just made.
        if unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            let e = io::Error::last_os_error();
            // SAFETY: closing the write end we own and published nowhere.
            unsafe { libc::close(fds[1]) };
            return Err(e);
        }
        if WRITE_FD
            .compare_exchange(-1, fds[1], Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            // SAFETY: as above.
            unsafe { libc::close(fds[1]) };
            return Err(io::Error::other("signal handlers already installed"));
        }
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGWINCH] {
            // SAFETY: sigaction is plain data; zeroed is a valid start.
            let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            // SAFETY: `sa.sa_mask` is a valid sigset for sigemptyset; the
            // handler only touches atomics, errno and write(2).
            let rc = unsafe {
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Signals { read })
    }

    /// The SIGINT or SIGTERM received so far, if any.
    pub fn stop_requested(&self) -> Option<i32> {
        match STOP_SIGNAL.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// The next signal; `None` once [`wake`](Self::wake) was called (or the
    /// pipe failed).
    pub fn next(&self) -> Option<i32> {
        let mut b = [0u8; 1];
        loop {
            match (&self.read).read(&mut b) {
                Ok(1) if b[0] == WAKE => return None,
                Ok(1) => return Some(i32::from(b[0])),
                Ok(_) => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Makes the reader's [`next`](Self::next) return `None`.
    pub fn wake(&self) {
        let fd = WRITE_FD.load(Ordering::SeqCst);
        let b = WAKE;
        // SAFETY: one valid byte to the pipe's write end (never closed).
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}
