//! Each filter, installed for real in a forked child: what is outside its
//! list kills the process with SIGSYS (enforce) or goes through (log, off);
//! what is on it passes; and a filter binds the thread that installed it
//! and no other.
//!
//! The programs are decoded in the parent (`program`), so the child's
//! `install` allocates nothing; children use raw `libc::syscall`s and leave
//! with `_exit`. Only the per-thread test spawns threads in its child
//! (glibc keeps malloc usable after fork).

use husk_seccomp::{install, program, SeccompMode, ThreadKind};

const KVM_CREATE_VM: libc::c_ulong = 0xae01;
const KVM_RUN: libc::c_ulong = 0xae80;
const KVM_GET_IRQCHIP: libc::c_ulong = 0xc208_ae62;

/// How a child ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Exited(i32),
    Signaled(i32),
}

/// Runs `f` in a forked child with `kind`'s filter in `mode` installed on
/// the child's only thread; the child exits with `f`'s code.
fn in_child(kind: ThreadKind, mode: SeccompMode, f: impl FnOnce() -> i32) -> End {
    let _ = program(kind, mode);
    fork_and_wait(|| {
        if install(kind, mode).is_err() {
            return 100;
        }
        f()
    })
}

fn fork_and_wait(f: impl FnOnce() -> i32) -> End {
    // SAFETY: the child runs `f` (raw syscalls, no locks held by other
    // threads of the parent) and leaves with _exit, never returning into
    // the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let code = f();
        // exit(2), not _exit (= exit_group, on no list): the child's only
        // thread ends, and with it the child, with `code`.
        // SAFETY: ends this thread without returning into the harness.
        unsafe { libc::syscall(libc::SYS_exit, code) };
        unreachable!("exit(2) returned");
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(r, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        End::Signaled(libc::WTERMSIG(status))
    } else {
        End::Exited(libc::WEXITSTATUS(status))
    }
}

/// A syscall made by a probe, with a name for messages.
type Probe = (&'static str, fn() -> libc::c_long);

/// Makes syscall `nr` with up to six integer arguments.
fn sys(nr: libc::c_long, a: &[libc::c_long]) -> libc::c_long {
    let mut v = [0; 6];
    v[..a.len()].copy_from_slice(a);
    // SAFETY: every probe passes only integers: NULL pointers, bad fds or
    // flags; none gives the kernel memory to write into.
    unsafe { libc::syscall(nr, v[0], v[1], v[2], v[3], v[4], v[5]) }
}

fn c(v: impl TryInto<libc::c_long>) -> libc::c_long {
    v.try_into().unwrap_or(-1)
}

/// Syscalls outside `kind`'s list.
fn forbidden(kind: ThreadKind) -> Vec<Probe> {
    let mut p: Vec<Probe> = vec![
        ("execve", || sys(libc::SYS_execve, &[])),
        ("ptrace", || {
            sys(libc::SYS_ptrace, &[c(libc::PTRACE_PEEKDATA), 1])
        }),
        ("mount", || sys(libc::SYS_mount, &[])),
        ("socket(AF_INET)", || {
            sys(libc::SYS_socket, &[c(libc::AF_INET), c(libc::SOCK_STREAM)])
        }),
        ("ioctl(KVM_CREATE_VM)", || {
            sys(libc::SYS_ioctl, &[-1, c(KVM_CREATE_VM)])
        }),
        ("mmap(PROT_EXEC)", || {
            let prot = libc::PROT_READ | libc::PROT_EXEC;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            sys(libc::SYS_mmap, &[0, 4096, c(prot), c(flags), -1])
        }),
        ("tgkill(SIGKILL)", || {
            sys(libc::SYS_tgkill, &[0, 0, c(libc::SIGKILL)])
        }),
        ("prctl", || sys(libc::SYS_prctl, &[c(libc::PR_GET_SECCOMP)])),
    ];
    match kind {
        ThreadKind::Vcpu => p.extend::<[Probe; 2]>([
            ("epoll_create1", || sys(libc::SYS_epoll_create1, &[])),
            ("ioctl(KVM_GET_IRQCHIP)", || {
                sys(libc::SYS_ioctl, &[-1, c(KVM_GET_IRQCHIP)])
            }),
        ]),
        ThreadKind::Vmm => p.extend::<[Probe; 2]>([
            ("ioctl(KVM_RUN)", || sys(libc::SYS_ioctl, &[-1, c(KVM_RUN)])),
            ("setresuid(real uid)", || {
                sys(libc::SYS_setresuid, &[0, -1, -1])
            }),
        ]),
    }
    p
}

/// Syscalls the kind's list allows (called with a bad fd or harmless
/// arguments, so they fail or do nothing, but return).
fn allowed(kind: ThreadKind) -> Vec<Probe> {
    let mut p: Vec<Probe> = vec![
        ("getpid", || sys(libc::SYS_getpid, &[])),
        ("write(-1)", || sys(libc::SYS_write, &[-1])),
        ("close(-1)", || sys(libc::SYS_close, &[-1])),
        ("mmap(PROT_READ|PROT_WRITE)", || {
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            sys(libc::SYS_mmap, &[0, 4096, c(prot), c(flags), -1])
        }),
    ];
    match kind {
        ThreadKind::Vcpu => p.push(("ioctl(-1, KVM_RUN)", || {
            sys(libc::SYS_ioctl, &[-1, c(KVM_RUN)])
        })),
        ThreadKind::Vmm => p.extend::<[Probe; 3]>([
            ("ioctl(-1, KVM_GET_IRQCHIP)", || {
                sys(libc::SYS_ioctl, &[-1, c(KVM_GET_IRQCHIP)])
            }),
            ("socket(AF_UNIX)", || {
                sys(libc::SYS_socket, &[c(libc::AF_UNIX), c(libc::SOCK_STREAM)])
            }),
            ("setresuid(-1, -1, -1)", || {
                sys(libc::SYS_setresuid, &[-1, -1, -1])
            }),
        ]),
    }
    p
}

#[test]
fn enforce_kills_the_process_on_a_syscall_outside_the_list() {
    for kind in ThreadKind::ALL {
        for (name, probe) in forbidden(kind) {
            let end = in_child(kind, SeccompMode::Enforce, || {
                probe();
                0
            });
            assert_eq!(end, End::Signaled(libc::SIGSYS), "{kind}: {name}");
        }
    }
}

/// A vCPU thread's openat (glibc malloc reads a /proc file once) fails
/// with EACCES instead of killing the process, and opens nothing, in every
/// mode that installs a filter.
#[test]
fn vcpu_openat_is_refused_not_fatal() {
    for mode in [SeccompMode::Enforce, SeccompMode::Log] {
        let end = in_child(ThreadKind::Vcpu, mode, || {
            let path = c"/proc/sys/vm/overcommit_memory";
            // SAFETY: a valid C string; a returned fd would only leak
            // into the exiting child.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_openat,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                    libc::O_RDONLY,
                )
            };
            if r >= 0 {
                return 1;
            }
            std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
        });
        assert_eq!(end, End::Exited(libc::EACCES), "{mode}");
    }
}

