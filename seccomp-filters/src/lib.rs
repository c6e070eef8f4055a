//! husk's seccomp filters: one reviewed allowlist per VMM thread kind,
//! compiled to BPF at build time and installed **per thread**.
//!
//! husk's VMM lives inside the containerd shim process, whose other threads
//! (ttrpc, tokio, other pods' VMMs) have other needs, so a filter is never
//! installed process-wide (no `SECCOMP_FILTER_FLAG_TSYNC`): [`install`]
//! binds the calling thread only, before it touches guest input. Threads it
//! spawns later would inherit it; VMM threads spawn none.
//!
//! # Thread kinds
//!
//! - [`ThreadKind::Vcpu`]: `husk-vcpuN`, KVM_RUN and the PIO/MMIO exits.
//! - [`ThreadKind::Vmm`]: `husk-vmm`, the event loop. It also serves the
//!   `VmmHandle` requests (Info/Stop/Pause/Resume/Snapshot): the handle only
//!   sends a request over a channel and kicks an eventfd from the caller's
//!   own thread (the shim's), and the event loop answers it. Device
//!   backends (vsock's Unix-socket muxer, virtio-blk, the in-process
//!   virtio-fs server) run on this thread too; a device worker thread, if
//!   one is ever added, would get its own kind.
//!
//! The allowlists are Rust code in `src/rules/` (`common.rs` for what
//! every VMM thread needs, `vcpu.rs`, `vmm.rs`), one comment per rule
//! saying which code path needs it; ioctls are matched by request number.
//!
//! # Modes, and debugging
//!
//! [`SeccompMode::Enforce`] (the default): a syscall outside the list kills
//! the whole process with SIGSYS (`SECCOMP_RET_KILL_PROCESS`). Why not
//! `Trap` (a SIGSYS handler)? A handler would run inside the very thread
//! that misbehaved, and signal dispositions are process-wide: a compromised
//! VMM thread could install its own SIGSYS handler (`rt_sigaction`) and
//! carry on, and the shim's other code could change it too. A killed
//! thread (`KillThread`) would leave its VM half alive (locks held, the
//! event loop waiting). Killing the process cannot be caught, and the
//! kernel logs it by default (`kill_process` is in
//! `/proc/sys/kernel/seccomp/actions_logged`): the audit record (`dmesg`,
//! `type=SECCOMP`/1326 in audit.log) names the thread (`comm="husk-vcpu0"`),
//! the syscall number and the process, and containerd sees the shim die
//! of SIGSYS.
//!
//! [`SeccompMode::Log`]: every syscall is allowed and those outside the list
//! are logged by the kernel (`SECCOMP_RET_LOG`, same audit record, with
//! `sig=0`): run the workload this way to find what a list lacks.
//! [`SeccompMode::Off`]: no filter.
//!
//! The mode is `VmConfig::seccomp`, and the VMM uses exactly that: it reads
//! no environment. The environment variable [`ENV_VAR`]
//! (`HUSK_SECCOMP=enforce|log|off`), a debugging knob for the whole
//! process, is read once at the binary's edge by
//! [`SeccompMode::from_env`] (the `husk` CLI does it where it builds a VM's
//! configuration: it overrides `--seccomp` there).

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

pub use seccompiler::sock_filter;

// The allowlists, compiled by build.rs; the tests check them too.
#[cfg(test)]
#[allow(dead_code)] // build.rs uses what the tests do not
mod rules;

/// The environment variable a binary may let override its configured mode
/// ([`SeccompMode::from_env`]).
pub const ENV_VAR: &str = "HUSK_SECCOMP";

/// A kind of VMM thread, each with its own allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// A vCPU thread (`husk-vcpuN`).
    Vcpu,
    /// The VMM event loop (`husk-vmm`), which also serves the `VmmHandle`.
    Vmm,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 2] = [ThreadKind::Vcpu, ThreadKind::Vmm];
}

impl fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Vmm => "VMM event loop",
        })
    }
}

/// What a filter does with a syscall outside its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SeccompMode {
    /// Kill the process with SIGSYS.
    #[default]
    Enforce,
    /// Allow it and have the kernel log it.
    Log,
    /// No filter at all.
    Off,
}

impl FromStr for SeccompMode {
    type Err = SeccompError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(SeccompMode::Enforce),
            "log" => Ok(SeccompMode::Log),
            "off" => Ok(SeccompMode::Off),
            other => Err(SeccompError::InvalidMode(other.to_string())),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SeccompMode::Enforce => "enforce",
            SeccompMode::Log => "log",
            SeccompMode::Off => "off",
        })
    }
}

/// Errors choosing or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "invalid seccomp mode {0:?} (enforce, log or off; from {ENV_VAR} or the configuration)"
    )]
    InvalidMode(String),
    #[error("cannot install the {kind} seccomp filter ({mode}): {source}")]
    Install {
        kind: ThreadKind,
        mode: SeccompMode,
        #[source]
        source: seccompiler::Error,
    },
}

