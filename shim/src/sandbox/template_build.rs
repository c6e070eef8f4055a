//! Making a template: boot the guest once to agent-ready, mount the shares
//! the spec mounts (each on an empty stand-in directory), warm the agent,
//! pause, snapshot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_vmm::{
    ConsoleConfig, DiskConfig, PvmCompat, SeccompMode, ShareConfig, VmConfig, VmmRequest,
    VmmResponse, VsockConfig,
};

use super::store::TemplateBuilder;
use super::template_key::TemplateSpec;
use super::ShareMount;
use crate::agent_client::{AgentClient, AgentClientError};

/// The console of the template's boot, kept in the template for debugging.
pub const CONSOLE_FILE: &str = "console.log";

/// Longer than the virtio-fs device's attribute timeout (1 s).
const SHARE_ATTR_TIMEOUT: Duration = Duration::from_millis(1200);

/// Why a template could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TemplateBuildError {
    #[error("{0}")]
    Start(#[from] husk_vmm::StartError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the template VM's agent never answered (console: {}): {source}", console.display())]
    Agent {
        console: PathBuf,
        #[source]
        source: Box<AgentClientError>,
    },
    #[error("{0}")]
    Api(#[from] husk_vmm::ApiError),
    #[error("the template VM stopped before its snapshot: {0}")]
    Stopped(String),
}

/// Boots a template VM per [`TemplateSpec`] and snapshots it.
#[derive(Debug, Clone)]
pub struct VmTemplateBuilder {
    /// How long the cold boot to agent-ready may take.
    pub boot_timeout: Duration,
    pub seccomp: SeccompMode,
}

impl VmTemplateBuilder {
    /// Makes the template's files in `dir`; returns the bytes of guest
    /// memory written.
    pub fn make(&self, spec: &TemplateSpec, dir: &Path) -> Result<u64, TemplateBuildError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| TemplateBuildError::Io { what, path, source }
        };
        // Each disk gets a sparse stand-in of its size: the template's guest
        // sees the layout; every VM restored from it brings its own images.
        let mut disks = Vec::with_capacity(spec.disks.len());
        for (i, d) in spec.disks.iter().enumerate() {
            let path = dir.join(format!("disk{i}.img"));
            std::fs::File::create(&path)
                .and_then(|f| f.set_len(d.size_bytes))
                .map_err(io("disk stand-in", &path))?;
            disks.push(DiskConfig {
                path,
                read_only: d.read_only,
                id: d.id.clone(),
            });
        }
        // The boot's vsock socket lives in a short private directory of its
        // own: a Unix socket path is at most 108 bytes, a store path may be
        // long.
        let sock_dir =
            SocketDir::create().map_err(io("socket directory", &std::env::temp_dir()))?;
        let uds = sock_dir.0.join("v.sock");
        let console = dir.join(CONSOLE_FILE);
        // A share the template mounts is served from an empty stand-in
        // until a restore gives it the VM's directory; the guest asks it
        // nothing but the mount (the snapshot refuses a share used beyond
        // that).
        let mut stand_ins = Vec::new();
        let mut shares = Vec::with_capacity(spec.shares.len());
        for (i, s) in spec.shares.iter().enumerate() {
            let shared_dir = match &s.mount {
                Some(_) => {
                    let path = dir.join(format!("share{i}"));
                    std::fs::create_dir_all(&path).map_err(io("share stand-in", &path))?;
                    stand_ins.push(path.clone());
                    Some(path)
                }
                None => None,
            };
            shares.push(ShareConfig {
                tag: s.tag.clone(),
                shared_dir,
                read_only: s.read_only,
            });
        }
        let cfg = VmConfig {
            name: "template".into(),
            kernel: spec.kernel.clone(),
            initrd: Some(spec.initrd.clone()),
            cmdline_extra: spec.cmdline_extra.clone(),
            mem_mib: spec.mem_mib,
            vcpus: spec.vcpus,
            console: ConsoleConfig {
                file: Some(console.clone()),
                log: false,
            },
            pvm_compat: if spec.pvm_compat {
                PvmCompat::On
            } else {
                PvmCompat::Off
            },
            vsock: Some(VsockConfig {
                guest_cid: husk_vmm::DEFAULT_GUEST_CID,
                uds_path: uds.clone(),
            }),
            disks,
            shares,
            // The pod's net device, with no backend: each VM restored from
            // the template attaches its own tap (or none).
            nets: vec![super::pod_net_config(husk_vmm::TapSource::Disconnected)],
            seccomp: self.seccomp,
            ..VmConfig::default()
        };
        let handle = husk_vmm::start(cfg)?;
        let agent_err = |source| TemplateBuildError::Agent {
            console: console.clone(),
            source: Box::new(source),
        };
        {
            // Agent-ready means its API answers. The connection is closed
            // before the snapshot (connections never survive a restore).
            let client = AgentClient::connect(&uds, self.boot_timeout).map_err(agent_err)?;
            client.version().map_err(agent_err)?;
            let mounted = std::time::Instant::now();
            for s in &spec.shares {
                if let Some(target) = &s.mount {
                    let m = ShareMount::new(s.tag.clone(), target.clone());
                    client.mount(&m.spec(s.read_only)).map_err(agent_err)?;
                }
            }
            // Every request path once, so VMs restored from the template
            // find the agent's threads, stacks and buffers resident.
            client.warm_up().map_err(agent_err)?;
            // The guest caches the stand-in root's attributes for the
            // share's attribute timeout: let that pass before the snapshot,
            // so a restored VM asks its own directory's.
            if !stand_ins.is_empty() {
                std::thread::sleep(SHARE_ATTR_TIMEOUT.saturating_sub(mounted.elapsed()));
            }
        }
        if let Some(o) = handle.outcome() {
            return Err(TemplateBuildError::Stopped(o.reason.to_string()));
        }
        handle.request(VmmRequest::Pause)?;
        let written = match handle.request(VmmRequest::Snapshot {
            dir: dir.to_path_buf(),
        })? {
            VmmResponse::Snapshot { memory_bytes } => memory_bytes,
            _ => 0,
        };
        handle.stop()?;
        drop(handle);
        for i in 0..spec.disks.len() {
            let _ = std::fs::remove_file(dir.join(format!("disk{i}.img")));
        }
        for d in &stand_ins {
            let _ = std::fs::remove_dir(d);
        }
        Ok(written)
    }
}

impl TemplateBuilder for VmTemplateBuilder {
    fn build(
        &self,
        spec: &TemplateSpec,
        dir: &Path,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.make(spec, dir)?;
        Ok(())
    }
}

/// A private temporary directory, removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("husk-tb-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
