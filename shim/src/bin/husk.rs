//! `husk`: the operator CLI.

use std::time::Instant;

use clap::{Parser, Subcommand};
use husk_shim::cli::{agent, check, exit_code, install, pods, run, template, vm_run};

#[derive(Parser)]
#[command(name = "husk", version, about = "husk microVM container runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check what this host offers (KVM, capabilities, virtualization kind).
    Check,
    /// Run a command as a container in a sandbox of its own; exits with its
    /// exit code (125: husk failed). Needs a guest agent with API 4.
    Run(run::RunArgs),
    /// Work with VMs directly.
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// VM templates: boot once, snapshot, start many VMs from it.
    Template {
        #[command(subcommand)]
        command: TemplateCommand,
    },
    /// Install containerd-shim-husk-v2, the guest image and
    /// /etc/husk/config.toml; print containerd's config snippet.
    Install(install::InstallArgs),
    /// Talk to a guest's agent.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// The pod VMs running on this node (containerd's shims) and their
    /// counters: vCPU CPU time, exits, interrupts, uptime.
    Pods(pods::PodsArgs),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Boot a VM in this process; exits with the guest's outcome.
    Run(Box<vm_run::RunArgs>),
    /// One running pod VM's counters, as JSON (from its shim's monitor
    /// socket).
    Stats(pods::StatsArgs),
}

#[derive(Subcommand)]
enum TemplateCommand {
    /// Find or make the template for a guest and device layout in the store
    /// (or in --out): boot to agent-ready, pause, snapshot.
    Create(template::CreateArgs),
    /// List the store's templates.
    Ls(template::LsArgs),
    /// Remove templates from the store (VMs running from them keep running).
    Rm(template::RmArgs),
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Connect through the VM's hybrid-vsock socket and print what the agent
    /// reports (version, kernel, boot id, memory, uptime).
    Ping(agent::PingArgs),
    /// Run a command in the guest to completion: its output and exit code
    /// become husk's (128+N for signal N, 124 on timeout).
    Exec(agent::ExecArgs),
    /// Mount a virtio-blk disk (by serial) or a virtio-fs share (by tag).
    Mount(agent::MountArgs),
    /// Sync and unmount a mount point in the guest.
    Umount(agent::UmountArgs),
}

fn main() {
    let start = Instant::now();
    let cli = Cli::try_parse().unwrap_or_else(|e| {
        // `husk run`'s own errors are 125 (its container's codes are the
        // rest), usage errors too; help and version are not errors.
        if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("run") {
            let _ = e.print();
            std::process::exit(run::EXIT_HUSK_ERROR);
        }
        e.exit()
    });
    // `husk run`'s stderr is the container's: only warnings of its own.
    let default_level = match cli.command {
        Command::Run(_) => "warn",
        _ => "info",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let code = match cli.command {
        Command::Check => check::report(&check::run_checks()),
        Command::Run(args) => run::run(&args),
        Command::Install(args) => install::run(&args),
        Command::Vm {
            command: VmCommand::Run(args),
        } => vm_run::run(&args, start),
        Command::Vm {
            command: VmCommand::Stats(args),
        } => pods::stats(&args),
        Command::Pods(args) => pods::pods(&args),
        Command::Agent { command } => match command {
            AgentCommand::Ping(args) => agent::ping(&args),
            AgentCommand::Exec(args) => agent::exec(&args),
            AgentCommand::Mount(args) => agent::mount(&args),
            AgentCommand::Umount(args) => agent::umount(&args),
        },
        Command::Template { command } => match command {
            TemplateCommand::Create(args) => template::run_create(&args),
            TemplateCommand::Ls(args) => template::run_ls(&args),
            TemplateCommand::Rm(args) => template::run_rm(&args),
        },
    };
    std::process::exit(if code == 0 { exit_code::OK } else { code });
}
