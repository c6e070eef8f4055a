//! The clone child's own step accounting. The child shares the agent's
//! memory (CLONE_VM) and the agent's thread is suspended until the child
//! has exec'd (CLONE_VFORK), so the child writes its samples into this
//! fixed-size record in the agent's memory: nothing is sent, nothing
//! allocated, one `getrusage(RUSAGE_SELF)` per step (the child is a
//! process of its own, its counters start at zero at the clone). The agent
//! reads the record once the clone returns and turns it into steps around
//! its own samples: the clone, the child's steps, the exec.

use std::cell::Cell;

use crate::accounting::{sample, Sample, Scope, Step, Usage};

/// The child's coarse steps, in the order they run (each optional).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::container) enum ChildStep {
    /// Signals, setsid, stdio, the cgroup join, oom_score_adj.
    Join,
    /// setns into joined namespaces, the cgroup namespace's unshare.
    Setns,
    /// `/` propagation, the rootfs bind, the spec's mounts, device nodes,
    /// `/dev` symlinks.
    Mounts,
    /// pivot_root, the old root detached, the propagation after it.
    PivotRoot,
    /// Namespaced sysctls written.
    Sysctl,
    /// Masked paths, read-only paths, the read-only root.
    Paths,
    /// A light sandbox's empty root (tmpfs, pivot_root).
    EmptyRoot,
    /// Hostname, rlimits, cwd, capabilities, ids, no_new_privs.
    Creds,
    /// Seccomp filters, the signal mask, close_range.
    Seccomp,
}

impl ChildStep {
    pub(in crate::container) fn name(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Setns => "setns",
            Self::Mounts => "mounts",
            Self::PivotRoot => "pivot_root",
            Self::Sysctl => "sysctl",
            Self::Paths => "masked_readonly",
            Self::EmptyRoot => "empty_root",
            Self::Creds => "creds",
            Self::Seccomp => "seccomp",
        }
    }

    /// The step's count is its mount(2) calls.
    fn counts_mounts(self) -> bool {
        matches!(
            self,
            Self::Mounts | Self::PivotRoot | Self::Paths | Self::EmptyRoot
        )
    }

    /// What the step's count counts.
    fn unit(self) -> &'static str {
        match self {
            Self::Mounts | Self::PivotRoot | Self::Paths | Self::EmptyRoot => "mounts",
            Self::Join | Self::Sysctl => "files",
            Self::Setns => "namespaces",
            Self::Seccomp => "filters",
            Self::Creds => "",
        }
    }
}

/// A part of a step timed apart (by the clock alone: no syscall).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::container) enum Part {
    /// The spec's mount at this index (within `mounts`).
    Mount(u16),
    /// Device nodes and `/dev` symlinks (within `mounts`).
    Devices,
    /// Masked paths (within `masked_readonly`).
    Masked,
    /// Read-only paths and the read-only root (within `masked_readonly`).
    Readonly,
}

impl Part {
    fn within(self) -> ChildStep {
        match self {
            Self::Mount(_) | Self::Devices => ChildStep::Mounts,
            Self::Masked | Self::Readonly => ChildStep::Paths,
        }
    }
}

/// The most steps a child records (every [`ChildStep`] once).
const MAX_STEPS: usize = 9;
/// The most parts a child records; later ones are not timed apart.
const MAX_PARTS: usize = 40;

#[derive(Debug, Clone, Copy)]
struct PartEntry {
    part: Part,
    ns: u64,
    mounts: u32,
}

/// Where a part began: the clock and the mount calls so far.
#[derive(Debug, Clone, Copy)]
pub(in crate::container) struct PartStart {
    ns: u64,
    mounts: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    step: ChildStep,
    at: Sample,
    count: u32,
}

/// The child's record (see the module docs). Written by the child only
/// while the agent's thread is suspended, read by the agent after: never
/// two at once.
#[derive(Debug)]
pub(in crate::container) struct Tally {
    on: bool,
    /// When the child began (the clock only: its usage is zero then).
    entered_ns: Cell<u64>,
    entries: [Cell<Option<Entry>>; MAX_STEPS],
    len: Cell<usize>,
    /// mount(2) calls so far (the mount steps count their own).
    mounts: Cell<u32>,
    /// mount calls when the last step ended.
    mounts_before: Cell<u32>,
    /// execve calls made.
    execs: Cell<u32>,
    parts: [Cell<Option<PartEntry>>; MAX_PARTS],
    parts_len: Cell<usize>,
}

