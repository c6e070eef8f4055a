//! Test-only fault injection (feature `fault-injection`, off in normal
//! builds): makes a chosen VM's start fail at its last fallible step, so
//! tests can check that a failed start leaves no thread behind.

#[cfg(feature = "fault-injection")]
use std::sync::Mutex;

#[cfg(feature = "fault-injection")]
static FAIL_LAUNCH: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The next start of the VM named `vm` fails after its vCPU threads were
/// spawned and their filters installed, at the last step that can fail.
#[cfg(feature = "fault-injection")]
pub fn fail_next_launch(vm: &str) {
    FAIL_LAUNCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(vm.to_string());
}

/// Whether a failure was injected for `vm` (consumes it).
#[cfg(feature = "fault-injection")]
pub(crate) fn launch_fails(vm: &str) -> bool {
    let mut l = FAIL_LAUNCH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match l.iter().position(|n| n == vm) {
        Some(i) => {
            l.remove(i);
            true
        }
        None => false,
    }
}

#[cfg(not(feature = "fault-injection"))]
pub(crate) fn launch_fails(_vm: &str) -> bool {
    false
}
