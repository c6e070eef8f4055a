//! `husk run`: one container in a sandbox of its own, its stdio streamed
//! to husk's, husk's exit code its.
//!
//! Step by step: make the spec (`runc spec`'s, or a bundle's, with the
//! flags over it); start a sandbox from the template store with one
//! virtio-fs share, tag `rootfs`, of the rootfs directory, mounted at
//! [`GUEST_ROOTFS`] (a template's shares are layout only, so every
//! `husk run` shares one template, which has the share mounted already:
//! a restore just serves it from this run's directory); check that the
//! agent serves containers (API 4); open the stdio streams; create and start the
//! container; copy the streams (or one tty stream in raw mode) while
//! forwarding SIGINT/SIGTERM (and SIGWINCH as a resize); wait for the
//! process and for its output to end; stop the sandbox (the container
//! goes with it: no RemoveContainer).
//!
//! The share stays read-write: `--read-only` is the spec's
//! `root.readonly`, so read-only and read-write runs share one template.

pub mod attach;
pub mod signals;
pub mod spec;
pub mod term;

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_vmm::{ConsoleConfig, PvmCompat, SeccompMode, ShareConfig};

use crate::agent_client::stdio::is_valid_id;
use crate::agent_client::{GuestSteps, ProcessStreams, Stdio};
use crate::sandbox::store::TemplateStore;
use crate::sandbox::template_build::VmTemplateBuilder;
use crate::sandbox::{build_id, GuestSpec, Sandbox, SandboxConfig, ShareMount, Source};

use self::attach::HostIo;
use self::signals::Signals;
use self::spec::{SpecError, SpecOptions};

/// husk failed before the container ran, or lost track of it (docker's
/// code for its own errors).
pub const EXIT_HUSK_ERROR: i32 = 125;
/// Interrupted before the container ran.
pub const EXIT_INTERRUPTED: i32 = 130;
/// The tag of the rootfs share.
pub const ROOTFS_TAG: &str = "rootfs";
/// Where the guest mounts the rootfs share.
pub const GUEST_ROOTFS: &str = "/run/husk/rootfs";
/// The agent API version that serves containers.
pub const CONTAINER_API: u32 = 4;
/// How long the sandbox may take to power off once the container is done.
const STOP_DEADLINE: Duration = Duration::from_secs(20);

/// Options of `husk run`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Exit status: the container's (128+N when signal N ended it); \
    125 when husk itself failed (before the container ran, or lost track of it); \
    130 when interrupted before the container ran.\n\
    Needs a guest agent that serves containers (agent API 4)."
)]
pub struct RunArgs {
    /// The container's root file system: a host directory.
    #[arg(long, required_unless_present = "bundle", conflicts_with = "bundle")]
    pub rootfs: Option<PathBuf>,
    /// An OCI bundle: DIR/config.json, its root.path the rootfs (the flags
    /// below override its process fields).
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// Give the container a terminal (the host's goes raw meanwhile).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open: copy husk's stdin to the container's.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// An environment variable (repeatable), replacing the spec's value.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The working directory in the container.
    #[arg(long, short = 'w', value_name = "DIR")]
    pub workdir: Option<String>,
    /// The user to run as: UID[:GID] (numbers).
    #[arg(long, short = 'u', value_name = "UID[:GID]", value_parser = spec::parse_user)]
    pub user: Option<(u32, Option<u32>)>,
    /// The container's memory limit, MiB (memory.max).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    pub memory: Option<u64>,
    /// The most processes the container may have (pids.max).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
    pub pids: Option<i64>,
    /// Mount the container's root file system read-only.
    #[arg(long)]
    pub read_only: bool,
    /// The container's and its sandbox's name (default `run-<pid>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Guest kernel (default: guest-image/vmlinux beside the directory of
    /// the husk binary, e.g. target/guest-image/ for target/release/husk).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (default: guest-image/initramfs.cpio.gz, as above).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// The template store.
    #[arg(long, default_value = crate::sandbox::store::DEFAULT_ROOT)]
    pub store: PathBuf,
    /// Directory for the sandbox's sockets (`<run-dir>/<name>/`).
    #[arg(long, default_value = super::vm_run::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = super::vm_run::DEFAULT_MEM_MIB)]
    pub mem_mib: u64,
    /// Write the guest console to this file (default: nowhere).
    #[arg(long)]
    pub console: Option<PathBuf>,
    /// Write when each step ended (`step: seconds since husk started`) to
    /// this file: the sandbox (VM running, agent ready), the rootfs mount,
    /// the stdio streams, create, start, the exit, stop.
    #[arg(long, value_name = "FILE")]
    pub timings: Option<PathBuf>,
    /// Print the guest agent's accounting of the container's create and
    /// start to stderr once the run ends: per step its wall time, guest
    /// CPU (user, system), page faults (minor, major), context switches
    /// (voluntary, involuntary) and what it did (mounts, namespaces, files,
    /// execve).
    #[arg(long)]
    pub guest_steps: bool,
    /// The command and its arguments (optional with --bundle).
    #[arg(last = true, value_name = "CMD", required_unless_present = "bundle")]
    pub command: Vec<String>,
}