impl SeccompMode {
    /// The mode [`ENV_VAR`] (`HUSK_SECCOMP`) names when it is set (for
    /// debugging), else `default`. An unknown or non-UTF-8 value is an
    /// error, not a silent default. For a binary's edge: call it once where
    /// the configuration is built; the VMM itself never reads the
    /// environment.
    pub fn from_env(default: SeccompMode) -> Result<SeccompMode, SeccompError> {
        match std::env::var(ENV_VAR) {
            Ok(v) => resolve_mode(default, Some(&v)),
            Err(std::env::VarError::NotPresent) => Ok(default),
            Err(std::env::VarError::NotUnicode(v)) => {
                Err(SeccompError::InvalidMode(v.to_string_lossy().into_owned()))
            }
        }
    }
}

fn resolve_mode(configured: SeccompMode, env: Option<&str>) -> Result<SeccompMode, SeccompError> {
    match env {
        Some(v) => v.parse(),
        None => Ok(configured),
    }
}

/// The syscalls `kind`'s filter allows (some only with given arguments),
/// by name without the `SYS_` prefix, sorted by number.
pub fn allowed_syscalls(kind: ThreadKind) -> &'static [&'static str] {
    mod allowed {
        include!(concat!(env!("OUT_DIR"), "/allowed.rs"));
    }
    match kind {
        ThreadKind::Vcpu => allowed::VCPU,
        ThreadKind::Vmm => allowed::VMM,
    }
}

fn raw_program(kind: ThreadKind, mode: SeccompMode) -> Option<&'static [u8]> {
    let out = |k, m| -> &'static [u8] {
        match (k, m) {
            (ThreadKind::Vcpu, SeccompMode::Enforce) => {
                include_bytes!(concat!(env!("OUT_DIR"), "/vcpu-enforce.bpf"))
            }
            (ThreadKind::Vcpu, _) => include_bytes!(concat!(env!("OUT_DIR"), "/vcpu-log.bpf")),
            (ThreadKind::Vmm, SeccompMode::Enforce) => {
                include_bytes!(concat!(env!("OUT_DIR"), "/vmm-enforce.bpf"))
            }
            (ThreadKind::Vmm, _) => include_bytes!(concat!(env!("OUT_DIR"), "/vmm-log.bpf")),
        }
    };
    match mode {
        SeccompMode::Off => None,
        m => Some(out(kind, m)),
    }
}

fn decode(raw: &[u8]) -> Vec<sock_filter> {
    raw.chunks_exact(8)
        .map(|i| sock_filter {
            code: u16::from_le_bytes([i[0], i[1]]),
            jt: i[2],
            jf: i[3],
            k: u32::from_le_bytes([i[4], i[5], i[6], i[7]]),
        })
        .collect()
}

/// The BPF program for `kind` in `mode` (`None` for [`SeccompMode::Off`]).
/// Decoded once per process, so that [`install`] allocates nothing.
pub fn program(kind: ThreadKind, mode: SeccompMode) -> Option<&'static [sock_filter]> {
    static PROGRAMS: [OnceLock<Vec<sock_filter>>; 4] = [const { OnceLock::new() }; 4];
    let raw = raw_program(kind, mode)?;
    let slot = match (kind, mode) {
        (ThreadKind::Vcpu, SeccompMode::Enforce) => 0,
        (ThreadKind::Vcpu, _) => 1,
        (ThreadKind::Vmm, SeccompMode::Enforce) => 2,
        (ThreadKind::Vmm, _) => 3,
    };
    Some(PROGRAMS[slot].get_or_init(|| decode(raw)).as_slice())
}

/// Installs `kind`'s filter in `mode` on the **calling thread only**
/// (after `PR_SET_NO_NEW_PRIVS`, itself per thread). Other threads of the
/// process are not affected. [`SeccompMode::Off`] installs nothing.
pub fn install(kind: ThreadKind, mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(prog) = program(kind, mode) else {
        return Ok(());
    };
    let err = |source| SeccompError::Install { kind, mode, source };
    if kind == ThreadKind::Vcpu {
        seccompiler::apply_filter(&VCPU_REFUSALS).map_err(err)?;
    }
    // seccompiler::apply_filter: prctl(PR_SET_NO_NEW_PRIVS) then
    // seccomp(SECCOMP_SET_MODE_FILTER, flags = 0): no TSYNC, this thread.
    seccompiler::apply_filter(prog).map_err(err)
}

const fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

