//! The host terminal for `husk run -t`: raw mode (restored by a guard on
//! every way out) and its size.

use std::io;
use std::os::fd::RawFd;

use crate::agent_client::TtySize;

/// Whether `fd` is a terminal.
pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only reads the descriptor's state; any value is safe.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal on `fd`, when it is one and has a size.
pub fn window_size(fd: RawFd) -> Option<TtySize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into `ws`, which is valid and
    // writable for the call.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some(TtySize {
        rows: ws.ws_row,
        cols: ws.ws_col,
    })
}

/// The first terminal size among stdin, stdout and stderr.
pub fn host_size() -> Option<TtySize> {
    [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO]
        .into_iter()
        .find_map(window_size)
}

/// A terminal in raw mode; dropping it restores the settings it found.
#[derive(Debug)]
pub struct RawMode {
    fd: RawFd,
    saved: libc::termios,
}

impl RawMode {
    /// Puts the terminal on `fd` in raw mode (no echo, no line editing, no
    /// signal keys: Ctrl-C is a byte for the container).
    pub fn enable(fd: RawFd) -> io::Result<RawMode> {
        // SAFETY: termios is plain data; all zeroes is a valid value that
        // tcgetattr overwrites.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `saved` is a valid, writable termios for the call.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios; cfmakeraw only edits its flags.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: `raw` is a valid termios, read by the call.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawMode { fd, saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: `saved` is the termios tcgetattr filled for this fd.
        let rc = unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
        if rc != 0 {
            tracing::warn!(error = %io::Error::last_os_error(), "restoring the terminal");
        }
    }
}
