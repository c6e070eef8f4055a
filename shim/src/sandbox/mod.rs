//! The pod sandbox: one VM and its agent, owned by a long-lived process.
//!
//! [`Sandbox::start`] brings up one VM with vsock, its disks and shares:
//! restored from the [template store](store) when the config names one
//! (making the template on first use), cold-booted otherwise. It returns
//! once the agent has answered and the config's [share mounts](ShareMount)
//! are in place; a restored guest has its own identity by then. A store
//! template is made with those shares already mounted (on an empty stand-in
//! directory), so a restored VM finds them mounted on its own directories
//! and no guest mount is left to do. The [`Sandbox`] owns the VMM handle, one agent connection, its
//! directory of sockets and files, and gives its owner the agent client,
//! an [exit notifier](Sandbox::exit_notifier), [`stop`](Sandbox::stop) with
//! a deadline, and a `Drop` that leaves nothing behind (no thread, socket,
//! file or mapping), also when a start fails half way.
//!
//! Nothing here is process-wide: no environment variable, signal handler
//! or umask is read or changed; many sandboxes live in one process.

mod agent_ready;
mod error;
pub mod run_dir;
pub mod store;
pub mod template_build;
pub mod template_key;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use husk_vmm::{
    ConsoleConfig, DiskConfig, ExitNotifier, NetConfig, PvmCompat, RestoreConfig, SeccompMode,
    ShareConfig, TapSource, VmConfig, VmOutcome, VmmError, VmmHandle, VsockConfig,
};

use crate::agent_client::{AgentClient, MountSource, MountSpec};
pub use agent_ready::sanitize_hostname;
pub use error::{SandboxError, SandboxErrorKind};
use run_dir::RunDir;
use store::TemplateStore;
use template_build::VmTemplateBuilder;
use template_key::{TemplateDisk, TemplateShare, TemplateSpec};

/// The socket of the sandbox's vsock device, in its directory.
pub const VSOCK_SOCKET: &str = "agent.vsock";
/// Default bound on the agent's first answer after a restore.
pub const DEFAULT_RESTORED_AGENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default bound on a cold boot to the agent's first answer.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(600);

/// The MAC of every sandbox's net device as the guest boots (or was
/// snapshotted) with it; the agent gives eth0 the pod's own
/// (`ConfigureNetwork`). Locally administered, unicast.
pub const POD_NET_MAC: [u8; 6] = [0x02, 0x68, 0x75, 0x73, 0x6b, 0x00];

/// The sandbox's one net device over `tap`. No MTU is offered: the guest's
/// eth0 may then take any MTU, and the agent sets the pod's.
pub fn pod_net_config(tap: TapSource) -> NetConfig {
    NetConfig {
        tap,
        mac: POD_NET_MAC,
        mtu: None,
    }
}

/// The identity of this husk build: what templates are keyed by (a
/// snapshot from another build is refused).
pub fn build_id() -> &'static str {
    husk_vmm::snapshot::BUILD_ID
}

/// The guest to boot: kernel, initramfs, command line and size.
#[derive(Debug, Clone)]
pub struct GuestSpec {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Arguments after husk's own command line.
    pub cmdline_extra: String,
    pub mem_mib: u64,
    pub vcpus: u8,
    pub pvm_compat: PvmCompat,
}

/// Where the sandbox's VM comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A cold boot, every time.
    Boot(GuestSpec),
    /// The store's template for this guest and device layout, made on
    /// first use; a cold boot when the store itself is unusable.
    Store {
        guest: GuestSpec,
        store: TemplateStore,
        builder: VmTemplateBuilder,
    },
    /// Exactly this template directory.
    TemplateDir(PathBuf),
}

