//! Installing the seccomp filter of each VMM thread as the thread starts
//! (husk-seccomp), and telling `launch` whether it worked, so that a
//! thread without its filter fails the VM's start instead of running.

use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use husk_seccomp::{SeccompError, SeccompMode, ThreadKind};

use crate::error::VmmError;

/// What a starting thread reports: its name, and the install result.
pub(crate) type Installed = (String, Result<(), SeccompError>);

/// The mode every thread of this VM uses: `configured`, unless
/// `HUSK_SECCOMP` says otherwise.
pub(crate) fn mode(configured: SeccompMode) -> Result<SeccompMode, VmmError> {
    husk_seccomp::effective_mode(configured).map_err(VmmError::SeccompMode)
}

/// Installs `kind`'s filter on the calling thread, first thing, and reports
/// the result. Returns whether the thread may go on.
pub(crate) fn install(kind: ThreadKind, mode: SeccompMode, report: &Sender<Installed>) -> bool {
    let r = husk_seccomp::install(kind, mode);
    let ok = r.is_ok();
    let name = std::thread::current()
        .name()
        .unwrap_or("(unnamed)")
        .to_string();
    // The receiver outlives the wait in `launch`; after that nobody asks.
    let _ = report.send((name, r));
    ok
}

/// How long a starting thread may take to report (it reports first thing).
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits for `count` threads to report; the first failure is the error.
pub(crate) fn wait_installed(reports: &Receiver<Installed>, count: usize) -> Result<(), VmmError> {
    let mut first_err = None;
    for _ in 0..count {
        match reports.recv_timeout(REPORT_TIMEOUT) {
            Ok((_, Ok(()))) => {}
            Ok((thread, Err(source))) => {
                first_err.get_or_insert(VmmError::Seccomp { thread, source });
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
    use std::sync::mpsc;

    #[test]
    fn the_first_failing_thread_is_named() {
        let (tx, rx) = mpsc::channel();
        tx.send(("husk-vcpu0".into(), Ok(()))).unwrap();
        tx.send((
            "husk-vcpu1".into(),
            Err(SeccompError::InvalidMode("x".into())),
        ))
        .unwrap();
        tx.send(("husk-vcpu2".into(), Ok(()))).unwrap();
        let e = wait_installed(&rx, 3).unwrap_err();
        assert!(
            matches!(&e, VmmError::Seccomp { thread, .. } if thread == "husk-vcpu1"),
            "{e}"
        );
        assert!(e.to_string().starts_with("thread husk-vcpu1: "), "{e}");
        tx.send(("husk-vmm".into(), Ok(()))).unwrap();
        wait_installed(&rx, 1).unwrap();
    }

    #[test]
    fn installing_off_reports_success() {
        let (tx, rx) = mpsc::channel();
        assert!(install(ThreadKind::Vmm, SeccompMode::Off, &tx));
        wait_installed(&rx, 1).unwrap();
    }
}