/// What `husk run` needs once its input is checked.
struct Prepared {
    name: String,
    rootfs: PathBuf,
    spec_json: Vec<u8>,
    kernel: PathBuf,
    initrd: PathBuf,
    stdio: Stdio,
}

/// Why `husk run` failed before its container ran.
#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{what} {}: {problem}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        problem: String,
    },
    #[error("the name {0:?} must be 1..=64 of [A-Za-z0-9_.-], not starting with '.'")]
    Name(String),
    #[error("{0}")]
    Other(String),
}

impl RunArgs {
    fn prepare(&self) -> Result<Prepared, RunError> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("run-{}", std::process::id()));
        if !is_valid_id(&name) || name.starts_with('.') {
            return Err(RunError::Name(name));
        }
        let (mut spec, rootfs) = match (&self.bundle, &self.rootfs) {
            (Some(b), _) => spec::load_bundle(b)?,
            (None, Some(r)) => (spec::runc_default()?, r.clone()),
            (None, None) => return Err(RunError::Other("give --rootfs or --bundle".into())),
        };
        existing_dir("the rootfs", &rootfs)?;
        let options = SpecOptions {
            args: self.command.clone(),
            terminal: self.tty,
            env: self.env.clone(),
            cwd: self.workdir.clone(),
            user: self.user,
            memory_mib: self.memory,
            pids: self.pids,
            read_only: self.read_only,
            hostname: self.bundle.is_none().then(|| name.clone()),
        };
        options.apply(&mut spec)?;
        let (kernel, initrd) = self.guest_image()?;
        let stdio = if self.tty {
            Stdio {
                stdin: self.interactive,
                stdout: true,
                ..Stdio::tty(term::host_size())
            }
        } else {
            Stdio::pipes(self.interactive)
        };
        Ok(Prepared {
            name,
            rootfs,
            spec_json: spec::to_json(&spec)?,
            kernel,
            initrd,
            stdio,
        })
    }

    /// `--kernel`/`--initrd`, else the guest image beside the binary's
    /// directory.
    fn guest_image(&self) -> Result<(PathBuf, PathBuf), RunError> {
        let default_dir = || -> Result<PathBuf, RunError> {
            let exe = std::env::current_exe().map_err(|e| {
                RunError::Other(format!(
                    "finding the husk binary for the default guest image: {e} (give --kernel and --initrd)"
                ))
            })?;
            Ok(exe
                .parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("/"))
                .join("guest-image"))
        };
        let kernel = match &self.kernel {
            Some(k) => k.clone(),
            None => default_dir()?.join("vmlinux"),
        };
        let initrd = match &self.initrd {
            Some(i) => i.clone(),
            None => default_dir()?.join("initramfs.cpio.gz"),
        };
        for (what, path) in [("the guest kernel", &kernel), ("the initramfs", &initrd)] {
            if !path.is_file() {
                return Err(RunError::File {
                    what,
                    path: path.clone(),
                    problem: "no such file (build it with `bash guest-image/build.sh`, or give --kernel/--initrd)".into(),
                });
            }
        }
        Ok((kernel, initrd))
    }

    fn sandbox_config(&self, p: &Prepared) -> Result<SandboxConfig, RunError> {
        let store = TemplateStore::open(&self.store, build_id())
            .map_err(|e| RunError::Other(super::error_chain(&e)))?;
        let seccomp = SeccompMode::from_env(SeccompMode::Enforce)
            .map_err(|e| RunError::Other(e.to_string()))?;
        let source = Source::Store {
            guest: GuestSpec {
                kernel: p.kernel.clone(),
                initrd: p.initrd.clone(),
                cmdline_extra: String::new(),
                mem_mib: self.mem_mib,
                vcpus: 1,
                pvm_compat: PvmCompat::Auto,
            },
            store,
            builder: VmTemplateBuilder {
                boot_timeout: crate::sandbox::DEFAULT_BOOT_TIMEOUT,
                seccomp,
            },
        };
        let mut cfg = SandboxConfig::new(&p.name, &self.run_dir, source);
        cfg.shares = vec![ShareConfig {
            tag: ROOTFS_TAG.into(),
            shared_dir: Some(p.rootfs.clone()),
            read_only: false,
        }];
        cfg.share_mounts = vec![ShareMount::new(ROOTFS_TAG, GUEST_ROOTFS)];
        cfg.console = ConsoleConfig {
            file: self.console.clone(),
            log: false,
        };
        cfg.seccomp = seccomp;
        Ok(cfg)
    }
}

