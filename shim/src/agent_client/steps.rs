//! The agent's accounting of a container's create and start (agent API
//! 6): one [`GuestStep`] per step, in the order the steps ran, the last
//! one the accounting's own cost. Logged by the shim as one line per
//! call ([`GuestSteps`]'s `Display`: compact JSON) and printed by `husk
//! run --guest-steps` as a table ([`GuestSteps::table`]).

use std::fmt;

use husk_agent_protocol::agent::StepAccounting;
use serde::Serialize;

/// One step as the guest agent measured it: wall time, and the guest CPU,
/// page faults and context switches of the thread (or clone child) doing
/// it, with a count of what it did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GuestStep {
    pub name: String,
    pub wall_us: u64,
    pub user_us: u64,
    pub sys_us: u64,
    pub minflt: u64,
    pub majflt: u64,
    pub nvcsw: u64,
    pub nivcsw: u64,
    /// How many of `unit` the step did (0 with an empty unit).
    pub count: u64,
    pub unit: String,
    /// The step this is a part of (its wall time is in that step's too;
    /// a part has wall time and count only); empty for a step.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub within: String,
}

impl From<&StepAccounting> for GuestStep {
    fn from(m: &StepAccounting) -> Self {
        Self {
            name: m.name.clone(),
            wall_us: m.wall_us,
            user_us: m.user_us,
            sys_us: m.sys_us,
            minflt: m.minflt,
            majflt: m.majflt,
            nvcsw: m.nvcsw,
            nivcsw: m.nivcsw,
            count: m.count,
            unit: m.unit.clone(),
            within: m.within.clone(),
        }
    }
}

/// The name of the agent's row for what its measuring cost.
pub const ACCOUNTING_STEP: &str = "accounting";

/// The steps of one create or start (empty from an agent before API 6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestSteps(pub Vec<GuestStep>);

impl GuestSteps {
    pub fn from_msgs(msgs: &[StepAccounting]) -> Self {
        Self(msgs.iter().map(GuestStep::from).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The step names (not their parts), in order.
    pub fn names(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|s| s.within.is_empty())
            .map(|s| s.name.as_str())
            .collect()
    }

    /// The parts of step `within`, in order.
    pub fn parts(&self, within: &str) -> Vec<&GuestStep> {
        self.0.iter().filter(|s| s.within == within).collect()
    }

    /// A fixed-width table for people: one row per step, its parts
    /// indented below it, then the sum of the steps (neither the parts nor
    /// the accounting row).
    pub fn table(&self, title: &str) -> String {
        let ms = |us: u64| format!("{:.1}", us as f64 / 1000.0);
        let mut out = format!(
            "{title:<24} {:>9} {:>8} {:>8} {:>7} {:>6} {:>5} {:>5}  count\n",
            "wall ms", "user ms", "sys ms", "minflt", "majflt", "vcsw", "ivcsw"
        );
        let row = |out: &mut String, name: &str, s: &GuestStep| {
            let count = if s.unit.is_empty() {
                String::new()
            } else {
                format!("{} {}", s.count, s.unit)
            };
            // A part has its wall time and count only.
            let [user, sys, minflt, majflt, vcsw, ivcsw] = if s.within.is_empty() {
                [
                    ms(s.user_us),
                    ms(s.sys_us),
                    s.minflt.to_string(),
                    s.majflt.to_string(),
                    s.nvcsw.to_string(),
                    s.nivcsw.to_string(),
                ]
            } else {
                ["-"; 6].map(str::to_owned)
            };
            out.push_str(&format!(
                "{name:<24} {:>9} {user:>8} {sys:>8} {minflt:>7} {majflt:>6} {vcsw:>5} {ivcsw:>5}  {count}\n",
                ms(s.wall_us),
            ));
        };
        let mut total = GuestStep::default();
        for s in &self.0 {
            if !s.within.is_empty() {
                row(&mut out, &format!("  {}", s.name), s);
                continue;
            }
            row(&mut out, &s.name, s);
            if s.name != ACCOUNTING_STEP {
                total.wall_us += s.wall_us;
                total.user_us += s.user_us;
                total.sys_us += s.sys_us;
                total.minflt += s.minflt;
                total.majflt += s.majflt;
                total.nvcsw += s.nvcsw;
                total.nivcsw += s.nivcsw;
            }
        }
        row(&mut out, "total", &total);
        out
    }
}

/// Compact JSON (`[{"name":"validate","wall_us":...},...]`): the log
/// line's last field, for `perf/density.py` to parse.
impl fmt::Display for GuestSteps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match serde_json::to_string(&self.0) {
            Ok(s) => f.write_str(&s),
            Err(_) => f.write_str("[]"),
        }
    }
}

/// What StartContainer answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Started {
    /// The process's pid in the guest.
    pub pid: u32,
    pub steps: GuestSteps,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    fn msg(name: &str, wall_us: u64, minflt: u64, count: u64, unit: &str) -> StepAccounting {
        StepAccounting {
            name: name.into(),
            wall_us,
            sys_us: wall_us / 2,
            minflt,
            count,
            unit: unit.into(),
            ..Default::default()
        }
    }

    fn steps() -> GuestSteps {
        let mut part = msg("proc:/proc", 30_000, 0, 1, "mounts");
        part.within = "mounts".into();
        GuestSteps::from_msgs(&[
            msg("mounts", 41_500, 120, 12, "mounts"),
            part,
            msg("exec", 9_000, 30, 1, "execve"),
            msg(ACCOUNTING_STEP, 2_000, 0, 9, "syscalls"),
        ])
    }

    #[test]
    fn the_log_field_is_json_in_order() {
        let s = steps().to_string();
        assert!(!s.contains('\n'), "{s}");
        let back: Vec<serde_json::Value> = serde_json::from_str(&s).unwrap();
        let names: Vec<_> = back.iter().map(|v| v["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["mounts", "proc:/proc", "exec", ACCOUNTING_STEP]);
        assert_eq!(back[0]["wall_us"], 41_500);
        assert_eq!(back[0]["minflt"], 120);
        assert_eq!(back[0]["unit"], "mounts");
        // `within` only on parts.
        assert_eq!(back[1]["within"], "mounts");
        assert!(back[0].get("within").is_none(), "{s}");
    }

    #[test]
    fn the_table_sums_the_steps_but_not_the_parts_or_the_accounting() {
        let steps = steps();
        assert_eq!(steps.names(), ["mounts", "exec", ACCOUNTING_STEP]);
        assert_eq!(steps.parts("mounts").len(), 1);
        let t = steps.table("start");
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert!(lines[0].starts_with("start"), "{t}");
        assert!(
            lines[1].starts_with("mounts") && lines[1].contains("41.5"),
            "{t}"
        );
        assert!(lines[1].ends_with("12 mounts"), "{t}");
        assert!(lines[2].starts_with("  proc:/proc"), "{t}");
        assert!(lines[2].contains("30.0        -"), "{t}");
        let total = lines[5];
        assert!(total.starts_with("total") && total.contains("50.5"), "{t}");
        assert!(total.contains(" 150 "), "{t}");
    }

    #[test]
    fn an_old_agent_sends_no_steps() {
        let s = GuestSteps::from_msgs(&[]);
        assert!(s.is_empty());
        assert_eq!(s.to_string(), "[]");
    }
}
