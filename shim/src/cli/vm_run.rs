//! `husk vm run`: boot a VM in this process and exit with the guest's outcome.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use husk_vmm::{
    ConsoleConfig, PvmCompat, SeccompMode, Timeline, VmConfig, VmOutcome, VmmHandle, VsockConfig,
};

use crate::sandbox::template_key::is_key;
use crate::sandbox::{Sandbox, SandboxConfig, Source};

use super::device_args::{parse_disk, parse_share, DiskArg, ShareArg};
use super::exit_code;

/// Guest memory when none is asked for.
pub const DEFAULT_MEM_MIB: u64 = 128;
/// Where VMs started from templates keep their sockets.
pub const DEFAULT_RUN_DIR: &str = "/run/husk/vm";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Options of `husk vm run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Guest kernel: an ELF vmlinux.
    #[arg(long, required_unless_present = "from_template")]
    pub kernel: Option<PathBuf>,
    /// initramfs (cpio, optionally gzip'd).
    #[arg(long, conflicts_with = "from_template")]
    pub initrd: Option<PathBuf>,
    /// Start from a template instead of booting: a template directory, or
    /// the key of one in --store (`husk template ls`). The VM resumes
    /// agent-ready, with its own identity.
    #[arg(long, conflicts_with = "kernel")]
    pub from_template: Option<PathBuf>,
    /// The template store --from-template KEY is looked up in.
    #[arg(long, default_value = crate::sandbox::store::DEFAULT_ROOT)]
    pub store: PathBuf,
    /// Directory for the sockets of a VM started from a template
    /// (`<run-dir>/<name>/`).
    #[arg(long, default_value = DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Extra kernel command line arguments, added after husk's own.
    #[arg(long, default_value = "", conflicts_with = "from_template")]
    pub cmdline: String,
    /// Guest memory in MiB (default 128; with --from-template it must match
    /// the template's when given).
    #[arg(long)]
    pub mem_mib: Option<u64>,
    /// Number of vCPUs (default 1; with --from-template it must match).
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Write the guest console to this file (default: the log, on stderr).
    #[arg(long)]
    pub console: Option<PathBuf>,
    /// Stop the VM after this many seconds (exit code 124).
    #[arg(long, value_parser = super::parse_seconds)]
    pub timeout: Option<Duration>,
    /// Have the guest power off once its agent is ready.
    #[arg(long)]
    pub oneshot: bool,
    /// PVM compatibility command line: auto (when the host is PVM), on, off.
    #[arg(long, default_value = "auto", value_parser = super::parse_pvm_compat)]
    pub pvm_compat: PvmCompat,
    /// Name of the VM in logs and errors, and its hostname when started
    /// from a template (default `vm-<pid>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Print boot timings (seconds since process start) to stdout.
    #[arg(long)]
    pub timings: bool,
    /// Print the VM's final counters (exits by reason and device,
    /// interrupts per device, KVM's statistics, vCPU CPU time) to stdout
    /// as JSON when it ends.
    #[arg(long)]
    pub stats: bool,
    /// Give the guest a virtio-vsock device behind this hybrid-vsock Unix
    /// socket (host: connect, write `CONNECT <port>\n`, read `OK ...\n`;
    /// guest connections to host port P go to `PATH_P`).
    #[arg(long)]
    pub vsock_uds: Option<PathBuf>,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = husk_vmm::DEFAULT_GUEST_CID)]
    pub vsock_cid: u32,
    /// A virtio-blk disk: `PATH[,ro][,id=ID]` (repeatable; the id, default
    /// `disk<N>`, is the serial the guest sees and the agent mounts by).
    /// With --from-template: the image for each of the template's disks,
    /// in order (PATH only).
    #[arg(long = "disk", value_name = "PATH[,ro][,id=ID]", value_parser = parse_disk)]
    pub disks: Vec<DiskArg>,
    /// A virtio-fs share of a host directory: `TAG=DIR[,ro]` (repeatable;
    /// the guest mounts it by TAG). With --from-template: the directory for
    /// the template's share TAG (`TAG=DIR`; ro is the template's).
    #[arg(long = "share", value_name = "TAG=DIR[,ro]", value_parser = parse_share)]
    pub shares: Vec<ShareArg>,
    /// Seccomp filters of the VMM threads: enforce, log (allow and have
    /// the kernel log what is not listed) or off. The environment variable
    /// HUSK_SECCOMP, read once when the VM's configuration is built,
    /// overrides it.
    #[arg(long, default_value = "enforce")]
    pub seccomp: SeccompMode,
}

