//! `linux.seccomp` compiled to classic BPF with seccompiler, before the
//! container's child is cloned (it only installs the programs).
//!
//! seccompiler's filter has one match action and one mismatch action, while
//! an OCI profile gives each syscall group its own action. The kernel runs
//! every installed filter and keeps the highest-precedence answer
//! (KILL_PROCESS > KILL_THREAD > TRAP > ERRNO > TRACE > LOG > ALLOW; on a tie
//! the filter installed last wins), so a profile becomes a stack:
//!
//! - the base filter: every listed syscall (with its argument conditions)
//!   ALLOW, anything else the default action (left out when the default is
//!   ALLOW);
//! - one filter per other action (ERRNO(1) and ERRNO(38) are two actions):
//!   its syscalls that action, anything else ALLOW.
//!
//! A listed syscall gets its own action (the base says ALLOW, its action
//! filter says more); an unlisted one the default. Conditions on one
//! argument index repeated in a group are alternatives (one rule each), as
//! runc does; otherwise the group's conditions must all hold.
//!
//! Names unknown on x86_64 are skipped with a log line, as runc does.
//! Syscalls of another ABI (i386 `int 0x80`) kill the process: seccompiler
//! checks the audit arch first.

use std::collections::BTreeMap;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::error::SpecError;
use super::syscalls;

/// The compiled stack, in install order, and the seccomp(2) flags.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    pub programs: Vec<BpfProgram>,
    pub flags: libc::c_ulong,
}

const SECCOMP_FILTER_FLAG_LOG: libc::c_ulong = 2;
const SECCOMP_FILTER_FLAG_SPEC_ALLOW: libc::c_ulong = 4;

fn action(
    field: &str,
    a: LinuxSeccompAction,
    errno: Option<u32>,
    default_errno: u32,
) -> Result<SeccompAction, SpecError> {
    use LinuxSeccompAction::*;
    Ok(match a {
        ScmpActKill | ScmpActKillThread => SeccompAction::KillThread,
        ScmpActKillProcess => SeccompAction::KillProcess,
        ScmpActTrap => SeccompAction::Trap,
        ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(default_errno)),
        ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(default_errno)),
        ScmpActLog => SeccompAction::Log,
        ScmpActAllow => SeccompAction::Allow,
        ScmpActNotify => {
            return Err(SpecError::new(
                field,
                "SCMP_ACT_NOTIFY is not supported (no seccomp agent in the guest)",
            ))
        }
    })
}

fn op(o: LinuxSeccompOperator, value: u64, two: Option<u64>) -> (SeccompCmpOp, u64) {
    use LinuxSeccompOperator::*;
    match o {
        ScmpCmpNe => (SeccompCmpOp::Ne, value),
        ScmpCmpLt => (SeccompCmpOp::Lt, value),
        ScmpCmpLe => (SeccompCmpOp::Le, value),
        ScmpCmpEq => (SeccompCmpOp::Eq, value),
        ScmpCmpGe => (SeccompCmpOp::Ge, value),
        ScmpCmpGt => (SeccompCmpOp::Gt, value),
        // libseccomp: `value` is the mask, `valueTwo` the datum.
        ScmpCmpMaskedEq => (SeccompCmpOp::MaskedEq(value), two.unwrap_or(0)),
    }
}

/// A syscall's rules in one filter: `None` matches unconditionally.
type Rules = BTreeMap<i64, Option<Vec<SeccompRule>>>;

fn add(rules: &mut Rules, nr: i64, new: Option<Vec<SeccompRule>>) {
    let entry = rules.entry(nr).or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), new) {
        (None, _) => {}
        (Some(_), None) => *entry = None,
        (Some(have), Some(more)) => have.extend(more),
    }
}

fn finish(rules: Rules) -> BTreeMap<i64, Vec<SeccompRule>> {
    // seccompiler: an empty rule list matches on the number alone.
    rules
        .into_iter()
        .map(|(nr, r)| (nr, r.unwrap_or_default()))
        .collect()
}

