//! What PID 1 must do: mounts, console stdio, signals, reaping, power-off.

use std::ffi::CString;
use std::os::fd::IntoRawFd;
use std::time::Duration;

use husk_agent::log::log;
use husk_agent::reaper::Reaper;

/// How long a `Shutdown` request waits before powering off, so that its reply
/// leaves the guest first: one `sendmsg` on the RPC I/O thread and a queue
/// kick, a few ms even here (a 64-byte vsock round trip is ~23 ms). A host
/// that misses the reply still waits for the VM to stop. Was 200 ms: most
/// of `husk run`'s 0.34 s stop.
const SHUTDOWN_DELAY: Duration = Duration::from_millis(30);

fn mount(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: Option<&str>) {
    let _ = std::fs::create_dir_all(target);
    let (Ok(s), Ok(t), Ok(f), Ok(d)) = (
        CString::new(source),
        CString::new(target),
        CString::new(fstype),
        CString::new(data.unwrap_or_default()),
    ) else {
        log(&format!("mount {fstype} on {target}: NUL in an argument"));
        return;
    };
    let d_ptr = if data.is_some() {
        d.as_ptr().cast()
    } else {
        std::ptr::null()
    };
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; a null data pointer is allowed.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d_ptr) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            log(&format!("mount {fstype} on {target}: {e}"));
        }
    }
}

/// One malloc arena for every thread. glibc gives each new thread that
/// allocates an arena of its own (a 64 MiB reservation and fresh pages, each
/// first touch an emulated page fault on nested PVM hosts); the agent's
/// threads allocate little and rarely at once, so sharing the main arena
/// costs nothing and keeps the guest's touched memory small.
pub fn one_malloc_arena() {
    // SAFETY: mallopt only sets a malloc tunable; no pointers.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        log("mallopt(M_ARENA_MAX, 1) refused");
    }
}

/// Mounts /proc, /sys, /dev, /run, /tmp, the cgroup2 hierarchy and devpts
/// on /dev/pts.
pub fn mount_basics() {
    leave_rootfs();
    let nosuid_nodev = libc::MS_NOSUID | libc::MS_NODEV;
    let nosuid_nodev_noexec = nosuid_nodev | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nosuid_nodev_noexec, None);
    mount("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None);
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, None);
    mount("tmpfs", "/run", "tmpfs", nosuid_nodev, Some("mode=0755"));
    mount("tmpfs", "/tmp", "tmpfs", nosuid_nodev, Some("mode=1777"));
    mount(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        nosuid_nodev_noexec,
        None,
    );
    // Containers' terminals: the library opens /dev/ptmx (devtmpfs's node
    // finds the devpts mounted at /dev/pts). Once, before ready, so a
    // template snapshot holds it.
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    );
}

/// Where `/` is bind-mounted before it is moved over `/`.
const ROOT_BIND: &str = "/.husk-root";

/// Makes PID 1's root a mount with a parent, as switch_root does but
/// without copying anything: `/` (the initramfs, the kernel's `rootfs`) is
/// bind-mounted on a directory, that mount is moved over `/`, and PID 1
/// chroots into it. Containers need this: the kernel refuses pivot_root
/// (EINVAL) while the caller's root is the rootfs mount, which has no
/// parent; runc's fallback, MS_MOVE + chroot, would leave the agent's files
/// reachable through a chroot escape. Three mount-table calls, once per
/// boot (a template holds the result).
fn leave_rootfs() {
    mount("/", ROOT_BIND, "", libc::MS_BIND, None);
    let (Ok(bind), Ok(dot)) = (CString::new(ROOT_BIND), CString::new(".")) else {
        return;
    };
    // SAFETY: chdir, mount and chroot with valid NUL-terminated paths that
    // outlive the calls; null fstype and data are allowed for MS_MOVE.
    let rc = unsafe {
        if libc::chdir(bind.as_ptr()) != 0 {
            -1
        } else if libc::mount(
            dot.as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_MOVE,
            std::ptr::null(),
        ) != 0
        {
            -2
        } else if libc::chroot(dot.as_ptr()) != 0 {
            -3
        } else {
            libc::chdir(c"/".as_ptr())
        }
    };
    if rc != 0 {
        let step = match rc {
            -1 => "chdir",
            -2 => "move",
            -3 => "chroot",
            _ => "chdir /",
        };
        log(&format!(
            "leaving the initramfs root ({step}): {}; containers cannot pivot_root",
            std::io::Error::last_os_error()
        ));
    }
}

/// Points stdin, stdout and stderr at /dev/console.
pub fn console_stdio() {
    let console = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        Ok(f) => f.into_raw_fd(),
        Err(e) => {
            log(&format!("open /dev/console: {e}"));
            return;
        }
    };
    for target in 0..=2 {
        if console != target {
            // SAFETY: both are descriptor numbers; dup2 replaces `target`
            // atomically and touches no memory.
            unsafe { libc::dup2(console, target) };
        }
    }
    if console > 2 {
        // SAFETY: `console` came from into_raw_fd above and is ours alone
        // (0..=2 now hold their own duplicates).
        unsafe { libc::close(console) };
    }
}

/// The signals PID 1 takes synchronously in [`supervise`].
pub struct Signals(libc::sigset_t);

/// Blocks SIGCHLD, SIGTERM, SIGINT and SIGPWR in the calling thread. Call it
/// before any thread starts: threads inherit the mask, so only [`supervise`]'s
/// sigwaitinfo receives these signals.
pub fn block_signals() -> Signals {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it and
    // sigaddset/sigprocmask read it; a null old-set pointer is allowed.
    let (set, rc) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGPWR] {
            libc::sigaddset(&mut set, s);
        }
        let rc = libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        (set, rc)
    };
    if rc != 0 {
        log(&format!("sigprocmask: {}", std::io::Error::last_os_error()));
    }
    Signals(set)
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

/// The `Shutdown` RPC's action: sync the file systems, then power off
/// [`SHUTDOWN_DELAY`] from now, on a thread of its own, so the reply goes
/// out first. A host that has the reply may stop the VM at once: nothing
/// written in the guest is left unsynced.
pub fn power_off_soon() {
    log("shutdown requested by the host");
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    let spawned = std::thread::Builder::new()
        .name("power-off".into())
        .spawn(|| {
            std::thread::sleep(SHUTDOWN_DELAY);
            power_off("shutdown request");
        });
    if let Err(e) = spawned {
        log(&format!("power-off thread: {e}; powering off now"));
        power_off("shutdown request");
    }
}

/// Waits for the blocked signals: reaps children on SIGCHLD (through
/// `reaper`, which hands `Exec`'s children's statuses to their waiters and
/// drops orphans'), powers off on SIGTERM, SIGINT or SIGPWR.
pub fn supervise(signals: &Signals, reaper: &Reaper) -> ! {
    loop {
        // SAFETY: the set is initialised; a null siginfo pointer is allowed.
        let sig = unsafe { libc::sigwaitinfo(&signals.0, std::ptr::null_mut()) };
        match sig {
            libc::SIGCHLD => reaper.reap_all(),
            libc::SIGTERM => power_off("SIGTERM"),
            libc::SIGINT => power_off("SIGINT"),
            libc::SIGPWR => power_off("SIGPWR"),
            _ => {}
        }
    }
}
