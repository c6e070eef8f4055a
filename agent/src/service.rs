//! The ttrpc `Agent` service (husk.agent.v1) and its server.
//!
//! [`AgentService`] answers from a [`GuestFacts`] source, changes the guest
//! through [`GuestControl`], mounts through [`GuestMounts`], runs commands
//! whose exit statuses a [`Reaper`] collects, and asks a [`PowerOff`]
//! callback to end the VM; all are injected, so the service runs the same
//! over a Unix socket in a host test as over vsock in the guest.

use std::sync::{Arc, Mutex, PoisonError};

mod containers;

pub use containers::{ContainerRpcError, ContainerService};

use husk_agent_protocol::agent::{
    CloseStdinRequest, ConfigureNetworkRequest, ConfigureNetworkResponse, ContainerStatsRequest,
    ContainerStatsResponse, CreateContainerRequest, CreateContainerResponse, Empty,
    ExecProcessRequest, ExecProcessResponse, ExecRequest, ExecResponse, GuestInfoRequest,
    GuestInfoResponse, HealthRequest, HealthResponse, ListPidsRequest, ListPidsResponse,
    MountRequest, MountResponse, PauseContainerRequest, ReidentifyRequest, ReidentifyResponse,
    RemoveContainerRequest, ResizeTtyRequest, ResumeContainerRequest, ShutdownRequest,
    ShutdownResponse, SignalProcessRequest, StartContainerRequest, StartContainerResponse,
    UnmountRequest, UnmountResponse, UpdateResourcesRequest, VersionRequest, VersionResponse,
    WaitEventRequest, WaitEventResponse, WaitProcessRequest, WaitProcessResponse,
};
use husk_agent_protocol::agent_ttrpc::{create_agent, Agent};
use husk_agent_protocol::{API_VERSION, HEALTH_SERVING};
use thiserror::Error;
use ttrpc::{Code, TtrpcContext};

use crate::accounting::Step;
use crate::exec::{self, ExecSpec};
use crate::facts::{FactsError, GuestFacts};
use crate::identity::{GuestControl, NewIdentity};
use crate::log::log;
use crate::mount::{self, GuestMounts, MountSource, MountSpec};
use crate::reaper::{ExitStatus, Reaper};
use crate::rpc::{RpcServer, ServerConfig};
use crate::AGENT_VERSION;

/// Asked to power the guest off. It must return at once (the reply to
/// `Shutdown` goes out after it returns) and act shortly after.
pub type PowerOff = Box<dyn Fn() + Send + Sync>;

/// The agent's API.
pub struct AgentService<F> {
    facts: F,
    power_off: PowerOff,
    /// Collects the exit statuses of `Exec`'s commands.
    reaper: Arc<Reaper>,
    /// The identity `Reidentify` gave; `None` until then (the identity is
    /// the kernel's boot_id).
    instance_id: Mutex<Option<String>>,
    /// The container RPCs; `None`: they answer INTERNAL (containers
    /// unavailable), e.g. when the stdio server did not start.
    containers: Option<ContainerService>,
}

/// Why `Reidentify` failed.
#[derive(Debug, Error)]
enum ReidentifyError {
    #[error(transparent)]
    Invalid(#[from] crate::identity::InvalidField),
    #[error("{step}: {source}")]
    Os {
        step: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Facts(#[from] FactsError),
}

impl ReidentifyError {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::INVALID_ARGUMENT,
            Self::Os { .. } | Self::Facts(_) => Code::INTERNAL,
        }
    }
}

/// What the service needs of the guest.
pub trait Guest: GuestFacts + GuestControl + GuestMounts {}

impl<T: GuestFacts + GuestControl + GuestMounts> Guest for T {}

impl<F: Guest> AgentService<F> {
    /// `reaper` must be the one that reaps this process's children: the
    /// one PID 1's SIGCHLD loop drives, or a [`PerChild`] one elsewhere.
    ///
    /// [`PerChild`]: crate::reaper::ReapMode::PerChild
    pub fn new(facts: F, power_off: PowerOff, reaper: Arc<Reaper>) -> Self {
        Self {
            facts,
            power_off,
            reaper,
            instance_id: Mutex::new(None),
            containers: None,
        }
    }

    /// Serves the container RPCs through `containers`.
    pub fn with_containers(mut self, containers: ContainerService) -> Self {
        self.containers = Some(containers);
        self
    }