impl Tally {
    pub(in crate::container) fn new(on: bool) -> Self {
        Self {
            on,
            entered_ns: Cell::new(0),
            entries: Default::default(),
            len: Cell::new(0),
            mounts: Cell::new(0),
            mounts_before: Cell::new(0),
            execs: Cell::new(0),
            parts: std::array::from_fn(|_| Cell::new(None)),
            parts_len: Cell::new(0),
        }
    }

    /// In the child: a part begins (a vDSO clock read when on).
    pub(in crate::container) fn part_start(&self) -> PartStart {
        PartStart {
            ns: if self.on {
                crate::accounting::monotonic_ns()
            } else {
                0
            },
            mounts: self.mounts.get(),
        }
    }

    /// In the child: `part`, begun at `start`, ends now.
    pub(in crate::container) fn part_end(&self, part: Part, start: PartStart) {
        if !self.on {
            return;
        }
        let i = self.parts_len.get();
        if let Some(slot) = self.parts.get(i) {
            slot.set(Some(PartEntry {
                part,
                ns: crate::accounting::monotonic_ns().saturating_sub(start.ns),
                mounts: self.mounts.get().saturating_sub(start.mounts),
            }));
            self.parts_len.set(i + 1);
        }
    }

    /// In the child, first thing: when it began (a vDSO clock read).
    pub(in crate::container) fn enter(&self) {
        if self.on {
            self.entered_ns.set(crate::accounting::monotonic_ns());
        }
    }

    /// A mount(2) call is about to be made (free: a memory write).
    pub(in crate::container) fn mount(&self) {
        self.mounts.set(self.mounts.get().saturating_add(1));
    }

    /// An execve is about to be made.
    pub(in crate::container) fn exec(&self) {
        self.execs.set(self.execs.get().saturating_add(1));
    }

    /// In the child: `step` ends now, having done `count` of its unit
    /// (mount steps: the mount calls since the last step). Raw calls only.
    pub(in crate::container) fn mark(&self, step: ChildStep, count: u32) {
        if !self.on {
            return;
        }
        let count = if step.counts_mounts() {
            self.mounts.get().saturating_sub(self.mounts_before.get())
        } else {
            count
        };
        self.mounts_before.set(self.mounts.get());
        let i = self.len.get();
        if let Some(slot) = self.entries.get(i) {
            slot.set(Some(Entry {
                step,
                at: sample(Scope::Process),
                count,
            }));
            self.len.set(i + 1);
        }
    }

