//! The agent's first answer: after a cold boot, its version; after a
//! restore, its new identity (so it stops being a copy of the template).
//! Both watch the VM meanwhile: a guest that ends is reported at once, not
//! at the deadline.

use std::path::Path;
use std::time::{Duration, Instant};

use husk_vmm::VmmHandle;

use super::error::SandboxErrorKind;
use crate::agent_client::{AgentClient, AgentClientError, Identity};

/// One connection attempt's bound: the VM is checked between attempts.
const ATTEMPT: Duration = Duration::from_secs(2);
/// Pause before reconnecting after the guest reset a connection.
const RECONNECT_PAUSE: Duration = Duration::from_millis(20);

/// Connects to the agent, giving up when the VM ends or `timeout` passes.
fn connect(
    vm: &VmmHandle,
    uds: &Path,
    end: Instant,
    timeout: Duration,
) -> Result<AgentClient, SandboxErrorKind> {
    loop {
        ended(vm)?;
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SandboxErrorKind::AgentTimeout(timeout));
        }
        match AgentClient::connect(uds, left.min(ATTEMPT)) {
            Ok(c) => return Ok(c.with_call_timeout(left.max(Duration::from_secs(1)))),
            Err(AgentClientError::Unreachable { .. }) => continue,
            Err(e) => return Err(SandboxErrorKind::Agent(e)),
        }
    }
}

fn ended(vm: &VmmHandle) -> Result<(), SandboxErrorKind> {
    match vm.outcome() {
        Some(o) => Err(SandboxErrorKind::EndedBeforeReady {
            reason: o.reason.to_string(),
            console_tail: o.console_tail,
        }),
        None => Ok(()),
    }
}

/// After a cold boot: the agent answers `Version`. Returns the client and
/// the guest's instance id.
pub(super) fn first_answer(
    vm: &VmmHandle,
    uds: &Path,
    timeout: Duration,
) -> Result<(AgentClient, String), SandboxErrorKind> {
    let end = Instant::now() + timeout;
    let client = connect(vm, uds, end, timeout)?;
    let info = client.guest_info().map_err(SandboxErrorKind::Agent)?;
    Ok((
        client.with_call_timeout(crate::agent_client::DEFAULT_CALL_TIMEOUT),
        info.instance_id,
    ))
}

/// After a restore: gives the agent a fresh identity (RNG seed, hostname,
/// instance id, wall clock). Returns the client and the instance id.
pub(super) fn reidentify(
    vm: &VmmHandle,
    uds: &Path,
    hostname: &str,
    timeout: Duration,
) -> Result<(AgentClient, String), SandboxErrorKind> {
    let end = Instant::now() + timeout;
    let identity =
        Identity::fresh(sanitize_hostname(hostname)).map_err(|source| SandboxErrorKind::Io {
            what: "making a fresh identity",
            source,
        })?;
    loop {
        let client = connect(vm, uds, end, timeout)?;
        // The guest resets every vsock connection when it handles the
        // restore's transport-reset event; a connection made just before
        // dies with it. Reconnect then (Reidentify with the same identity
        // is idempotent).
        match client.reidentify(&identity) {
            Ok(o) => {
                tracing::debug!(instance_id = %o.instance_id, clock_step_ms = o.clock_step_ns / 1_000_000, "restored guest reidentified");
                return Ok((
                    client.with_call_timeout(crate::agent_client::DEFAULT_CALL_TIMEOUT),
                    o.instance_id,
                ));
            }
            Err(AgentClientError::Transport { .. }) if Instant::now() < end => {
                std::thread::sleep(RECONNECT_PAUSE);
            }
            Err(e) => {
                ended(vm)?;
                return Err(SandboxErrorKind::Agent(e));
            }
        }
    }
}

/// A valid hostname from a sandbox or VM name.
pub fn sanitize_hostname(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let s = s.trim_start_matches('-').to_string();
    if s.is_empty() {
        "husk".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(sanitize_hostname("pod_1/a"), "pod-1-a");
        assert_eq!(sanitize_hostname("--x"), "x");
        assert_eq!(sanitize_hostname("//"), "husk");
        assert_eq!(sanitize_hostname(&"a".repeat(100)).len(), 64);
    }
}
