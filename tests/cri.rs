//! Kubernetes CRI (v1) for end-to-end tests: a blocking client of a
//! containerd's CRI plugin ([`Cri`]), and a fixture ([`CriFixture`]) that
//! starts a private containerd with CRI, a CNI network of its own and a
//! local pause image, and leaves nothing behind.
//!
//! ```no_run
//! use husk_tests::cri::{container_config, CriFixture};
//! # fn t() {
//! if !CriFixture::available("my_test") {
//!     return; // prints "SKIP my_test: ..." (not root, no containerd, no CNI plugins)
//! }
//! // containerd with CRI (runtime handler `runc`), a bridge + host-local
//! // network on a random 10.88.X.0/24, the pause and busybox images
//! // imported into k8s.io.
//! let f = CriFixture::start("runc", None, Default::default()).expect("CRI fixture");
//! let pod = f.run_pod("web").expect("RunPodSandbox");
//! let cri = f.cri();
//! let c = cri
//!     .create_container(&pod.id, &container_config("c1", &f.busybox, &["sleep", "600"], "c1.log"), &pod.config)
//!     .expect("CreateContainer");
//! cri.start_container(&c).expect("StartContainer");
//! let out = cri.exec_sync(&c, &["echo", "hi"], std::time::Duration::from_secs(10)).expect("ExecSync");
//! assert_eq!(out.stdout, b"hi\n");
//! cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
//! cri.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
//! f.assert_no_leaks(std::time::Duration::from_secs(10)); // containerd's census + netns, veths, IPAM, cgroups
//! # }
//! ```
//!
//! - Every call is bounded ([`DEFAULT_CALL_TIMEOUT`], or
//!   [`Cri::with_timeout`]): a hung CRI call fails the test with a
//!   `DeadlineExceeded` [`CriError`] instead of hanging CI.
//! - The gRPC client is tonic over containerd's Unix socket, on a
//!   current-thread tokio runtime owned by the [`Cri`] (it runs only inside
//!   a call).
//! - CRI tests in one process run one at a time (a fixture holds a
//!   process-wide lock): they share containerd's fixed `k8s.io` namespace.
//! - Streaming `Exec` (the URL of containerd's streaming server) is run by
//!   [`stream_exec`], a WebSocket client of kubelet's remotecommand
//!   protocol ([`stream`]).
//! - No pulls: images are built locally ([`crate::oci`]) and imported with
//!   `ctr -n k8s.io images import`.

use crate::containerd::{self, cri_config, Containerd, Options, CRI_NAMESPACE};
use k8s_cri::v1 as api;
use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use k8s_cri::v1;
pub use stream::{stream_exec, StreamInput};

pub mod stream;

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

/// How long one CRI call may take unless told otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The pause image the fixture builds (busybox `sleep infinity`) and sets
/// as CRI's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "localhost/husk/pause:latest";

/// Where the CNI plugins of Debian's containernetworking-plugins live.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// What the bridge plugin's gateway mode turns on (a fixture restores it).
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

/// Where CRI (containerd 1.6) creates the pods' network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// libcni's cache of ADD results (`<network>-<sandbox id>-<ifname>`).
const CNI_RESULTS_DIR: &str = "/var/lib/cni/results";

/// A failed CRI call: which call, the gRPC status code (none when the
/// call never got an answer: a transport error), and the message.
#[derive(Debug, Clone)]
pub struct CriError {
    pub call: &'static str,
    pub code: Option<tonic::Code>,
    pub message: String,
}

impl CriError {
    /// The runtime does not implement this call (e.g. a CRI method newer
    /// than the containerd).
    pub fn is_unimplemented(&self) -> bool {
        self.code == Some(tonic::Code::Unimplemented)
    }

    /// The call ran past its bound.
    pub fn is_timeout(&self) -> bool {
        self.code == Some(tonic::Code::DeadlineExceeded)
    }
}

impl fmt::Display for CriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(c) => write!(f, "CRI {}: {c:?}: {}", self.call, self.message),
            None => write!(f, "CRI {}: {}", self.call, self.message),
        }
    }
}

impl std::error::Error for CriError {}

impl From<CriError> for io::Error {
    fn from(e: CriError) -> io::Error {
        io::Error::other(e.to_string())
    }
}

/// What [`Cri::exec_sync`] and [`stream_exec`] return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// A blocking CRI v1 client (RuntimeService and ImageService) of one
/// containerd socket. See the module docs.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    timeout: Duration,
}

type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

