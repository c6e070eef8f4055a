//! `husk template create|ls|rm`: thin users of the template store
//! ([`crate::sandbox::store`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_vmm::{DiskConfig, PvmCompat, SeccompMode, ShareConfig};

use super::device_args::{DiskArg, ShareArg};
use super::exit_code;
use crate::sandbox::store::{self, TemplateStore, DEFAULT_ROOT};
use crate::sandbox::template_build::VmTemplateBuilder;
use crate::sandbox::{build_id, template_spec, GuestSpec};

/// Options of `husk template create`.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Guest kernel: an ELF vmlinux.
    #[arg(long)]
    pub kernel: PathBuf,
    /// initramfs with the husk agent.
    #[arg(long)]
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = super::vm_run::DEFAULT_MEM_MIB)]
    pub mem_mib: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Extra kernel command line arguments.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// The template store (templates keyed by guest, layout and husk build).
    #[arg(long, default_value = DEFAULT_ROOT, conflicts_with = "out")]
    pub store: PathBuf,
    /// Make the template in this directory instead of the store (it must
    /// not exist).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How long the boot to agent-ready may take, in seconds.
    #[arg(long, default_value = "900", value_parser = super::parse_seconds)]
    pub timeout: Duration,
    /// A virtio-blk disk of the template's layout: `PATH[,ro][,id=ID]`
    /// (repeatable). The image gives the size; VMs started from the
    /// template bring their own image of that size (`--disk PATH`).
    #[arg(long = "disk", value_name = "PATH[,ro][,id=ID]", value_parser = super::device_args::parse_disk)]
    pub disks: Vec<DiskArg>,
    /// A virtio-fs share `TAG[,ro]` of the template's layout (repeatable);
    /// each VM started from it gives its directory (`--share TAG=DIR`).
    #[arg(long = "share", value_name = "TAG[,ro]", value_parser = super::device_args::parse_share)]
    pub shares: Vec<ShareArg>,
    /// PVM compatibility command line: auto (when the host is PVM), on, off.
    #[arg(long, default_value = "auto", value_parser = super::parse_pvm_compat)]
    pub pvm_compat: PvmCompat,
    /// Seccomp filters of the template VM's threads (HUSK_SECCOMP, when
    /// set, wins).
    #[arg(long, default_value = "enforce")]
    pub seccomp: SeccompMode,
}

/// `husk template create`.
pub fn run_create(args: &CreateArgs) -> i32 {
    let t = Instant::now();
    if let Some(s) = args.shares.iter().find(|s| s.dir.is_some()) {
        eprintln!(
            "husk: --share {}: a template's share has no directory; each VM started from it gives one",
            s.tag
        );
        return exit_code::ERROR;
    }
    let guest = GuestSpec {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline_extra: args.cmdline.clone(),
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        pvm_compat: args.pvm_compat,
    };
    let disks: Vec<DiskConfig> = args
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| d.config(i))
        .collect();
    let shares: Vec<ShareConfig> = args.shares.iter().map(ShareArg::config).collect();
    let spec = match template_spec(&guest, &disks, &shares, &[]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("husk: {e}");
            return exit_code::ERROR;
        }
    };
    // The process's debugging knob, read here only.
    let seccomp = match SeccompMode::from_env(args.seccomp) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("husk: {e}");
            return exit_code::ERROR;
        }
    };
    let builder = VmTemplateBuilder {
        boot_timeout: args.timeout,
        seccomp,
    };
    let made = match &args.out {
        Some(out) => store::create_at(out, &spec, &builder, build_id()),
        None => TemplateStore::open(&args.store, build_id())
            .and_then(|s| s.get_or_create(&spec, &builder)),
    };
    match made {
        Ok(tpl) => {
            println!("template: {}", tpl.dir.display());
            println!("key: {}", tpl.key);
            println!("created: {}", tpl.created);
            println!("created_in_s: {:.3}", t.elapsed().as_secs_f64());
            exit_code::OK
        }
        Err(e) => {
            eprintln!("husk: {}", super::error_chain(&e));
            exit_code::ERROR
        }
    }
}

/// Options of `husk template ls`.
#[derive(Debug, clap::Args)]
pub struct LsArgs {
    /// The template store.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub store: PathBuf,
}

/// `husk template ls`: one line per template.
pub fn run_ls(args: &LsArgs) -> i32 {
    let listed = match TemplateStore::open(&args.store, build_id()).and_then(|s| s.list()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("husk: {e}");
            return exit_code::ERROR;
        }
    };
    println!("KEY                              STATUS  DISK_MIB  CREATED_UNIX  GUEST");
    for t in listed {
        let (status, created, guest) = match &t.manifest {
            Ok(m) => ("ok", m.created_unix_s.to_string(), summary(&m.description)),
            Err(why) => ("BROKEN", "-".into(), why.clone()),
        };
        println!(
            "{}  {:<6}  {:>8.1}  {:<12}  {}",
            t.key,
            status,
            t.disk_bytes as f64 / f64::from(1 << 20),
            created,
            guest
        );
    }
    exit_code::OK
}

/// The memory, vCPUs and kernel of a template's description.
fn summary(description: &str) -> String {
    let field = |name: &str| {
        description
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or("?")
            .to_string()
    };
    let kernel = field("kernel ");
    let kernel = kernel.split('"').nth(1).unwrap_or("?");
    format!(
        "mem {} MiB, {} vCPU, kernel {kernel}",
        field("mem_mib "),
        field("vcpus ")
    )
}

/// Options of `husk template rm`.
#[derive(Debug, clap::Args)]
pub struct RmArgs {
    /// The template store.
    #[arg(long, default_value = DEFAULT_ROOT)]
    pub store: PathBuf,
    /// Remove every template in the store.
    #[arg(long, conflicts_with = "keys")]
    pub all: bool,
    /// The templates' keys (`husk template ls`).
    #[arg(required_unless_present = "all")]
    pub keys: Vec<String>,
}

/// `husk template rm`: VMs running from a removed template keep running.
pub fn run_rm(args: &RmArgs) -> i32 {
    let store = match TemplateStore::open(&args.store, build_id()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("husk: {e}");
            return exit_code::ERROR;
        }
    };
    let keys = if args.all {
        match store.list() {
            Ok(l) => l.into_iter().map(|t| t.key).collect(),
            Err(e) => {
                eprintln!("husk: {e}");
                return exit_code::ERROR;
            }
        }
    } else {
        args.keys.clone()
    };
    let mut code = exit_code::OK;
    for k in keys {
        match store.remove(&k) {
            Ok(()) => println!("removed {k}"),
            Err(e) => {
                eprintln!("husk: {e}");
                code = exit_code::ERROR;
            }
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let d = "husk-template 1\nkernel \"/k/vmlinux\" 1 2 3 4\nmem_mib 128\nvcpus 1\n";
        assert_eq!(summary(d), "mem 128 MiB, 1 vCPU, kernel /k/vmlinux");
        assert_eq!(summary(""), "mem ? MiB, ? vCPU, kernel ?");
    }
}
