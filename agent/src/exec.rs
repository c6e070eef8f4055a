//! `Exec`: runs a command to completion in its own process group and
//! collects its exit status and output.
//!
//! [`ExecSpec::validate`] checks the request and resolves the program (PATH
//! lookup happens here, in the agent, so a missing program is a clean
//! NOT_FOUND). [`run`] starts it through the [`Reaper`] (which alone waits for the
//! child, see its docs), feeds stdin and drains stdout and stderr in one
//! poll(2) loop (a command filling one pipe cannot block on it while we wait
//! on another), and on timeout kills the whole process group.
//!
//! The child is started like glibc's posix_spawn does it:
//! clone(CLONE_VM | CLONE_VFORK) on a stack of its own, so nothing of the
//! agent's address space is copied (a fork's page-table copy and the
//! copy-on-write faults after it cost seconds where the guest kernel is
//! emulated, on nested PVM hosts); we are suspended until it has exec'd. It
//! runs only async-signal-safe calls on data prepared before the clone, with
//! every signal blocked until its dispositions are reset. posix_spawn itself
//! is not used: it waits for a child whose exec failed, and only the
//! [`Reaper`] may wait.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use husk_agent_protocol::agent::ExecRequest;
use husk_agent_protocol::{
    EXEC_DEFAULT_PATH, EXEC_DEFAULT_TIMEOUT_MS, EXEC_OUTPUT_CAP, EXEC_STDIN_MAX,
};
use thiserror::Error;

use crate::identity::InvalidField;
use crate::reaper::{cloexec_pipe, kill_group, ExitStatus, ExitWatch, Reaper};

/// How long output is still collected after the command exited, from
/// processes it left behind that hold its stdout or stderr.
pub const OUTPUT_GRACE: Duration = Duration::from_millis(250);
/// How long a killed command may take to be reaped before `Exec` gives up
/// on it.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
/// Read size for stdout and stderr.
const READ_CHUNK: usize = 64 * 1024;

/// Why `Exec` failed (a command that ran and failed is not an error: its
/// exit status is the answer).
#[derive(Debug, Error)]
pub enum ExecError {
    #[error(transparent)]
    Invalid(#[from] InvalidField),
    #[error("argv[0] {program:?}: not found in PATH {path}")]
    NotInPath { program: String, path: String },
    #[error("{step} for {program}: {source}")]
    Start {
        program: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("running {program}: {what}: {source}")]
    Io {
        program: String,
        what: &'static str,
        source: io::Error,
    },
    #[error("running {program}: no exit status {KILL_WAIT:?} after SIGKILL (pid {pid})")]
    Unkillable { program: String, pid: libc::pid_t },
    #[error("running {program}: its exit status was lost (pid {pid})")]
    Lost { program: String, pid: libc::pid_t },
}

impl ExecError {
    /// Makes an I/O error of `program`'s run at step `what` (for `map_err`).
    fn io(program: &str, what: &'static str) -> impl FnOnce(io::Error) -> ExecError {
        let program = program.to_owned();
        move |source| ExecError::Io {
            program,
            what,
            source,
        }
    }

