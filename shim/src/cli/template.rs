//! `husk template create`: boot once to agent-ready and snapshot, so VMs
//! start from the snapshot in milliseconds instead of booting; and the
//! identity step every VM started from a template goes through.

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use husk_vmm::{ConsoleConfig, VmConfig, VmmRequest, VmmResponse, VsockConfig};

use super::exit_code;
use crate::agent_client::{AgentClient, AgentClientError, Identity};

/// How long a restored VM's agent may take to answer.
const RESTORED_AGENT_DEADLINE: Duration = Duration::from_secs(60);

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
    /// The template directory (created).
    #[arg(long)]
    pub out: PathBuf,
    /// How long the boot to agent-ready may take, in seconds.
    #[arg(long, default_value_t = 900.0)]
    pub timeout: f64,
    /// Write the guest console of the template boot here.
    #[arg(long)]
    pub console: Option<PathBuf>,
    /// A virtio-blk disk, as for `husk vm run` (repeatable). VMs started
    /// from the template name their own image for it (`--disk PATH`).
    #[arg(long = "disk", value_name = "PATH[,ro][,id=ID]", value_parser = super::device_args::parse_disk)]
    pub disks: Vec<super::device_args::DiskArg>,
    /// A virtio-fs share `TAG[=DIR][,ro]` (repeatable). Without DIR the
    /// directory is chosen by each VM started from the template
    /// (`husk vm run --from-template T --share TAG=DIR`); the guest must
    /// not mount a share before the snapshot.
    #[arg(long = "share", value_name = "TAG[=DIR][,ro]", value_parser = super::device_args::parse_share)]
    pub shares: Vec<super::device_args::ShareArg>,
}

/// Errors making a template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Start(#[from] husk_vmm::StartError),
    #[error("template {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the template VM's agent never answered: {0}")]
    Agent(#[from] AgentClientError),
    #[error("{0}")]
    Api(#[from] husk_vmm::ApiError),
    #[error("--timeout must be a positive number of seconds")]
    Timeout,
}

/// Boots, waits for the agent, pauses and snapshots into `args.out`.
pub fn create(args: &CreateArgs) -> Result<u64, TemplateError> {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        return Err(TemplateError::Timeout);
    }
    let io = |source| TemplateError::Io {
        dir: args.out.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&args.out).map_err(io)?;
    let uds = args.out.join("template.vsock");
    let cfg = VmConfig {
        name: "template".into(),
        kernel: args.kernel.clone(),
        initrd: Some(args.initrd.clone()),
        cmdline_extra: args.cmdline.clone(),
        mem_mib: args.mem_mib,
        vcpus: args.vcpus,
        console: ConsoleConfig {
            file: args.console.clone(),
            log: args.console.is_none(),
        },
        vsock: Some(VsockConfig {
            guest_cid: husk_vmm::DEFAULT_GUEST_CID,
            uds_path: uds.clone(),
        }),
        disks: args
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| d.config(i))
            .collect(),
        shares: args.shares.iter().map(|s| s.config()).collect(),
        ..VmConfig::default()
    };
    let handle = husk_vmm::start(cfg)?;
    {
        // Agent-ready means its API answers; the connection is closed
        // before the snapshot (connections never survive a restore).
        let client = AgentClient::connect(&uds, Duration::from_secs_f64(args.timeout))?;
        client.version()?;
        // What every restored VM's first requests would pay, paid once here.
        client.warm_up()?;
    }
    handle.request(VmmRequest::Pause)?;
    let written = match handle.request(VmmRequest::Snapshot {
        dir: args.out.clone(),
    })? {
        VmmResponse::Snapshot { memory_bytes } => memory_bytes,
        _ => 0,
    };
    handle.stop()?;
    handle.wait(Some(Duration::from_secs(30)));
    let _ = std::fs::remove_file(&uds);
    Ok(written)
}

/// `husk template create`.
pub fn run_create(args: &CreateArgs) -> i32 {
    let t = Instant::now();
    match create(args) {
        Ok(bytes) => {
            println!("template: {}", args.out.display());
            println!("memory_written_bytes: {bytes}");
            println!("created_in_s: {:.3}", t.elapsed().as_secs_f64());
            exit_code::OK
        }
        Err(e) => {
            eprintln!("husk: {e}");
            exit_code::ERROR
        }
    }
}

/// Why a restored VM could not take its identity.
#[derive(Debug, thiserror::Error)]
pub enum ReidentifyError {
    #[error("restored VM's agent: {0}")]
    Agent(#[from] AgentClientError),
    #[error("making a fresh identity: {0}")]
    Identity(#[source] std::io::Error),
}

/// After a restore: connects to the agent, gives it a fresh identity (RNG
/// seed, hostname, instance id, wall clock) and, with `oneshot`, shuts the
/// guest down. Returns when the first ttrpc reply came.
pub fn spawn_reidentify(
    uds: PathBuf,
    hostname: String,
    oneshot: bool,
) -> JoinHandle<Result<Instant, ReidentifyError>> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + RESTORED_AGENT_DEADLINE;
        let identity =
            Identity::fresh(sanitize_hostname(&hostname)).map_err(ReidentifyError::Identity)?;
        // The guest resets every vsock connection when it handles the
        // transport-reset event of the restore; a connection made just
        // before it did dies with it. Reconnect and retry then (Reidentify
        // with the same identity is idempotent).
        let (client, outcome) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // A loaded host runs many restored guests at once: give each
            // call the whole deadline rather than the default per-call bound.
            let client =
                AgentClient::connect(&uds, left)?.with_call_timeout(RESTORED_AGENT_DEADLINE);
            match client.reidentify(&identity) {
                Ok(o) => break (client, o),
                Err(e @ AgentClientError::Transport { .. }) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "agent connection reset after restore; reconnecting");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let first_reply = Instant::now();
        tracing::info!(instance_id = %outcome.instance_id, clock_step_ms = outcome.clock_step_ns / 1_000_000, "restored VM reidentified");
        if oneshot {
            client.shutdown()?;
        }
        Ok(first_reply)
    })
}

/// A valid hostname from a VM name.
fn sanitize_hostname(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    let s = s.trim_start_matches('-').to_string();
    if s.is_empty() {
        "husk".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert_eq!(sanitize_hostname("pod_1/a"), "pod-1-a");
        assert_eq!(sanitize_hostname("--x"), "x");
        assert_eq!(sanitize_hostname("//"), "husk");
        assert_eq!(sanitize_hostname(&"a".repeat(100)).len(), 64);
    }
}
