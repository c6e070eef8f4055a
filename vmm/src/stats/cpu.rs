//! A thread's CPU time, read from any thread of the process.
//!
//! Linux names a thread's CPU clock by its tid (what glibc's
//! `pthread_getcpuclockid` returns, without needing a live `pthread_t`):
//! `clock_gettime` on it answers for threads of the caller's own process
//! only, and fails (EINVAL) once the thread is gone, so a stale tid never
//! reads another process's thread.

/// `CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD_MASK`.
const THREAD_SCHED_CLOCK: libc::clockid_t = 2 | 4;

/// The CPU clock of thread `tid` of this process.
fn thread_clock(tid: libc::pid_t) -> libc::clockid_t {
    (!tid << 3) | THREAD_SCHED_CLOCK
}

fn read(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out pointer; an invalid clock id is EINVAL.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u64::try_from(ts.tv_nsec).ok()?;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// CPU time (user + system, ns) thread `tid` of this process has used;
/// `None` when it is gone.
pub fn thread_cpu_ns(tid: libc::pid_t) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    read(thread_clock(tid))
}

/// The calling thread's CPU time (ns).
pub fn own_cpu_ns() -> Option<u64> {
    read(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// The calling thread's id.
pub fn own_tid() -> libc::pid_t {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_threads_cpu_time_and_its_end() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            // Burn some CPU so the clock has moved.
            let mut x = 0u64;
            while own_cpu_ns().unwrap_or(0) < 2_000_000 {
                x = x.wrapping_add(1);
            }
            tx.send((own_tid(), own_cpu_ns(), x)).unwrap();
            let _ = done_rx.recv();
        });
        let (tid, own, _) = rx.recv().unwrap();
        let seen = thread_cpu_ns(tid).expect("a live thread of this process");
        assert!(seen >= own.unwrap() && seen >= 2_000_000, "{seen}");
        drop(done_tx);
        t.join().unwrap();
        // Gone (or, had the tid been reused already, another thread of
        // this process: never a panic).
        let _ = thread_cpu_ns(tid);
        assert_eq!(thread_cpu_ns(0), None);
        assert_eq!(thread_cpu_ns(-5), None);
    }
}
