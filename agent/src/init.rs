//! What PID 1 must do: basic mounts, reaping, power-off.

use std::ffi::CString;

fn log(msg: &str) {
    eprintln!("husk-agent: {msg}");
}

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
    ) else {
        return;
    };
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; a null data pointer is allowed.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, std::ptr::null()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            log(&format!("mount {fstype} on {target}: {e}"));
        }
    }
}

/// Mounts /proc, /sys and /dev.
pub fn mount_basics() {
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid_nodev_noexec);
    mount("sysfs", "/sys", "sysfs", nosuid_nodev_noexec);
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID);
}

/// True when the kernel command line carries `name=1` (or bare `name`).
pub fn cmdline_flag(cmdline: &str, name: &str) -> bool {
    cmdline
        .split_whitespace()
        .any(|arg| match arg.split_once('=') {
            Some((k, v)) => k == name && matches!(v, "1" | "y" | "yes" | "true" | "on"),
            None => arg == name,
        })
}

/// The running kernel's release.
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Syncs and resets the machine (the VMM sees the i8042 reset and ends the VM).
pub fn power_off(why: &str) -> ! {
    log(&format!("powering off ({why})"));
    // SAFETY: sync and reboot take no pointers; as PID 1 we may reboot.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot only returns on error; nothing else to do but wait.
    log(&format!(
        "reboot failed: {}",
        std::io::Error::last_os_error()
    ));
    loop {
        // SAFETY: pause takes no arguments.
        unsafe { libc::pause() };
    }
}

/// Waits for signals: reaps children on SIGCHLD, powers off on SIGTERM,
/// SIGINT or SIGPWR.
pub fn supervise() -> ! {
    // SAFETY: sigset_t is plain data initialised by sigemptyset/sigaddset;
    // blocking the signals lets sigwaitinfo take them synchronously.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGPWR] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    loop {
        // SAFETY: `set` is initialised; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        match sig {
            libc::SIGCHLD => reap(),
            libc::SIGTERM | libc::SIGINT | libc::SIGPWR => power_off("signal"),
            _ => {}
        }
    }
}

fn reap() {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid out pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_on_the_command_line() {
        let c = "console=ttyS0 reboot=k husk.oneshot=1 quiet";
        assert!(cmdline_flag(c, "husk.oneshot"));
        assert!(!cmdline_flag("husk.oneshot=0", "husk.oneshot"));
        assert!(cmdline_flag("husk.oneshot", "husk.oneshot"));
        assert!(!cmdline_flag("xhusk.oneshot=1", "husk.oneshot"));
        assert!(!kernel_release().is_empty());
    }
}
