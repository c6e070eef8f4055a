//! The agent's own accounting of a container's create and start: for each
//! coarse step, its wall time and the guest CPU, page faults and context
//! switches of the thread (or, in the clone child, the process) doing it,
//! plus a count of what the step did (mounts, namespaces, files written,
//! execve calls). Returned with CreateContainer / StartContainer and logged
//! by the shim as a phase table.
//!
//! Cost: one `getrusage` per step boundary and two `clock_gettime` (vDSO:
//! no syscall). The step list is coarse on purpose (4 steps for a create,
//! ~11 for a start: 5 and ~11 getrusage calls); what the measuring itself
//! cost is reported as the last row, [`ACCOUNTING`]: measured on the
//! emulated-kernel node, ~0.26 ms a sample on the agent's thread, ~0.4 ms
//! in the child, 1.3 ms per create and 3-5 ms per start.
//!
//! Not kept: guest syscall counts (no cheap per-task counter:
//! `/proc/<pid>/io` counts read/write calls only, `schedstat` run time);
//! the exec's own CPU and faults (reading `/proc/<pid>/stat` at the
//! handoff cost 40-70 ms of guest time per start, and the new image's
//! faults come after the handoff anyway), so the `exec` step has its wall
//! time only.
//!
//! [`sample`] makes only raw calls on the stack, so the clone child (which
//! shares the agent's memory and may not allocate) uses it too.

use std::borrow::Cow;

/// The name of the row that holds what the accounting itself cost: its
/// wall time, and as its count the syscalls made for it.
pub const ACCOUNTING: &str = "accounting";

/// Resource usage of a thread or process at one point (getrusage), the
/// fields the accounting keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub user_us: u64,
    pub sys_us: u64,
    /// Minor and major page faults.
    pub minflt: u64,
    pub majflt: u64,
    /// Voluntary and involuntary context switches.
    pub nvcsw: u64,
    pub nivcsw: u64,
}

fn timeval_us(t: &libc::timeval) -> u64 {
    let s = u64::try_from(t.tv_sec).unwrap_or(0);
    let us = u64::try_from(t.tv_usec).unwrap_or(0);
    s.saturating_mul(1_000_000).saturating_add(us)
}

fn count(v: libc::c_long) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Usage {
    pub fn from_rusage(r: &libc::rusage) -> Self {
        Self {
            user_us: timeval_us(&r.ru_utime),
            sys_us: timeval_us(&r.ru_stime),
            minflt: count(r.ru_minflt),
            majflt: count(r.ru_majflt),
            nvcsw: count(r.ru_nvcsw),
            nivcsw: count(r.ru_nivcsw),
        }
    }

    /// What happened between `earlier` and `self` (0 where a counter went
    /// back, e.g. figures from two sources of different resolution).
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            user_us: self.user_us.saturating_sub(earlier.user_us),
            sys_us: self.sys_us.saturating_sub(earlier.sys_us),
            minflt: self.minflt.saturating_sub(earlier.minflt),
            majflt: self.majflt.saturating_sub(earlier.majflt),
            nvcsw: self.nvcsw.saturating_sub(earlier.nvcsw),
            nivcsw: self.nivcsw.saturating_sub(earlier.nivcsw),
        }
    }
}

/// Whose usage a sample reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The calling thread (an agent thread serving the RPC).
    Thread,
    /// The calling process (the clone child: a process of its own).
    Process,
}

/// A step boundary: the monotonic clock before and after reading the
/// usage (the difference is the accounting's own cost), and the usage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    pub start_ns: u64,
    pub end_ns: u64,
    pub usage: Usage,
}

impl Sample {
    /// What reading this sample cost, ns.
    pub fn cost_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// CLOCK_MONOTONIC in ns (vDSO; raw call, async-signal-safe).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let s = u64::try_from(ts.tv_sec).unwrap_or(0);
    let ns = u64::try_from(ts.tv_nsec).unwrap_or(0);
    s.saturating_mul(1_000_000_000).saturating_add(ns)
}

/// Reads the clock and `scope`'s usage. Raw calls only, nothing
/// allocated: fit for the clone child. A failed getrusage (it cannot fail
/// for these scopes) reads as zeros.
pub fn sample(scope: Scope) -> Sample {
    let start_ns = monotonic_ns();
    let who = match scope {
        Scope::Thread => libc::RUSAGE_THREAD,
        Scope::Process => libc::RUSAGE_SELF,
    };
    // SAFETY: rusage is plain data; getrusage fills the one we own.
    let usage = unsafe {
        let mut r: libc::rusage = std::mem::zeroed();
        if libc::getrusage(who, &mut r) == 0 {
            Usage::from_rusage(&r)
        } else {
            Usage::default()
        }
    };
    Sample {
        start_ns,
        end_ns: monotonic_ns(),
        usage,
    }
}