#[test]
fn enforce_lets_listed_syscalls_through() {
    for kind in ThreadKind::ALL {
        for (name, probe) in allowed(kind) {
            let end = in_child(kind, SeccompMode::Enforce, || {
                probe();
                7
            });
            assert_eq!(end, End::Exited(7), "{kind}: {name}");
        }
    }
}

#[test]
fn log_and_off_let_everything_through() {
    for kind in ThreadKind::ALL {
        for mode in [SeccompMode::Log, SeccompMode::Off] {
            for (name, probe) in forbidden(kind) {
                let end = in_child(kind, mode, || {
                    probe();
                    7
                });
                assert_eq!(end, End::Exited(7), "{kind} {mode}: {name}");
            }
            // Log installs a filter (prctl reports mode 2); Off none.
            let end = in_child(kind, mode, || {
                // SAFETY: PR_GET_SECCOMP takes no pointers.
                unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) }
            });
            let want = if mode == SeccompMode::Log { 2 } else { 0 };
            assert_eq!(end, End::Exited(want), "{kind} {mode}");
        }
    }
}

/// The filter binds the installing thread only: a sibling thread keeps
/// making syscalls outside the list, and the filtered thread can end
/// normally (Rust's thread exit: sigaltstack, munmap, madvise, exit).
#[test]
fn a_filter_binds_only_the_thread_that_installs_it() {
    for kind in ThreadKind::ALL {
        let _ = program(kind, SeccompMode::Enforce);
        let end = fork_and_wait(|| {
            let filtered = std::thread::Builder::new()
                .name("filtered".into())
                .spawn(move || install(kind, SeccompMode::Enforce).is_ok())
                .map(|t| t.join());
            if !matches!(filtered, Ok(Ok(true))) {
                return 10;
            }
            // This thread has no filter: outside-the-list syscalls work.
            // SAFETY: PR_GET_SECCOMP takes no pointers.
            if unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) } != 0 {
                return 11;
            }
            // SAFETY: creates and closes a socket; no memory is passed.
            let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            if s < 0 {
                return 12;
            }
            // SAFETY: `s` is our socket.
            unsafe { libc::close(s) };
            0
        });
        assert_eq!(end, End::Exited(0), "{kind}");

        // A filtered thread that steps outside kills the whole process.
        let end = fork_and_wait(|| {
            let _ = std::thread::spawn(move || {
                if install(kind, SeccompMode::Enforce).is_ok() {
                    // SAFETY: PR_GET_SECCOMP takes no pointers.
                    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
                }
            })
            .join();
            13
        });
        assert_eq!(end, End::Signaled(libc::SIGSYS), "{kind}");
    }
}
