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

/// The value of `name=value` on the command line, if present.
pub fn cmdline_value<'a>(cmdline: &'a str, name: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|arg| {
        arg.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
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
        assert_eq!(
            cmdline_value("a husk.echo_port=1026 b", "husk.echo_port"),
            Some("1026")
        );
        assert_eq!(cmdline_value("husk.echo_portx=1", "husk.echo_port"), None);
    }
}