    /// The ttrpc code the error is answered with.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Self::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
            Self::NotInPath { .. } => ttrpc::Code::NOT_FOUND,
            Self::Start { source, .. } => match source.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) => ttrpc::Code::NOT_FOUND,
                Some(libc::EACCES | libc::EPERM) => ttrpc::Code::PERMISSION_DENIED,
                Some(libc::ENOEXEC) => ttrpc::Code::INVALID_ARGUMENT,
                _ => ttrpc::Code::INTERNAL,
            },
            Self::Io { .. } | Self::Unkillable { .. } | Self::Lost { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// A checked `Exec` request, ready to run.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The program to execve: absolute.
    pub program: CString,
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub cwd: CString,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

fn c_string(field: &'static str, what: &str, s: &str) -> Result<CString, InvalidField> {
    CString::new(s).map_err(|_| invalid(field, format!("{what} {s:?} contains NUL")))
}

impl ExecSpec {
    /// Checks every field (the first bad one is the error) and resolves
    /// argv[0]: a name without `/` is looked up in the environment's PATH.
    pub fn validate(req: &ExecRequest) -> Result<Self, ExecError> {
        let Some(arg0) = req.argv.first() else {
            return Err(invalid("argv", "empty: want the command and its arguments").into());
        };
        if arg0.is_empty() {
            return Err(invalid("argv", "argv[0] is empty").into());
        }
        let argv = req
            .argv
            .iter()
            .enumerate()
            .map(|(i, a)| c_string("argv", &format!("argv[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env = Vec::with_capacity(req.env.len() + 1);
        let mut path = None;
        for (i, kv) in req.env.iter().enumerate() {
            let what = format!("env[{i}]");
            match kv.split_once('=') {
                Some((key, _)) if !key.is_empty() => {
                    if key == "PATH" {
                        path = Some(&kv[5..]);
                    }
                }
                _ => return Err(invalid("env", format!("{what} {kv:?} is not KEY=VALUE")).into()),
            }
            env.push(c_string("env", &what, kv)?);
        }
        let path = match path {
            Some(p) => p,
            None => {
                env.push(c_string(
                    "env",
                    "PATH",
                    &format!("PATH={EXEC_DEFAULT_PATH}"),
                )?);
                EXEC_DEFAULT_PATH
            }
        };
        crate::guest_env::add(&mut env);
        let cwd = if req.cwd.is_empty() { "/" } else { &req.cwd };
        let cwd_c = c_string("cwd", "cwd", cwd)?;
        if !cwd.starts_with('/') {
            return Err(invalid("cwd", format!("{cwd:?} is not an absolute path")).into());
        }
        match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(invalid("cwd", format!("{cwd}: not a directory")).into()),
            Err(e) => return Err(invalid("cwd", format!("{cwd}: {e}")).into()),
        }
        if req.stdin.len() > EXEC_STDIN_MAX {
            return Err(invalid(
                "stdin",
                format!("{} bytes, at most {EXEC_STDIN_MAX}", req.stdin.len()),
            )
            .into());
        }
        let program = resolve(arg0, path)?;
        let program = c_string("argv", "argv[0]", &program)?;
        let timeout_ms = match req.timeout_ms {
            0 => EXEC_DEFAULT_TIMEOUT_MS,
            t => t,
        };
        Ok(Self {
            program,
            argv,
            env,
            cwd: cwd_c,
            stdin: req.stdin.clone(),
            timeout: Duration::from_millis(u64::from(timeout_ms)),
        })
    }

    /// argv[0], for messages.
    fn name(&self) -> String {
        self.argv
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// An absolute `arg0` as is; a name without `/`: the first executable
/// regular file of that name in `path`'s absolute directories.
fn resolve(arg0: &str, path: &str) -> Result<String, ExecError> {
    if arg0.starts_with('/') {
        return Ok(arg0.to_owned());
    }
    if arg0.contains('/') {
        return Err(invalid(
            "argv",
            format!("argv[0] {arg0:?} is a relative path: want an absolute path or a name in PATH"),
        )
        .into());
    }
    let found = path
        .split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| Path::new(d).join(arg0))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        });
    match found {
        Some(p) => Ok(p.to_string_lossy().into_owned()),
        None => Err(ExecError::NotInPath {
            program: arg0.to_owned(),
            path: path.to_owned(),
        }),
    }
}

/// How the command ended and what it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timed_out: bool,
}

/// The steps the child reports a failure of (one byte, then errno).
const STEPS: [&str; 4] = [
    "set up stdio",
    "set the signal mask",
    "change directory",
    "exec",
];
const STEP_STDIO: u8 = 0;
const STEP_SIGMASK: u8 = 1;
const STEP_CHDIR: u8 = 2;
const STEP_EXEC: u8 = 3;

/// Everything the child needs between clone and exec, built before the
/// clone (the child must not allocate).
struct ChildSetup<'a> {
    program: &'a CStr,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: &'a CStr,
    stdin: RawFd,
    stdout: RawFd,
    stderr: RawFd,
    report: RawFd,
    empty_mask: libc::sigset_t,
    /// The signals whose disposition the child resets.
    reset: &'static SignalSet,
}

/// The kernel's `struct sigaction` (x86_64 and aarch64 layout: handler,
/// flags, restorer, a 64-bit mask), for a raw rt_sigaction(2).
#[repr(C)]
pub(crate) struct KernelSigaction {
    pub(crate) handler: libc::sighandler_t,
    pub(crate) flags: libc::c_ulong,
    pub(crate) restorer: usize,
    pub(crate) mask: u64,
}

/// Signal numbers, at most 64.
pub struct SignalSet {
    sigs: [libc::c_int; 64],
    len: usize,
}

impl SignalSet {
    pub fn as_slice(&self) -> &[libc::c_int] {
        &self.sigs[..self.len]
    }
}

static NOT_DEFAULT: OnceLock<SignalSet> = OnceLock::new();

