//! The real pod VM: a [`Sandbox`] started from the template store, with
//! one virtio-fs share (tag [`POD_SHARE_TAG`]) mounted in the guest at
//! [`GUEST_SHARE`] (by the sandbox: in the template already, so a restored
//! pod VM has it). The share is the read-only view of the pod VM's
//! host-private container tree ([`PodTree`], `host_fs`): a container's
//! rootfs is mounted there at `<cid>/rootfs` and appears in the guest at
//! `/run/husk/pod/<cid>/rootfs` with no device change; its bind volumes
//! likewise at `<cid>/mounts/<i>` (see [`spec`]).
//!
//! Each VM of a pod has a directory of its own under the pod's
//! (`<run_dir>/<pod key>/`, see [`pod_dir`]): an old VM's teardown never
//! touches a newer one's files.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use husk_shim_protos::mount::Mount;
use husk_vmm::{ConsoleConfig, PvmCompat, SeccompMode, ShareConfig, StatsReader};
use sha2::{Digest, Sha256};

use super::config::Config;
use super::error::TaskError;
use super::guest::{ContainerApi, PodFactory, PodRequest, PodVm};
use super::host_cgroup::{self, HostCgroup};
use super::host_fs::{HostFsError, PodTree};
use super::spec::Volume;
use crate::agent_client::{AgentClient, ProcessStreams, Stdio};
use crate::monitor::server::MonitorServer;
use crate::monitor::PodStats;
use crate::pod_net::PodNetwork;
use crate::sandbox::store::TemplateStore;
use crate::sandbox::template_build::VmTemplateBuilder;
use crate::sandbox::{build_id, GuestSpec, Sandbox, SandboxConfig, ShareMount, Source};

/// The tag of the pod's virtio-fs share.
pub const POD_SHARE_TAG: &str = "pod";
/// Where the guest mounts the pod's share.
pub const GUEST_SHARE: &str = "/run/husk/pod";
/// The agent API that serves containers.
const CONTAINER_API: u32 = 4;
/// The agent API that configures the pod's network.
const NETWORK_API: u32 = 5;
/// A pod's vsock socket, in its directory.
const VSOCK: &str = "v.sock";

/// The pod's host directory: `<run_dir>/<16 hex digits of
/// sha256(namespace/pod)>` (short, for the vsock socket path's 108 bytes).
pub fn pod_dir(run_dir: &Path, namespace: &str, pod: &str) -> PathBuf {
    let h = Sha256::digest(format!("{namespace}/{pod}").as_bytes());
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    run_dir.join(hex)
}

