//! Environment every process the agent starts gets from the agent's own.
//!
//! On nested PVM hosts the guest kernel runs with `clearcpuid=xsave` (its
//! code is emulated, and the emulator has no XSAVE): it then saves only
//! the x87/SSE registers at a context switch. Guest user code runs natively
//! and sees the host's CPUID, so glibc picks AVX/AVX2/AVX-512 string
//! functions, whose YMM upper halves, ZMM16-31 and mask registers are then
//! shared by every process of the guest: two such processes corrupt each
//! other (seen as SIGSEGVs of busybox and the pause process). The VMM puts
//! `GLIBC_TUNABLES` with those features off on the kernel command line
//! there (the kernel hands it to PID 1, so the agent's own glibc takes
//! it); the agent passes it on to every container and exec process,
//! appended to a `GLIBC_TUNABLES` the process already has (a later tunable
//! wins). Not glibc's own choices are untouched (a Go or Rust program that
//! detects AVX itself still uses it): see `vmm/src/boot/cmdline.rs`. On
//! hosts with hardware virtualization nothing is set and nothing is added.

use std::ffi::CString;
use std::sync::OnceLock;

/// The variable passed on.
pub const VAR: &str = "GLIBC_TUNABLES";

/// The agent's own `GLIBC_TUNABLES` (read once).
fn ours() -> Option<&'static str> {
    static OURS: OnceLock<Option<String>> = OnceLock::new();
    OURS.get_or_init(|| {
        std::env::var(VAR)
            .ok()
            .filter(|v| !v.is_empty() && !v.contains('\0'))
    })
    .as_deref()
}

/// Adds the agent's tunables to a process environment.
pub fn add(env: &mut Vec<CString>) {
    if let Some(t) = ours() {
        merge(env, t);
    }
}

/// Appends `tunables` to the `GLIBC_TUNABLES` entry of `env`, or adds one.
pub fn merge(env: &mut Vec<CString>, tunables: &str) {
    let prefix = format!("{VAR}=");
    let at = env
        .iter()
        .rposition(|e| e.as_bytes().starts_with(prefix.as_bytes()));
    let have = at.map_or("".into(), |i| {
        String::from_utf8_lossy(&env[i].as_bytes()[prefix.len()..]).into_owned()
    });
    let value = if have.is_empty() {
        format!("{prefix}{tunables}")
    } else {
        format!("{prefix}{have}:{tunables}")
    };
    let Ok(value) = CString::new(value) else {
        return;
    };
    match at {
        Some(i) => env[i] = value,
        None => env.push(value),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(v: &[&str]) -> Vec<CString> {
        v.iter().map(|s| CString::new(*s).unwrap()).collect()
    }

    #[test]
    fn merges() {
        let mut e = env(&["PATH=/bin"]);
        merge(&mut e, "glibc.cpu.hwcaps=-AVX");
        assert_eq!(
            e,
            env(&["PATH=/bin", "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX"])
        );
        let mut e = env(&["GLIBC_TUNABLES=glibc.malloc.check=3", "A=b"]);
        merge(&mut e, "glibc.cpu.hwcaps=-AVX");
        assert_eq!(
            e,
            env(&[
                "GLIBC_TUNABLES=glibc.malloc.check=3:glibc.cpu.hwcaps=-AVX",
                "A=b"
            ])
        );
        let mut e = env(&["GLIBC_TUNABLES="]);
        merge(&mut e, "x=1");
        assert_eq!(e, env(&["GLIBC_TUNABLES=x=1"]));
    }
}