impl RunArgs {
    /// The VM's name: `--name`, else `vm-<pid>` (unique on the host, as the
    /// sockets of a VM started from a template are named after it).
    fn name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("vm-{}", std::process::id()))
    }

    fn console(&self) -> ConsoleConfig {
        ConsoleConfig {
            file: self.console.clone(),
            log: self.console.is_none(),
        }
    }

    /// `--seccomp`, unless HUSK_SECCOMP says otherwise (read here only).
    fn seccomp(&self) -> Result<SeccompMode, String> {
        SeccompMode::from_env(self.seccomp).map_err(|e| e.to_string())
    }

    /// `--from-template`: a directory, or a key in the store.
    fn template_dir(&self, t: &Path) -> PathBuf {
        let as_key = t.to_str().filter(|s| is_key(s));
        match as_key {
            Some(k) if !t.exists() => self.store.join(k),
            _ => t.to_path_buf(),
        }
    }

    fn sandbox_config(&self, template: &Path, name: &str) -> Result<SandboxConfig, String> {
        if self.disks.iter().any(|d| d.read_only || d.id.is_some()) {
            return Err(
                "with --from-template, --disk gives only the image PATH (the template fixes ro and id)"
                    .into(),
            );
        }
        if self.shares.iter().any(|s| s.read_only || s.dir.is_none()) {
            return Err(
                "with --from-template, --share gives TAG=DIR only (the template fixes ro)".into(),
            );
        }
        if self.mem_mib.is_some() || self.vcpus.is_some() {
            let snap = husk_vmm::snapshot::Snapshot::read(template).map_err(|e| e.to_string())?;
            snap.expect_shape(template, self.mem_mib, self.vcpus)
                .map_err(|e| e.to_string())?;
        }
        let mut cfg = SandboxConfig::new(
            name,
            &self.run_dir,
            Source::TemplateDir(template.to_path_buf()),
        );
        cfg.disks = self
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| d.config(i))
            .collect();
        cfg.shares = self.shares.iter().map(ShareArg::config).collect();
        cfg.console = self.console();
        cfg.seccomp = self.seccomp()?;
        cfg.vsock_socket = self.vsock_uds.clone();
        cfg.agent_timeout = self.timeout;
        Ok(cfg)
    }

    fn config(&self, name: &str) -> Result<VmConfig, String> {
        if let Some(s) = self.shares.iter().find(|s| s.dir.is_none()) {
            return Err(format!(
                "--share {}: give TAG=DIR (a share without a directory is for templates)",
                s.tag
            ));
        }
        Ok(VmConfig {
            name: name.to_string(),
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone(),
            cmdline_extra: self.cmdline.clone(),
            mem_mib: self.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
            vcpus: self.vcpus.unwrap_or(1),
            console: self.console(),
            pvm_compat: self.pvm_compat,
            oneshot: self.oneshot,
            vsock: self.vsock_uds.as_ref().map(|p| VsockConfig {
                guest_cid: self.vsock_cid,
                uds_path: p.clone(),
            }),
            disks: self
                .disks
                .iter()
                .enumerate()
                .map(|(i, d)| d.config(i))
                .collect(),
            shares: self.shares.iter().map(ShareArg::config).collect(),
            seccomp: self.seccomp()?,
            ..VmConfig::default()
        })
    }
}

/// What `run` waits on: a booted VM, or a sandbox restored from a
/// template (the VM, its agent connection and its sockets).
enum Running {
    Booted(VmmHandle),
    Restored(Box<Sandbox>),
}

impl Running {
    fn vm(&self) -> &VmmHandle {
        match self {
            Running::Booted(h) => h,
            Running::Restored(s) => s.vmm(),
        }
    }
}

