//! The kernel command line (`/proc/cmdline`).

/// True when the command line carries `name=1` (or `y`, `yes`, `true`, `on`)
/// or a bare `name`.
pub fn cmdline_flag(cmdline: &str, name: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|arg| match arg.split_once('=') {
            Some((k, v)) => k == name && matches!(v, "1" | "y" | "yes" | "true" | "on"),
            None => arg == name,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_on_the_command_line() {
        let c = "console=ttyS0 reboot=k husk.oneshot=1 quiet\n";
        assert!(cmdline_flag(c, "husk.oneshot"));
        assert!(cmdline_flag(c, "quiet"));
        assert!(!cmdline_flag("husk.oneshot=0", "husk.oneshot"));
        assert!(!cmdline_flag("husk.oneshot=", "husk.oneshot"));
        assert!(cmdline_flag("husk.oneshot", "husk.oneshot"));
        assert!(cmdline_flag("a husk.oneshot=on", "husk.oneshot"));
        assert!(!cmdline_flag("xhusk.oneshot=1", "husk.oneshot"));
        assert!(!cmdline_flag("husk.oneshotx=1", "husk.oneshot"));
        assert!(!cmdline_flag("", "husk.oneshot"));
    }
}
