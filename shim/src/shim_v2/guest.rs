//! What the task service needs from a pod's VM, as traits, so that the
//! service is tested against a fake guest ([`ContainerApi`], [`PodVm`],
//! [`PodFactory`]); the real ones are [`AgentClient`] and
//! [`super::pod::Pod`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use husk_shim_protos::mount::Mount;

use super::error::TaskError;
use super::spec::Volume;
use crate::agent_client::{
    AgentClient, AgentClientError, ContainerEvent, ContainerStats, GuestSteps, ProcessExit,
    ProcessStreams, SignalTarget, Started, Stdio, TtySize,
};

/// The agent's container API (see [`AgentClient`]'s methods of the same
/// names).
pub trait ContainerApi: Send + Sync {
    fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &str,
        stdio: Stdio,
    ) -> Result<GuestSteps, AgentClientError>;
    fn start_container(&self, id: &str) -> Result<Started, AgentClientError>;
    fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: Stdio,
    ) -> Result<u32, AgentClientError>;
    fn signal_process(
        &self,
        id: &str,
        target: SignalTarget<'_>,
        signal: i32,
    ) -> Result<(), AgentClientError>;
    fn wait_process(
        &self,
        id: &str,
        exec_id: Option<&str>,
        bound: Option<Duration>,
    ) -> Result<ProcessExit, AgentClientError>;
    fn resize_tty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        size: TtySize,
    ) -> Result<(), AgentClientError>;
    fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), AgentClientError>;
    fn list_pids(&self, id: &str) -> Result<Vec<u32>, AgentClientError>;
    fn container_stats(&self, id: &str) -> Result<ContainerStats, AgentClientError>;
    fn pause_container(&self, id: &str) -> Result<(), AgentClientError>;
    fn resume_container(&self, id: &str) -> Result<(), AgentClientError>;
    fn update_resources(&self, id: &str, resources_json: &[u8]) -> Result<(), AgentClientError>;
    fn remove_container(&self, id: &str) -> Result<(), AgentClientError>;
    fn wait_event(&self, wait: Duration) -> Result<Option<ContainerEvent>, AgentClientError>;
}

impl ContainerApi for AgentClient {
    fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: &str,
        stdio: Stdio,
    ) -> Result<GuestSteps, AgentClientError> {
        AgentClient::create_container(self, id, spec_json, rootfs, stdio)
    }
    fn start_container(&self, id: &str) -> Result<Started, AgentClientError> {
        AgentClient::start_container(self, id)
    }
    fn exec_process(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
        stdio: Stdio,
    ) -> Result<u32, AgentClientError> {
        AgentClient::exec_process(self, id, exec_id, process_json, stdio)
    }
    fn signal_process(
        &self,
        id: &str,
        target: SignalTarget<'_>,
        signal: i32,
    ) -> Result<(), AgentClientError> {
        AgentClient::signal_process(self, id, target, signal)
    }
    fn wait_process(
        &self,
        id: &str,
        exec_id: Option<&str>,
        bound: Option<Duration>,
    ) -> Result<ProcessExit, AgentClientError> {
        AgentClient::wait_process(self, id, exec_id, bound)
    }
    fn resize_tty(
        &self,
        id: &str,
        exec_id: Option<&str>,
        size: TtySize,
    ) -> Result<(), AgentClientError> {
        AgentClient::resize_tty(self, id, exec_id, size)
    }
    fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<(), AgentClientError> {
        AgentClient::close_stdin(self, id, exec_id)
    }
    fn list_pids(&self, id: &str) -> Result<Vec<u32>, AgentClientError> {
        AgentClient::list_pids(self, id)
    }
    fn container_stats(&self, id: &str) -> Result<ContainerStats, AgentClientError> {
        AgentClient::container_stats(self, id)
    }
    fn pause_container(&self, id: &str) -> Result<(), AgentClientError> {
        AgentClient::pause_container(self, id)
    }
    fn resume_container(&self, id: &str) -> Result<(), AgentClientError> {
        AgentClient::resume_container(self, id)
    }
    fn update_resources(&self, id: &str, resources_json: &[u8]) -> Result<(), AgentClientError> {
        AgentClient::update_resources(self, id, resources_json)
    }
    fn remove_container(&self, id: &str) -> Result<(), AgentClientError> {
        AgentClient::remove_container(self, id)
    }
    fn wait_event(&self, wait: Duration) -> Result<Option<ContainerEvent>, AgentClientError> {
        AgentClient::wait_event(self, wait)
    }
}

/// One pod's running VM.
pub trait PodVm: Send + Sync {
    /// The pod's id (logs, errors).
    fn id(&self) -> &str;
    /// The agent, for short calls.
    fn api(&self) -> &dyn ContainerApi;
    /// A connection of its own, for a call that blocks for long
    /// (`WaitProcess`, `WaitEvent`): the agent serves each connection's
    /// calls with a bounded pool of workers.
    fn connect(&self) -> Result<Box<dyn ContainerApi>, TaskError>;
    /// Makes container `cid`'s root file system visible to the guest:
    /// `mounts` (containerd's, e.g. an overlay) or else `<bundle>/rootfs`;
    /// returns its path in the guest.
    fn attach_rootfs(
        &self,
        cid: &str,
        bundle: &Path,
        mounts: &[Mount],
    ) -> Result<String, TaskError>;
    /// Makes container `cid`'s bind volumes visible to the guest, at the
    /// paths [`super::spec::adapt`] gave their sources (after
    /// [`attach_rootfs`](Self::attach_rootfs)); on error none stays.
    fn attach_volumes(&self, cid: &str, volumes: &[Volume]) -> Result<(), TaskError>;
    /// Undoes [`attach_rootfs`](Self::attach_rootfs) and
    /// [`attach_volumes`](Self::attach_volumes).
    fn detach_rootfs(&self, cid: &str);
    /// Opens a process's stdio streams (before it is made).
    fn open_streams(
        &self,
        cid: &str,
        exec_id: Option<&str>,
        stdio: &Stdio,
    ) -> Result<ProcessStreams, TaskError>;
    /// Blocks until the VM has ended or `timeout` passed; returns why it
    /// ended, if it did.
    fn wait_exit(&self, timeout: Duration) -> Option<String>;
    /// Powers the guest off (the VM is stopped outright after `deadline`).
    fn power_off(&self, deadline: Duration);
}

/// What the first task of a pod says about the VM it needs.
#[derive(Debug, Clone, Default)]
pub struct PodRequest {
    /// The spec's annotations (`io.husk.config.*` overrides).
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The first container's memory limit, bytes.
    pub memory_limit: Option<i64>,
    /// The pod's host network namespace (CNI's `/var/run/netns/cni-…`,
    /// the sandbox spec's network namespace path), whose veth the VM is
    /// connected to; `None`: no network (the VM's NIC has no backend).
    pub netns: Option<std::path::PathBuf>,
    /// The first container's `linux.cgroupsPath` (the sandbox's, for a
    /// CRI pod): the host cgroup the shim joins.
    pub cgroups_path: Option<String>,
}

/// Starts pod VMs.
pub trait PodFactory: Send + Sync {
    fn start(&self, request: &PodRequest) -> Result<Arc<dyn PodVm>, TaskError>;
}
