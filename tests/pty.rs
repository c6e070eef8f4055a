//! Runs a command on a pseudo-terminal (its controlling terminal, for
//! `ctr run -t` / `ctr task exec -t`), types into it and reads what it
//! prints, expect-style and with timeouts (a hung command fails the test).
//!
//! ```no_run
//! use std::time::Duration;
//! let mut p = husk_tests::pty::Pty::spawn(std::process::Command::new("sh")).expect("pty");
//! p.expect("# ", Duration::from_secs(5)).ok();
//! p.send(b"echo typed-$((1+2))\n").expect("send");
//! p.expect("typed-3", Duration::from_secs(5)).expect("echo ran");
//! p.send(b"exit\n").expect("send");
//! let (status, output) = p.wait(Duration::from_secs(5)).expect("exit");
//! ```

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::FromRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the reader thread collected: the output so far, and whether the
/// terminal has closed (every slave descriptor gone).
#[derive(Default)]
struct Collected {
    bytes: Vec<u8>,
    closed: bool,
}

/// A child process whose stdin, stdout and stderr are a new pty's slave,
/// which is also its controlling terminal (it leads a new session).
pub struct Pty {
    master: File,
    child: Child,
    out: Arc<(Mutex<Collected>, Condvar)>,
}

/// Opens a pty pair (master, slave), both close-on-exec, the window 80x24.
fn open_pty() -> io::Result<(File, File)> {
    // SAFETY: posix_openpt takes flags only; the result is checked.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `m` is a descriptor we just opened and own from here on.
    let master = unsafe { File::from_raw_fd(m) };
    // SAFETY: grantpt/unlockpt on our own master descriptor.
    if unsafe { libc::grantpt(m) } != 0 || unsafe { libc::unlockpt(m) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer is valid for `name.len()` bytes; ptsname_r
    // NUL-terminates it on success.
    let rc = unsafe { libc::ptsname_r(m, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: the path is the NUL-terminated name ptsname_r wrote.
    let s = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `s` is a descriptor we just opened and own from here on.
    let slave = unsafe { File::from_raw_fd(s) };
    let ws = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer.
    if unsafe { libc::ioctl(m, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((master, slave))
}

impl Pty {
    /// Starts `cmd` on a new pty (taken by value: the parent's copy of the
    /// slave must close, or the end of the output is never seen).
    pub fn spawn(mut cmd: Command) -> io::Result<Pty> {
        let (master, slave) = open_pty()?;
        cmd.stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        // SAFETY: the closure only makes async-signal-safe calls (setsid,
        // ioctl) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // Our copies of the slave close with `cmd`.
        drop(cmd);
        let out = Arc::new((Mutex::new(Collected::default()), Condvar::new()));
        let mut reader = master.try_clone()?;
        let shared = Arc::clone(&out);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                // EIO once the last slave descriptor closes.
                let n = reader.read(&mut buf).unwrap_or(0);
                let (lock, cv) = &*shared;
                let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
                if n == 0 {
                    c.closed = true;
                } else {
                    c.bytes.extend_from_slice(&buf[..n]);
                }
                cv.notify_all();
                if n == 0 {
                    return;
                }
            }
        });
        Ok(Pty { master, child, out })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Types `bytes` (as if at the keyboard: `\n` ends a line, `\x03` is ^C).
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.master.write_all(bytes)
    }

    /// Everything the terminal has shown so far.
    pub fn output(&self) -> Vec<u8> {
        let (lock, _) = &*self.out;
        lock.lock().unwrap_or_else(|e| e.into_inner()).bytes.clone()
    }

    /// The output so far, lossily decoded.
    pub fn output_string(&self) -> String {
        String::from_utf8_lossy(&self.output()).into_owned()
    }

    /// Waits until the output contains `needle` (anywhere, from the start);
    /// a timeout or the terminal closing first is an error carrying the
    /// output so far.
    pub fn expect(&self, needle: &str, timeout: Duration) -> io::Result<()> {
        let end = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if contains(&c.bytes, needle.as_bytes()) {
                return Ok(());
            }
            let now = Instant::now();
            if c.closed || now >= end {
                let why = if c.closed {
                    "the terminal closed"
                } else {
                    "timed out"
                };
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{why} waiting for {needle:?}; output so far: {:?}",
                        String::from_utf8_lossy(&c.bytes)
                    ),
                ));
            }
            c = cv
                .wait_timeout(c, end - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Waits up to `timeout` for the child to exit (killing it past that:
    /// an error with the output so far), then briefly for the rest of its
    /// output; returns its status and everything the terminal showed.
    pub fn wait(mut self, timeout: Duration) -> io::Result<(ExitStatus, Vec<u8>)> {
        let end = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait()? {
                break s;
            }
            if Instant::now() >= end {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "pty child did not exit in {timeout:?} (killed); output: {:?}",
                        self.output_string()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // A grandchild may still hold the slave: wait a little, not forever.
        let _ = self.expect_closed(Duration::from_secs(2));
        Ok((status, self.output()))
    }

    fn expect_closed(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let (lock, cv) = &*self.out;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        while !c.closed {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            c = cv
                .wait_timeout(c, end - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        true
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        // A test that failed half-way must not leave its child behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `cmd` on a pty: waits for its first output (a prompt), types
/// `input`, and waits up to `timeout` for it to exit. Returns its status
/// and everything the terminal showed (the echo of the input included).
pub fn run_in_pty(
    cmd: Command,
    input: &[u8],
    timeout: Duration,
) -> io::Result<(ExitStatus, Vec<u8>)> {
    let end = Instant::now() + timeout;
    let mut p = Pty::spawn(cmd)?;
    {
        let (lock, cv) = &*p.out;
        let mut c = lock.lock().unwrap_or_else(|e| e.into_inner());
        while c.bytes.is_empty() && !c.closed && Instant::now() < end {
            c = cv
                .wait_timeout(c, end.saturating_duration_since(Instant::now()))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
    p.send(input)?;
    p.wait(end.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_on_a_pty_runs_typed_input() {
        let mut cmd = Command::new("sh");
        cmd.arg("-i").env("PS1", "prompt> ");
        let (status, out) = run_in_pty(
            cmd,
            b"tty; echo typed-$((1+2)); exit 7\n",
            Duration::from_secs(10),
        )
        .expect("sh on a pty");
        let out = String::from_utf8_lossy(&out);
        assert_eq!(status.code(), Some(7), "{out}");
        assert!(out.contains("typed-3"), "{out}");
        assert!(out.contains("/dev/pts/"), "{out}");
    }
}
