//! `/init husk-pause`: a CRI pod's sandbox process (see
//! [`crate::container::PAUSE_ARG`]). PID 1 of the pod's pid
//! namespace: it reaps what is reparented to it and ends (0) on SIGTERM or
//! SIGINT, as Kubernetes' pause does; it never touches a file.

/// Runs the pause loop; returns the exit code.
pub fn run() -> i32 {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it,
    // and blocking signals of this single-threaded process is sound.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGCHLD] {
            libc::sigaddset(&mut set, s);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return 1;
        }
        loop {
            let mut sig: libc::c_int = 0;
            if libc::sigwait(&set, &mut sig) != 0 {
                continue;
            }
            match sig {
                libc::SIGTERM | libc::SIGINT => return 0,
                _ => while libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) > 0 {},
            }
        }
    }
}
