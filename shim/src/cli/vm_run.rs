//! `husk vm run`: boot a VM in this process and exit with the guest's outcome.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_vmm::{
    ConsoleConfig, PvmCompat, RestoreConfig, SeccompMode, Timeline, VmConfig, VmOutcome,
    VsockConfig,
};

use super::device_args::{parse_disk, parse_share, DiskArg, ShareArg};
use super::exit_code;

/// Guest memory when none is asked for.
pub const DEFAULT_MEM_MIB: u64 = 128;

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
    /// Start from a template (`husk template create`) instead of booting:
    /// the VM resumes agent-ready, with its own identity.
    #[arg(long, conflicts_with = "kernel")]
    pub from_template: Option<PathBuf>,
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
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Have the guest power off once its agent is ready.
    #[arg(long)]
    pub oneshot: bool,
    /// PVM compatibility command line: auto (when the host is PVM), on, off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub pvm_compat: String,
    /// Name of the VM in logs and errors.
    #[arg(long, default_value = "vm")]
    pub name: String,
    /// Print boot timings (seconds since process start) to stdout.
    #[arg(long)]
    pub timings: bool,
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

    fn restore_config(&self, dir: &std::path::Path) -> Result<RestoreConfig, String> {
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
        Ok(RestoreConfig {
            name: self.name.clone(),
            snapshot_dir: dir.to_path_buf(),
            console: self.console(),
            vsock_uds: self.vsock_uds.clone(),
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
            disks: self.disks.iter().map(|d| d.path.clone()).collect(),
            shares: self
                .shares
                .iter()
                .filter_map(|s| Some((s.tag.clone(), s.dir.clone()?)))
                .collect(),
            seccomp: self.seccomp()?,
        })
    }

    fn config(&self) -> Result<VmConfig, String> {
        if let Some(s) = self.shares.iter().find(|s| s.dir.is_none()) {
            return Err(format!(
                "--share {}: give TAG=DIR (a share without a directory is for templates)",
                s.tag
            ));
        }
        Ok(VmConfig {
            name: self.name.clone(),
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone(),
            cmdline_extra: self.cmdline.clone(),
            mem_mib: self.mem_mib.unwrap_or(DEFAULT_MEM_MIB),
            vcpus: self.vcpus.unwrap_or(1),
            console: self.console(),
            pvm_compat: match self.pvm_compat.as_str() {
                "on" => PvmCompat::On,
                "off" => PvmCompat::Off,
                _ => PvmCompat::Auto,
            },
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

/// Runs the VM; returns the process exit code.
pub fn run(args: &RunArgs, process_start: Instant) -> i32 {
    if let Some(t) = args.timeout {
        if !(t.is_finite() && t > 0.0) {
            eprintln!("husk: --timeout must be a positive number of seconds");
            return exit_code::ERROR;
        }
    }
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let started = match &args.from_template {
        Some(dir) => match args.restore_config(dir) {
            Ok(cfg) => husk_vmm::restore(cfg),
            Err(e) => {
                eprintln!("husk: {e}");
                return exit_code::ERROR;
            }
        },
        None => match args.config() {
            Ok(cfg) => husk_vmm::start(cfg),
            Err(e) => {
                eprintln!("husk: {e}");
                return exit_code::ERROR;
            }
        },
    };
    let handle = match started {
        Ok(h) => h,
        Err(e) => {
            eprintln!("husk: {e}");
            return exit_code::ERROR;
        }
    };
    // A restored VM resumes agent-ready: give it its own identity, and
    // with --oneshot power it off once that worked.
    let mut agent_done = None;
    let mut agent = match (&args.from_template, &args.vsock_uds) {
        (Some(_), Some(uds)) => Some(super::template::spawn_reidentify(
            uds.clone(),
            args.name.clone(),
            args.oneshot,
        )),
        _ => None,
    };
    let deadline = args
        .timeout
        .map(|t| Instant::now() + Duration::from_secs_f64(t));
    let mut timed_out = false;
    let mut interrupted = false;
    let mut agent_failed = false;
    let outcome = loop {
        if let Some(o) = handle.wait(Some(Duration::from_millis(100))) {
            break o;
        }
        // A restored VM whose agent could not take its identity is stopped.
        if agent.as_ref().is_some_and(|t| t.is_finished()) {
            if let Some(Err(())) = collect_agent(&mut agent, &mut agent_done, &args.name) {
                agent_failed = true;
                let _ = handle.stop();
            }
        }
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if (expired || INTERRUPTED.load(Ordering::SeqCst)) && !(timed_out || interrupted) {
            timed_out = expired;
            interrupted = !expired;
            if let Err(e) = handle.stop() {
                eprintln!("husk: {e}");
            }
        }
    };
    if let Some(Err(())) = collect_agent(&mut agent, &mut agent_done, &args.name) {
        agent_failed = true;
    }
    if args.timings {
        print_timings(&outcome.timeline, process_start);
        if let Some(t) = agent_done {
            println!(
                "first_ttrpc_reply_s: {:.6}",
                t.duration_since(process_start).as_secs_f64()
            );
        }
    }
    if agent_failed && !(timed_out || interrupted) {
        return exit_code::ERROR;
    }
    report(&outcome, timed_out, interrupted, args)
}

type AgentThread = JoinHandle<Result<Instant, super::template::ReidentifyError>>;

/// Joins the identity thread, if any: records when the first ttrpc reply
/// came, or reports its error; Some(Err) when it failed.
fn collect_agent(
    agent: &mut Option<AgentThread>,
    done: &mut Option<Instant>,
    name: &str,
) -> Option<Result<(), ()>> {
    let t = agent.take()?;
    Some(match t.join() {
        Ok(Ok(i)) => {
            *done = Some(i);
            Ok(())
        }
        Ok(Err(e)) => {
            eprintln!("husk: VM {name}: {e}");
            Err(())
        }
        Err(_) => {
            eprintln!("husk: VM {name}: the agent thread panicked");
            Err(())
        }
    })
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

fn report(o: &VmOutcome, timed_out: bool, interrupted: bool, args: &RunArgs) -> i32 {
    if timed_out {
        eprintln!(
            "husk: VM {} timed out after {}s{}",
            args.name,
            args.timeout.unwrap_or_default(),
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
        eprintln!("husk: VM {} stopped on a signal", args.name);
        return exit_code::INTERRUPTED;
    }
    if o.reason.is_clean() {
        if args.oneshot && o.timeline.ready.is_none() && args.from_template.is_none() {
            eprintln!(
                "husk: VM {} shut down before its agent was ready",
                args.name
            );
            print_tail(o);
            return exit_code::ERROR;
        }
        eprintln!("husk: VM {}: {}", args.name, o.reason);
        return exit_code::OK;
    }
    eprintln!("husk: VM {}: {}", args.name, o.reason);
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
