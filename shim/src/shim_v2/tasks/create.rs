//! Create: the door of the task service. The id must be one containerd
//! itself would accept; the Create reserves it before it mounts anything
//! ([`Reservation`]), so that a second Create of the id fails at once and
//! Shutdown waits for it; then the spec is adapted for the guest, the VM
//! started (or found), the rootfs and volumes attached, the stdio opened
//! and the container made in the guest.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use husk_shim_protos::shim::{CreateTaskRequest, CreateTaskResponse};
use husk_shim_protos::task_events::{TaskCreate, TaskIO};
use protobuf::MessageField;

use super::process::{lock, Container, Process};
use super::Tasks;
use crate::agent_client::stdio::is_valid_id;
use crate::agent_client::GuestSteps;
use crate::shim_v2::cmd::POD_ANNOTATIONS;
use crate::shim_v2::error::TaskError;
use crate::shim_v2::events::{to_any, topic};
use crate::shim_v2::guest::PodRequest;
use crate::shim_v2::io::{check_output_path, StdioPaths};
use crate::shim_v2::pod::GUEST_SHARE;
use crate::shim_v2::spec;

/// Whether `id` is a container or exec id containerd itself would accept
/// (its identifier rule, `^[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*$`) within
/// the guest protocol's 64 bytes: no `.`, `..`, leading dot or `..` inside.
pub fn is_task_id(id: &str) -> bool {
    if !is_valid_id(id) {
        return false;
    }
    let b = id.as_bytes();
    let sep = |c: u8| matches!(c, b'.' | b'_' | b'-');
    !sep(b[0]) && !sep(b[b.len() - 1]) && !b.windows(2).any(|w| sep(w[0]) && sep(w[1]))
}

pub(super) const ID_RULE: &str =
    "must be 1..=64 of [A-Za-z0-9] runs joined by single '.', '_' or '-' (containerd's identifier rule)";

/// Ids of Creates in flight (reserved, not yet tasks), and whether
/// Shutdown closed the door.
#[derive(Default)]
pub(super) struct Creating {
    pub ids: HashSet<String>,
    pub closed: bool,
}

/// A Create's claim on its id, from its first check to its task's
/// registration: a second Create of the id fails at once, Shutdown
/// waits, the VM stays up. Dropped unregistered, it lets go and powers
/// an idle VM off.
struct Reservation<'a> {
    tasks: &'a Tasks,
    id: String,
    registered: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.registered {
            lock(&self.tasks.creating).ids.remove(&self.id);
            self.tasks.power_off_if_idle();
        }
    }
}