fn existing_dir(what: &'static str, path: &Path) -> Result<(), RunError> {
    let problem = match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => "not a directory".to_string(),
        Err(e) => e.to_string(),
    };
    Err(RunError::File {
        what,
        path: path.to_owned(),
        problem,
    })
}

/// When each step of a run ended.
struct Timings {
    t0: std::time::Instant,
    marks: std::cell::RefCell<Vec<(&'static str, f64)>>,
}

impl Timings {
    fn new() -> Self {
        Self {
            t0: std::time::Instant::now(),
            marks: Default::default(),
        }
    }

    fn mark(&self, step: &'static str) {
        self.marks
            .borrow_mut()
            .push((step, self.t0.elapsed().as_secs_f64()));
    }

    fn at(&self, step: &'static str, since_start: std::time::Duration) {
        self.marks
            .borrow_mut()
            .push((step, since_start.as_secs_f64()));
    }

    fn write(&self, path: &Path) {
        let text: String = self
            .marks
            .borrow()
            .iter()
            .map(|(k, v)| format!("{k}: {v:.6}\n"))
            .collect();
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("husk: --timings {}: {e}", path.display());
        }
    }
}

/// Runs the container; returns husk's exit code.
pub fn run(args: &RunArgs) -> i32 {
    let timings = Timings::new();
    let code = run_timed(args, &timings);
    if let Some(path) = &args.timings {
        timings.write(path);
    }
    code
}

