//! `husk check`: what this host offers, one line each, and a verdict.

use std::path::Path;

use husk_vmm::host::{self, VirtKind};
use husk_vmm::vstate::kvm::{KVM_API_VERSION, REQUIRED_CAPS};
use kvm_ioctls::{Cap, Kvm};

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub key: String,
    pub value: String,
    pub level: Level,
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Not needed to boot VMs; needed later (pods, networking, containerd).
    Warn,
    /// husk cannot run VMs here.
    Fail,
}

fn f(key: &str, value: impl Into<String>, level: Level) -> Finding {
    Finding {
        key: key.into(),
        value: value.into(),
        level,
    }
}

/// Probes the host.
pub fn run_checks() -> Vec<Finding> {
    let mut out = Vec::new();
    match Kvm::new() {
        Err(e) => out.push(f("kvm", format!("/dev/kvm unusable: {e}"), Level::Fail)),
        Ok(kvm) => {
            let v = kvm.get_api_version();
            out.push(f(
                "kvm",
                format!("/dev/kvm API version {v}"),
                if v == KVM_API_VERSION {
                    Level::Ok
                } else {
                    Level::Fail
                },
            ));
            for (cap, name, why) in REQUIRED_CAPS {
                let ok = kvm.check_extension(*cap);
                out.push(f(
                    &format!("cap {name}"),
                    if ok {
                        "yes".to_string()
                    } else {
                        format!("missing ({why})")
                    },
                    if ok { Level::Ok } else { Level::Fail },
                ));
            }
            for (cap, name) in [
                (Cap::ImmediateExit, "IMMEDIATE_EXIT"),
                (Cap::ReadonlyMem, "READONLY_MEM"),
                (Cap::TscDeadlineTimer, "TSC_DEADLINE_TIMER"),
            ] {
                if REQUIRED_CAPS.iter().any(|c| c.1 == name) {
                    continue;
                }
                let ok = kvm.check_extension(cap);
                out.push(f(
                    &format!("cap {name}"),
                    if ok { "yes" } else { "no" },
                    if ok { Level::Ok } else { Level::Warn },
                ));
            }
            out.push(f(
                "vcpus",
                format!(
                    "recommended {}, max {}",
                    kvm.get_nr_vcpus(),
                    kvm.get_max_vcpus()
                ),
                Level::Ok,
            ));
        }
    }
    let kind = host::detect();
    let (value, level) = match kind {
        VirtKind::Hardware { .. } => (kind.to_string(), Level::Ok),
        VirtKind::Pvm => (
            format!("{kind}: guest kernel code is emulated; husk adds its PVM command line, boots take seconds, only 1 vCPU starts"),
            Level::Warn,
        ),
        VirtKind::Unknown => (kind.to_string(), Level::Warn),
    };
    out.push(f("virtualization", value, level));
    let tun = Path::new("/dev/net/tun").exists();
    out.push(f(
        "tun",
        if tun {
            "/dev/net/tun present"
        } else {
            "/dev/net/tun missing (needed for pod networking)"
        },
        if tun { Level::Ok } else { Level::Warn },
    ));
    let cg2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    out.push(f(
        "cgroup",
        if cg2 {
            "cgroup v2 (unified)"
        } else {
            "cgroup v2 not mounted at /sys/fs/cgroup"
        },
        if cg2 { Level::Ok } else { Level::Warn },
    ));
    let containerd = which("containerd");
    out.push(match containerd {
        Some(p) => f("containerd", format!("{}", p.display()), Level::Ok),
        None => f(
            "containerd",
            "not found in PATH (needed for pods)",
            Level::Warn,
        ),
    });
    out
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Prints the findings and the verdict; returns the exit code.
pub fn report(findings: &[Finding]) -> i32 {
    for x in findings {
        let tag = match x.level {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{}: {} [{tag}]", x.key, x.value);
    }
    if findings.iter().any(|x| x.level == Level::Fail) {
        println!("verdict: unusable: husk cannot run VMs on this host");
        super::exit_code::ERROR
    } else {
        println!("verdict: usable");
        super::exit_code::OK
    }
}
