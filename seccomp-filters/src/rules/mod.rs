//! The allowlists, one module per VMM thread kind, plus what every VMM
//! thread needs (`common`).
//!
//! This module is compiled twice: by `build.rs` (which turns the lists into
//! BPF programs, so a rule error fails the build) and by the library's unit
//! tests. Every rule carries a `//` comment saying which code path needs it
//! (device rules name their device), so that a rule can be reviewed and
//! dropped with the code that needed it.

use std::collections::BTreeMap;

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

/// A syscall by name and number (`sys!(SYS_read)`).
macro_rules! sys {
    ($name:ident) => {
        $crate::rules::Sys {
            name: stringify!($name),
            nr: libc::$name,
        }
    };
}

mod common;
pub mod kvm;
mod vcpu;
mod vmm;

/// The thread kinds that have a filter (see the library's `ThreadKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Vcpu,
    Vmm,
}

impl Kind {
    pub const ALL: [Kind; 2] = [Kind::Vcpu, Kind::Vmm];

    /// The name of the compiled program's file.
    pub fn file_stem(self) -> &'static str {
        match self {
            Kind::Vcpu => "vcpu",
            Kind::Vmm => "vmm",
        }
    }
}

/// A syscall's name (for error messages and listings) and number.
#[derive(Debug, Clone, Copy)]
pub struct Sys {
    pub name: &'static str,
    pub nr: libc::c_long,
}

/// One allowlist entry: a syscall, allowed always (`when` empty) or when
/// any of `when`'s rules matches (each rule: all of its conditions).
#[derive(Debug, Clone)]
pub struct Rule {
    pub sys: Sys,
    pub when: Vec<Vec<Cond>>,
}

/// A condition on one syscall argument.
#[derive(Debug, Clone, Copy)]
pub enum Cond {
    /// The argument's low 32 bits equal the value (ints, flags, ioctl
    /// request numbers: the kernel reads `cmd` as an `unsigned int`).
    Eq32(u8, u64),
    /// The argument's low 32 bits have none of these bits set.
    Clear32(u8, u64),
}

/// `sys` is allowed with any arguments.
pub fn allow(sys: Sys) -> Rule {
    Rule { sys, when: vec![] }
}

/// `sys` is allowed when one of `rules` matches.
pub fn allow_when(sys: Sys, rules: Vec<Vec<Cond>>) -> Rule {
    Rule { sys, when: rules }
}

/// `sys` is allowed when argument `arg` is one of `values`.
pub fn allow_args(sys: Sys, arg: u8, values: &[u64]) -> Rule {
    allow_when(
        sys,
        values.iter().map(|v| vec![Cond::Eq32(arg, *v)]).collect(),
    )
}

/// `ioctl` with one of these request numbers.
pub fn ioctls(requests: &[u64]) -> Rule {
    allow_args(sys!(SYS_ioctl), 1, requests)
}

impl Cond {
    fn build(self) -> Result<SeccompCondition, String> {
        let (arg, op, value) = match self {
            Cond::Eq32(arg, v) => (arg, SeccompCmpOp::Eq, v),
            Cond::Clear32(arg, bits) => (arg, SeccompCmpOp::MaskedEq(bits), 0),
        };
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
    }
}

/// The rules of one thread kind: `common` plus the kind's own, each
/// syscall once (a syscall listed twice unconditionally is a review
/// mistake and fails the build; conditional entries are merged).
pub fn rules(kind: Kind) -> Result<Vec<Rule>, String> {
    let own = match kind {
        Kind::Vcpu => vcpu::rules(),
        Kind::Vmm => vmm::rules(),
    };
    let mut merged: BTreeMap<libc::c_long, Rule> = BTreeMap::new();
    for r in common::rules().into_iter().chain(own) {
        match merged.get_mut(&r.sys.nr) {
            None => {
                merged.insert(r.sys.nr, r);
            }
            Some(prev) if !prev.when.is_empty() && !r.when.is_empty() => {
                prev.when.extend(r.when);
            }
            Some(prev) => {
                return Err(format!(
                    "{:?} filter: {} is listed twice and one entry is unconditional: keep one",
                    kind, prev.sys.name
                ))
            }
        }
    }
    Ok(merged.into_values().collect())
}

/// The filter of `kind`: the allowlist, and `mismatch` for everything else.
pub fn filter(kind: Kind, mismatch: SeccompAction) -> Result<SeccompFilter, String> {
    let mut map = BTreeMap::new();
    for r in rules(kind)? {
        let mut chain = Vec::with_capacity(r.when.len());
        for conds in r.when {
            let built = conds
                .into_iter()
                .map(Cond::build)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{:?} filter, {}: {e}", kind, r.sys.name))?;
            chain.push(
                SeccompRule::new(built)
                    .map_err(|e| format!("{:?} filter, {}: {e}", kind, r.sys.name))?,
            );
        }
        map.insert(r.sys.nr, chain);
    }
    SeccompFilter::new(map, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| format!("{kind:?} filter: {e}"))
}