impl Cri {
    /// Connects to the gRPC socket `sock` and checks that CRI v1 answers
    /// (`Version`); 10 s at most.
    pub fn connect(sock: &Path) -> Result<Cri, CriError> {
        let fail = |message: String| CriError {
            call: "connect",
            code: None,
            message,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("tokio runtime: {e}")))?;
        let path = sock.to_path_buf();
        let channel = rt
            .block_on(async {
                // The URI is a placeholder: the connector dials the socket.
                let endpoint = tonic::transport::Endpoint::from_static("http://localhost")
                    .connect_timeout(Duration::from_secs(10));
                tokio::time::timeout(
                    Duration::from_secs(10),
                    endpoint.connect_with_connector(tower::service_fn(
                        move |_: tonic::transport::Uri| {
                            let path = path.clone();
                            async move {
                                let s = tokio::net::UnixStream::connect(path).await?;
                                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(s))
                            }
                        },
                    )),
                )
                .await
            })
            .map_err(|_| fail(format!("{}: no connection in 10 s", sock.display())))?
            .map_err(|e| fail(format!("{}: {e}", sock.display())))?;
        let cri = Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            timeout: DEFAULT_CALL_TIMEOUT,
        };
        cri.call_timeout("Version", Duration::from_secs(10), |mut c| async move {
            c.version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        })?;
        Ok(cri)
    }

    /// Bounds every later call by `timeout` (ExecSync: its own timeout
    /// plus this).
    pub fn with_timeout(mut self, timeout: Duration) -> Cri {
        self.timeout = timeout;
        self
    }

    /// Runs one RuntimeService call within `timeout`.
    fn call_timeout<T, F, Fut>(
        &self,
        call: &'static str,
        timeout: Duration,
        f: F,
    ) -> Result<T, CriError>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Answer<T>>,
    {
        let fut = f(self.runtime.clone());
        finish(call, timeout, self.bounded(timeout, fut))
    }

    /// Runs `fut` on the client's runtime, giving up after `timeout` (the
    /// timer is made inside the runtime, which owns the clock).
    fn bounded<T>(
        &self,
        timeout: Duration,
        fut: impl Future<Output = T>,
    ) -> Result<T, tokio::time::error::Elapsed> {
        self.rt
            .block_on(async move { tokio::time::timeout(timeout, fut).await })
    }

    fn call<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, CriError>
    where
        F: FnOnce(RuntimeServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Answer<T>>,
    {
        self.call_timeout(call, self.timeout, f)
    }

    /// `Version`: the runtime's name and version, and its CRI version.
    pub fn version(&self) -> Result<api::VersionResponse, CriError> {
        self.call("Version", |mut c| async move {
            c.version(api::VersionRequest {
                version: "v1".into(),
            })
            .await
        })
    }

    /// `Status`: the runtime's conditions (RuntimeReady, NetworkReady).
    pub fn status(&self) -> Result<api::RuntimeStatus, CriError> {
        self.call("Status", |mut c| async move {
            c.status(api::StatusRequest { verbose: false }).await
        })
        .map(|r| r.status.unwrap_or_default())
    }

    /// True when `Status` reports the condition `NetworkReady` (CRI found
    /// a CNI config).
    pub fn network_ready(&self) -> Result<bool, CriError> {
        Ok(self
            .status()?
            .conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status))
    }

    /// `ImageStatus`: the image CRI knows by `image` (name or id), if any.
    pub fn image_status(&self, image: &str) -> Result<Option<api::Image>, CriError> {
        let fut = {
            let mut c = self.images.clone();
            let image = image.to_string();
            async move {
                c.image_status(api::ImageStatusRequest {
                    image: Some(api::ImageSpec {
                        image,
                        ..Default::default()
                    }),
                    verbose: false,
                })
                .await
            }
        };
        let t = self.timeout;
        finish("ImageStatus", t, self.bounded(t, fut)).map(|r| r.image)
    }

    /// `RunPodSandbox` with runtime handler `handler` (`""`: the default
    /// runtime); returns the pod sandbox id.
    pub fn run_pod_sandbox(
        &self,
        config: &api::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, CriError> {
        self.run_pod_sandbox_within(config, handler, self.timeout)
    }

    /// [`Self::run_pod_sandbox`] bounded by `timeout` (a husk pod's first
    /// start with a new guest image makes its template: minutes here).
    pub fn run_pod_sandbox_within(
        &self,
        config: &api::PodSandboxConfig,
        handler: &str,
        timeout: Duration,
    ) -> Result<String, CriError> {
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        self.call_timeout("RunPodSandbox", timeout, |mut c| async move {
            c.run_pod_sandbox(req).await
        })
        .map(|r| r.pod_sandbox_id)
    }

    /// `StopPodSandbox`: stops its containers (SIGKILL), tears down its
    /// network (CNI DEL).
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let pod_sandbox_id = id.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(api::StopPodSandboxRequest { pod_sandbox_id })
                .await
        })
        .map(drop)
    }

    /// `RemovePodSandbox`: removes it and its containers.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), CriError> {
        let pod_sandbox_id = id.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(api::RemovePodSandboxRequest { pod_sandbox_id })
                .await
        })
        .map(drop)
    }

    /// `PodSandboxStatus`, verbose: the status, and the runtime's `info`
    /// (containerd: key `info`, a JSON object with the runtime spec, the
    /// CNI result, the pid).
    pub fn pod_sandbox_status_verbose(
        &self,
        id: &str,
    ) -> Result<api::PodSandboxStatusResponse, CriError> {
        let pod_sandbox_id = id.to_string();
        self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id,
                verbose: true,
            })
            .await
        })
    }

    /// `PodSandboxStatus`.
    pub fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus, CriError> {
        let pod_sandbox_id = id.to_string();
        self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(api::PodSandboxStatusRequest {
                pod_sandbox_id,
                verbose: false,
            })
            .await
        })
        .map(|r| r.status.unwrap_or_default())
    }

    /// The pod's IP (`PodSandboxStatus.network.ip`), if it has one.
    pub fn pod_ip(&self, id: &str) -> Result<Option<String>, CriError> {
        Ok(self
            .pod_sandbox_status(id)?
            .network
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty()))
    }

    /// `ListPodSandbox` (all states).
    pub fn list_pod_sandbox(&self) -> Result<Vec<api::PodSandbox>, CriError> {
        self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(api::ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.items)
    }

    /// `CreateContainer` in pod `pod_id` (whose config was
    /// `sandbox_config`); returns the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        sandbox_config: &api::PodSandboxConfig,
    ) -> Result<String, CriError> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        };
        self.call("CreateContainer", |mut c| async move {
            c.create_container(req).await
        })
        .map(|r| r.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<(), CriError> {
        let container_id = id.to_string();
        self.call("StartContainer", |mut c| async move {
            c.start_container(api::StartContainerRequest { container_id })
                .await
        })
        .map(drop)
    }

    /// `StopContainer`: SIGTERM, SIGKILL after `timeout_s` seconds.
    pub fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), CriError> {
        let container_id = id.to_string();
        let bound = self.timeout + Duration::from_secs(timeout_s.max(0) as u64);
        self.call_timeout("StopContainer", bound, |mut c| async move {
            c.stop_container(api::StopContainerRequest {
                container_id,
                timeout: timeout_s,
            })
            .await
        })
        .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let container_id = id.to_string();
        self.call("RemoveContainer", |mut c| async move {
            c.remove_container(api::RemoveContainerRequest { container_id })
                .await
        })
        .map(drop)
    }

    /// `ContainerStatus`.
    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus, CriError> {
        let container_id = id.to_string();
        self.call("ContainerStatus", |mut c| async move {
            c.container_status(api::ContainerStatusRequest {
                container_id,
                verbose: false,
            })
            .await
        })
        .map(|r| r.status.unwrap_or_default())
    }

    /// `ContainerStatus`, verbose: the status, and the runtime's `info`
    /// (containerd: key `info`, a JSON object with the runtime spec it
    /// made, `runtimeSpec`).
    pub fn container_status_verbose(
        &self,
        id: &str,
    ) -> Result<api::ContainerStatusResponse, CriError> {
        let container_id = id.to_string();
        self.call("ContainerStatus", |mut c| async move {
            c.container_status(api::ContainerStatusRequest {
                container_id,
                verbose: true,
            })
            .await
        })
    }

    /// `UpdateContainerResources`: new Linux resources for container `id`
    /// (kubelet's in-place resize sends the whole set).
    pub fn update_container_resources(
        &self,
        id: &str,
        linux: &api::LinuxContainerResources,
    ) -> Result<(), CriError> {
        let req = api::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(linux.clone()),
            ..Default::default()
        };
        self.call("UpdateContainerResources", |mut c| async move {
            c.update_container_resources(req).await
        })
        .map(drop)
    }

    /// `ListContainers` (all states, all pods).
    pub fn list_containers(&self) -> Result<Vec<api::Container>, CriError> {
        self.call("ListContainers", |mut c| async move {
            c.list_containers(api::ListContainersRequest { filter: None })
                .await
        })
        .map(|r| r.containers)
    }

    /// `ExecSync`: runs `cmd` in container `id`, the runtime killing it
    /// after `timeout` (whole seconds, at least 1); the call itself is
    /// bounded by `timeout` plus the client's timeout.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, CriError> {
        let req = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        self.call_timeout("ExecSync", timeout + self.timeout, |mut c| async move {
            c.exec_sync(req).await
        })
        .map(|r| ExecOutput {
            stdout: r.stdout,
            stderr: r.stderr,
            exit_code: r.exit_code,
        })
    }

    /// `Exec`: the URL of the runtime's streaming server that runs `req`
    /// once connected to ([`stream_exec`]; containerd's token is single-use
    /// and expires after a minute).
    pub fn exec(&self, req: api::ExecRequest) -> Result<String, CriError> {
        self.call("Exec", |mut c| async move { c.exec(req).await })
            .map(|r| r.url)
    }

    /// [`Self::exec`] of `req`, then [`stream_exec`] of its URL with
    /// `input`, bounded by `timeout`.
    pub fn exec_stream(
        &self,
        req: api::ExecRequest,
        input: &StreamInput,
        timeout: Duration,
    ) -> io::Result<ExecOutput> {
        let url = self.exec(req)?;
        stream_exec(&url, input, timeout)
    }

    /// `ContainerStats`.
    pub fn container_stats(&self, id: &str) -> Result<api::ContainerStats, CriError> {
        let container_id = id.to_string();
        self.call("ContainerStats", |mut c| async move {
            c.container_stats(api::ContainerStatsRequest { container_id })
                .await
        })
        .map(|r| r.stats.unwrap_or_default())
    }

    /// `ListContainerStats` (all containers).
    pub fn list_container_stats(&self) -> Result<Vec<api::ContainerStats>, CriError> {
        self.call("ListContainerStats", |mut c| async move {
            c.list_container_stats(api::ListContainerStatsRequest { filter: None })
                .await
        })
        .map(|r| r.stats)
    }

    /// `PodSandboxStats`.
    pub fn pod_sandbox_stats(&self, id: &str) -> Result<api::PodSandboxStats, CriError> {
        let pod_sandbox_id = id.to_string();
        self.call("PodSandboxStats", |mut c| async move {
            c.pod_sandbox_stats(api::PodSandboxStatsRequest { pod_sandbox_id })
                .await
        })
        .map(|r| r.stats.unwrap_or_default())
    }

    /// `ListPodSandboxStats` (all pods). A runtime without it answers
    /// [`CriError::is_unimplemented`].
    pub fn list_pod_sandbox_stats(&self) -> Result<Vec<api::PodSandboxStats>, CriError> {
        self.call("ListPodSandboxStats", |mut c| async move {
            c.list_pod_sandbox_stats(api::ListPodSandboxStatsRequest { filter: None })
                .await
        })
        .map(|r| r.stats)
    }
}

