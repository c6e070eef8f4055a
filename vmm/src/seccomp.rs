//! Installing the seccomp filter of each VMM thread as the thread starts
//! (husk-seccomp), and telling `launch` whether it worked, so that a
//! thread without its filter fails the VM's start instead of running.

use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use husk_seccomp::{SeccompMode, ThreadKind};

use crate::error::VmmError;

/// What a starting thread reports: whether its setup (its filter first of
/// all) worked; the error names the thread.
pub(crate) type Installed = Result<(), VmmError>;

/// Installs `kind`'s filter on the calling thread, first thing, and reports
/// the result. Returns whether the thread may go on.
pub(crate) fn install(kind: ThreadKind, mode: SeccompMode, report: &Sender<Installed>) -> bool {
    let r = husk_seccomp::install(kind, mode).map_err(|source| VmmError::Seccomp {
        thread: std::thread::current()
            .name()
            .unwrap_or("(unnamed)")
            .to_string(),
        source,
    });
    let ok = r.is_ok();
    // The receiver outlives the wait in `launch`; after that nobody asks.
    let _ = report.send(r);
    ok
}

/// Runs `confine` (the thread's privileges, see [`crate::confine`]) and
/// then installs `kind`'s filter, reporting the first failure. Returns
/// whether the thread may go on. The privileges go first: the filters do
/// not allow capset, prctl or the Landlock calls.
pub(crate) fn setup(
    kind: ThreadKind,
    mode: SeccompMode,
    report: &Sender<Installed>,
    confine: impl FnOnce() -> Result<(), crate::confine::ConfineError>,
) -> bool {
    if let Err(source) = confine() {
        let e = VmmError::Confine {
            thread: std::thread::current()
                .name()
                .unwrap_or("(unnamed)")
                .to_string(),
            source,
        };
        // The receiver outlives the wait in `launch`.
        let _ = report.send(Err(e));
        return false;
    }
    install(kind, mode, report)
}

/// How long a starting thread may take to report (it reports first thing).
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for `count` threads to report; the first failure is the error.
pub(crate) fn wait_installed(reports: &Receiver<Installed>, count: usize) -> Result<(), VmmError> {
    let mut first_err = None;
    for _ in 0..count {
        match reports.recv_timeout(REPORT_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(VmmError::Io {
                    what: "a VMM thread did not report its seccomp filter",
                    source: std::io::ErrorKind::TimedOut.into(),
                });
                break;
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_seccomp::SeccompError;
    use std::sync::mpsc;

    #[test]
    fn the_first_failing_thread_is_named() {
        let (tx, rx) = mpsc::channel();
        tx.send(Ok(())).unwrap();
        tx.send(Err(VmmError::Seccomp {
            thread: "husk-vcpu1".into(),
            source: SeccompError::InvalidMode("x".into()),
        }))
        .unwrap();
        tx.send(Ok(())).unwrap();
        let e = wait_installed(&rx, 3).unwrap_err();
        assert!(
            matches!(&e, VmmError::Seccomp { thread, .. } if thread == "husk-vcpu1"),
            "{e}"
        );
        assert!(e.to_string().starts_with("thread husk-vcpu1: "), "{e}");
        tx.send(Ok(())).unwrap();
        wait_installed(&rx, 1).unwrap();
    }

    #[test]
    fn installing_off_reports_success() {
        let (tx, rx) = mpsc::channel();
        assert!(install(ThreadKind::Vmm, SeccompMode::Off, &tx));
        wait_installed(&rx, 1).unwrap();
    }
}