impl Tasks {
    /// Shutdown: true (and no Create is taken any more) when no task is
    /// left and no Create is in flight; false: the shim stays.
    pub fn try_shutdown(&self) -> bool {
        let _starting = lock(&self.pod_start);
        let containers = lock(&self.containers);
        let mut creating = lock(&self.creating);
        if !containers.is_empty() || !creating.ids.is_empty() {
            return false;
        }
        creating.closed = true;
        true
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>, TaskError> {
        let containers = lock(&self.containers);
        let mut creating = lock(&self.creating);
        if creating.closed {
            return Err(TaskError::precondition(id, "the shim is shutting down"));
        }
        if containers.contains_key(id) || !creating.ids.insert(id.to_owned()) {
            return Err(TaskError::AlreadyExists {
                task: id.to_owned(),
            });
        }
        Ok(Reservation {
            tasks: self,
            id: id.to_owned(),
            registered: false,
        })
    }

    /// The reserved id becomes task `c`.
    fn register(&self, mut r: Reservation<'_>, c: Arc<Container>) {
        let mut containers = lock(&self.containers);
        containers.insert(r.id.clone(), c);
        lock(&self.creating).ids.remove(&r.id);
        r.registered = true;
    }

    pub fn create(&self, req: &CreateTaskRequest) -> Result<CreateTaskResponse, TaskError> {
        let id = req.id.as_str();
        if !is_task_id(id) {
            return Err(TaskError::invalid(id, format!("id: {ID_RULE}")));
        }
        if !req.checkpoint.is_empty() {
            return Err(TaskError::Unsupported("creating a task from a checkpoint"));
        }
        // Before anything is mounted: a second Create of this id fails
        // here, and Shutdown and the VM's power-off wait for this one.
        let reservation = self.reserve(id)?;
        for path in [&req.stdout, &req.stderr] {
            check_output_path(path).map_err(|m| TaskError::invalid(id, format!("stdio: {m}")))?;
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec_path = bundle.join("config.json");
        let spec_json = std::fs::read(&spec_path)
            .map_err(|e| TaskError::invalid(id, format!("bundle {}: {e}", spec_path.display())))?;
        let request = pod_request(id, &spec_json)?;
        // Before the VM: a spec the guest cannot use starts nothing.
        let guest = spec::adapt(id, &bundle, &spec_json, GUEST_SHARE, &|sid| {
            self.sandbox_pid(sid)
        })?;
        let vm = self.ensure_vm(id, &request)?;
        let rootfs = vm.attach_rootfs(id, &bundle, &req.rootfs).and_then(|r| {
            vm.attach_volumes(id, &guest.volumes)
                .map(|()| r)
                .inspect_err(|_| {
                    vm.detach_rootfs(id);
                })
        })?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let init = Arc::new(Process::new(id, None, paths, Vec::new()));
        let created = self.attach_io(vm.as_ref(), &init).and_then(|stdio| {
            vm.api()
                .create_container(id, &guest.json, &rootfs, stdio)
                .map_err(|e| TaskError::agent(id, "create", e))
        });
        let steps = match created {
            Ok(steps) => steps,
            Err(e) => {
                init.stop_io();
                vm.detach_rootfs(id);
                return Err(e);
            }
        };
        let pod = pod_name(id, &request);
        let c = Arc::new(Container {
            id: id.to_owned(),
            pod,
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            init,
            execs: Mutex::new(HashMap::new()),
        });
        self.register(reservation, c.clone());
        tracing::info!(container = id, "created");
        log_guest_steps(&c, "create", &steps);
        self.publish(
            topic::CREATE,
            to_any(&TaskCreate {
                container_id: id.to_owned(),
                bundle: c.bundle.clone(),
                rootfs: c
                    .rootfs
                    .iter()
                    .map(|m| husk_shim_protos::task_events::mount::Mount {
                        type_: m.type_.clone(),
                        source: m.source.clone(),
                        target: m.target.clone(),
                        options: m.options.clone(),
                        ..Default::default()
                    })
                    .collect(),
                io: MessageField::some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid: 0,
                ..Default::default()
            }),
        );
        Ok(CreateTaskResponse::default())
    }
}

/// The pod a container belongs to, for log lines: its spec's pod
/// annotation (as `start` finds the shim), else its own id.
fn pod_name(id: &str, request: &PodRequest) -> String {
    POD_ANNOTATIONS
        .iter()
        .find_map(|k| request.annotations.get(*k))
        .filter(|p| !p.is_empty())
        .map_or_else(|| id.to_owned(), Clone::clone)
}

/// The agent's accounting of a container's create or start as one log
/// line (`guest steps container=… pod=… phase=create|start steps=[…]`,
/// the steps as compact JSON: `perf/density.py` reads it). Nothing from
/// an agent before API 6.
pub(super) fn log_guest_steps(c: &Container, phase: &'static str, steps: &GuestSteps) {
    if !steps.is_empty() {
        tracing::info!(container = %c.id, pod = %c.pod, phase = %phase, steps = %steps, "guest steps");
    }
}

/// What the spec says about the pod's VM (its annotations, its memory
/// limit); a spec that is not JSON is refused here.
fn pod_request(id: &str, spec_json: &[u8]) -> Result<PodRequest, TaskError> {
    let v: serde_json::Value = serde_json::from_slice(spec_json)
        .map_err(|e| TaskError::invalid(id, format!("config.json: {e}")))?;
    let annotations = v
        .get("annotations")
        .and_then(|a| a.as_object())
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    let memory_limit = v
        .pointer("/linux/resources/memory/limit")
        .and_then(serde_json::Value::as_i64);
    // A host path (not a guest /proc one this shim reported).
    let netns = v
        .pointer("/linux/namespaces")
        .and_then(serde_json::Value::as_array)
        .and_then(|list| {
            list.iter()
                .find(|n| n.get("type").and_then(|t| t.as_str()) == Some("network"))
        })
        .and_then(|n| n.get("path").and_then(|p| p.as_str()))
        .filter(|p| !p.is_empty() && !p.starts_with("/proc/"))
        .map(std::path::PathBuf::from);
    Ok(PodRequest {
        annotations,
        memory_limit,
        netns,
        cgroups_path: crate::shim_v2::host_cgroup::cgroups_path(&v),
    })
}