/// The answer of a bounded call, or the [`CriError`] saying why not.
fn finish<T>(
    call: &'static str,
    timeout: Duration,
    r: Result<Answer<T>, tokio::time::error::Elapsed>,
) -> Result<T, CriError> {
    match r {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => Err(CriError {
            call,
            code: Some(status.code()),
            message: status.message().to_string(),
        }),
        Err(_) => Err(CriError {
            call,
            code: Some(tonic::Code::DeadlineExceeded),
            message: format!("no answer in {timeout:?} (the client gave up)"),
        }),
    }
}

/// A pod config: metadata `name` (uid `<name>-uid`, namespace `default`),
/// hostname `name`, CRI logs under `log_dir`, cgroups under
/// `cgroup_parent` (cgroupfs path, e.g. `/husk-cri-1-0`; empty: the
/// runtime's default).
pub fn pod_config(name: &str, log_dir: &Path, cgroup_parent: &str) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("{name}-uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.to_string_lossy().into_owned(),
        linux: Some(api::LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config: metadata `name`, image `image`, `command` (the
/// image's entrypoint replaced), its CRI log at `log_path` (relative to
/// the pod's log directory).
pub fn container_config(
    name: &str,
    image: &str,
    command: &[&str],
    log_path: &str,
) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: log_path.to_string(),
        ..Default::default()
    }
}

/// One line of a CRI container log file:
/// `<RFC 3339 time> <stdout|stderr> <F|P> <text>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub time: String,
    pub stream: String,
    /// `F`: a full line; `P`: part of a longer one.
    pub tag: String,
    pub text: String,
}