fn run_timed(args: &RunArgs, timings: &Timings) -> i32 {
    let fail = |e: &dyn std::error::Error| {
        eprintln!("husk: {}", super::error_chain(e));
        EXIT_HUSK_ERROR
    };
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let prepared = match args.prepare() {
        Ok(p) => p,
        Err(e) => return fail(&e),
    };
    let sandbox = match args
        .sandbox_config(&prepared)
        .and_then(|cfg| Sandbox::start(cfg).map_err(|e| RunError::Other(super::error_chain(&e))))
    {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let info = sandbox.start_info();
    let started_at = timings.t0.elapsed().saturating_sub(info.agent_ready);
    timings.at("sandbox_vm_running_s", started_at + info.vm_running);
    timings.at("sandbox_agent_ready_s", started_at + info.agent_ready);
    let code = match signals.stop_requested() {
        Some(sig) => {
            eprintln!("husk: interrupted (signal {sig}) before the container ran");
            EXIT_INTERRUPTED
        }
        None => {
            let mut steps = Vec::new();
            let code = run_container(&sandbox, &prepared, &signals, timings, &mut steps);
            if args.guest_steps {
                print_steps(&steps);
            }
            code
        }
    };
    if let Err(e) = sandbox.stop(STOP_DEADLINE) {
        tracing::warn!(error = %super::error_chain(&e), "stopping the sandbox");
    }
    timings.mark("sandbox_stopped_s");
    code
}

/// The agent's accounting of each call, as tables on stderr.
fn print_steps(steps: &[(&str, GuestSteps)]) {
    for (call, s) in steps {
        if s.is_empty() {
            eprintln!("husk: {call}: the guest agent sent no accounting (agent API < 6)");
        } else {
            eprint!("{}", s.table(call));
        }
    }
}

/// From the mount to the container's end; the sandbox runs. The agent's
/// accounting of the create and the start go to `steps`.
fn run_container(
    sandbox: &Sandbox,
    p: &Prepared,
    signals: &Signals,
    timings: &Timings,
    steps: &mut Vec<(&'static str, GuestSteps)>,
) -> i32 {
    let agent = sandbox.agent();
    let id = p.name.as_str();
    let before = |what: &str, e: &dyn std::error::Error| {
        eprintln!("husk: container {id}: {what}: {}", super::error_chain(e));
        EXIT_HUSK_ERROR
    };
    match agent.version() {
        Ok(v) if v.api_version >= CONTAINER_API => {}
        Ok(v) => {
            eprintln!(
                "husk: container {id}: the guest agent {} speaks API {}; containers need API {CONTAINER_API}",
                v.agent_version, v.api_version
            );
            return EXIT_HUSK_ERROR;
        }
        Err(e) => return before("asking the agent its version", &e),
    }
    // Mounted by the sandbox (in its template already).
    timings.mark("rootfs_mounted_s");
    let streams = match ProcessStreams::open(sandbox.vsock_socket(), id, None, &p.stdio) {
        Ok(s) => s,
        Err(e) => return before("opening its stdio", &e),
    };
    timings.mark("streams_open_s");
    match agent.create_container(id, &p.spec_json, GUEST_ROOTFS, p.stdio) {
        Ok(s) => steps.push(("create", s)),
        Err(e) => return before("create", &e),
    }
    timings.mark("created_s");
    // Raw mode from before the process can write until its output is done.
    let raw = if p.stdio.terminal && term::is_tty(libc::STDIN_FILENO) {
        match term::RawMode::enable(libc::STDIN_FILENO) {
            Ok(r) => Some(r),
            Err(e) => return before("putting the terminal in raw mode", &e),
        }
    } else {
        None
    };
    match agent.start_container(id) {
        Ok(started) => steps.push(("start", started.steps)),
        Err(e) => {
            drop(raw);
            let code = before("start", &e);
            let _ = agent.remove_container(id);
            return code;
        }
    }
    timings.mark("started_s");
    let code = match attach::attach(agent, id, streams, p.stdio, signals, HostIo::husk()) {
        Ok(exit) => {
            if exit.oom_killed {
                eprintln!("husk: container {id}: the OOM killer ended a process");
            }
            exit.shell_code()
        }
        Err(e) => {
            eprintln!(
                "husk: container {id}: waiting for its process: {}",
                super::error_chain(&e)
            );
            EXIT_HUSK_ERROR
        }
    };
    timings.mark("exited_s");
    drop(raw);
    // No RemoveContainer: the sandbox is stopped next, and the container
    // (its cgroup, namespaces, mounts; its init's exit already ended every
    // process of its pid namespace) goes with the VM. Removing it first
    // cost the guest 0.15-0.3 s of cgroup work nobody would see.
    code
}