    /// Runs a container RPC: its error keeps its code, and is logged.
    fn ctr<T>(
        &self,
        method: &str,
        f: impl FnOnce(&ContainerService) -> Result<T, ContainerRpcError>,
    ) -> ttrpc::Result<T> {
        let result = match &self.containers {
            Some(c) => f(c),
            None => Err(ContainerRpcError::Unavailable(
                "no stdio server or container registry".into(),
            )),
        };
        result.map_err(|e| {
            log(&format!("{method} failed: {e}"));
            status(e.code(), format!("{method}: {e}"))
        })
    }

    /// The identity `Reidentify` gave, if any.
    fn given_instance_id(&self) -> Option<String> {
        // A poisoned lock still holds a whole String (only assignments
        // happen under it).
        self.instance_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn guest_info_now(&self) -> Result<GuestInfoResponse, FactsError> {
        let mem = self.facts.meminfo()?;
        let boot_id = self.facts.boot_id()?;
        Ok(GuestInfoResponse {
            agent_version: AGENT_VERSION.into(),
            kernel_release: self.facts.kernel_release()?,
            instance_id: self.given_instance_id().unwrap_or_else(|| boot_id.clone()),
            boot_id,
            hostname: self.facts.hostname()?,
            mem_total_kib: mem.total_kib,
            mem_available_kib: mem.available_kib,
            uptime_seconds: self.facts.uptime_seconds()?,
            ..Default::default()
        })
    }

    /// Validates `req`, then reseeds the RNG, sets the hostname and steps
    /// the clock, in that order (a failed step leaves the earlier ones
    /// applied), and only then takes the new identity.
    fn reidentify_now(
        &self,
        req: &ReidentifyRequest,
    ) -> Result<ReidentifyResponse, ReidentifyError> {
        let new = NewIdentity::validate(
            &req.rng_seed,
            &req.hostname,
            &req.instance_id,
            req.time_unix_ns,
        )?;
        let os = |step| move |source| ReidentifyError::Os { step, source };
        self.facts
            .reseed_rng(new.rng_seed)
            .map_err(os("reseed the kernel RNG"))?;
        self.facts
            .set_hostname(new.hostname)
            .map_err(os("sethostname"))?;
        let clock_step_ns = self
            .facts
            .set_realtime(new.time_unix_ns)
            .map_err(os("set CLOCK_REALTIME"))?;
        *self
            .instance_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(new.instance_id.to_owned());
        log(&format!(
            "reidentified as {} (hostname {}, clock stepped {} ms)",
            new.instance_id,
            new.hostname,
            clock_step_ns / 1_000_000
        ));
        Ok(ReidentifyResponse {
            boot_id: self.facts.boot_id()?,
            instance_id: new.instance_id.to_owned(),
            clock_step_ns,
            ..Default::default()
        })
    }

    fn mount_now(&self, req: &MountRequest) -> Result<MountResponse, mount::MountError> {
        let spec = MountSpec::validate(
            req.kind.enum_value().ok(),
            &req.source,
            &req.target,
            &req.fstype,
            req.read_only,
            &req.options,
        )?;
        let call = mount::mount(&self.facts, &spec)?;
        let serial = match &spec.source {
            MountSource::Serial(s) => format!(" (serial {s})"),
            _ => String::new(),
        };
        log(&format!(
            "mounted {}{serial} on {} as {}{}",
            call.source,
            call.target.display(),
            call.fstype,
            if call.read_only { ", read-only" } else { "" }
        ));
        Ok(MountResponse {
            device: call.source,
            target: call.target.display().to_string(),
            fstype: call.fstype,
            ..Default::default()
        })
    }

    fn exec_now(&self, req: &ExecRequest) -> Result<ExecResponse, exec::ExecError> {
        let spec = ExecSpec::validate(req)?;
        let outcome = exec::run(&self.reaper, &spec)?;
        let (exit_code, signal) = match outcome.status {
            ExitStatus::Exited(code) => (code, 0),
            ExitStatus::Signaled(sig) => (-1, sig),
        };
        Ok(ExecResponse {
            exit_code,
            signal,
            stdout: outcome.stdout,
            stderr: outcome.stderr,
            stdout_truncated: outcome.stdout_truncated,
            stderr_truncated: outcome.stderr_truncated,
            timed_out: outcome.timed_out,
            ..Default::default()
        })
    }
}

fn status(code: Code, msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

impl<F: Guest> Agent for AgentService<F> {
    fn version(&self, _: &TtrpcContext, _: VersionRequest) -> ttrpc::Result<VersionResponse> {
        Ok(VersionResponse {
            agent_version: AGENT_VERSION.into(),
            api_version: API_VERSION,
            ..Default::default()
        })
    }

    fn health(&self, _: &TtrpcContext, _: HealthRequest) -> ttrpc::Result<HealthResponse> {
        Ok(HealthResponse {
            status: HEALTH_SERVING.into(),
            ..Default::default()
        })
    }

    fn guest_info(
        &self,
        _: &TtrpcContext,
        _: GuestInfoRequest,
    ) -> ttrpc::Result<GuestInfoResponse> {
        self.guest_info_now()
            .map_err(|e| status(Code::INTERNAL, format!("guest info: {e}")))
    }

    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<ShutdownResponse> {
        (self.power_off)();
        Ok(ShutdownResponse::default())
    }

    fn reidentify(
        &self,
        _: &TtrpcContext,
        req: ReidentifyRequest,
    ) -> ttrpc::Result<ReidentifyResponse> {
        self.reidentify_now(&req).map_err(|e| {
            log(&format!("reidentify refused: {e}"));
            status(e.code(), format!("reidentify: {e}"))
        })
    }

    fn mount(&self, _: &TtrpcContext, req: MountRequest) -> ttrpc::Result<MountResponse> {
        self.mount_now(&req).map_err(|e| {
            log(&format!("mount failed: {e}"));
            status(e.code(), format!("mount: {e}"))
        })
    }

    fn unmount(&self, _: &TtrpcContext, req: UnmountRequest) -> ttrpc::Result<UnmountResponse> {
        match mount::unmount(&self.facts, &req.target) {
            Ok(target) => {
                log(&format!("unmounted {}", target.display()));
                Ok(UnmountResponse::default())
            }
            Err(e) => {
                log(&format!("unmount failed: {e}"));
                Err(status(e.code(), format!("unmount: {e}")))
            }
        }
    }

    fn configure_network(
        &self,
        _: &TtrpcContext,
        req: ConfigureNetworkRequest,
    ) -> ttrpc::Result<ConfigureNetworkResponse> {
        let t0 = std::time::Instant::now();
        let result = crate::network::NetworkPlan::from_request(&req).and_then(|p| {
            let r = p.apply()?;
            log(&format!(
                "network: {} is the pod's {} ({} addresses, {} routes, skipped {:?}) in {} ms",
                r.guest_interface,
                p.host_name,
                p.addresses.len(),
                p.routes.len(),
                r.skipped,
                t0.elapsed().as_millis()
            ));
            Ok(r)
        });
        result.map_err(|e| {
            log(&format!("configure network failed: {e}"));
            status(e.code(), format!("configure network: {e}"))
        })
    }

    fn exec(&self, _: &TtrpcContext, req: ExecRequest) -> ttrpc::Result<ExecResponse> {
        self.exec_now(&req).map_err(|e| {
            log(&format!("exec failed: {e}"));
            status(e.code(), format!("exec: {e}"))
        })
    }

    fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let steps = self.ctr("CreateContainer", |c| c.create(&req))?;
        Ok(CreateContainerResponse {
            steps: steps.iter().map(Step::to_msg).collect(),
            ..Default::default()
        })
    }

    fn start_container(
        &self,
        _: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        let (pid, steps) = self.ctr("StartContainer", |c| c.start(&req.container_id))?;
        Ok(StartContainerResponse {
            pid,
            steps: steps.iter().map(Step::to_msg).collect(),
            ..Default::default()
        })
    }

    fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<ExecProcessResponse> {
        let pid = self.ctr("ExecProcess", |c| c.exec(&req))?;
        Ok(ExecProcessResponse {
            pid,
            ..Default::default()
        })
    }

    fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> ttrpc::Result<Empty> {
        self.ctr("SignalProcess", |c| {
            c.signal(&req.container_id, &req.exec_id, req.signal, req.all)
        })?;
        Ok(Empty::default())
    }

    fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        self.ctr("WaitProcess", |c| c.wait(&req.container_id, &req.exec_id))
    }