/// One step's figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: Cow<'static, str>,
    /// The step this one is a part of (its wall time is in that step's
    /// too; a part has its wall time and count only); "" for a step.
    pub within: &'static str,
    pub wall_us: u64,
    pub usage: Usage,
    /// How many of `unit` the step did ("" when it counts nothing).
    pub count: u64,
    pub unit: &'static str,
}

impl Step {
    /// The step from boundary `from` to boundary `to`: the wall time
    /// between the end of the one and the start of the other (so the
    /// accounting's own reads fall in no step), the usage between them.
    pub fn between(name: impl Into<Cow<'static, str>>, from: &Sample, to: &Sample) -> Self {
        Self {
            name: name.into(),
            within: "",
            wall_us: to.start_ns.saturating_sub(from.end_ns) / 1000,
            usage: to.usage.since(&from.usage),
            count: 0,
            unit: "",
        }
    }

    /// The step as the protocol carries it.
    pub fn to_msg(&self) -> husk_agent_protocol::agent::StepAccounting {
        husk_agent_protocol::agent::StepAccounting {
            name: self.name.clone().into_owned(),
            within: self.within.to_owned(),
            wall_us: self.wall_us,
            user_us: self.usage.user_us,
            sys_us: self.usage.sys_us,
            minflt: self.usage.minflt,
            majflt: self.usage.majflt,
            nvcsw: self.usage.nvcsw,
            nivcsw: self.usage.nivcsw,
            count: self.count,
            unit: self.unit.to_owned(),
            ..Default::default()
        }
    }

    /// The same step with a count of `unit`.
    pub fn counting(self, count: u64, unit: &'static str) -> Self {
        Self {
            count,
            unit,
            ..self
        }
    }
}

/// The steps of one RPC, measured on the thread serving it; steps
/// measured elsewhere (the clone child) are added with [`Meter::push`].
/// [`Meter::off`] measures nothing and costs nothing (execs, tests).
#[derive(Debug)]
pub struct Meter {
    last: Option<Sample>,
    steps: Vec<Step>,
    cost_ns: u64,
    syscalls: u64,
}

impl Meter {
    /// A meter of the calling thread, starting now.
    pub fn thread() -> Self {
        let first = sample(Scope::Thread);
        Self {
            cost_ns: first.cost_ns(),
            last: Some(first),
            steps: Vec::new(),
            syscalls: 1,
        }
    }

    /// A meter that measures nothing.
    pub fn off() -> Self {
        Self {
            last: None,
            steps: Vec::new(),
            cost_ns: 0,
            syscalls: 0,
        }
    }

    pub fn is_on(&self) -> bool {
        self.last.is_some()
    }

    /// A sample of the calling thread now (its cost counted), or None
    /// when off. It does not end a step: see [`Self::resume_at`].
    pub fn sample(&mut self) -> Option<Sample> {
        self.last?;
        let s = sample(Scope::Thread);
        self.add_cost(s.cost_ns(), 1);
        Some(s)
    }

    /// The last step boundary.
    pub fn last(&self) -> Option<&Sample> {
        self.last.as_ref()
    }

    /// Ends step `name` now (a step with nothing to count).
    pub fn mark(&mut self, name: &'static str) {
        self.mark_counting(name, 0, "");
    }

    /// Ends step `name` now; it did `count` of `unit`.
    pub fn mark_counting(&mut self, name: &'static str, count: u64, unit: &'static str) {
        let Some(from) = self.last else { return };
        let Some(to) = self.sample() else { return };
        self.steps
            .push(Step::between(name, &from, &to).counting(count, unit));
        self.last = Some(to);
    }

    /// Adds a step measured elsewhere (in order).
    pub fn push(&mut self, step: Step) {
        if self.is_on() {
            self.steps.push(step);
        }
    }

    /// The next step starts at `s` (taken with [`Self::sample`]).
    pub fn resume_at(&mut self, s: Sample) {
        if self.is_on() {
            self.last = Some(s);
        }
    }

