//! A process's stdio: what the caller hands in ([`Stdio`]) made into the
//! three descriptors the child puts on 0, 1 and 2 (a pty opened here when
//! asked: see [`pty`](super::pty)).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::OwnedFd;

use super::{child, pty};

/// The process's stdio as the caller hands it in.
#[derive(Debug)]
pub enum Stdio {
    /// The caller's pipe (or socket, file) ends; no stdin: /dev/null.
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    /// A pty: the agent opens one (an exec's of its container's devpts,
    /// see [`pty`]); the slave is the process's stdio and controlling
    /// terminal, the master comes back to the caller.
    Terminal,
    /// /dev/null for all three.
    Null,
}

/// The process's prepared stdio until it is started.
pub(super) struct PreparedStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub ctty: bool,
}

/// The caller's copy and ours of a pty master.
pub(super) fn dup_pair(master: Option<OwnedFd>) -> io::Result<(Option<OwnedFd>, Option<OwnedFd>)> {
    match master {
        Some(m) => {
            let theirs = m.try_clone()?;
            Ok((Some(m), Some(theirs)))
        }
        None => Ok((None, None)),
    }
}

fn dev_null(write: bool) -> io::Result<OwnedFd> {
    Ok(OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?
        .into())
}

/// The process's stdio; a pty of the container whose init is `init_pid`
/// when it joins a running one (an exec), see [`pty`](super::pty).
pub(super) fn prepare_stdio(
    stdio: Stdio,
    size: Option<(u16, u16)>,
    init_pid: Option<libc::pid_t>,
) -> io::Result<(PreparedStdio, Option<OwnedFd>)> {
    let (stdin, stdout, stderr, ctty, master) = match stdio {
        Stdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let stdin = match stdin {
                Some(s) => s,
                None => dev_null(false)?,
            };
            (stdin, stdout, stderr, false, None)
        }
        Stdio::Null => (
            dev_null(false)?,
            dev_null(true)?,
            dev_null(true)?,
            false,
            None,
        ),
        Stdio::Terminal => {
            let (master, slave) = match init_pid {
                Some(pid) => pty::open_pty_in(pid, size)?,
                None => pty::open_pty(size)?,
            };
            (
                slave.try_clone()?,
                slave.try_clone()?,
                slave,
                true,
                Some(master),
            )
        }
    };
    Ok((
        PreparedStdio {
            stdin: child::above_stdio(stdin)?,
            stdout: child::above_stdio(stdout)?,
            stderr: child::above_stdio(stderr)?,
            ctty,
        },
        master,
    ))
}