    fn resize_tty(&self, _: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        self.ctr("ResizeTty", |c| {
            c.resize(&req.container_id, &req.exec_id, req.rows, req.cols)
        })?;
        Ok(Empty::default())
    }

    fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> ttrpc::Result<Empty> {
        self.ctr("CloseStdin", |c| {
            c.close_stdin(&req.container_id, &req.exec_id)
        })?;
        Ok(Empty::default())
    }

    fn list_pids(&self, _: &TtrpcContext, req: ListPidsRequest) -> ttrpc::Result<ListPidsResponse> {
        let pids = self.ctr("ListPids", |c| c.pids(&req.container_id))?;
        Ok(ListPidsResponse {
            pids,
            ..Default::default()
        })
    }

    fn container_stats(
        &self,
        _: &TtrpcContext,
        req: ContainerStatsRequest,
    ) -> ttrpc::Result<ContainerStatsResponse> {
        self.ctr("ContainerStats", |c| c.stats(&req.container_id))
    }

    fn pause_container(
        &self,
        _: &TtrpcContext,
        req: PauseContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.ctr("PauseContainer", |c| c.pause(&req.container_id))?;
        Ok(Empty::default())
    }

    fn resume_container(
        &self,
        _: &TtrpcContext,
        req: ResumeContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.ctr("ResumeContainer", |c| c.resume(&req.container_id))?;
        Ok(Empty::default())
    }