    /// Adds what measuring cost elsewhere: `ns` of wall time, `syscalls`.
    pub fn add_cost(&mut self, ns: u64, syscalls: u64) {
        self.cost_ns = self.cost_ns.saturating_add(ns);
        self.syscalls = self.syscalls.saturating_add(syscalls);
    }

    /// The steps, then the [`ACCOUNTING`] row (its wall time, the syscalls
    /// made for it); none when off.
    pub fn finish(self) -> Vec<Step> {
        if self.last.is_none() {
            return Vec::new();
        }
        let mut steps = self.steps;
        steps.push(Step {
            name: Cow::Borrowed(ACCOUNTING),
            within: "",
            wall_us: self.cost_ns / 1000,
            usage: Usage::default(),
            count: self.syscalls,
            unit: "syscalls",
        });
        steps
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn at(start_ns: u64, end_ns: u64, usage: Usage) -> Sample {
        Sample {
            start_ns,
            end_ns,
            usage,
        }
    }

    #[test]
    fn a_step_is_the_difference_between_its_boundaries() {
        let a = at(
            1_000_000,
            1_200_000,
            Usage {
                user_us: 10,
                sys_us: 100,
                minflt: 5,
                majflt: 1,
                nvcsw: 2,
                nivcsw: 0,
            },
        );
        let b = at(
            5_200_000,
            5_300_000,
            Usage {
                user_us: 15,
                sys_us: 3100,
                minflt: 45,
                majflt: 1,
                nvcsw: 3,
                nivcsw: 2,
            },
        );
        let s = Step::between("mounts", &a, &b).counting(7, "mounts");
        // From the end of the first read to the start of the second.
        assert_eq!(s.wall_us, 4000);
        assert_eq!(
            s.usage,
            Usage {
                user_us: 5,
                sys_us: 3000,
                minflt: 40,
                majflt: 0,
                nvcsw: 1,
                nivcsw: 2,
            }
        );
        assert_eq!((s.count, s.unit), (7, "mounts"));
    }

    #[test]
    fn counters_that_go_back_read_zero() {
        let later = Usage {
            user_us: 10_000,
            ..Usage::default()
        };
        let earlier = Usage {
            user_us: 10_400,
            minflt: 3,
            ..Usage::default()
        };
        assert_eq!(later.since(&earlier), Usage::default());
        let s = Step::between("x", &at(9, 10, earlier), &at(5, 6, later));
        assert_eq!(s.wall_us, 0);
    }

    #[test]
    fn rusage_fields_convert() {
        // SAFETY: rusage is plain data.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        r.ru_utime.tv_sec = 2;
        r.ru_utime.tv_usec = 5;
        r.ru_stime.tv_usec = 999_999;
        r.ru_minflt = 12;
        r.ru_majflt = 3;
        r.ru_nvcsw = 4;
        r.ru_nivcsw = 5;
        assert_eq!(
            Usage::from_rusage(&r),
            Usage {
                user_us: 2_000_005,
                sys_us: 999_999,
                minflt: 12,
                majflt: 3,
                nvcsw: 4,
                nivcsw: 5,
            }
        );
    }

    #[test]
    fn a_meter_records_each_mark_in_order_and_its_own_cost_last() {
        let mut m = Meter::thread();
        // Fault in fresh pages so the first step has page faults to count.
        let v = vec![1u8; 4 << 20];
        assert_eq!(v.iter().map(|&b| u64::from(b)).sum::<u64>(), 4 << 20);
        m.mark_counting("touch", 1024, "pages");
        m.mark("nothing");
        m.push(Step {
            name: "elsewhere".into(),
            within: "",
            wall_us: 7,
            usage: Usage::default(),
            count: 0,
            unit: "",
        });
        m.add_cost(2000, 3);
        let steps = m.finish();
        let names: Vec<_> = steps.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["touch", "nothing", "elsewhere", ACCOUNTING]);
        assert!(steps[0].usage.minflt > 0, "{:?}", steps[0]);
        assert_eq!((steps[0].count, steps[0].unit), (1024, "pages"));
        let acct = &steps[3];
        // The first sample, one per mark, and the 3 added.
        assert_eq!((acct.count, acct.unit), (1 + 2 + 3, "syscalls"));
        assert!(acct.wall_us >= 2, "{acct:?}");
    }

    #[test]
    fn an_off_meter_records_nothing() {
        let mut m = Meter::off();
        assert!(!m.is_on());
        assert!(m.sample().is_none());
        m.mark("a");
        m.push(Step::between("b", &Sample::default(), &Sample::default()));
        assert!(m.finish().is_empty());
    }
}