/// Runs the VM; returns the process exit code.
pub fn run(args: &RunArgs, process_start: Instant) -> i32 {
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let name = args.name();
    // A deadline too far to represent is none.
    let deadline = args.timeout.and_then(|t| Instant::now().checked_add(t));
    let mut agent_done = None;
    let running = match &args.from_template {
        Some(t) => {
            let dir = args.template_dir(t);
            let sandbox = match args
                .sandbox_config(&dir, &name)
                .and_then(|cfg| Sandbox::start(cfg).map_err(|e| super::error_chain(&e)))
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("husk: {e}");
                    return exit_code::ERROR;
                }
            };
            agent_done = Some(Instant::now());
            // A restored VM resumes agent-ready: with --oneshot, power it
            // off once it has its identity.
            if args.oneshot {
                if let Err(e) = sandbox.agent().shutdown() {
                    eprintln!("husk: VM {name}: {e}");
                    return exit_code::ERROR;
                }
            }
            Running::Restored(Box::new(sandbox))
        }
        None => match args
            .config(&name)
            .and_then(|cfg| husk_vmm::start(cfg).map_err(|e| e.to_string()))
        {
            Ok(h) => Running::Booted(h),
            Err(e) => {
                eprintln!("husk: {e}");
                return exit_code::ERROR;
            }
        },
    };
    let handle = running.vm();
    let notifier = match handle.exit_notifier() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("husk: VM {name}: exit notifier: {e}");
            return exit_code::ERROR;
        }
    };
    let mut timed_out = false;
    let mut interrupted = false;
    // The notifier tells when the VM ends; the 100 ms bound is for the
    // signal flag and the deadline.
    while !notifier.wait(Some(Duration::from_millis(100))) {
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if (expired || INTERRUPTED.load(Ordering::SeqCst)) && !(timed_out || interrupted) {
            timed_out = expired;
            interrupted = !expired;
            if let Err(e) = handle.stop() {
                eprintln!("husk: {e}");
            }
        }
    }
    let Some(outcome) = handle.outcome() else {
        eprintln!("husk: VM {name}: ended without an outcome");
        return exit_code::ERROR;
    };
    if args.timings {
        print_timings(&outcome.timeline, process_start);
        if let Some(t) = agent_done {
            println!(
                "first_ttrpc_reply_s: {:.6}",
                t.duration_since(process_start).as_secs_f64()
            );
        }
    }
    if args.stats {
        match serde_json::to_string_pretty(&handle.stats()) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("husk: VM {name}: encoding its counters: {e}"),
        }
    }
    let code = report(&outcome, timed_out, interrupted, args, &name);
    drop(running);
    code
}

fn print_timings(t: &Timeline, origin: Instant) {
    let fmt = |x: Option<Instant>| match Timeline::since(origin, x) {
        Some(d) => format!("{:.6}", d.as_secs_f64()),
        None => "-".into(),
    };
    println!("vmm_started_s: {}", fmt(t.started));
    println!("first_guest_instruction_s: {}", fmt(t.first_run));
    println!("first_console_byte_s: {}", fmt(t.first_console_byte));
    println!("first_console_line_s: {}", fmt(t.first_console_line));
    println!("agent_ready_s: {}", fmt(t.ready));
    println!("vm_stopped_s: {}", fmt(t.stopped));
}

fn report(o: &VmOutcome, timed_out: bool, interrupted: bool, args: &RunArgs, name: &str) -> i32 {
    if timed_out {
        eprintln!(
            "husk: VM {} timed out after {}s{}",
            name,
            args.timeout.unwrap_or_default().as_secs_f64(),
            if o.timeline.ready.is_some() {
                " (the agent was ready)"
            } else {
                " before the agent was ready"
            }
        );
        print_tail(o);
        return exit_code::TIMEOUT;
    }
    if interrupted {
        eprintln!("husk: VM {} stopped on a signal", name);
        return exit_code::INTERRUPTED;
    }
    if o.reason.is_clean() {
        if args.oneshot && o.timeline.ready.is_none() && args.from_template.is_none() {
            eprintln!("husk: VM {} shut down before its agent was ready", name);
            print_tail(o);
            return exit_code::ERROR;
        }
        eprintln!("husk: VM {}: {}", name, o.reason);
        return exit_code::OK;
    }
    eprintln!("husk: VM {}: {}", name, o.reason);
    print_tail(o);
    if o.reason.is_guest_crash() {
        exit_code::GUEST_CRASH
    } else {
        exit_code::ERROR
    }
}

fn print_tail(o: &VmOutcome) {
    if o.console_tail.is_empty() {
        return;
    }
    eprintln!("husk: last guest console lines:");
    for l in &o.console_tail {
        eprintln!("  | {l}");
    }
}