    fn update_resources(
        &self,
        _: &TtrpcContext,
        req: UpdateResourcesRequest,
    ) -> ttrpc::Result<Empty> {
        self.ctr("UpdateResources", |c| {
            c.update(&req.container_id, &req.resources_json)
        })?;
        Ok(Empty::default())
    }

    fn remove_container(
        &self,
        _: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        self.ctr("RemoveContainer", |c| c.remove(&req.container_id))?;
        Ok(Empty::default())
    }

    fn wait_event(
        &self,
        _: &TtrpcContext,
        req: WaitEventRequest,
    ) -> ttrpc::Result<WaitEventResponse> {
        let oom = self.ctr("WaitEvent", |c| Ok(c.wait_event(req.timeout_ms)))?;
        Ok(WaitEventResponse {
            has_event: oom.is_some(),
            oom_container_id: oom.unwrap_or_default(),
            ..Default::default()
        })
    }
}

/// The ttrpc address the agent listens on in the guest: any CID, `port`.
pub fn vsock_address(port: u32) -> String {
    format!("vsock://-1:{port}")
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("serve the agent API on {addr}: {source}")]
    Server {
        addr: String,
        source: crate::rpc::ServerError,
    },
}

/// The methods answered on the server's I/O thread: each returns within a
/// few syscalls and never waits on anything. `SignalProcess` (kill, or a
/// cgroup.procs read and one kill each), `ResizeTty` (one ioctl) and
/// `CloseStdin` (an eventfd write) take only locks that no call holds
/// across a blocking step (the container table, the pump's, the service's
/// process map). Everything else (`Exec` runs a command, `Mount`/`Unmount`
/// wait on the kernel's file systems, container create/start clone and
/// mount, waits wait) goes to a worker, so it cannot hold up other calls.
pub const INLINE_METHODS: [&str; 8] = [
    "Version",
    "Health",
    "GuestInfo",
    "Reidentify",
    "Shutdown",
    "SignalProcess",
    "ResizeTty",
    "CloseStdin",
];

/// The ttrpc service name of the `Agent` API.
const SERVICE: &str = "husk.agent.v1.Agent";

/// The agent's server configuration (see [`crate::rpc`]).
pub fn server_config() -> ServerConfig {
    ServerConfig {
        inline: INLINE_METHODS
            .iter()
            .map(|m| format!("/{SERVICE}/{m}"))
            .collect(),
        ..ServerConfig::default()
    }
}