/// The signals whose disposition in this process is not `SIG_DFL` (std
/// ignores SIGPIPE and catches SIGSEGV/SIGBUS; glibc keeps handlers for 32
/// and 33): the ones a child must reset before exec, since an ignored
/// signal stays ignored across exec and a handler of ours must not run in
/// the child that shares our memory. Asked once (64 rt_sigaction calls,
/// ~0.3 ms each where the guest kernel is emulated) rather than resetting
/// all 64 in every child; the agent installs no handler after start-up.
/// [`prepare`] asks before the agent reports ready.
pub fn not_default_signals() -> &'static SignalSet {
    NOT_DEFAULT.get_or_init(|| {
        let mut set = SignalSet {
            sigs: [0; 64],
            len: 0,
        };
        for sig in 1..=64 {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            let mut old = KernelSigaction {
                handler: libc::SIG_DFL,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            // SAFETY: a query: no new action; `old` is a valid, writable
            // kernel sigaction for the call. The raw call also reaches the
            // signals glibc reserves (32, 33).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    std::ptr::null::<KernelSigaction>(),
                    &mut old,
                    8usize,
                )
            };
            // A signal we cannot ask about: reset it to be safe.
            if rc != 0 || old.handler != libc::SIG_DFL {
                set.sigs[set.len] = sig;
                set.len += 1;
            }
        }
        set
    })
}

/// Does once, before the agent reports ready, what the first `Exec` would
/// otherwise do (see [`not_default_signals`]).
pub fn prepare() {
    not_default_signals();
}

