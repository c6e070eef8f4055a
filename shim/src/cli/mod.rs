//! `husk` subcommands.

pub mod agent;
pub mod check;
pub mod device_args;
pub mod template;
pub mod vm_run;

/// Exit codes of the `husk` binary.
pub mod exit_code {
    /// The guest shut down cleanly (or the check or agent ping passed).
    pub const OK: i32 = 0;
    /// husk itself failed (bad input, no KVM, agent unreachable, ...).
    pub const ERROR: i32 = 1;
    /// The guest crashed (kernel panic, triple fault, emulation failure).
    pub const GUEST_CRASH: i32 = 3;
    /// `--timeout` expired.
    pub const TIMEOUT: i32 = 124;
    /// Interrupted (SIGINT/SIGTERM).
    pub const INTERRUPTED: i32 = 130;
}
