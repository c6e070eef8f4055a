//! What every VMM thread needs: the Rust runtime and glibc on the paths
//! these threads take (memory allocation, locks, thread exit, signals),
//! logging, and closing what they own.

use super::{allow, allow_args, allow_when, Cond, Rule};

/// The signal that kicks vCPU threads out of KVM_RUN (husk-vmm's
/// `controller::kick_signal`: SIGRTMIN + 1). glibc's SIGRTMIN is a constant
/// of the C library, the same at build time and at run time.
fn kick_signal() -> u64 {
    (libc::SIGRTMIN() + 1) as u64
}

pub fn rules() -> Vec<Rule> {
    let no_exec = || vec![vec![Cond::Clear32(2, libc::PROT_EXEC as u64)]];
    vec![
        // Logging (tracing to stderr), the guest console file, eventfd
        // signals (irqfd interrupts, device kicks, the exit event).
        allow(sys!(SYS_write)),
        // std's Mutex/Condvar/thread park and glibc's internal locks.
        allow(sys!(SYS_futex)),
        // The allocator: new arenas, large allocations and their release
        // (glibc malloc), thread stacks and guard pages at thread exit.
        // Never executable memory: these threads load no code.
        allow_when(sys!(SYS_mmap), no_exec()),
        allow_when(sys!(SYS_mprotect), no_exec()),
        allow(sys!(SYS_munmap)),
        allow(sys!(SYS_mremap)),
        allow(sys!(SYS_brk)),
        // glibc malloc trims freed arenas; glibc frees a finished thread's
        // stack with MADV_DONTNEED.
        allow(sys!(SYS_madvise)),
        // Dropping fds: cloned eventfds, vCPU/VM fds, files, sockets.
        allow(sys!(SYS_close)),
        // EventFd::try_clone (std File::try_clone = F_DUPFD_CLOEXEC): the
        // virtio-mmio transport clones each queue's notify eventfd when
        // the guest activates a device (on a vCPU thread). F_GETFD: std
        // checks that an fd is still open before closing it (OwnedFd's
        // drop, in builds with debug assertions: the tests).
        allow_args(
            sys!(SYS_fcntl),
            1,
            &[libc::F_DUPFD_CLOEXEC as u64, libc::F_GETFD as u64],
        ),
        // Timestamps for logs, deadlines and the console timeline, where
        // the vDSO falls back to the syscall (no stable TSC, e.g. nested).
        allow(sys!(SYS_clock_gettime)),
        // Returning from a signal handler: the vCPU kick handler.
        allow(sys!(SYS_rt_sigreturn)),
        // glibc blocks signals around pthread_kill, abort and thread exit.
        allow(sys!(SYS_rt_sigprocmask)),
        // Rust std removes and frees each thread's alternate signal stack
        // (the stack-overflow handler's) when the thread ends.
        allow(sys!(SYS_sigaltstack)),
        // pthread_kill (the vCPU kicks) and raise(SIGABRT) (abort, e.g. a
        // panic while panicking) signal one thread of this process: only
        // these two signals.
        allow_args(sys!(SYS_tgkill), 2, &[kick_signal(), libc::SIGABRT as u64]),
        // pthread_kill and raise ask for the process id (glibc no longer
        // caches it).
        allow(sys!(SYS_getpid)),
        // A thread that ends (the VM stopped) leaves with exit(2).
        allow(sys!(SYS_exit)),
    ]
}