/// Binds `addr` (a ttrpc address: `vsock://CID:PORT`, `unix://PATH`) and
/// serves `service` on background threads, all made before it returns.
/// Listening when it returns; keep the returned server alive for as long as
/// it should serve.
pub fn serve<F: Guest + 'static>(
    addr: &str,
    service: AgentService<F>,
) -> Result<RpcServer, ServeError> {
    let service: Arc<dyn Agent + Send + Sync> = Arc::new(service);
    RpcServer::start(addr, create_agent(service), server_config()).map_err(|source| {
        ServeError::Server {
            addr: addr.into(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use husk_agent_protocol::agent_ttrpc::AgentClient;
    use ttrpc::context;

    use super::*;
    use crate::facts::MemInfo;
    use crate::testing::{Applied, FakeFacts, UnixAgent};

    fn ctx() -> context::Context {
        context::with_duration(Duration::from_secs(5))
    }

    fn client(agent: &UnixAgent) -> AgentClient {
        AgentClient::new(ttrpc::Client::connect(&agent.address()).unwrap())
    }

    #[test]
    fn version_and_health() {
        let agent = UnixAgent::start("svc-version", FakeFacts::default()).unwrap();
        let c = client(&agent);
        let v = c.version(ctx(), &VersionRequest::new()).unwrap();
        assert_eq!(v.agent_version, AGENT_VERSION);
        assert_eq!(v.api_version, API_VERSION);
        let h = c.health(ctx(), &HealthRequest::new()).unwrap();
        assert_eq!(h.status, "SERVING");
    }

    #[test]
    fn guest_info_reports_the_facts() {
        let facts = FakeFacts {
            mem: MemInfo {
                total_kib: 131_072,
                available_kib: 100_000,
            },
            uptime_seconds: 4.25,
            ..FakeFacts::default()
        };
        let agent = UnixAgent::start("svc-info", facts.clone()).unwrap();
        let i = client(&agent)
            .guest_info(ctx(), &GuestInfoRequest::new())
            .unwrap();
        assert_eq!(i.agent_version, AGENT_VERSION);
        assert_eq!(i.kernel_release, facts.kernel_release);
        assert_eq!(i.boot_id, facts.boot_id);
        assert_eq!(i.hostname, facts.hostname);
        assert_eq!(i.mem_total_kib, 131_072);
        assert_eq!(i.mem_available_kib, 100_000);
        assert_eq!(i.uptime_seconds, 4.25);
    }

    #[test]
    fn guest_info_failure_is_an_internal_error_naming_the_file() {
        let facts = FakeFacts {
            fail_meminfo: true,
            ..FakeFacts::default()
        };
        let agent = UnixAgent::start("svc-info-err", facts).unwrap();
        let e = client(&agent)
            .guest_info(ctx(), &GuestInfoRequest::new())
            .unwrap_err();
        match e {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), Code::INTERNAL);
                assert!(s.message.contains("/proc/meminfo"), "{}", s.message);
            }
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn shutdown_replies_and_invokes_power_off() {
        let agent = UnixAgent::start("svc-shutdown", FakeFacts::default()).unwrap();
        assert_eq!(agent.shutdowns.load(Ordering::SeqCst), 0);
        client(&agent)
            .shutdown(ctx(), &ShutdownRequest::new())
            .unwrap();
        assert_eq!(agent.shutdowns.load(Ordering::SeqCst), 1);
    }

    fn request(seed: &[u8], hostname: &str, id: &str, time_unix_ns: i64) -> ReidentifyRequest {
        ReidentifyRequest {
            rng_seed: seed.to_vec(),
            hostname: hostname.into(),
            instance_id: id.into(),
            time_unix_ns,
            ..Default::default()
        }
    }

    fn status_of(e: ttrpc::Error) -> ttrpc::Status {
        match e {
            ttrpc::Error::RpcStatus(s) => s,
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn reidentify_applies_the_identity_and_guest_info_reports_it() {
        let facts = FakeFacts::default();
        let agent = UnixAgent::start("svc-reid", facts.clone()).unwrap();
        let c = client(&agent);
        let before = c.guest_info(ctx(), &GuestInfoRequest::new()).unwrap();
        assert_eq!(before.instance_id, facts.boot_id, "initially the boot_id");

        let seed: Vec<u8> = (0..64).collect();
        let id = "4f1c2b7e-0d3a-4e5f-9a6b-7c8d9e0f1a2b";
        let later = facts.realtime_ns + 1_500_000_000;
        let r = c
            .reidentify(ctx(), &request(&seed, "pod-7.local", id, later))
            .unwrap();
        assert_eq!(r.boot_id, facts.boot_id);
        assert_eq!(r.instance_id, id);
        assert_eq!(r.clock_step_ns, 1_500_000_000);
        assert_eq!(
            *facts.applied(),
            Applied {
                seeds: vec![seed.clone()],
                hostname: Some("pod-7.local".into()),
                realtime_ns: Some(later),
                ..Applied::default()
            }
        );

        let after = c.guest_info(ctx(), &GuestInfoRequest::new()).unwrap();
        assert_eq!(after.instance_id, id);
        assert_eq!(after.hostname, "pod-7.local");
        assert_eq!(after.boot_id, facts.boot_id, "the kernel's stays");

        // Again (a clock stepped back is a negative step).
        let r = c
            .reidentify(ctx(), &request(&seed, "h", "second", later - 2_000_000_000))
            .unwrap();
        assert_eq!(r.clock_step_ns, -2_000_000_000);
        let again = c.guest_info(ctx(), &GuestInfoRequest::new()).unwrap();
        assert_eq!(again.instance_id, "second");
    }

    #[test]
    fn reidentify_refuses_each_bad_field_and_changes_nothing() {
        let facts = FakeFacts::default();
        let agent = UnixAgent::start("svc-reid-bad", facts.clone()).unwrap();
        let c = client(&agent);
        let seed = [1u8; 32];
        let bad = [
            ("rng_seed", request(&[1; 31], "h", "i", 1)),
            ("rng_seed", request(&[1; 513], "h", "i", 1)),
            ("hostname", request(&seed, "", "i", 1)),
            ("hostname", request(&seed, "-h", "i", 1)),
            ("hostname", request(&seed, "h_1", "i", 1)),
            ("hostname", request(&seed, &"h".repeat(65), "i", 1)),
            ("instance_id", request(&seed, "h", "", 1)),
            ("instance_id", request(&seed, "h", "a b", 1)),
            ("instance_id", request(&seed, "h", &"i".repeat(65), 1)),
            ("time_unix_ns", request(&seed, "h", "i", 0)),
            ("time_unix_ns", request(&seed, "h", "i", -5)),
        ];
        for (field, req) in bad {
            let s = status_of(c.reidentify(ctx(), &req).unwrap_err());
            assert_eq!(s.code(), Code::INVALID_ARGUMENT, "{field}: {}", s.message);
            assert!(
                s.message.starts_with(&format!("reidentify: {field}: ")),
                "{field}: {}",
                s.message
            );
        }
        assert_eq!(*facts.applied(), Applied::default());
        let i = c.guest_info(ctx(), &GuestInfoRequest::new()).unwrap();
        assert_eq!(i.instance_id, facts.boot_id);
    }

    #[test]
    fn reidentify_os_failures_are_internal_and_keep_the_identity() {
        let facts = FakeFacts {
            fail_reseed: true,
            ..FakeFacts::default()
        };
        let agent = UnixAgent::start("svc-reid-rng", facts.clone()).unwrap();
        let c = client(&agent);
        let req = request(&[3; 64], "h", "new", facts.realtime_ns);
        let s = status_of(c.reidentify(ctx(), &req).unwrap_err());
        assert_eq!(s.code(), Code::INTERNAL);
        assert_eq!(
            s.message,
            "reidentify: reseed the kernel RNG: Operation not permitted (os error 1)"
        );
        assert_eq!(*facts.applied(), Applied::default(), "stopped at the RNG");

        let facts = FakeFacts {
            fail_set_realtime: true,
            ..FakeFacts::default()
        };
        let agent = UnixAgent::start("svc-reid-clock", facts.clone()).unwrap();
        let c = client(&agent);
        let s = status_of(c.reidentify(ctx(), &req).unwrap_err());
        assert_eq!(s.code(), Code::INTERNAL);
        assert!(s.message.contains("CLOCK_REALTIME"), "{}", s.message);
        assert!(s.message.contains("Invalid argument"), "{}", s.message);
        let i = c.guest_info(ctx(), &GuestInfoRequest::new()).unwrap();
        assert_eq!(i.instance_id, facts.boot_id, "identity unchanged");
        assert_eq!(i.hostname, "h", "earlier steps stay applied");
    }

    #[test]
    fn vsock_address_any_cid() {
        assert_eq!(vsock_address(1024), "vsock://-1:1024");
    }

    #[test]
    fn bind_failure_names_the_address() {
        let Err(e) = serve(
            "unix:///nonexistent-dir/agent.sock",
            AgentService::new(
                FakeFacts::default(),
                Box::new(|| {}),
                Arc::new(Reaper::new(crate::reaper::ReapMode::PerChild)),
            ),
        ) else {
            panic!("bound in a directory that does not exist");
        };
        assert!(e.to_string().contains("/nonexistent-dir/agent.sock"), "{e}");
    }
}