/// One sandbox to start.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Names the sandbox (the pod id): 1..=64 of `[A-Za-z0-9_.-]`, not
    /// starting with `.`.
    pub id: String,
    /// The sandbox's sockets go in `<run_dir>/<id>/`.
    pub run_dir: PathBuf,
    pub source: Source,
    /// virtio-blk disks. From a template: one image per template disk, in
    /// order, of the template's size (ro and id are the template's).
    pub disks: Vec<DiskConfig>,
    /// virtio-fs shares, each with its directory.
    pub shares: Vec<ShareConfig>,
    /// Shares mounted in the guest by the time [`Sandbox::start`] returns
    /// (in a store template already: part of its key).
    pub share_mounts: Vec<ShareMount>,
    /// The backend of the sandbox's one net device (eth0 in the guest):
    /// the pod's tap, or [`TapSource::Disconnected`] (the default) for a
    /// pod without a network.
    pub tap: TapSource,
    /// The guest's hostname (default: from the id).
    pub hostname: Option<String>,
    pub console: ConsoleConfig,
    pub seccomp: SeccompMode,
    /// How long the agent may take to answer once the VM runs (default: 60 s
    /// after a restore, 600 s after a cold boot).
    pub agent_timeout: Option<Duration>,
    /// Each later agent call's bound (default
    /// [`crate::agent_client::DEFAULT_CALL_TIMEOUT`]): a guest whose one
    /// vCPU is shared with many others answers slowly, not wrongly.
    pub call_timeout: Option<Duration>,
    /// The vsock device's socket (default `<run_dir>/<id>/agent.vsock`).
    pub vsock_socket: Option<PathBuf>,
}

impl SandboxConfig {
    /// A config with defaults: no devices, console to the log, seccomp
    /// enforcing.
    pub fn new(id: impl Into<String>, run_dir: impl Into<PathBuf>, source: Source) -> Self {
        Self {
            id: id.into(),
            run_dir: run_dir.into(),
            source,
            disks: Vec::new(),
            shares: Vec::new(),
            share_mounts: Vec::new(),
            tap: TapSource::Disconnected,
            hostname: None,
            console: ConsoleConfig {
                file: None,
                log: true,
            },
            seccomp: SeccompMode::Enforce,
            agent_timeout: None,
            call_timeout: None,
            vsock_socket: None,
        }
    }
}

/// A share the sandbox mounts in the guest: `tag` (one of the config's
/// shares) on `target`, read-only when the share is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareMount {
    pub tag: String,
    /// An absolute guest path (the agent creates it).
    pub target: String,
}

impl ShareMount {
    pub fn new(tag: impl Into<String>, target: impl Into<String>) -> Self {
        Self {
            tag: tag.into(),
            target: target.into(),
        }
    }

    /// The agent's mount request for it.
    pub fn spec(&self, read_only: bool) -> MountSpec {
        let mut m = MountSpec::new(MountSource::Share(self.tag.clone()), self.target.clone());
        m.read_only = read_only;
        m
    }
}

/// How the sandbox started, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartInfo {
    /// Restored from a template (false: cold boot).
    pub restored: bool,
    /// The store's template key, when it came from the store.
    pub template_key: Option<String>,
    /// This start made the template.
    pub template_created: bool,
    /// From `start` to the VM running (template made, restored or booted).
    pub vm_running: Duration,
    /// From `start` to the agent's first answer (its identity taken).
    pub agent_ready: Duration,
}