/// A second filter on vCPU threads: `openat` fails with EACCES instead of
/// reaching the allowlist, which lists it only so that this answer (an
/// errno outranks "allow") wins over a kill. The one open a vCPU thread
/// makes is glibc's: malloc reads `/proc/sys/vm/overcommit_memory` once
/// per process, on whichever thread first shrinks a heap of a thread arena
/// (`check_may_shrink_heap`), and on EACCES it goes on as with the default
/// setting. So no file is ever opened on a vCPU thread, and the thread is
/// not killed for glibc's housekeeping. Everything else passes on to the
/// allowlist (a filter's verdict is the strictest of all installed).
const VCPU_REFUSALS: [sock_filter; 6] = [
    // seccomp_data.arch: another architecture goes to the allowlist.
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 4),
    jump(
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        AUDIT_ARCH_X86_64,
        0,
        3,
    ),
    // seccomp_data.nr
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
    jump(
        libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
        libc::SYS_openat as u32,
        0,
        1,
    ),
    stmt(
        libc::BPF_RET | libc::BPF_K,
        SECCOMP_RET_ERRNO | libc::EACCES as u32,
    ),
    stmt(libc::BPF_RET | libc::BPF_K, SECCOMP_RET_ALLOW),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(m.to_string().parse::<SeccompMode>().unwrap(), m);
        }
        assert_eq!(SeccompMode::default(), SeccompMode::Enforce);
        let e = "Enforce".parse::<SeccompMode>().unwrap_err().to_string();
        assert!(e.contains("\"Enforce\"") && e.contains(ENV_VAR), "{e}");
    }

    #[test]
    fn from_env_reads_the_variable() {
        // The only test in this binary touching the variable.
        std::env::remove_var(ENV_VAR);
        assert_eq!(
            SeccompMode::from_env(SeccompMode::Log).unwrap(),
            SeccompMode::Log
        );
        std::env::set_var(ENV_VAR, "off");
        assert_eq!(
            SeccompMode::from_env(SeccompMode::Enforce).unwrap(),
            SeccompMode::Off
        );
        std::env::set_var(ENV_VAR, "permissive");
        let e = SeccompMode::from_env(SeccompMode::Enforce).unwrap_err();
        assert!(e.to_string().contains("permissive"), "{e}");
        std::env::remove_var(ENV_VAR);
    }

    #[test]
    fn the_environment_overrides_the_configuration() {
        let r = |c, e| resolve_mode(c, e);
        assert_eq!(r(SeccompMode::Enforce, None).unwrap(), SeccompMode::Enforce);
        assert_eq!(r(SeccompMode::Off, None).unwrap(), SeccompMode::Off);
        assert_eq!(
            r(SeccompMode::Enforce, Some("log")).unwrap(),
            SeccompMode::Log
        );
        assert_eq!(
            r(SeccompMode::Enforce, Some("off")).unwrap(),
            SeccompMode::Off
        );
        assert_eq!(
            r(SeccompMode::Off, Some("enforce")).unwrap(),
            SeccompMode::Enforce
        );
        assert!(r(SeccompMode::Enforce, Some("")).is_err());
        assert!(r(SeccompMode::Enforce, Some("permissive")).is_err());
    }

    #[test]
    fn embedded_programs_match_the_rules() {
        for kind in ThreadKind::ALL {
            let rk = match kind {
                ThreadKind::Vcpu => rules::Kind::Vcpu,
                ThreadKind::Vmm => rules::Kind::Vmm,
            };
            for (mode, action) in [
                (
                    SeccompMode::Enforce,
                    seccompiler::SeccompAction::KillProcess,
                ),
                (SeccompMode::Log, seccompiler::SeccompAction::Log),
            ] {
                let built: seccompiler::BpfProgram =
                    rules::filter(rk, action).unwrap().try_into().unwrap();
                assert_eq!(
                    program(kind, mode).unwrap(),
                    built.as_slice(),
                    "{kind} {mode}"
                );
            }
            assert!(program(kind, SeccompMode::Off).is_none());
            let names = allowed_syscalls(kind);
            assert_eq!(names.len(), rules::rules(rk).unwrap().len());
            assert!(names.contains(&"ioctl") && names.contains(&"futex"));
            assert!(!names.contains(&"execve") && !names.contains(&"ptrace"));
        }
        assert!(allowed_syscalls(ThreadKind::Vmm).contains(&"epoll_wait"));
        assert!(!allowed_syscalls(ThreadKind::Vcpu).contains(&"epoll_wait"));
    }

    #[test]
    fn per_kind_rules_merge_with_common() {
        // Merging is what makes per-kind lists extend the common one.
        let r = rules::rules(rules::Kind::Vmm).unwrap();
        let fcntl = r.iter().find(|r| r.sys.name == "SYS_fcntl").unwrap();
        assert_eq!(
            fcntl.when.len(),
            3,
            "common F_DUPFD_CLOEXEC, F_GETFD + virtio-fs F_SETFL"
        );
        let ioctl = r.iter().find(|r| r.sys.name == "SYS_ioctl").unwrap();
        assert_eq!(
            ioctl.when.len(),
            5,
            "FIONBIO + 3 KVM VM ioctls + virtio-net TUNSETOFFLOAD"
        );
    }
}