/// `fd` moved above 0..=2 (so that placing the child's stdio cannot clobber
/// it), close-on-exec.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: fcntl on an open descriptor; the result is checked.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn set_nonblocking(fd: &impl AsRawFd) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on an open descriptor with integer arguments.
    let ok = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
    };
    if !ok {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The child's stack: mapped memory with an inaccessible guard page below
/// it, unmapped on drop.
pub(crate) struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// What the child needs: a few frames of our code and libc syscall
    /// wrappers; execve itself runs on the kernel's stack.
    const SIZE: usize = 64 * 1024;
    const GUARD: usize = 4096;

    pub(crate) fn new() -> io::Result<Self> {
        let len = Self::SIZE + Self::GUARD;
        // SAFETY: a fresh anonymous private mapping; no existing memory is
        // touched. The result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping just made (the stack
        // grows down towards it).
        if unsafe { libc::mprotect(base, Self::GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The initial stack pointer: the mapping's end (page-aligned, so
    /// 16-byte aligned).
    pub(crate) fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is how clone(2)
        // takes a downward-growing stack.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used: the child has exec'd or
        // exited before clone returned (CLONE_VFORK).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The clone(2) entry point: `arg` is the `ChildSetup`.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `clone_vfork` passes a pointer to a ChildSetup that stays
    // alive (and unchanged) until clone returns, i.e. past our exec.
    unsafe { child_after_fork(&*arg.cast::<ChildSetup<'_>>()) }
}

/// Starts the child with clone(CLONE_VM | CLONE_VFORK) (see the module docs)
/// and returns its pid once it has exec'd or exited. Its exit signal is
/// SIGCHLD, so it is reaped like any child.
fn clone_vfork(setup: &ChildSetup<'_>) -> io::Result<libc::pid_t> {
    let stack = ChildStack::new()?;
    // SAFETY: child_entry only runs child_after_fork on `setup`, which
    // outlives the call (we are suspended until the child exec'd or exited).
    unsafe {
        clone_vfork_with(
            &stack,
            0,
            child_entry,
            std::ptr::from_ref(setup).cast_mut().cast(),
        )
    }
}

/// clone(CLONE_VM | CLONE_VFORK | SIGCHLD | `extra_flags`) running
/// `entry(arg)` on `stack`, with every signal blocked around it: while the
/// child shares our memory no signal handler of ours may run in it (it
/// resets dispositions with [`reset_signals`], then its mask). Returns once
/// the child has exec'd or exited. Shared by `Exec` and the containers.
///
/// # Safety
///
/// `entry` must only make async-signal-safe calls on data behind `arg`,
/// which must stay valid until this returns; `stack` is used by nothing
/// else meanwhile.
pub(crate) unsafe fn clone_vfork_with(
    stack: &ChildStack,
    extra_flags: libc::c_int,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> io::Result<libc::pid_t> {
    // SAFETY: sigset_t is plain data that sigfillset initialises;
    // pthread_sigmask reads one set and writes the other.
    let (all, mut old) = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        (all, std::mem::zeroed::<libc::sigset_t>())
    };
    // SAFETY: valid sets, as above.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: the caller's contract: `entry` and `arg` are fit for a
    // CLONE_VM child and outlive the call (CLONE_VFORK); the stack is ours.
    let pid = unsafe {
        libc::clone(
            entry,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD | extra_flags,
            arg,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(clone_error);
    }
    Ok(pid)
}

/// In a cloned child: puts every signal of `set` (those not at their
/// default in the agent, [`not_default_signals`]) back to `SIG_DFL`, so
/// none stays ignored across exec and no handler of ours runs in the child.
/// The raw call also reaches the signals glibc keeps for itself (32, 33),
/// which its sigaction refuses.
///
/// # Safety
///
/// Async-signal-safe; call only in a freshly cloned child.
pub(crate) unsafe fn reset_signals(set: &SignalSet) {
    let default = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    for &sig in set.as_slice() {
        // SAFETY: a valid kernel sigaction, alive for the call.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &default,
                std::ptr::null_mut::<KernelSigaction>(),
                8usize,
            )
        };
    }
}

/// Runs in the child after clone: places stdio, makes the process group
/// its own, resets every signal's disposition and then the signal mask,
/// changes directory and execs. Reports a failed step through `report`.
///
/// # Safety
///
/// Call only in a freshly cloned child with every signal blocked; every
/// pointer in `s` must be valid (the parent keeps them alive until the child
/// has exec'd).
unsafe fn child_after_fork(s: &ChildSetup<'_>) -> ! {
    let fail = |step: u8| -> ! {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let mut msg = [0u8; 5];
        msg[0] = step;
        msg[1..].copy_from_slice(&errno.to_ne_bytes());
        // SAFETY: write and _exit are async-signal-safe; `msg` is a live
        // buffer of the given length.
        unsafe {
            libc::write(s.report, msg.as_ptr().cast(), msg.len());
            libc::_exit(127)
        }
    };
    // SAFETY: only async-signal-safe calls, on descriptors and pointers
    // prepared before the clone.
    unsafe {
        libc::setpgid(0, 0);
        // Above 2 (see above_stdio): dup2 clears close-on-exec on the copy.
        if libc::dup2(s.stdin, 0) < 0 || libc::dup2(s.stdout, 1) < 0 || libc::dup2(s.stderr, 2) < 0
        {
            fail(STEP_STDIO);
        }
        // The agent blocks SIGCHLD, SIGTERM, ... and std ignores SIGPIPE;
        // both would outlive exec. Every signal not at its default is reset
        // (see not_default_signals).
        reset_signals(s.reset);
        if libc::sigprocmask(libc::SIG_SETMASK, &s.empty_mask, std::ptr::null_mut()) != 0 {
            fail(STEP_SIGMASK);
        }
        if libc::chdir(s.cwd.as_ptr()) != 0 {
            fail(STEP_CHDIR);
        }
        // Whatever descriptor some thread opened without close-on-exec
        // (Linux 5.11+; best effort).
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
        libc::execve(s.program.as_ptr(), s.argv.as_ptr(), s.envp.as_ptr());
    }
    fail(STEP_EXEC)
}

/// The parent's ends of the child's pipes.
struct ParentEnds {
    stdin: Option<File>,
    stdout: File,
    stderr: File,
}

/// Starts the child through `reaper`; returns its exit watch and our pipe
/// ends once it has exec'd. A failed step before exec is
/// [`ExecError::Start`] (the child is reaped first).
fn start(reaper: &Reaper, spec: &ExecSpec) -> Result<(ExitWatch, ParentEnds), ExecError> {
    let name = spec.name();
    let io_err = |what| ExecError::io(&name, what);
    let (stdin_r, stdin_w) = cloexec_pipe().map_err(io_err("pipe"))?;
    let (stdout_r, stdout_w) = cloexec_pipe().map_err(io_err("pipe"))?;
    let (stderr_r, stderr_w) = cloexec_pipe().map_err(io_err("pipe"))?;
    let (report_r, report_w) = cloexec_pipe().map_err(io_err("pipe"))?;
    let [stdin_r, stdout_w, stderr_w, report_w] =
        [stdin_r, stdout_w, stderr_w, report_w].map(above_stdio);
    let (stdin_r, stdout_w, stderr_w, report_w) = (
        stdin_r.map_err(io_err("pipe"))?,
        stdout_w.map_err(io_err("pipe"))?,
        stderr_w.map_err(io_err("pipe"))?,
        report_w.map_err(io_err("pipe"))?,
    );
    let nul_terminated = |v: &[CString]| {
        v.iter()
            .map(|c| c.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    // SAFETY: sigset_t is plain data that sigemptyset initialises.
    let empty_mask = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    };
    let setup = ChildSetup {
        program: &spec.program,
        argv: nul_terminated(&spec.argv),
        envp: nul_terminated(&spec.env),
        cwd: &spec.cwd,
        stdin: stdin_r.as_raw_fd(),
        stdout: stdout_w.as_raw_fd(),
        stderr: stderr_w.as_raw_fd(),
        report: report_w.as_raw_fd(),
        empty_mask,
        reset: not_default_signals(),
    };
    // The child made its own process group before clone_vfork returns.
    let (_, mut watch) = reaper
        .spawn(|| clone_vfork(&setup))
        .map_err(io_err("clone"))?;
    drop((stdin_r, stdout_w, stderr_w, report_w));
    // End of file: exec succeeded (the report pipe is close-on-exec).
    let mut report = [0u8; 5];
    let mut got = 0;
    let mut report_r = File::from(report_r);
    while got < report.len() {
        match report_r.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("read the exec report")(e)),
        }
    }
    if got == report.len() {
        // The child exits 127 at once: collect it so nothing is left over.
        let _ = watch.read_status();
        let step = STEPS
            .get(usize::from(report[0]))
            .copied()
            .unwrap_or("start");
        let errno = i32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
        let what = match report[0] {
            STEP_EXEC => spec.program.to_string_lossy().into_owned(),
            STEP_CHDIR => format!("{name} (cwd {})", spec.cwd.to_string_lossy()),
            _ => name,
        };
        return Err(ExecError::Start {
            program: what,
            step,
            source: io::Error::from_raw_os_error(errno),
        });
    }
    let ends = ParentEnds {
        stdin: Some(File::from(stdin_w)),
        stdout: File::from(stdout_r),
        stderr: File::from(stderr_r),
    };
    Ok((watch, ends))
}

/// Output collected from one pipe, capped.
#[derive(Default)]
struct Sink {
    data: Vec<u8>,
    truncated: bool,
    eof: bool,
}

impl Sink {
    /// Reads what `from` has now; marks end of file.
    fn drain(&mut self, from: &mut File, buf: &mut [u8]) -> io::Result<()> {
        loop {
            match from.read(buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    let room = EXEC_OUTPUT_CAP.saturating_sub(self.data.len());
                    let keep = n.min(room);
                    self.data.extend_from_slice(&buf[..keep]);
                    self.truncated |= keep < n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn poll_fd(fd: &impl AsRawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    }
}

/// Runs `spec` to completion or its timeout. See the module docs.
pub fn run(reaper: &Reaper, spec: &ExecSpec) -> Result<ExecOutcome, ExecError> {
    let name = spec.name();
    let io_err = |what| ExecError::io(&name, what);
    let start_time = Instant::now();
    let (mut watch, mut ends) = start(reaper, spec)?;
    let pid = watch.pid();
    let deadline = start_time + spec.timeout;
    for fd in [&ends.stdout, &ends.stderr] {
        set_nonblocking(fd).map_err(io_err("set up the pipes"))?;
    }
    if spec.stdin.is_empty() {
        ends.stdin = None;
    } else if let Some(w) = &ends.stdin {
        set_nonblocking(w).map_err(io_err("set up the pipes"))?;
    }
    let mut stdin_written = 0;
    let (mut out, mut err) = (Sink::default(), Sink::default());
    let mut buf = vec![0u8; READ_CHUNK];
    let mut status: Option<(ExitStatus, Instant)> = None;
    let mut killed_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        // What we wait for, and until when.
        let until = match (status, killed_at) {
            (Some((_, exited)), _) => {
                if out.eof && err.eof {
                    break;
                }
                exited + OUTPUT_GRACE
            }
            (None, Some(killed)) => killed + KILL_WAIT,
            (None, None) => deadline,
        };
        if now >= until {
            match (status, killed_at) {
                // Output from what it left behind: enough waiting.
                (Some(_), _) => break,
                (None, Some(_)) => return Err(ExecError::Unkillable { program: name, pid }),
                (None, None) => {
                    crate::log::log(&format!(
                        "exec {name} (pid {pid}): timed out after {:?}, killing its process group",
                        spec.timeout
                    ));
                    if let Err(e) = kill_group(pid, libc::SIGKILL) {
                        crate::log::log(&format!("kill process group {pid}: {e}"));
                    }
                    killed_at = Some(now);
                    continue;
                }
            }
        }
        let mut fds = Vec::with_capacity(4);
        if status.is_none() {
            fds.push(poll_fd(&watch.fd(), libc::POLLIN));
        }
        if !out.eof {
            fds.push(poll_fd(&ends.stdout, libc::POLLIN));
        }
        if !err.eof {
            fds.push(poll_fd(&ends.stderr, libc::POLLIN));
        }
        if let Some(w) = &ends.stdin {
            fds.push(poll_fd(w, libc::POLLOUT));
        }
        let wait = until.saturating_duration_since(now);
        // Round up, so we do not wake just before `until` and spin.
        let ms = wait.as_micros().div_ceil(1000);
        let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(io_err("poll")(e));
        }
        let ready = |fd: RawFd| {
            fds.iter()
                .find(|p| p.fd == fd)
                .is_some_and(|p| p.revents != 0)
        };
        if status.is_none() && ready(watch.raw_fd()) {
            match watch
                .read_status()
                .map_err(io_err("read the exit status"))?
            {
                Some(s) => status = Some((s, Instant::now())),
                None => return Err(ExecError::Lost { program: name, pid }),
            }
            // Nobody reads stdin any more (or something it left behind
            // does, and it gets end of file).
            ends.stdin = None;
        }
        if !out.eof && ready(ends.stdout.as_raw_fd()) {
            out.drain(&mut ends.stdout, &mut buf)
                .map_err(io_err("read stdout"))?;
        }
        if !err.eof && ready(ends.stderr.as_raw_fd()) {
            err.drain(&mut ends.stderr, &mut buf)
                .map_err(io_err("read stderr"))?;
        }
        if let Some(w) = ends.stdin.as_mut() {
            if ready(w.as_raw_fd()) {
                match w.write(&spec.stdin[stdin_written..]) {
                    Ok(n) => stdin_written += n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                        ) => {}
                    // EPIPE: it stopped reading; what it read is what it got.
                    Err(_) => stdin_written = spec.stdin.len(),
                }
                if stdin_written >= spec.stdin.len() {
                    ends.stdin = None;
                }
            }
        }
    }
    let (status, _) = status.ok_or(ExecError::Lost {
        program: name.clone(),
        pid,
    })?;
    Ok(ExecOutcome {
        status,
        stdout: out.data,
        stderr: err.data,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
        timed_out: killed_at.is_some(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use husk_agent_protocol::agent::ExecResponse;
    use husk_agent_protocol::agent_ttrpc::AgentClient;
    use ttrpc::context;

    use super::*;
    use crate::reaper::ReapMode;
    use crate::testing::{isolated, FakeFacts, UnixAgent};

    fn client(agent: &UnixAgent) -> AgentClient {
        AgentClient::new(ttrpc::Client::connect(&agent.address()).unwrap())
    }

    fn request(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    fn exec(c: &AgentClient, req: &ExecRequest) -> ttrpc::Result<ExecResponse> {
        c.exec(context::with_duration(Duration::from_secs(30)), req)
    }

    fn ok(c: &AgentClient, req: &ExecRequest) -> ExecResponse {
        exec(c, req).unwrap()
    }

    fn status_of(e: ttrpc::Error) -> ttrpc::Status {
        match e {
            ttrpc::Error::RpcStatus(s) => s,
            other => panic!("unexpected error {other:?}"),
        }
    }

    fn sh(script: &str) -> ExecRequest {
        request(&["sh", "-c", script])
    }

    #[test]
    fn output_and_exit_codes() {
        let agent = UnixAgent::start("exec-echo", FakeFacts::default()).unwrap();
        let c = client(&agent);
        let r = ok(&c, &request(&["echo", "hello", "world"]));
        assert_eq!(r.stdout, b"hello world\n");
        assert!(r.stderr.is_empty());
        assert_eq!((r.exit_code, r.signal, r.timed_out), (0, 0, false));
        assert!(!r.stdout_truncated && !r.stderr_truncated);

        let r = ok(&c, &sh("echo out; echo err >&2; exit 42"));
        assert_eq!(r.stdout, b"out\n");
        assert_eq!(r.stderr, b"err\n");
        assert_eq!((r.exit_code, r.signal), (42, 0));

        let r = ok(&c, &request(&["/bin/false"]));
        assert_eq!(r.exit_code, 1);
    }

    #[test]
    fn signal_death() {
        let agent = UnixAgent::start("exec-signal", FakeFacts::default()).unwrap();
        let r = ok(
            &client(&agent),
            &sh("echo before; kill -TERM $$; echo after"),
        );
        assert_eq!(r.stdout, b"before\n");
        assert_eq!(
            (r.exit_code, r.signal, r.timed_out),
            (-1, libc::SIGTERM, false)
        );
    }

    #[test]
    fn stdin_is_piped_through() {
        let agent = UnixAgent::start("exec-stdin", FakeFacts::default()).unwrap();
        let c = client(&agent);
        let mut req = request(&["cat"]);
        req.stdin = b"line 1\nline 2\n".to_vec();
        assert_eq!(ok(&c, &req).stdout, b"line 1\nline 2\n");

        // More than a pipe holds, both ways at once.
        let big: Vec<u8> = (0..EXEC_OUTPUT_CAP).map(|i| (i % 251) as u8).collect();
        req.stdin = big.clone();
        let r = ok(&c, &req);
        assert_eq!(r.stdout.len(), big.len());
        assert!(r.stdout == big && !r.stdout_truncated);

        // No stdin: end of file at once.
        assert_eq!(ok(&c, &request(&["cat"])).stdout, b"");

        // A command that does not read it still finishes.
        let mut req = request(&["true"]);
        req.stdin = big;
        assert_eq!(ok(&c, &req).exit_code, 0);
    }

    #[test]
    fn cwd_and_env() {
        let agent = UnixAgent::start("exec-env", FakeFacts::default()).unwrap();
        let c = client(&agent);
        let r = ok(&c, &request(&["pwd"]));
        assert_eq!(r.stdout, b"/\n", "default cwd");
        let mut req = request(&["pwd"]);
        req.cwd = "/tmp".into();
        assert_eq!(ok(&c, &req).stdout, b"/tmp\n");

        let mut req = request(&["/usr/bin/env"]);
        req.env = vec!["A=1".into(), "B=two words".into()];
        let r = ok(&c, &req);
        assert_eq!(
            String::from_utf8_lossy(&r.stdout),
            format!("A=1\nB=two words\nPATH={EXEC_DEFAULT_PATH}\n")
        );
        // A PATH of its own is used for the lookup and passed on.
        req.env = vec!["PATH=/nonexistent:/usr/bin".into()];
        req.argv = vec!["env".into()];
        assert_eq!(ok(&c, &req).stdout, b"PATH=/nonexistent:/usr/bin\n");
        req.env = vec!["PATH=/nonexistent".into()];
        let s = status_of(exec(&c, &req).unwrap_err());
        assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(
            s.message,
            "exec: argv[0] \"env\": not found in PATH /nonexistent"
        );
    }

    #[test]
    fn timeout_kills_the_process_group() {
        let agent = UnixAgent::start("exec-timeout", FakeFacts::default()).unwrap();
        let c = client(&agent);
        // The background sleep is in the same group and dies too.
        let mut req = sh("sleep 30 & echo $!; sleep 30");
        req.timeout_ms = 300;
        let start = Instant::now();
        let r = ok(&c, &req);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        assert!(r.timed_out);
        assert_eq!((r.exit_code, r.signal), (-1, libc::SIGKILL));
        let bg: libc::pid_t = String::from_utf8_lossy(&r.stdout).trim().parse().unwrap();
        let gone = |pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
                s.rsplit(')').next().unwrap().trim().starts_with('Z')
            })
        };
        let until = Instant::now() + Duration::from_secs(5);
        while !gone(bg) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(bg), "background pid {bg} survived");
    }

    #[test]
    fn output_is_capped_and_both_pipes_drain_at_once() {
        let agent = UnixAgent::start("exec-big", FakeFacts::default()).unwrap();
        let c = client(&agent);
        let r = ok(
            &c,
            &sh("head -c 3000000 /dev/zero; head -c 3000000 /dev/zero >&2"),
        );
        assert_eq!(r.exit_code, 0, "{}", String::from_utf8_lossy(&r.stderr));
        assert_eq!(r.stdout.len(), EXEC_OUTPUT_CAP);
        assert_eq!(r.stderr.len(), EXEC_OUTPUT_CAP);
        assert!(r.stdout_truncated && r.stderr_truncated);
        // Interleaved, more than a pipe holds each.
        let r = ok(
            &c,
            &sh(
                "for i in 1 2 3 4; do head -c 100000 /dev/zero; head -c 100000 /dev/zero >&2; done",
            ),
        );
        assert_eq!((r.stdout.len(), r.stderr.len()), (400_000, 400_000));
        assert!(!r.stdout_truncated && !r.stderr_truncated);
    }

    #[test]
    fn output_of_processes_left_behind_is_not_waited_for() {
        let agent = UnixAgent::start("exec-bg", FakeFacts::default()).unwrap();
        let start = Instant::now();
        let r = ok(&client(&agent), &sh("(sleep 3; echo late) & echo early"));
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(r.stdout, b"early\n");
        assert_eq!(r.exit_code, 0);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let agent = UnixAgent::start("exec-bad", FakeFacts::default()).unwrap();
        let c = client(&agent);
        let mut too_much_stdin = request(&["cat"]);
        too_much_stdin.stdin = vec![0; EXEC_STDIN_MAX + 1];
        let mut relative_cwd = request(&["pwd"]);
        relative_cwd.cwd = "tmp".into();
        let mut missing_cwd = request(&["pwd"]);
        missing_cwd.cwd = "/nonexistent-cwd".into();
        let mut bad_env = request(&["env"]);
        bad_env.env = vec!["A=1".into(), "NOEQUALS".into()];
        let cases = [
            (request(&[]), "exec: argv: empty: want the command and its arguments"),
            (request(&[""]), "exec: argv: argv[0] is empty"),
            (request(&["echo", "a\0b"]), "exec: argv: argv[1] \"a\\0b\" contains NUL"),
            (
                request(&["./run"]),
                "exec: argv: argv[0] \"./run\" is a relative path: want an absolute path or a name in PATH",
            ),
            (bad_env, "exec: env: env[1] \"NOEQUALS\" is not KEY=VALUE"),
            (relative_cwd, "exec: cwd: \"tmp\" is not an absolute path"),
            (
                missing_cwd,
                "exec: cwd: /nonexistent-cwd: No such file or directory (os error 2)",
            ),
            (too_much_stdin, "exec: stdin: 2097153 bytes, at most 2097152"),
        ];
        for (req, want) in cases {
            let s = status_of(exec(&c, &req).unwrap_err());
            assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT, "{}", s.message);
            assert_eq!(s.message, want);
        }
    }

    #[test]
    fn missing_programs_are_not_found_by_name() {
        let agent = UnixAgent::start("exec-missing", FakeFacts::default()).unwrap();
        let c = client(&agent);
        let s = status_of(exec(&c, &request(&["no-such-program-husk"])).unwrap_err());
        assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(
            s.message,
            format!(
                "exec: argv[0] \"no-such-program-husk\": not found in PATH {EXEC_DEFAULT_PATH}"
            )
        );
        let s = status_of(exec(&c, &request(&["/nonexistent/prog"])).unwrap_err());
        assert_eq!(s.code(), ttrpc::Code::NOT_FOUND);
        assert_eq!(
            s.message,
            "exec: exec for /nonexistent/prog: No such file or directory (os error 2)"
        );
        // Not executable (no x bit), not a program (no format the kernel
        // knows).
        let dir = std::env::temp_dir().join(format!("husk-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("data");
        std::fs::write(&file, "just text\n").unwrap();
        let path = file.to_str().unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = status_of(exec(&c, &request(&[path])).unwrap_err());
        assert_eq!(s.code(), ttrpc::Code::PERMISSION_DENIED, "{}", s.message);
        assert_eq!(
            s.message,
            format!("exec: exec for {path}: Permission denied (os error 13)")
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
        let s = status_of(exec(&c, &request(&[path])).unwrap_err());
        assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT, "{}", s.message);
        assert!(
            s.message.ends_with("Exec format error (os error 8)"),
            "{}",
            s.message
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_signals_to_reset_are_the_ones_not_at_default() {
        let sigs = not_default_signals().as_slice();
        // std ignores SIGPIPE in every Rust program.
        assert!(sigs.contains(&libc::SIGPIPE), "{sigs:?}");
        for never in [libc::SIGKILL, libc::SIGSTOP, libc::SIGUSR2] {
            assert!(!sigs.contains(&never), "{never} in {sigs:?}");
        }
    }

    #[test]
    fn the_child_starts_clean() {
        let agent = UnixAgent::start("exec-clean", FakeFacts::default()).unwrap();
        // Its own process group, no blocked or ignored signals, only stdio
        // open.
        let r = ok(
            &client(&agent),
            &sh("ps -o pid=,pgid= -p $$; grep -E '^Sig(Blk|Ign)' /proc/self/status; ls /proc/self/fd"),
        );
        let out = String::from_utf8_lossy(&r.stdout);
        let mut lines = out.lines();
        let ids: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(ids[0], ids[1], "pid == pgid: {out}");
        assert_eq!(lines.next().unwrap(), "SigBlk:\t0000000000000000", "{out}");
        assert_eq!(lines.next().unwrap(), "SigIgn:\t0000000000000000", "{out}");
        let fds: Vec<&str> = lines.collect();
        // 0, 1, 2 and the one ls opens for /proc/self/fd.
        assert_eq!(fds.len(), 4, "{out}");
    }

    /// As PID 1 does: one thread reaps every child with waitpid(-1) while
    /// commands start and end concurrently, and a child nobody registered
    /// is collected and dropped.
    #[test]
    fn pid1_reaping() {
        if !isolated("exec::tests::pid1_reaping") {
            return;
        }
        let reaper = Arc::new(Reaper::new(ReapMode::AllChildren));
        let stop = Arc::new(AtomicBool::new(false));
        let reaping = {
            let (reaper, stop) = (Arc::clone(&reaper), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    reaper.reap_all();
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let agent =
            UnixAgent::start_with_reaper("exec-pid1", FakeFacts::default(), Arc::clone(&reaper))
                .unwrap();
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let address = agent.address();
                std::thread::spawn(move || {
                    let c = AgentClient::new(ttrpc::Client::connect(&address).unwrap());
                    for i in 0..15 {
                        let r = ok(&c, &sh(&format!("echo {w}-{i}; exit {i}")));
                        assert_eq!(r.stdout, format!("{w}-{i}\n").as_bytes());
                        assert_eq!(r.exit_code, i);
                    }
                })
            })
            .collect();
        // An orphan-like child: nobody waits for it.
        // SAFETY: the child only calls _exit.
        let stray = match unsafe { libc::fork() } {
            // SAFETY: _exit is async-signal-safe and never returns.
            0 => unsafe { libc::_exit(0) },
            pid => pid,
        };
        for w in workers {
            w.join().unwrap();
        }
        let c = client(&agent);
        let mut req = sh("sleep 30");
        req.timeout_ms = 100;
        let r = ok(&c, &req);
        assert!(r.timed_out && r.signal == libc::SIGKILL);
        // The stray was reaped (by reap_all; nothing else waits here).
        let until = Instant::now() + Duration::from_secs(5);
        let gone = || {
            let mut status = 0;
            // SAFETY: `status` is a valid out pointer.
            let rc = unsafe { libc::waitpid(stray, &mut status, libc::WNOHANG) };
            rc == -1
        };
        while !gone() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(gone(), "stray child {stray} not reaped");
        stop.store(true, Ordering::SeqCst);
        reaping.join().unwrap();
    }
}