/// Parses a CRI log file's text; `None` for a line not in the format.
pub fn parse_cri_log(text: &str) -> Vec<Option<LogLine>> {
    text.lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let (time, stream, tag) = (f.next()?, f.next()?, f.next()?);
            let text = f.next().unwrap_or("");
            let time_ok = time.len() >= 20
                && time.as_bytes().get(4) == Some(&b'-')
                && time.as_bytes().get(10) == Some(&b'T')
                && (time.ends_with('Z') || time.contains('+'));
            (time_ok && matches!(stream, "stdout" | "stderr") && matches!(tag, "F" | "P")).then(
                || LogLine {
                    time: time.into(),
                    stream: stream.into(),
                    tag: tag.into(),
                    text: text.into(),
                },
            )
        })
        .collect()
}

/// The IP families of a fixture's network ([`CniNetwork`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IpFamilies {
    /// IPv4 only (the default).
    #[default]
    V4,
    /// IPv4 and IPv6: a second range, an IPv6 ULA /64.
    DualStack,
}

/// A CNI network of one fixture: a bridge (with the gateway address, so
/// the host reaches the pods) + host-local IPAM on a /24 of 10.88.0.0/16
/// not routed on this host, and for [`IpFamilies::DualStack`] a second
/// range, a /64 of fd88::/16 (the bridge has its gateway too, and each pod
/// a default route through it); no IP masquerade, no portmap (no iptables
/// rules to leave behind).
#[derive(Debug, Clone)]
pub struct CniNetwork {
    /// The network's name (`husk-cri-<pid>-<n>`).
    pub name: String,
    /// The bridge's name (`hkbr<6 hex>`).
    pub bridge: String,
    /// `10.88.X.0/24`.
    pub subnet: String,
    /// `10.88.X.1`, the bridge's address.
    pub gateway: String,
    /// `fd88:A:B:C::/64` on a dual-stack network.
    pub subnet6: Option<String>,
    /// `fd88:A:B:C::1`, the bridge's IPv6 address, on a dual-stack network.
    pub gateway6: Option<String>,
    /// The conf dir CRI reads (holds `10-<name>.conflist`).
    pub conf_dir: PathBuf,
    /// host-local's `dataDir` (its allocations).
    pub ipam_dir: PathBuf,
}

impl CniNetwork {
    /// Picks a free subnet and bridge name and writes the conflist under
    /// `dir` (`dir/conf`, `dir/ipam`).
    pub fn create(dir: &Path, name: &str) -> io::Result<CniNetwork> {
        Self::create_with(dir, name, IpFamilies::V4)
    }

    /// [`Self::create`] with the IP families `families`.
    pub fn create_with(dir: &Path, name: &str, families: IpFamilies) -> io::Result<CniNetwork> {
        let routed = routed_ipv4_networks();
        let mut seed = random_seed();
        let mut pick = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let x = (0..100)
            .map(|_| 2 + (pick() % 250) as u8)
            .find(|&x| !routed.contains(&[10, 88, x, 0]))
            .ok_or_else(|| io::Error::other("no free 10.88.X.0/24 subnet"))?;
        let bridge = (0..100)
            .map(|_| format!("hkbr{:06x}", pick() & 0xff_ffff))
            .find(|b| !Path::new("/sys/class/net").join(b).exists())
            .ok_or_else(|| io::Error::other("no free bridge name"))?;
        let prefix6 = match families {
            IpFamilies::V4 => None,
            IpFamilies::DualStack => {
                let routed6 = routed_ipv6_prefixes();
                let p = (0..100)
                    .map(|_| {
                        let r = pick();
                        [0xfd88, r as u16, (r >> 16) as u16, (r >> 32) as u16]
                    })
                    .find(|p| !routed6.contains(p))
                    .ok_or_else(|| io::Error::other("no free fd88::/16 /64"))?;
                Some(format!("{:x}:{:x}:{:x}:{:x}", p[0], p[1], p[2], p[3]))
            }
        };
        let net = CniNetwork {
            name: name.to_string(),
            bridge,
            subnet: format!("10.88.{x}.0/24"),
            gateway: format!("10.88.{x}.1"),
            subnet6: prefix6.as_ref().map(|p| format!("{p}::/64")),
            gateway6: prefix6.as_ref().map(|p| format!("{p}::1")),
            conf_dir: dir.join("conf"),
            ipam_dir: dir.join("ipam"),
        };
        std::fs::create_dir_all(&net.conf_dir)?;
        std::fs::create_dir_all(&net.ipam_dir)?;
        let mut ranges =
            vec![serde_json::json!([{ "subnet": net.subnet, "gateway": net.gateway }])];
        let mut routes = vec![serde_json::json!({ "dst": "0.0.0.0/0" })];
        if let (Some(subnet), Some(gateway)) = (&net.subnet6, &net.gateway6) {
            ranges.push(serde_json::json!([{ "subnet": subnet, "gateway": gateway }]));
            routes.push(serde_json::json!({ "dst": "::/0" }));
        }
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": net.name,
            "plugins": [{
                "type": "bridge",
                "bridge": net.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": net.ipam_dir,
                    "ranges": ranges,
                    "routes": routes,
                },
            }],
        });
        std::fs::write(
            net.conf_dir.join(format!("10-{}.conflist", net.name)),
            serde_json::to_vec_pretty(&conf).map_err(io::Error::other)?,
        )?;
        Ok(net)
    }

    /// The host side veths attached to the bridge.
    pub fn veths(&self) -> Vec<String> {
        containerd::list_dir(&Path::new("/sys/class/net").join(&self.bridge).join("brif"))
    }

    /// IPs host-local holds for pods now.
    pub fn allocations(&self) -> Vec<String> {
        let mut v: Vec<String> = containerd::list_dir(&self.ipam_dir.join(&self.name))
            .into_iter()
            .chain(containerd::list_dir(
                &Path::new("/var/lib/cni/networks").join(&self.name),
            ))
            .filter(|f| f.parse::<std::net::IpAddr>().is_ok())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Deletes the bridge (CNI never does) and the IPAM state and conf.
    fn remove(&self) {
        if let Err(e) = delete_bridge(&self.bridge) {
            eprintln!("cri fixture: deleting bridge {}: {e}", self.bridge);
        }
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.name));
        let _ = std::fs::remove_dir_all(&self.ipam_dir);
        let _ = std::fs::remove_dir_all(&self.conf_dir);
    }
}