/// Compiles the profile; errors name the field.
pub fn compile(s: &LinuxSeccomp) -> Result<Filters, SpecError> {
    let field = "linux.seccomp";
    let default_errno = s.default_errno_ret().unwrap_or(libc::EPERM as u32);
    let default = action(
        &format!("{field}.defaultAction"),
        s.default_action(),
        None,
        default_errno,
    )?;
    if let Some(archs) = s.architectures() {
        let names: Vec<String> = archs.iter().map(|a| format!("{a:?}")).collect();
        if !names
            .iter()
            .any(|n| n.contains("X86_64") || n.contains("X8664"))
        {
            crate::log::log(&format!(
                "container: {field}.architectures {names:?} has no x86_64: the profile is applied to x86_64 anyway"
            ));
        }
    }
    let mut flags = 0;
    for (i, f) in s.flags().iter().flatten().enumerate() {
        flags |= match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => SECCOMP_FILTER_FLAG_SPEC_ALLOW,
            // One thread when it is installed: nothing to synchronise.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            #[allow(unreachable_patterns)]
            other => {
                return Err(SpecError::new(
                    format!("{field}.flags[{i}]"),
                    format!("{other:?} is not supported"),
                ))
            }
        };
    }
    if s.listener_path().is_some() {
        return Err(SpecError::new(
            format!("{field}.listenerPath"),
            "seccomp notify listeners are not supported",
        ));
    }
    let mut base: Rules = BTreeMap::new();
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for (g, group) in s.syscalls().iter().flatten().enumerate() {
        let gfield = format!("{field}.syscalls[{g}]");
        let act = action(
            &format!("{gfield}.action"),
            group.action(),
            group.errno_ret(),
            default_errno,
        )?;
        let mut conds = Vec::new();
        for (a, arg) in group.args().iter().flatten().enumerate() {
            let afield = format!("{gfield}.args[{a}]");
            let index = u8::try_from(arg.index())
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| {
                    SpecError::new(&afield, format!("index {} is not 0..5", arg.index()))
                })?;
            let (cmp, value) = op(arg.op(), arg.value(), arg.value_two());
            conds.push(
                SeccompCondition::new(index, SeccompCmpArgLen::Qword, cmp, value)
                    .map_err(|e| SpecError::new(&afield, e.to_string()))?,
            );
        }
        let repeated = {
            let mut seen = [false; 6];
            conds
                .iter()
                .zip(group.args().iter().flatten())
                .any(|(_, a)| {
                    let i = a.index().min(5);
                    std::mem::replace(&mut seen[i], true)
                })
        };
        let rules = if conds.is_empty() {
            None
        } else if repeated {
            Some(
                conds
                    .into_iter()
                    .map(|c| SeccompRule::new(vec![c]))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| SpecError::new(&gfield, e.to_string()))?,
            )
        } else {
            Some(vec![
                SeccompRule::new(conds).map_err(|e| SpecError::new(&gfield, e.to_string()))?
            ])
        };
        for name in group.names() {
            let Some(nr) = syscalls::number(name) else {
                crate::log::log(&format!(
                    "container: {gfield}.names: unknown syscall {name:?} on x86_64, skipped"
                ));
                continue;
            };
            add(&mut base, nr, rules.clone());
            if act != SeccompAction::Allow {
                let at = match by_action.iter().position(|(a, _)| *a == act) {
                    Some(at) => at,
                    None => {
                        by_action.push((act.clone(), BTreeMap::new()));
                        by_action.len() - 1
                    }
                };
                add(&mut by_action[at].1, nr, rules.clone());
            }
        }
    }
    let build = |rules: Rules, mismatch: SeccompAction, matched: SeccompAction| {
        SeccompFilter::new(finish(rules), mismatch, matched, TargetArch::x86_64)
            .and_then(BpfProgram::try_from)
            .map_err(|e| SpecError::new(field, format!("compiling to BPF: {e}")))
    };
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(build(base, default, SeccompAction::Allow)?);
    }
    for (act, rules) in by_action {
        programs.push(build(rules, SeccompAction::Allow, act)?);
    }
    Ok(Filters { programs, flags })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn default_errno_with_an_allow_list_is_one_filter() {
        let f = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","no_such_call"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(f.programs.len(), 1);
    }

    #[test]
    fn default_allow_with_two_actions_is_two_filters() {
        let f = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"],"syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":38,
                 "args":[{"index":0,"value":8,"op":"SCMP_CMP_NE"}]},
                {"names":["reboot"],"action":"SCMP_ACT_KILL_PROCESS"}]}"#,
        ))
        .unwrap();
        assert_eq!(f.programs.len(), 3);
        assert_eq!(f.flags, SECCOMP_FILTER_FLAG_LOG);
    }

    #[test]
    fn errors_name_the_field() {
        let e = compile(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW"},
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","args":[{"index":7,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap_err();
        assert_eq!(e.field, "linux.seccomp.syscalls[1].args[0]");
        let e = compile(&profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#)).unwrap_err();
        assert_eq!(e.field, "linux.seccomp.defaultAction");
    }

    #[test]
    fn the_syscall_table_is_sorted_and_complete_enough() {
        assert!(syscalls::X86_64.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscalls::number("read"), Some(0));
        assert_eq!(syscalls::number("mkdir"), Some(libc::SYS_mkdir));
        assert_eq!(syscalls::number("clone3"), Some(libc::SYS_clone3));
        assert_eq!(syscalls::number("nope"), None);
    }
}