/// The sandbox id for a pod id: itself when it is a valid sandbox id,
/// else `pod-` and a hash.
pub fn sandbox_id(pod: &str) -> String {
    let ok = (1..=64).contains(&pod.len())
        && !pod.starts_with('.')
        && pod
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        return pod.to_owned();
    }
    let h = Sha256::digest(pod.as_bytes());
    format!(
        "pod-{}",
        h.iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// Starts the pods of one shim.
pub struct SandboxFactory {
    pub config: Config,
    pub namespace: String,
    pub pod: String,
}

impl PodFactory for SandboxFactory {
    fn start(&self, request: &PodRequest) -> Result<Arc<dyn PodVm>, TaskError> {
        let pod_err = |message: String| TaskError::Pod {
            pod: self.pod.clone(),
            message,
        };
        let config = self
            .config
            .with_annotations(&request.annotations)
            .map_err(|e| TaskError::invalid(&self.pod, e.to_string()))?;
        for (what, p) in [("kernel", &config.kernel), ("initramfs", &config.initramfs)] {
            if !p.is_file() {
                return Err(TaskError::FailedPrecondition {
                    task: self.pod.clone(),
                    message: format!(
                        "the guest {what} {} is missing (set `{what}` in the husk config, or run `husk install`)",
                        p.display()
                    ),
                });
            }
        }
        let dir = pod_dir(&config.run_dir, &self.namespace, &self.pod);
        let guest = GuestSpec {
            kernel: config.kernel.clone(),
            initrd: config.initramfs.clone(),
            cmdline_extra: String::new(),
            mem_mib: config.vm_memory_mib(request.memory_limit),
            vcpus: config.vcpus,
            pvm_compat: PvmCompat::Auto,
        };
        // Before the VM: its threads and memory are accounted to the pod.
        let host_cgroup = match (&request.cgroups_path, config.host_cgroups) {
            (Some(path), true) => {
                match HostCgroup::join(std::process::id(), path, &host_cgroup::host_hierarchies()) {
                    Ok(c) => {
                        tracing::info!(pod = %self.pod, cgroup = %path, "the shim joined the pod's host cgroup");
                        Some(c)
                    }
                    Err(e) => {
                        tracing::warn!(pod = %self.pod, cgroup = %path, error = %e, "not joining the pod's host cgroup");
                        None
                    }
                }
            }
            _ => None,
        };
        let seccomp =
            SeccompMode::from_env(SeccompMode::Enforce).map_err(|e| pod_err(e.to_string()))?;
        let source = if config.templates {
            match TemplateStore::open(&config.template_dir, build_id()) {
                Ok(store) => Source::Store {
                    guest,
                    store,
                    builder: VmTemplateBuilder {
                        boot_timeout: config.boot_timeout(),
                        seccomp,
                    },
                },
                Err(e) => {
                    tracing::warn!(pod = %self.pod, error = %crate::cli::error_chain(&e), "template store unusable; booting cold");
                    Source::Boot(guest)
                }
            }
        } else {
            Source::Boot(guest)
        };
        let id = sandbox_id(&self.pod);
        // The VM's own directory, its container tree and share; released
        // (unmounted, removed) when dropped.
        let tree =
            PodTree::create(&self.pod, &dir).map_err(|e| pod_err(crate::cli::error_chain(&e)))?;
        let mut cfg = SandboxConfig::new(&id, tree.run_dir(), source);
        cfg.vsock_socket = Some(tree.dir().join(VSOCK));
        cfg.shares = vec![ShareConfig {
            tag: POD_SHARE_TAG.into(),
            shared_dir: Some(tree.share_dir()),
            read_only: false,
        }];
        cfg.share_mounts = vec![ShareMount::new(POD_SHARE_TAG, GUEST_SHARE)];
        cfg.console = ConsoleConfig {
            file: config
                .console_dir
                .as_ref()
                .map(|d| d.join(format!("{id}.log"))),
            log: config.console_dir.is_none(),
        };
        cfg.seccomp = seccomp;
        cfg.agent_timeout = Some(config.agent_timeout());
        // A pod's calls (mounts, network, containers) wait as long as its
        // first answer may: on a loaded node they are slow, not lost.
        cfg.call_timeout = Some(config.agent_timeout());
        // The tap in the pod's netns, attached to the VM at restore.
        let network = match &request.netns {
            Some(ns) => {
                let net = PodNetwork::setup(&self.pod, ns)
                    .map_err(|e| pod_err(crate::cli::error_chain(&e)))?;
                cfg.tap = net.tap_source();
                Some(net)
            }
            None => None,
        };
        // On error the tree is dropped: its directory goes.
        let sandbox = Sandbox::start(cfg).map_err(|e| pod_err(crate::cli::error_chain(&e)))?;
        let stats = sandbox.vmm().stats_reader();
        let monitor = start_monitor(&tree, &self.pod, &self.namespace, &stats);
        // From here a failure drops the pod: VM stopped, directory removed.
        let mut pod = Pod {
            id: self.pod.clone(),
            tree,
            monitor,
            sandbox: Some(sandbox),
            network,
            host_cgroup: std::sync::Mutex::new(host_cgroup),
            stats,
            stats_logged: AtomicBool::new(false),
        };
        let agent = pod.sandbox().agent();
        let api = match agent.version() {
            Ok(v) if v.api_version >= CONTAINER_API => v.api_version,
            Ok(v) => {
                return Err(pod_err(format!(
                    "the guest agent {} speaks API {}; containers need API {CONTAINER_API}",
                    v.agent_version, v.api_version
                )))
            }
            Err(e) => return Err(pod_err(format!("asking the agent its version: {e}"))),
        };
        // Whether the pod has IPv6 addresses, and the guest took them.
        let mut ipv6 = None;
        if let Some(net) = &pod.network {
            let t0 = std::time::Instant::now();
            let done = if api < NETWORK_API {
                Err(format!(
                    "the guest agent speaks API {api}; pod networking needs API {NETWORK_API}"
                ))
            } else {
                agent
                    .configure_network(net.guest())
                    .map_err(|e| e.to_string())
            }
            .map_err(|e| pod_err(format!("configuring the guest's network: {e}")))?;
            tracing::info!(pod = %self.pod, guest_interface = %done.guest_interface, skipped = ?done.skipped,
                ipv6 = done.ipv6, ms = t0.elapsed().as_millis() as u64, "pod network configured in the guest");
            ipv6 = net.guest().has_ipv6().then_some(done.ipv6);
        }
        // IPv6 frames go in only now that the guest has the pod's IPv6
        // addresses; a guest without them stays IPv4-only.
        match (ipv6, pod.network.as_mut()) {
            (Some(true), Some(net)) => net
                .redirect_ipv6()
                .map_err(|e| pod_err(crate::cli::error_chain(&e)))?,
            (Some(false), Some(net)) => {
                tracing::warn!(pod = %self.pod, veth = %net.guest().host_name,
                "the pod has IPv6 addresses the guest did not take: it answers on IPv4 only")
            }
            _ => {}
        }
        let info = pod.sandbox().start_info();
        tracing::info!(pod = %self.pod, restored = info.restored, template_created = info.template_created,
            agent_ready_s = info.agent_ready.as_secs_f64(), "pod VM ready");
        Ok(Arc::new(pod))
    }
}

/// Serves the pod VM's counters on `monitor.sock` in its directory; a
/// pod without it (logged) runs all the same.
fn start_monitor(
    tree: &PodTree,
    pod: &str,
    namespace: &str,
    stats: &StatsReader,
) -> Option<MonitorServer> {
    let (reader, pod_id, ns) = (stats.clone(), pod.to_owned(), namespace.to_owned());
    let source = move || PodStats {
        pod: pod_id.clone(),
        namespace: ns.clone(),
        shim_pid: std::process::id(),
        vm: reader.stats(),
    };
    match MonitorServer::start_at(tree.dir_fd(), tree.dir(), Box::new(source)) {
        Ok(m) => {
            tracing::debug!(pod, socket = %m.path().display(), "monitor serving");
            Some(m)
        }
        Err(e) => {
            tracing::warn!(pod, error = %crate::cli::error_chain(&e), "no monitor socket for the pod");
            None
        }
    }
}

/// One pod's VM.
pub struct Pod {
    id: String,
    /// The VM's directory and container tree (released after the VM).
    tree: PodTree,
    /// The monitor endpoint (stopped before the VM goes).
    monitor: Option<MonitorServer>,
    /// Present until drop.
    sandbox: Option<Sandbox>,
    /// The pod's tap and tc redirect, removed after the VM (drop order).
    network: Option<PodNetwork>,
    /// Left once the VM has ended.
    host_cgroup: std::sync::Mutex<Option<HostCgroup>>,
    /// The VM's counters (final once it stopped), logged once then.
    stats: StatsReader,
    stats_logged: AtomicBool,
}

impl Pod {
    fn sandbox(&self) -> &Sandbox {
        self.sandbox
            .as_ref()
            .unwrap_or_else(|| unreachable!("sandbox taken before drop"))
    }
}

impl PodVm for Pod {
    fn id(&self) -> &str {
        &self.id
    }

    fn api(&self) -> &dyn ContainerApi {
        self.sandbox().agent()
    }

    fn connect(&self) -> Result<Box<dyn ContainerApi>, TaskError> {
        let c = AgentClient::connect(self.sandbox().vsock_socket(), Duration::from_secs(10))
            .map_err(|e| TaskError::Pod {
                pod: self.id.clone(),
                message: format!("connecting to the agent: {e}"),
            })?;
        Ok(Box::new(c))
    }

    fn attach_rootfs(
        &self,
        cid: &str,
        bundle: &Path,
        mounts: &[Mount],
    ) -> Result<String, TaskError> {
        self.tree
            .attach_rootfs(cid, mounts, &bundle.join("rootfs"))
            .map_err(|e| host_fs_error(cid, "mounting its rootfs", e))?;
        Ok(format!("{GUEST_SHARE}/{cid}/rootfs"))
    }

    fn attach_volumes(&self, cid: &str, volumes: &[Volume]) -> Result<(), TaskError> {
        self.tree
            .attach_volumes(cid, volumes)
            .map_err(|e| host_fs_error(cid, "mounting its volumes", e))
    }

    fn detach_rootfs(&self, cid: &str) {
        if let Err(e) = self.tree.detach(cid) {
            tracing::warn!(pod = %self.id, container = cid, error = %crate::cli::error_chain(&e),
                "detaching its rootfs and volumes; kept until the VM ends");
        }
    }

    fn open_streams(
        &self,
        cid: &str,
        exec_id: Option<&str>,
        stdio: &Stdio,
    ) -> Result<ProcessStreams, TaskError> {
        ProcessStreams::open(self.sandbox().vsock_socket(), cid, exec_id, stdio).map_err(|e| {
            TaskError::Pod {
                pod: self.id.clone(),
                message: format!("container {cid}: opening its stdio: {e}"),
            }
        })
    }

    fn wait_exit(&self, timeout: Duration) -> Option<String> {
        self.sandbox()
            .vmm()
            .wait(Some(timeout))
            .map(|o| format!("{o:?}"))
    }

    fn power_off(&self, deadline: Duration) {
        if self.sandbox().power_off(deadline).is_none() {
            tracing::warn!(pod = %self.id, "the pod VM did not stop");
        }
        self.log_counters();
        // The VM is gone: its host files can go now, whoever drops it.
        self.release_host_files();
    }
}

/// A host file error as the task's: a bad volume source is the caller's
/// (INVALID_ARGUMENT), the rest internal.
fn host_fs_error(cid: &str, what: &str, e: HostFsError) -> TaskError {
    match e {
        HostFsError::Source { .. } => TaskError::invalid(cid, e.to_string()),
        _ => TaskError::internal(cid, format!("{what}: {}", crate::cli::error_chain(&e))),
    }
}

impl Pod {
    /// Logs the VM's final counters, once (one line; `husk pods` and the
    /// monitor socket show them while it runs).
    fn log_counters(&self) {
        if self.stats_logged.swap(true, Ordering::AcqRel) {
            return;
        }
        let s = self.stats.stats();
        let json = serde_json::to_string(&s).unwrap_or_default();
        tracing::info!(
            pod = %self.id,
            stopped = !s.running,
            uptime_s = s.uptime_ns as f64 / 1e9,
            vcpu_cpu_s = s.vcpu_cpu_ns().map(|n| n as f64 / 1e9),
            kvm_exits = s.kvm_vcpu_sum("exits"),
            loop_exits = s.loop_exits(),
            mmio_exits = s.kvm_vcpu_sum("mmio_exits"),
            halt_wakeups = s.kvm_vcpu_sum("halt_wakeup"),
            irq_injections = s.kvm_vcpu_sum("irq_injections"),
            insn_emulation = s.kvm_vcpu_sum("insn_emulation"),
            interrupts_raised = s.interrupts_raised(),
            counters = %json,
            "pod VM counters"
        );
    }

    /// Unmounts what the pod's tree mounted and removes the VM's
    /// directory; call once the VM has ended.
    fn release_host_files(&self) {
        self.tree.release();
        let cgroup = match self.host_cgroup.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        };
        drop(cgroup);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The monitor, then the VM (stopped, its threads joined), then its
        // network, then the host files.
        drop(self.monitor.take());
        drop(self.sandbox.take());
        self.log_counters();
        drop(self.network.take());
        self.release_host_files();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_dirs() {
        assert_eq!(sandbox_id("abc"), "abc");
        let long = "a".repeat(76);
        assert!(sandbox_id(&long).starts_with("pod-"));
        assert_eq!(sandbox_id(&long).len(), 28);
        assert!(sandbox_id("a/b").starts_with("pod-"));
        let d = pod_dir(Path::new("/run/husk/pods"), "k8s.io", &"f".repeat(64));
        assert_eq!(d.to_string_lossy().len(), "/run/husk/pods/".len() + 16);
        assert_ne!(
            d,
            pod_dir(Path::new("/run/husk/pods"), "default", &"f".repeat(64))
        );
    }
}