/// A running pod VM and its agent.
pub struct Sandbox {
    id: String,
    // Field order is drop order: the agent connection, then the VM (its
    // threads joined), then the directory of sockets.
    agent: Option<AgentClient>,
    vm: Option<VmmHandle>,
    vsock_socket: PathBuf,
    info: StartInfo,
    instance_id: String,
    _run_dir: RunDir,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    /// Starts the VM and returns once its agent has answered.
    pub fn start(config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let id = config.id.clone();
        let err = |kind| SandboxError::new(&id, kind);
        validate_id(&config.id).map_err(err)?;
        let t0 = Instant::now();
        let run_dir = RunDir::create(&config.run_dir, &config.id)
            .map_err(|e| err(SandboxErrorKind::RunDir(e)))?;
        let vsock_socket = config
            .vsock_socket
            .clone()
            .unwrap_or_else(|| run_dir.path().join(VSOCK_SOCKET));
        let launched = launch(&config, &vsock_socket).map_err(err)?;
        let vm_running = t0.elapsed();
        let hostname = config
            .hostname
            .clone()
            .unwrap_or_else(|| sanitize_hostname(&config.id));
        let agent_timeout = config.agent_timeout.unwrap_or(if launched.restored {
            DEFAULT_RESTORED_AGENT_TIMEOUT
        } else {
            DEFAULT_BOOT_TIMEOUT
        });
        // On failure the VM handle drops here (stopping and joining the VM)
        // before the directory does.
        let (agent, instance_id) = if launched.restored {
            agent_ready::reidentify(&launched.vm, &vsock_socket, &hostname, agent_timeout)
        } else {
            agent_ready::first_answer(&launched.vm, &vsock_socket, agent_timeout)
        }
        .map_err(err)?;
        let agent = match config.call_timeout {
            Some(t) => agent.with_call_timeout(t),
            None => agent,
        };
        for m in &config.share_mounts {
            if launched.mounted.contains(&m.tag) {
                continue;
            }
            let read_only = config.shares.iter().any(|s| s.tag == m.tag && s.read_only);
            agent.mount(&m.spec(read_only)).map_err(|source| {
                err(SandboxErrorKind::ShareMount {
                    tag: m.tag.clone(),
                    target: m.target.clone(),
                    source: Box::new(source),
                })
            })?;
        }
        let info = StartInfo {
            restored: launched.restored,
            template_key: launched.template_key,
            template_created: launched.template_created,
            vm_running,
            agent_ready: t0.elapsed(),
        };
        tracing::info!(sandbox = %config.id, restored = info.restored, template = ?info.template_key,
            vm_running_s = vm_running.as_secs_f64(), agent_ready_s = info.agent_ready.as_secs_f64(), "sandbox started");
        Ok(Sandbox {
            id: config.id,
            agent: Some(agent),
            vm: Some(launched.vm),
            vsock_socket,
            info,
            instance_id,
            _run_dir: run_dir,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The connection to the guest's agent (shared by the owner's threads).
    pub fn agent(&self) -> &AgentClient {
        // Present from start until drop.
        self.agent
            .as_ref()
            .unwrap_or_else(|| unreachable!("agent taken before drop"))
    }

    fn vm(&self) -> &VmmHandle {
        self.vm
            .as_ref()
            .unwrap_or_else(|| unreachable!("VM taken before drop"))
    }

    /// The VMM's handle (pause, resume, info).
    pub fn vmm(&self) -> &VmmHandle {
        self.vm()
    }

    /// The vsock device's socket (`CONNECT <port>` from the host).
    pub fn vsock_socket(&self) -> &std::path::Path {
        &self.vsock_socket
    }

    /// How the sandbox started.
    pub fn start_info(&self) -> &StartInfo {
        &self.info
    }

    /// The guest's instance id (a restored guest's new identity; a cold
    /// boot's boot id).
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// A notifier that becomes ready when the VM ends, however it ends
    /// (guest power-off, crash, [`stop`](Self::stop)); its descriptor can go
    /// in the owner's epoll set.
    pub fn exit_notifier(&self) -> Result<ExitNotifier, SandboxError> {
        self.vm().exit_notifier().map_err(|source| {
            SandboxError::new(
                &self.id,
                SandboxErrorKind::Io {
                    what: "exit notifier",
                    source,
                },
            )
        })
    }

    /// How the VM ended, once it has.
    pub fn outcome(&self) -> Option<VmOutcome> {
        self.vm().outcome()
    }

    /// Powers the VM off within `deadline`; returns how it ended (`None`:
    /// it would not stop). The guest is asked first, and its agent syncs
    /// its file systems before it answers: from then on nothing in the
    /// guest is the host's to wait for, and the VM is stopped at once
    /// rather than after the guest's own power-off. A guest that does not
    /// answer within half the deadline gets the rest to end, then the VM is
    /// stopped outright.
    pub fn power_off(&self, deadline: Duration) -> Option<VmOutcome> {
        let end = Instant::now() + deadline;
        let left = || end.saturating_duration_since(Instant::now());
        let vm = self.vm();
        if vm.outcome().is_none() {
            match self.agent().shutdown_within(left() / 2) {
                Ok(()) => {
                    let _ = vm.stop();
                }
                Err(e) => {
                    tracing::info!(sandbox = %self.id, error = %e, "the guest did not take the shutdown request")
                }
            }
        }
        match vm.wait(Some(left())) {
            Some(o) => Some(o),
            None => {
                tracing::warn!(sandbox = %self.id, "the guest did not power off in time; stopping the VM");
                let _ = vm.stop();
                vm.wait(Some(husk_vmm::api::DROP_STOP_TIMEOUT))
            }
        }
    }

    /// Stops the sandbox within `deadline` ([`power_off`](Self::power_off)).
    /// Everything is released when this returns.
    pub fn stop(self, deadline: Duration) -> Result<VmOutcome, SandboxError> {
        self.power_off(deadline)
            .ok_or_else(|| SandboxError::new(&self.id, SandboxErrorKind::WouldNotStop))
    }
}

/// The ids containerd and Kubernetes give fit this; it keeps paths sane.
fn validate_id(id: &str) -> Result<(), SandboxErrorKind> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SandboxErrorKind::InvalidConfig(format!(
            "the sandbox id {id:?} must be 1..=64 of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

/// A VM that runs, and where it came from.
struct Launched {
    vm: VmmHandle,
    restored: bool,
    template_key: Option<String>,
    template_created: bool,
    /// The tags of the shares the guest has mounted already.
    mounted: Vec<String>,
}

fn launch(cfg: &SandboxConfig, vsock: &std::path::Path) -> Result<Launched, SandboxErrorKind> {
    match &cfg.source {
        Source::Boot(guest) => boot(cfg, guest, vsock),
        Source::TemplateDir(dir) => {
            // A template's disks are layout only: each VM brings its images
            // (the template's stand-ins are gone).
            let snap =
                husk_vmm::snapshot::Snapshot::read(dir).map_err(|e| husk_vmm::StartError {
                    vm: cfg.id.clone(),
                    source: e.into(),
                })?;
            let want = snap.devices.disks.len();
            if cfg.disks.len() != want {
                return Err(SandboxErrorKind::InvalidConfig(format!(
                    "template {} has {want} disk(s); {} image(s) given (one per disk, in order)",
                    dir.display(),
                    cfg.disks.len()
                )));
            }
            let nets = snap.devices.nets.len();
            Ok(Launched {
                vm: husk_vmm::restore(restore_config(cfg, dir, vsock, nets))?,
                restored: true,
                template_key: None,
                template_created: false,
                mounted: snap
                    .devices
                    .shares
                    .iter()
                    .filter(|s| s.device.mounted)
                    .map(|s| s.device.tag.clone())
                    .collect(),
            })
        }
        Source::Store {
            guest,
            store,
            builder,
        } => from_store(cfg, guest, store, builder, vsock),
    }
}

fn boot(
    cfg: &SandboxConfig,
    guest: &GuestSpec,
    vsock: &std::path::Path,
) -> Result<Launched, SandboxErrorKind> {
    if let Some(sh) = cfg.shares.iter().find(|s| s.shared_dir.is_none()) {
        return Err(SandboxErrorKind::InvalidConfig(format!(
            "share {:?} has no directory",
            sh.tag
        )));
    }
    let vm = husk_vmm::start(VmConfig {
        name: cfg.id.clone(),
        kernel: guest.kernel.clone(),
        initrd: Some(guest.initrd.clone()),
        cmdline_extra: guest.cmdline_extra.clone(),
        mem_mib: guest.mem_mib,
        vcpus: guest.vcpus,
        console: cfg.console.clone(),
        pvm_compat: guest.pvm_compat,
        vsock: Some(VsockConfig {
            guest_cid: husk_vmm::DEFAULT_GUEST_CID,
            uds_path: vsock.to_path_buf(),
        }),
        disks: cfg.disks.clone(),
        shares: cfg.shares.clone(),
        nets: vec![pod_net_config(cfg.tap.clone())],
        seccomp: cfg.seccomp,
        ..VmConfig::default()
    })?;
    Ok(Launched {
        vm,
        restored: false,
        template_key: None,
        template_created: false,
        mounted: Vec::new(),
    })
}

/// `nets`: how many net devices the snapshot has (a store template: one);
/// the first gets the sandbox's tap, any other none.
fn restore_config(
    cfg: &SandboxConfig,
    dir: &std::path::Path,
    vsock: &std::path::Path,
    nets: usize,
) -> RestoreConfig {
    RestoreConfig {
        name: cfg.id.clone(),
        snapshot_dir: dir.to_path_buf(),
        console: cfg.console.clone(),
        vsock_uds: Some(vsock.to_path_buf()),
        mem_mib: None,
        vcpus: None,
        disks: cfg.disks.iter().map(|d| d.path.clone()).collect(),
        shares: cfg
            .shares
            .iter()
            .filter_map(|s| Some((s.tag.clone(), s.shared_dir.clone()?)))
            .collect(),
        nets: (0..nets)
            .map(|i| {
                if i == 0 {
                    cfg.tap.clone()
                } else {
                    TapSource::Disconnected
                }
            })
            .collect(),
        seccomp: cfg.seccomp,
    }
}

/// The template spec of a sandbox: its guest and device layout, and where
/// its shares are mounted (`mounts`: each tag one of `shares`, at most once).
pub fn template_spec(
    guest: &GuestSpec,
    disks: &[DiskConfig],
    shares: &[ShareConfig],
    mounts: &[ShareMount],
) -> Result<TemplateSpec, SandboxErrorKind> {
    for (i, m) in mounts.iter().enumerate() {
        if !shares.iter().any(|s| s.tag == m.tag) {
            return Err(SandboxErrorKind::InvalidConfig(format!(
                "share mount {:?} on {}: no share has that tag",
                m.tag, m.target
            )));
        }
        if mounts[..i].iter().any(|o| o.tag == m.tag) {
            return Err(SandboxErrorKind::InvalidConfig(format!(
                "share {:?} is mounted twice",
                m.tag
            )));
        }
        if !m.target.starts_with('/') {
            return Err(SandboxErrorKind::InvalidConfig(format!(
                "share mount {:?}: target {:?} is not an absolute path",
                m.tag, m.target
            )));
        }
    }
    let mut tdisks = Vec::with_capacity(disks.len());
    for d in disks {
        let size_bytes = std::fs::metadata(&d.path)
            .map_err(|source| SandboxErrorKind::Disk {
                path: d.path.clone(),
                source,
            })?
            .len();
        tdisks.push(TemplateDisk {
            id: d.id.clone(),
            read_only: d.read_only,
            size_bytes,
        });
    }
    Ok(TemplateSpec {
        kernel: guest.kernel.clone(),
        initrd: guest.initrd.clone(),
        cmdline_extra: guest.cmdline_extra.clone(),
        mem_mib: guest.mem_mib,
        vcpus: guest.vcpus,
        pvm_compat: match guest.pvm_compat {
            PvmCompat::On => true,
            PvmCompat::Off => false,
            PvmCompat::Auto => husk_vmm::host::detect() == husk_vmm::host::VirtKind::Pvm,
        },
        disks: tdisks,
        shares: shares
            .iter()
            .map(|s| TemplateShare {
                tag: s.tag.clone(),
                read_only: s.read_only,
                mount: mounts
                    .iter()
                    .find(|m| m.tag == s.tag)
                    .map(|m| m.target.clone()),
            })
            .collect(),
    })
}

fn from_store(
    cfg: &SandboxConfig,
    guest: &GuestSpec,
    store: &TemplateStore,
    builder: &VmTemplateBuilder,
    vsock: &std::path::Path,
) -> Result<Launched, SandboxErrorKind> {
    let spec = template_spec(guest, &cfg.disks, &cfg.shares, &cfg.share_mounts)?;
    // A template whose files fail the restore is removed and made again,
    // once.
    let mut remade = false;
    loop {
        let tpl = match store.get_or_create(&spec, builder) {
            Ok(t) => t,
            // The guest itself failed (a cold boot would fail the same way)
            // or its files are missing: that is the answer.
            Err(e @ (store::StoreError::Build { .. } | store::StoreError::Describe(_))) => {
                return Err(e.into())
            }
            Err(e) => {
                tracing::warn!(sandbox = %cfg.id, error = %e, "template store unusable; booting cold");
                return boot(cfg, guest, vsock);
            }
        };
        // Every store template has the one net device (`template_build`).
        match husk_vmm::restore(restore_config(cfg, &tpl.dir, vsock, 1)) {
            Ok(vm) => {
                // The key holds the mounts: the template made them.
                return Ok(Launched {
                    vm,
                    restored: true,
                    template_key: Some(tpl.key),
                    template_created: tpl.created,
                    mounted: cfg.share_mounts.iter().map(|m| m.tag.clone()).collect(),
                });
            }
            Err(e) if !remade && template_at_fault(&e.source) => {
                tracing::warn!(sandbox = %cfg.id, template = %tpl.key, error = %e, "template refused; making it again");
                store.invalidate(&tpl.key)?;
                remade = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether a restore failed because of the template's own files.
fn template_at_fault(e: &VmmError) -> bool {
    use husk_vmm::snapshot::SnapshotError as S;
    match e {
        VmmError::Snapshot(S::Mismatch { .. } | S::NotPaused | S::Share(_)) => false,
        VmmError::Snapshot(_) | VmmError::SnapshotMemory(_) | VmmError::CpuState(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;

    #[test]
    fn ids() {
        for ok in ["pod", "a.b-c_d", &"f".repeat(64)] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "a/b", "a b", &"f".repeat(65), "é"] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
