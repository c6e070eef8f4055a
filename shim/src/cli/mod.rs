//! `husk` subcommands.

pub mod agent;
pub mod check;
pub mod device_args;
pub mod install;
pub mod pods;
pub mod run;
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

/// Parses a positive number of seconds that a `Duration` can hold (a clap
/// value parser): `1e20` or `inf` is an error, not a panic.
pub fn parse_seconds(s: &str) -> Result<std::time::Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("{s}: give a positive number of seconds"));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("{s}: too many seconds"))
}

/// `auto`, `on` or `off` (a clap value parser).
pub fn parse_pvm_compat(s: &str) -> Result<husk_vmm::PvmCompat, String> {
    match s {
        "auto" => Ok(husk_vmm::PvmCompat::Auto),
        "on" => Ok(husk_vmm::PvmCompat::On),
        "off" => Ok(husk_vmm::PvmCompat::Off),
        _ => Err(format!("{s:?}: expected auto, on or off")),
    }
}

/// An error and its causes, `: `-separated, each once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds() {
        assert_eq!(
            parse_seconds("1.5"),
            Ok(std::time::Duration::from_millis(1500))
        );
        for bad in ["0", "-1", "nan", "inf", "1e20", "x", ""] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
    }
}