/// A pod started by [`CriFixture::run_pod`].
#[derive(Debug, Clone)]
pub struct Pod {
    pub id: String,
    /// The config it was run with (CreateContainer needs it again).
    pub config: api::PodSandboxConfig,
    /// Its IP (from `PodSandboxStatus`).
    pub ip: Option<String>,
    /// Its other IPs (`PodSandboxStatus.network.additional_ips`: the IPv6
    /// one of a dual-stack pod).
    pub additional_ips: Vec<String>,
    /// Its network namespace (`/var/run/netns/cni-...`), from the
    /// verbose status' runtime spec.
    pub netns: Option<String>,
    /// Its CRI log directory.
    pub log_dir: PathBuf,
}

/// What a CRI fixture's pods might leave behind besides containerd's
/// [`containerd::Leaks`]; all empty after a clean test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CriLeaks {
    /// `ListPodSandbox` ids.
    pub pods: Vec<String>,
    /// `ListContainers` ids.
    pub containers: Vec<String>,
    /// The fixture's pods' netns files still present.
    pub netns: Vec<String>,
    /// veths still on the fixture's bridge.
    pub veths: Vec<String>,
    /// IPs host-local still holds.
    pub ips: Vec<String>,
    /// libcni result cache entries of the fixture's pods.
    pub cni_results: Vec<String>,
    /// Cgroups under the fixture's cgroup parent.
    pub cgroups: Vec<String>,
    /// containerd's census.
    pub containerd: containerd::Leaks,
}

impl CriLeaks {
    pub fn is_empty(&self) -> bool {
        self.fields().iter().all(|(_, v)| v.is_empty()) && self.containerd.is_empty()
    }

    fn fields(&self) -> [(&'static str, &Vec<String>); 7] {
        [
            ("pods", &self.pods),
            ("containers", &self.containers),
            ("netns", &self.netns),
            ("veths", &self.veths),
            ("ips", &self.ips),
            ("cni_results", &self.cni_results),
            ("cgroups", &self.cgroups),
        ]
    }
}

impl fmt::Display for CriLeaks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, v) in self.fields() {
            if !v.is_empty() {
                writeln!(f, "  {name}: {v:?}")?;
            }
        }
        write!(f, "{}", self.containerd)
    }
}