    /// The steps around the child's, in the agent once the clone returned:
    /// - `clone`: from `before` (the agent's sample just before the clone)
    ///   to the child's start; its usage is the agent thread's from
    ///   `before` to `woke` (the clone syscall's work: the new namespaces;
    ///   the thread sleeps meanwhile), counting `namespaces` made;
    /// - each child step;
    /// - `exec`: from the child's last step to `woke` (the child's execve
    ///   releasing the agent), counting execve calls; its wall time only
    ///   (reading the child's figures from `/proc/<pid>/stat` then cost
    ///   40-70 ms of guest time per start here, and showed ~1 fault: the
    ///   new image's faults come after the handoff).
    ///
    /// Each child step is followed by its parts, named by `mount_label`
    /// for a spec mount's index. Also returns what the child's samples
    /// cost (ns, getrusage calls).
    pub(in crate::container) fn steps(
        &self,
        before: &Sample,
        woke: &Sample,
        namespaces: u32,
        mount_label: &dyn Fn(usize) -> String,
    ) -> (Vec<Step>, u64, u64) {
        let entered = Sample {
            start_ns: self.entered_ns.get(),
            end_ns: self.entered_ns.get(),
            usage: Usage::default(),
        };
        let mut clone = Step::between("clone", before, &entered);
        clone.usage = woke.usage.since(&before.usage);
        let mut out = vec![clone.counting(u64::from(namespaces), "namespaces")];
        let mut prev = entered;
        let (mut cost, mut calls) = (0, 0);
        for e in self
            .entries
            .iter()
            .take(self.len.get())
            .filter_map(Cell::get)
        {
            out.push(
                Step::between(e.step.name(), &prev, &e.at)
                    .counting(u64::from(e.count), e.step.unit()),
            );
            let parts = self.parts.iter().take(self.parts_len.get());
            for p in parts
                .filter_map(Cell::get)
                .filter(|p| p.part.within() == e.step)
            {
                let name = match p.part {
                    Part::Mount(i) => mount_label(usize::from(i)),
                    Part::Devices => "devices".to_owned(),
                    Part::Masked => "masked".to_owned(),
                    Part::Readonly => "readonly".to_owned(),
                };
                out.push(Step {
                    name: name.into(),
                    within: e.step.name(),
                    wall_us: p.ns / 1000,
                    usage: Usage::default(),
                    count: u64::from(p.mounts),
                    unit: "mounts",
                });
            }
            cost += e.at.cost_ns();
            calls += 1;
            prev = e.at;
        }
        let mut exec = Step::between("exec", &prev, woke);
        exec.usage = Usage::default();
        out.push(exec.counting(u64::from(self.execs.get()), "execve"));
        (out, cost, calls)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn at(start_ns: u64, end_ns: u64, minflt: u64, sys_us: u64) -> Sample {
        Sample {
            start_ns,
            end_ns,
            usage: Usage {
                minflt,
                sys_us,
                ..Usage::default()
            },
        }
    }

    /// A tally filled as a child would (entries set by hand: the times
    /// are the test's).
    fn filled() -> Tally {
        let t = Tally::new(true);
        t.entered_ns.set(10_000_000);
        let put = |i: usize, step, at, count| {
            t.entries[i].set(Some(Entry { step, at, count }));
        };
        put(0, ChildStep::Join, at(11_000_000, 11_100_000, 20, 500), 2);
        put(
            1,
            ChildStep::Mounts,
            at(41_100_000, 41_200_000, 120, 29_000),
            12,
        );
        put(
            2,
            ChildStep::Creds,
            at(43_200_000, 43_300_000, 130, 30_000),
            0,
        );
        t.len.set(3);
        t.execs.set(2);
        t
    }

    #[test]
    fn the_clone_the_child_steps_and_the_exec_in_order() {
        let t = filled();
        let before = at(1_000_000, 1_100_000, 1000, 7000);
        let woke = at(53_300_000, 53_400_000, 1010, 9000);
        t.parts[0].set(Some(PartEntry {
            part: Part::Mount(3),
            ns: 7_000_000,
            mounts: 2,
        }));
        t.parts[1].set(Some(PartEntry {
            part: Part::Devices,
            ns: 2_000_000,
            mounts: 0,
        }));
        t.parts_len.set(2);
        let label = |i: usize| format!("proc:/m{i}");
        let (steps, cost, calls) = t.steps(&before, &woke, 4, &label);
        let rows: Vec<_> = steps
            .iter()
            .map(|s| {
                (
                    s.name.as_ref(),
                    s.within,
                    s.wall_us,
                    s.usage.minflt,
                    s.usage.sys_us,
                    s.count,
                    s.unit,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                // The agent thread's usage over the clone.
                ("clone", "", 8900, 10, 2000, 4, "namespaces"),
                ("join", "", 1000, 20, 500, 2, "files"),
                ("mounts", "", 30_000, 100, 28_500, 12, "mounts"),
                // Its parts, by the clock.
                ("proc:/m3", "mounts", 7000, 0, 0, 2, "mounts"),
                ("devices", "mounts", 2000, 0, 0, 0, "mounts"),
                ("creds", "", 2000, 10, 1000, 0, ""),
                // Its wall time only.
                ("exec", "", 10_000, 0, 0, 2, "execve"),
            ]
        );
        assert_eq!((cost, calls), (300_000, 3));
    }

    #[test]
    fn marks_count_the_mounts_of_their_step_and_stop_at_the_capacity() {
        let t = Tally::new(true);
        t.enter();
        t.mark(ChildStep::Join, 1);
        for _ in 0..5 {
            t.mount();
        }
        t.mark(ChildStep::Mounts, 0);
        t.mount();
        t.mount();
        t.mark(ChildStep::PivotRoot, 0);
        for _ in 0..MAX_STEPS {
            t.mark(ChildStep::Creds, 0);
        }
        let p = t.part_start();
        t.mount();
        t.part_end(Part::Masked, p);
        for _ in 0..MAX_PARTS {
            t.part_end(Part::Readonly, t.part_start());
        }
        assert_eq!(t.parts_len.get(), MAX_PARTS);
        assert_eq!(
            t.parts[0].get().map(|p| (p.part, p.mounts)),
            Some((Part::Masked, 1))
        );
        assert_eq!(t.len.get(), MAX_STEPS);
        let counts: Vec<_> = t
            .entries
            .iter()
            .take(3)
            .map(|c| c.get().map(|e| e.count))
            .collect();
        assert_eq!(counts, [Some(1), Some(5), Some(2)]);
    }

    #[test]
    fn an_off_tally_records_nothing() {
        let t = Tally::new(false);
        t.enter();
        t.mount();
        t.mark(ChildStep::Mounts, 0);
        t.part_end(Part::Devices, t.part_start());
        assert_eq!(
            (t.len.get(), t.entered_ns.get(), t.parts_len.get()),
            (0, 0, 0)
        );
    }
}
