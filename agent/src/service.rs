//! The ttrpc `Agent` service (husk.agent.v1) and its server.
//!
//! [`AgentService`] answers from a [`GuestFacts`] source and asks a
//! [`PowerOff`] callback to end the VM; both are injected, so the service runs
//! the same over a Unix socket in a host test as over vsock in the guest.

use std::sync::Arc;

use husk_agent_protocol::agent::{
    GuestInfoRequest, GuestInfoResponse, HealthRequest, HealthResponse, ShutdownRequest,
    ShutdownResponse, VersionRequest, VersionResponse,
};
use husk_agent_protocol::agent_ttrpc::{create_agent, Agent};
use husk_agent_protocol::{API_VERSION, HEALTH_SERVING};
use thiserror::Error;
use ttrpc::{Code, TtrpcContext};

use crate::facts::{FactsError, GuestFacts};
use crate::AGENT_VERSION;

/// Asked to power the guest off. It must return at once (the reply to
/// `Shutdown` goes out after it returns) and act shortly after.
pub type PowerOff = Box<dyn Fn() + Send + Sync>;

/// The agent's API.
pub struct AgentService<F> {
    facts: F,
    power_off: PowerOff,
}

impl<F: GuestFacts> AgentService<F> {
    pub fn new(facts: F, power_off: PowerOff) -> Self {
        Self { facts, power_off }
    }

    fn guest_info_now(&self) -> Result<GuestInfoResponse, FactsError> {
        let mem = self.facts.meminfo()?;
        Ok(GuestInfoResponse {
            agent_version: AGENT_VERSION.into(),
            kernel_release: self.facts.kernel_release()?,
            boot_id: self.facts.boot_id()?,
            hostname: self.facts.hostname()?,
            mem_total_kib: mem.total_kib,
            mem_available_kib: mem.available_kib,
            uptime_seconds: self.facts.uptime_seconds()?,
            ..Default::default()
        })
    }
}

fn status(code: Code, msg: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

impl<F: GuestFacts> Agent for AgentService<F> {
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
}

/// The ttrpc address the agent listens on in the guest: any CID, `port`.
pub fn vsock_address(port: u32) -> String {
    format!("vsock://-1:{port}")
}

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("bind {addr}: {source}")]
    Bind { addr: String, source: ttrpc::Error },
    #[error("start the ttrpc server on {addr}: {source}")]
    Start { addr: String, source: ttrpc::Error },
}

/// Binds `addr` (a ttrpc address: `vsock://CID:PORT`, `unix://PATH`) and
/// serves `service` on background threads. Listening when it returns; keep
/// the returned server alive for as long as it should serve.
pub fn serve<F: GuestFacts + 'static>(
    addr: &str,
    service: AgentService<F>,
) -> Result<ttrpc::Server, ServeError> {
    let service: Arc<dyn Agent + Send + Sync> = Arc::new(service);
    let mut server = ttrpc::Server::new()
        .bind(addr)
        .map_err(|source| ServeError::Bind {
            addr: addr.into(),
            source,
        })?
        .register_service(create_agent(service))
        // Per connection: one call at a time is the common case; a few idle
        // workers are plenty in a small guest.
        .set_thread_count_min(1)
        .set_thread_count_default(2)
        .set_thread_count_max(4);
    server.start().map_err(|source| ServeError::Start {
        addr: addr.into(),
        source,
    })?;
    Ok(server)
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
    use crate::testing::{FakeFacts, UnixAgent};

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

    #[test]
    fn vsock_address_any_cid() {
        assert_eq!(vsock_address(1024), "vsock://-1:1024");
    }

    #[test]
    fn bind_failure_names_the_address() {
        let Err(e) = serve(
            "unix:///nonexistent-dir/agent.sock",
            AgentService::new(FakeFacts::default(), Box::new(|| {})),
        ) else {
            panic!("bound in a directory that does not exist");
        };
        assert!(e.to_string().contains("/nonexistent-dir/agent.sock"), "{e}");
    }
}