/// CRI tests share the `k8s.io` namespace: one fixture per process at a
/// time.
static CRI_LOCK: Mutex<()> = Mutex::new(());
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A containerd with CRI for one test: runtime handler `handler` (plus
/// `runc`), a [`CniNetwork`], the pause image ([`PAUSE_IMAGE`]) and busybox
/// imported into `k8s.io`, CRI logs and pod cgroups under paths of its
/// own. Drop removes the pods still there, then everything else (bridge,
/// netns, IPAM state, cgroups, logs), and restores `ip_forward` and IPv6's
/// `forwarding` (the bridge plugin's gateway mode sets them).
pub struct CriFixture {
    pub handler: String,
    /// The busybox image's name (Cmd `sh`).
    pub busybox: String,
    pub net: CniNetwork,
    /// The parent of the pods' log directories.
    pub log_root: PathBuf,
    /// The pods' cgroup parent (`/husk-cri-<pid>-<n>`).
    pub cgroup_parent: String,
    work: PathBuf,
    cri: Option<Cri>,
    containerd: Option<Containerd>,
    pods: RefCell<Vec<(String, Option<String>)>>,
    ip_forward: Option<String>,
    ip6_forward: Option<String>,
    _lock: MutexGuard<'static, ()>,
}

impl CriFixture {
    /// True when this host can run CRI tests (root, containerd, ctr, the
    /// CNI plugins, busybox-static); otherwise prints why `test` is
    /// skipped.
    pub fn available(test: &str) -> bool {
        if !Containerd::available(test) {
            return false;
        }
        for p in ["bridge", "host-local", "loopback"] {
            if !Path::new(CNI_BIN_DIR).join(p).is_file() {
                eprintln!(
                    "SKIP {test}: CNI plugin {CNI_BIN_DIR}/{p} missing \
                     (apt-get install containernetworking-plugins)"
                );
                return false;
            }
        }
        if !Path::new(crate::oci::BUSYBOX_BINARY).is_file() {
            eprintln!(
                "SKIP {test}: {} missing (apt-get install busybox-static)",
                crate::oci::BUSYBOX_BINARY
            );
            return false;
        }
        true
    }

    /// Starts containerd (`opts` plus CRI and the fixture's namespace and
    /// config) with runtime handler `handler` served by the shim binary
    /// `shim` (`None` for `runc`), imports the images and waits for CRI's
    /// NetworkReady.
    pub fn start(handler: &str, shim: Option<&Path>, opts: Options) -> io::Result<CriFixture> {
        Self::start_on(handler, shim, opts, IpFamilies::V4)
    }

    /// [`Self::start`] on a dual-stack network: each pod gets an IPv4 and
    /// an IPv6 address (see [`CniNetwork`]).
    pub fn start_dual_stack(
        handler: &str,
        shim: Option<&Path>,
        opts: Options,
    ) -> io::Result<CriFixture> {
        Self::start_on(handler, shim, opts, IpFamilies::DualStack)
    }

    fn start_on(
        handler: &str,
        shim: Option<&Path>,
        opts: Options,
        families: IpFamilies,
    ) -> io::Result<CriFixture> {
        let lock = CRI_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("husk-cri-{}-{n}", std::process::id());
        let work = std::env::temp_dir().join(&tag);
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        let net = CniNetwork::create_with(&work.join("cni"), &tag, families)?;
        let log_root = work.join("logs");
        std::fs::create_dir_all(&log_root)?;
        let mut f = CriFixture {
            handler: handler.to_string(),
            busybox: crate::oci::BUSYBOX_IMAGE.to_string(),
            net,
            log_root,
            cgroup_parent: format!("/{tag}"),
            work,
            cri: None,
            containerd: None,
            pods: RefCell::new(Vec::new()),
            ip_forward: std::fs::read_to_string(IP_FORWARD).ok(),
            ip6_forward: std::fs::read_to_string(IP6_FORWARD).ok(),
            _lock: lock,
        };
        let shim = shim.map(Path::to_path_buf).unwrap_or_default();
        let toml = cri_config(handler, &shim, PAUSE_IMAGE, &f.net.conf_dir);
        let c = Containerd::start_with(opts.cri(true).namespace(CRI_NAMESPACE).config(&toml))?;
        let pause = crate::oci::busybox_image(PAUSE_IMAGE, &["sleep", "infinity"])?;
        c.import_image(&pause)?;
        c.import_busybox()?;
        let cri = Cri::connect(c.address())?;
        f.containerd = Some(c);
        let end = Instant::now() + Duration::from_secs(20);
        while !cri.network_ready()? {
            if Instant::now() >= end {
                return Err(io::Error::other(format!(
                    "CRI reports no NetworkReady in 20 s: {:?}",
                    cri.status()?
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for image in [PAUSE_IMAGE, &f.busybox] {
            if cri.image_status(image)?.is_none() {
                return Err(io::Error::other(format!(
                    "CRI does not see the imported image {image}"
                )));
            }
        }
        f.cri = Some(cri);
        Ok(f)
    }

    /// The CRI client.
    pub fn cri(&self) -> &Cri {
        self.cri.as_ref().expect("the fixture's CRI client")
    }

    /// Bounds the fixture's later CRI calls by `timeout` (a pod's first
    /// VM with a new guest image boots cold to make its template: minutes
    /// on a slow emulated host).
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.cri = self.cri.take().map(|c| c.with_timeout(timeout));
    }

    /// The containerd.
    pub fn containerd(&self) -> &Containerd {
        self.containerd.as_ref().expect("the fixture's containerd")
    }

    /// [`pod_config`] for pod `name`: logs in `<log_root>/<name>`, cgroups
    /// under the fixture's parent.
    pub fn pod_config(&self, name: &str) -> api::PodSandboxConfig {
        pod_config(name, &self.log_root.join(name), &self.cgroup_parent)
    }

    /// RunPodSandbox with [`Self::pod_config`] and the fixture's handler;
    /// notes its netns (cleaned by Drop if the test does not get there).
    pub fn run_pod(&self, name: &str) -> Result<Pod, CriError> {
        self.run_pod_with(self.pod_config(name))
    }

    /// RunPodSandbox with `config` (its log directory is created).
    pub fn run_pod_with(&self, config: api::PodSandboxConfig) -> Result<Pod, CriError> {
        self.run_pod_within(config, self.cri().timeout)
    }

    /// [`Self::run_pod_with`], RunPodSandbox bounded by `timeout`.
    pub fn run_pod_within(
        &self,
        config: api::PodSandboxConfig,
        timeout: Duration,
    ) -> Result<Pod, CriError> {
        let log_dir = PathBuf::from(&config.log_directory);
        let _ = std::fs::create_dir_all(&log_dir);
        let cri = self.cri();
        let id = cri.run_pod_sandbox_within(&config, &self.handler, timeout)?;
        self.pods.borrow_mut().push((id.clone(), None));
        let verbose = cri.pod_sandbox_status_verbose(&id)?;
        let netns = verbose.info.get("info").and_then(|i| netns_of(i));
        if let Some(p) = self.pods.borrow_mut().iter_mut().find(|p| p.0 == id) {
            p.1 = netns.clone();
        }
        let network = verbose.status.and_then(|s| s.network);
        let additional_ips = network
            .as_ref()
            .map(|n| n.additional_ips.iter().map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        let ip = network.map(|n| n.ip).filter(|ip| !ip.is_empty());
        Ok(Pod {
            id,
            config,
            ip,
            additional_ips,
            netns,
            log_dir,
        })
    }

    /// What is left now: see [`CriLeaks`].
    pub fn leaks(&self) -> CriLeaks {
        let cri = self.cri();
        let err = |e: CriError| vec![format!("({e})")];
        let pods = self.pods.borrow();
        let mut l = CriLeaks {
            pods: cri
                .list_pod_sandbox()
                .map(|v| v.into_iter().map(|p| p.id).collect())
                .unwrap_or_else(err),
            containers: cri
                .list_containers()
                .map(|v| v.into_iter().map(|c| c.id).collect())
                .unwrap_or_else(err),
            netns: pods
                .iter()
                .filter_map(|(_, ns)| ns.clone())
                .filter(|ns| Path::new(ns).exists())
                .collect(),
            veths: self.net.veths(),
            ips: self.net.allocations(),
            cni_results: containerd::list_dir(Path::new(CNI_RESULTS_DIR))
                .into_iter()
                .filter(|r| pods.iter().any(|(id, _)| r.contains(id.as_str())))
                .collect(),
            cgroups: self.pod_cgroups(),
            containerd: self.containerd().leaks(),
        };
        l.pods.sort();
        l.containers.sort();
        l
    }

    /// Waits up to `timeout` for [`Self::leaks`] to be empty; returns the
    /// last census when it is not.
    pub fn wait_no_leaks(&self, timeout: Duration) -> Result<(), Box<CriLeaks>> {
        let end = Instant::now() + timeout;
        loop {
            let l = self.leaks();
            if l.is_empty() {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(Box::new(l));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Panics with the census when something is left after `timeout`.
    pub fn assert_no_leaks(&self, timeout: Duration) {
        if let Err(l) = self.wait_no_leaks(timeout) {
            panic!(
                "left behind after {timeout:?}:\n{l}\ncontainerd log:\n{}",
                self.containerd().log_tail(30)
            );
        }
    }

    /// Cgroup dirs below the fixture's cgroup parent (the pods' and
    /// containers').
    fn pod_cgroups(&self) -> Vec<String> {
        containerd::cgroup_dirs(self.cgroup_parent.trim_start_matches('/'))
            .into_iter()
            .flat_map(|d| {
                containerd::list_dir(&d)
                    .into_iter()
                    .map(|e| d.join(e))
                    .filter(|p| p.is_dir())
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for CriFixture {
    fn drop(&mut self) {
        // Pods the test left: through CRI first (CNI DEL frees the IP and
        // the veth), with short bounds.
        if let Some(cri) = self.cri.take() {
            let cri = cri.with_timeout(Duration::from_secs(20));
            if let Ok(pods) = cri.list_pod_sandbox() {
                for p in pods {
                    let _ = cri.stop_pod_sandbox(&p.id);
                    let _ = cri.remove_pod_sandbox(&p.id);
                }
            }
        }
        // containerd, its shims and containers (the fixture's own Drop).
        drop(self.containerd.take());
        for (id, ns) in self.pods.borrow().iter() {
            if let Some(ns) = ns {
                remove_netns(Path::new(ns));
            }
            for r in containerd::list_dir(Path::new(CNI_RESULTS_DIR)) {
                if r.contains(id.as_str()) {
                    let _ = std::fs::remove_file(Path::new(CNI_RESULTS_DIR).join(r));
                }
            }
        }
        self.net.remove();
        // The shared dirs CRI and libcni create, once nothing is in them.
        for d in [CNI_RESULTS_DIR, "/var/lib/cni", NETNS_DIR] {
            let _ = std::fs::remove_dir(d);
        }
        containerd::remove_cgroups(self.cgroup_parent.trim_start_matches('/'));
        for (path, before) in [
            (IP_FORWARD, &self.ip_forward),
            (IP6_FORWARD, &self.ip6_forward),
        ] {
            if let Some(before) = before {
                let now = std::fs::read_to_string(path).unwrap_or_default();
                if now != *before {
                    let _ = std::fs::write(path, before);
                }
            }
        }
        if std::env::var_os("HUSK_KEEP_CONTAINERD").is_none() {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }
}

/// The network namespace path in containerd's verbose sandbox info (JSON:
/// `runtimeSpec.linux.namespaces[type=network].path`).
fn netns_of(info: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(info).ok()?;
    v.pointer("/runtimeSpec/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// Unmounts and removes a netns file CRI left.
fn remove_netns(path: &Path) {
    if !path.starts_with(NETNS_DIR) || !path.exists() {
        return;
    }
    if let Ok(c) = std::ffi::CString::new(path.to_string_lossy().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; umount2 has no other
        // preconditions.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
    let _ = std::fs::remove_file(path);
}

/// The IPv4 networks (address bytes) of this host's routes.
fn routed_ipv4_networks() -> Vec<[u8; 4]> {
    std::fs::read_to_string("/proc/net/route")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let dest = l.split_whitespace().nth(1)?;
            // Host byte order (little-endian here): the first octet is
            // the low byte.
            u32::from_str_radix(dest, 16).ok().map(u32::to_le_bytes)
        })
        .collect()
}

/// The first four groups of this host's IPv6 routes' destinations.
fn routed_ipv6_prefixes() -> Vec<[u16; 4]> {
    std::fs::read_to_string("/proc/net/ipv6_route")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let dest = l.split_whitespace().next()?;
            let mut p = [0u16; 4];
            for (i, g) in p.iter_mut().enumerate() {
                *g = u16::from_str_radix(dest.get(i * 4..i * 4 + 4)?, 16).ok()?;
            }
            Some(p)
        })
        .collect()
}

/// Bits that differ from run to run (time, pid).
fn random_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// Sets link `name` down and deletes it (a bridge: SIOCBRDELBR, which
/// refuses an up device). Absent: nothing to do.
fn delete_bridge(name: &str) -> io::Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    const SIOCBRDELBR: libc::c_ulong = 0x89a1;
    let bytes = name.as_bytes();
    if bytes.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other("interface name too long"));
    }
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: an all-zero ifreq is a valid value (a name and a union of
    // plain integers).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let result = (|| {
        // SAFETY: fd is an open socket and req a valid ifreq for
        // SIOCGIFFLAGS / SIOCSIFFLAGS, which read and write only it.
        unsafe {
            if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let cname = std::ffi::CString::new(bytes).map_err(io::Error::other)?;
        // SAFETY: SIOCBRDELBR reads a NUL-terminated interface name.
        if unsafe { libc::ioctl(fd, SIOCBRDELBR as _, cname.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })();
    // SAFETY: fd is ours and closed once.
    unsafe { libc::close(fd) };
    result
}

/// Removes a test's dir (config, pod dirs, consoles) even when the test
/// panics (kept with `HUSK_KEEP_CONTAINERD`).
pub struct RemoveDir(pub PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        if std::env::var_os("HUSK_KEEP_CONTAINERD").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl RemoveDir {
    /// The pods' host directories (vsock socket, share and the rootfs and
    /// volume mounts in it) went with the pods: none left under `pods/`,
    /// and no mount there.
    pub fn assert_no_pod_dirs(&self) {
        let pods = self.0.join("pods");
        let left: Vec<_> = std::fs::read_dir(&pods)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "pod directories left: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let pods_s = pods.to_string_lossy();
        assert!(
            !mounts.contains(pods_s.as_ref()),
            "mounts left under {pods_s}"
        );
    }
}

/// The husk shim and the containerd options that make it serve the `husk`
/// handler with the repo's guest image, the test's files in a temp dir
/// named after `dir_name` (short: the pods' vsock socket paths under it
/// must fit a sun_path); None, with a SKIP line, where /dev/kvm or the CRI
/// prerequisites are missing.
pub fn husk_setup(test: &str, dir_name: &str) -> Option<(PathBuf, Options, RemoveDir)> {
    if !crate::kvm_available(test) || !CriFixture::available(test) {
        return None;
    }
    let shim = crate::oci::target_dir().join("debug/containerd-shim-husk-v2");
    assert!(
        shim.is_file(),
        "{} missing: cargo build -p husk-shim --bins",
        shim.display()
    );
    let (kernel, initrd) = crate::guest_image();
    let dir: PathBuf = crate::temp_path(dir_name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the test's dir");
    let cleanup = RemoveDir(dir.clone());
    let store = crate::oci::target_dir().join("husk-shim-templates");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "kernel = {:?}\ninitramfs = {:?}\ntemplate_dir = {:?}\nrun_dir = {:?}\nconsole_dir = {:?}\ndebug = true\n",
            kernel,
            initrd,
            store,
            dir.join("pods"),
            dir
        ),
    )
    .expect("the husk config");
    let opts = Options::new()
        .env("HUSK_CONFIG", config.to_string_lossy())
        .debug(true);
    Some((shim, opts, cleanup))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_log_lines_parse() {
        let l = parse_cri_log(
            "2026-01-02T03:04:05.123456789Z stdout F started\n\
             2026-01-02T03:04:05.2Z stderr P part\nnonsense\n",
        );
        assert_eq!(
            l[0],
            Some(LogLine {
                time: "2026-01-02T03:04:05.123456789Z".into(),
                stream: "stdout".into(),
                tag: "F".into(),
                text: "started".into(),
            })
        );
        assert_eq!(l[1].as_ref().map(|l| l.tag.as_str()), Some("P"));
        assert_eq!(l[2], None);
    }

    #[test]
    fn dual_stack_conflist_has_both_ranges() {
        let dir = std::env::temp_dir().join(format!("husk-cni-ds-{}", std::process::id()));
        let read = |net: &CniNetwork| -> serde_json::Value {
            let f = net.conf_dir.join(format!("10-{}.conflist", net.name));
            serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap()
        };
        let v4 = CniNetwork::create(&dir.join("v4"), "v4").unwrap();
        assert_eq!((v4.subnet6.clone(), v4.gateway6.clone()), (None, None));
        let ipam = read(&v4)["plugins"][0]["ipam"].clone();
        assert_eq!(ipam["ranges"].as_array().unwrap().len(), 1, "{ipam}");

        let ds = CniNetwork::create_with(&dir.join("ds"), "ds", IpFamilies::DualStack).unwrap();
        let subnet6 = ds.subnet6.clone().unwrap();
        let gateway6 = ds.gateway6.clone().unwrap();
        let net6: std::net::Ipv6Addr = subnet6.trim_end_matches("/64").parse().unwrap();
        assert_eq!(net6.segments()[0], 0xfd88, "{subnet6}");
        assert_eq!(net6.segments()[4..], [0; 4], "{subnet6}");
        assert_eq!(gateway6, format!("{}1", subnet6.trim_end_matches("/64")));
        let conf = read(&ds);
        let ipam = &conf["plugins"][0]["ipam"];
        assert_eq!(ipam["ranges"][1][0]["subnet"], subnet6.as_str(), "{ipam}");
        assert_eq!(ipam["ranges"][1][0]["gateway"], gateway6.as_str(), "{ipam}");
        assert_eq!(ipam["routes"][1]["dst"], "::/0", "{ipam}");
        assert_eq!(conf["plugins"][0]["isGateway"], true);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn netns_from_verbose_info() {
        let info = r#"{"pid":1,"runtimeSpec":{"linux":{"namespaces":[{"type":"pid"},
            {"type":"network","path":"/var/run/netns/cni-abc"}]}}}"#;
        assert_eq!(netns_of(info).as_deref(), Some("/var/run/netns/cni-abc"));
        assert_eq!(netns_of("{}"), None);
    }
}
