//! The child's failure report: (step, index of the spec entry, errno) in
//! 9 bytes on a close-on-exec pipe, written just before it exits 127; the
//! pipe reaches EOF without a report once the child has exec'd.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::RawFd;

use super::LaunchError;

/// Steps the child reports (the byte on the report pipe).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(in crate::container) enum Step {
    Stdio,
    Setsid,
    Ctty,
    Cgroup,
    OomScoreAdj,
    Setns,
    UnshareCgroup,
    RootPropagation,
    RootfsBind,
    EmptyRoot,
    Mkdir,
    CreateFile,
    Mount,
    Remount,
    Propagation,
    Device,
    Symlink,
    PivotRoot,
    PostPropagation,
    Sysctl,
    Masked,
    Readonly,
    RootReadonly,
    Hostname,
    Domainname,
    Rlimit,
    Chdir,
    Bounding,
    Setgroups,
    Setresgid,
    Setresuid,
    Capset,
    Ambient,
    NoNewPrivs,
    Seccomp,
    SigMask,
    Exec,
}

const ALL_STEPS: [Step; 37] = [
    Step::Stdio,
    Step::Setsid,
    Step::Ctty,
    Step::Cgroup,
    Step::OomScoreAdj,
    Step::Setns,
    Step::UnshareCgroup,
    Step::RootPropagation,
    Step::RootfsBind,
    Step::EmptyRoot,
    Step::Mkdir,
    Step::CreateFile,
    Step::Mount,
    Step::Remount,
    Step::Propagation,
    Step::Device,
    Step::Symlink,
    Step::PivotRoot,
    Step::PostPropagation,
    Step::Sysctl,
    Step::Masked,
    Step::Readonly,
    Step::RootReadonly,
    Step::Hostname,
    Step::Domainname,
    Step::Rlimit,
    Step::Chdir,
    Step::Bounding,
    Step::Setgroups,
    Step::Setresgid,
    Step::Setresuid,
    Step::Capset,
    Step::Ambient,
    Step::NoNewPrivs,
    Step::Seccomp,
    Step::SigMask,
    Step::Exec,
];

/// A failure in the child: the step, which entry of its list, errno.
#[derive(Debug)]
pub(in crate::container) struct ChildFailure {
    pub step: Step,
    pub index: u32,
    pub error: io::Error,
}

/// Reports (step, index, errno) and exits 127.
pub(super) fn fail(report: RawFd, step: Step, index: usize, err: i32) -> ! {
    let mut msg = [0u8; 9];
    msg[0] = step as u8;
    msg[1..5].copy_from_slice(&(index as u32).to_ne_bytes());
    msg[5..9].copy_from_slice(&err.to_ne_bytes());
    // SAFETY: write and _exit are async-signal-safe; `msg` is on our stack.
    unsafe {
        libc::write(report, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child's report from `r` (its write end closed here): None once it
/// exec'd (EOF without a report).
pub(super) fn read(mut r: File) -> Result<Option<ChildFailure>, LaunchError> {
    let mut report = [0u8; 9];
    let mut got = 0;
    while got < report.len() {
        match r.read(&mut report[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LaunchError::Agent("read the child's report", e)),
        }
    }
    if got < report.len() {
        return Ok(None);
    }
    let step = ALL_STEPS
        .get(usize::from(report[0]))
        .copied()
        .unwrap_or(Step::Exec);
    let index = u32::from_ne_bytes([report[1], report[2], report[3], report[4]]);
    let errno = i32::from_ne_bytes([report[5], report[6], report[7], report[8]]);
    Ok(Some(ChildFailure {
        step,
        index,
        error: io::Error::from_raw_os_error(errno),
    }))
}
