//! The pod's VM under the task service: started with the first Create
//! (once an earlier VM's power-off is over), watched for its end and its
//! OOM events, powered off after the last Delete, stopped when a
//! SIGKILLed container never ends; and each started process's waiter,
//! which tells a lost connection (retried) from a VM that ended (exit
//! [`VM_GONE_EXIT`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use husk_shim_protos::task_events::{TaskExit, TaskOOM};
use protobuf::MessageField;

use super::oom::{self, sleep_while, OomHost};
use super::process::{lock, Process};
use super::{reported_pid, Tasks};
use crate::agent_client::AgentClientError;
use crate::shim_v2::error::TaskError;
use crate::shim_v2::events::{timestamp, to_any, topic, Throttle};
use crate::shim_v2::guest::{ContainerApi, PodRequest, PodVm};

/// How long an exit waits for its output to drain.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);
/// How long the guest gets to power off when the last task is deleted.
const POWER_OFF_DEADLINE: Duration = Duration::from_secs(10);
/// How long the guest has to report a SIGKILLed container's exit before
/// the pod's VM is stopped (`Tasks::confirm_kill`).
pub const KILL_CONFIRM: Duration = Duration::from_secs(30);
/// The power-off deadline then (the agent is asked first, half of it).
const KILL_POWER_OFF: Duration = Duration::from_secs(4);
/// The exit status of a process whose VM ended under it.
pub const VM_GONE_EXIT: u32 = 255;
/// A waiter whose connection or call failed tries again after this,
/// doubled per failure up to [`WAIT_RETRY_MAX`], while its VM runs.
const WAIT_RETRY_FIRST: Duration = Duration::from_millis(100);
const WAIT_RETRY_MAX: Duration = Duration::from_secs(5);
/// How often a waiter's failures are logged at warn level.
const WAIT_WARN_EVERY: Duration = Duration::from_secs(30);
/// How long the agent may stay unreachable (no connection made) under a
/// waiter before the pod's VM is taken for dead and stopped: a guest
/// halted in its kernel (`poweroff -f` without ACPI halts the vCPUs,
/// which never ends the VM) would otherwise hold its tasks RUNNING for
/// good. Several connect timeouts long, so a slow host is not mistaken
/// for it.
pub const AGENT_LOST: Duration = Duration::from_secs(60);

/// The pod's VM while it runs.
pub(super) struct PodSlot {
    pub vm: Arc<dyn PodVm>,
    /// Bumped per VM, so that a watcher of an old VM stands down.
    pub generation: u64,
    /// Its agent was taken for lost and the VM is being stopped.
    pub lost: bool,
}

/// The OOM pump's view of the service (and of the VM, held weakly).
struct PumpHost {
    tasks: std::sync::Weak<Tasks>,
    vm: std::sync::Weak<dyn PodVm>,
    generation: u64,
}

impl OomHost for PumpHost {
    fn current(&self) -> bool {
        self.tasks
            .upgrade()
            .is_some_and(|t| t.current_generation() == Some(self.generation))
    }

    fn connect(&self) -> Result<Box<dyn ContainerApi>, TaskError> {
        match self.vm.upgrade() {
            Some(vm) => vm.connect(),
            None => Err(TaskError::Pod {
                pod: String::new(),
                message: "the VM is gone".into(),
            }),
        }
    }

    fn is_task(&self, id: &str) -> bool {
        self.tasks
            .upgrade()
            .is_some_and(|t| lock(&t.containers).contains_key(id))
    }

    fn publish_oom(&self, id: &str) {
        if let Some(t) = self.tasks.upgrade() {
            t.publish(
                topic::OOM,
                to_any(&TaskOOM {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            );
        }
    }
}

/// Whether the agent's answer says the process is not there to wait for
/// (not worth another try).
fn is_final(e: &TaskError) -> bool {
    use ttrpc::Code;
    matches!(e, TaskError::Agent { source, .. } if matches!(source.as_ref(),
        AgentClientError::Rpc { code, .. }
            if matches!(*code, Code::NOT_FOUND | Code::INVALID_ARGUMENT | Code::FAILED_PRECONDITION)))
}

impl Tasks {
    /// The running VM and its generation.
    pub(super) fn slot(&self, task: &str) -> Result<(Arc<dyn PodVm>, u64), TaskError> {
        lock(&self.pod)
            .as_ref()
            .map(|s| (s.vm.clone(), s.generation))
            .ok_or_else(|| TaskError::precondition(task, "the pod's VM is not running"))
    }

    pub(super) fn vm(&self, task: &str) -> Result<Arc<dyn PodVm>, TaskError> {
        self.slot(task).map(|(vm, _)| vm)
    }

    pub(super) fn current_generation(&self) -> Option<u64> {
        lock(&self.pod).as_ref().map(|s| s.generation)
    }

    /// The running VM, or a new one for `request`. A new one starts only
    /// once an earlier VM of the pod has powered off: its teardown
    /// releases the pod's host files, which must not race the new VM's.
    pub(super) fn ensure_vm(
        &self,
        task: &str,
        request: &PodRequest,
    ) -> Result<Arc<dyn PodVm>, TaskError> {
        let mut generation = lock(&self.pod_start);
        if let Ok(vm) = self.vm(task) {
            return Ok(vm);
        }
        self.join_power_off();
        let vm = self.factory.start(request)?;
        *generation += 1;
        *lock(&self.pod) = Some(PodSlot {
            vm: vm.clone(),
            generation: *generation,
            lost: false,
        });
        self.watch(vm.clone(), *generation);
        Ok(vm)
    }

    /// The VM's end, and its OOM events. The watchers hold the VM only
    /// weakly (or not at all), so that the VM is released where the
    /// service lets go of it.
    fn watch(&self, vm: Arc<dyn PodVm>, generation: u64) {
        let me = self.me.clone();
        let weak = Arc::downgrade(&vm);
        let exits = std::thread::Builder::new()
            .name("husk-vm-watch".into())
            .spawn(move || loop {
                let Some(vm) = weak.upgrade() else {
                    return;
                };
                if let Some(why) = vm.wait_exit(Duration::from_secs(1)) {
                    drop(vm);
                    if let Some(t) = me.upgrade() {
                        t.vm_ended(generation, &why);
                    }
                    return;
                }
                drop(vm);
                match me.upgrade() {
                    Some(t) if t.current_generation() == Some(generation) => {}
                    _ => return,
                }
            });
        if let Err(e) = exits {
            tracing::error!(pod = vm.id(), error = %e, "cannot watch the VM");
        }
        let host = PumpHost {
            tasks: self.me.clone(),
            vm: Arc::downgrade(&vm),
            generation,
        };
        let events = std::thread::Builder::new()
            .name("husk-oom-watch".into())
            .spawn(move || oom::pump(&host));
        if let Err(e) = events {
            tracing::error!(error = %e, "cannot watch OOM events");
        }
    }

    /// The VM ended under its tasks: every process not stopped ends with
    /// [`VM_GONE_EXIT`].
    fn vm_ended(&self, generation: u64, why: &str) {
        let slot = {
            let mut pod = lock(&self.pod);
            match pod.as_ref() {
                Some(s) if s.generation == generation => pod.take(),
                _ => return,
            }
        };
        if let Some(slot) = slot {
            // Its host files go now, not when the last holder lets go.
            self.power_off_tracked(slot.vm, POWER_OFF_DEADLINE);
        }
        let containers: Vec<_> = lock(&self.containers).values().cloned().collect();
        if !containers.is_empty() {
            tracing::error!(outcome = why, "the pod's VM ended under its tasks");
        }
        for c in containers {
            for p in c.processes() {
                self.process_ended(&p, VM_GONE_EXIT);
            }
        }
    }

    /// `p` ended with `status` (its output is through): stopped, waiters
    /// woken, TaskExit published, once.
    pub(super) fn process_ended(&self, p: &Process, status: u32) {
        if !p.stop(status) {
            return;
        }
        let (_, pid, exit) = p.snapshot();
        let at = exit.map_or_else(std::time::SystemTime::now, |e| e.at);
        tracing::info!(process = %p.what(), status, "exited");
        self.publish(
            topic::EXIT,
            to_any(&TaskExit {
                container_id: p.container.clone(),
                id: p.name().to_owned(),
                pid: reported_pid(pid),
                exit_status: status,
                exited_at: MessageField::some(timestamp(at)),
                ..Default::default()
            }),
        );
    }

    /// The agent of the VM of `generation` has not let a waiter connect
    /// for [`Self::agent_lost`]: the VM is stopped (once), which ends its
    /// processes (exit [`VM_GONE_EXIT`], published as the VM's end).
    fn agent_lost(&self, generation: u64, p: &Process, e: &TaskError) {
        let vm = match lock(&self.pod).as_mut() {
            Some(s) if s.generation == generation && !s.lost => {
                s.lost = true;
                s.vm.clone()
            }
            _ => return,
        };
        tracing::error!(process = %p.what(), error = %e, unreachable_s = self.agent_lost.as_secs_f64(),
            "the pod's agent stays unreachable; stopping the pod's VM");
        self.power_off_tracked(vm, KILL_POWER_OFF);
    }

    /// Waits for a started process on a connection of its own. A failed
    /// connect or call is tried again (backing off) while the VM of
    /// `generation` runs: a slow host is no exit. Once that VM has ended,
    /// the process ended with it ([`VM_GONE_EXIT`]); an agent that stays
    /// unreachable for [`Self::agent_lost`] ends the VM.
    pub(super) fn spawn_waiter(&self, vm: Arc<dyn PodVm>, generation: u64, p: Arc<Process>) {
        let me = self.me.clone();
        let grace = self.agent_lost;
        let spawned = std::thread::Builder::new()
            .name("husk-wait".into())
            .spawn(move || {
                let warn = Throttle::new(WAIT_WARN_EVERY);
                let mut retry = WAIT_RETRY_FIRST;
                // Since when no connection could be made.
                let mut unreachable: Option<Instant> = None;
                let status = loop {
                    if vm.wait_exit(Duration::ZERO).is_some() {
                        break VM_GONE_EXIT;
                    }
                    let asked = Instant::now();
                    let result = vm
                        .connect()
                        .inspect(|_| unreachable = None)
                        .and_then(|api| {
                            api.wait_process(&p.container, p.exec_id.as_deref(), None)
                                .map_err(|e| TaskError::agent(&p.container, "wait", e))
                        });
                    let e = match result {
                        Ok(exit) => break u32::try_from(exit.shell_code()).unwrap_or(VM_GONE_EXIT),
                        Err(e) => e,
                    };
                    if is_final(&e) {
                        tracing::warn!(process = %p.what(), error = %e, "lost the process");
                        break VM_GONE_EXIT;
                    }
                    if vm.wait_exit(Duration::ZERO).is_some() {
                        break VM_GONE_EXIT;
                    }
                    let Some(t) = me.upgrade() else {
                        return;
                    };
                    if t.current_generation() != Some(generation) || p.is_stopped() {
                        // Its end was (or is being) reported elsewhere.
                        return;
                    }
                    if unreachable.get_or_insert_with(Instant::now).elapsed() >= grace {
                        t.agent_lost(generation, &p, &e);
                    }
                    drop(t);
                    if let Some(suppressed) = warn.ready() {
                        tracing::warn!(process = %p.what(), error = %e, suppressed,
                            "waiting for the process failed; trying again");
                    }
                    if asked.elapsed() > WAIT_RETRY_MAX {
                        // A call that held for long: a fresh failure.
                        retry = WAIT_RETRY_FIRST;
                    }
                    sleep_while(retry, || !p.is_stopped());
                    retry = (retry * 2).min(WAIT_RETRY_MAX);
                };
                if let Some(io) = lock(&p.io).as_mut() {
                    io.finish(OUTPUT_GRACE);
                }
                if let Some(t) = me.upgrade() {
                    t.process_ended(&p, status);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a waiter thread");
        }
    }

    /// A container SIGKILLed must end: when the guest has not reported
    /// its exit within [`KILL_CONFIRM`] (a guest stuck in its kernel, e.g.
    /// under a fork bomb with processes in uninterruptible waits), the
    /// pod's VM is stopped, which ends every process of the pod (their
    /// exits are published as the VM's end), so that containerd's
    /// StopContainer / StopPodSandbox return.
    pub(super) fn confirm_kill(&self, p: &Arc<Process>) {
        let Some(generation) = self.current_generation() else {
            return;
        };
        let me = self.me.clone();
        let p = p.clone();
        let grace = self.kill_confirm;
        let spawned = std::thread::Builder::new()
            .name("husk-kill-watch".into())
            .spawn(move || {
                if p.wait_stopped_for(grace) {
                    return;
                }
                let Some(t) = me.upgrade() else {
                    return;
                };
                let vm = match lock(&t.pod).as_ref() {
                    Some(s) if s.generation == generation => s.vm.clone(),
                    _ => return,
                };
                tracing::error!(process = %p.what(), grace_s = grace.as_secs_f64(),
                    "the guest has not ended a SIGKILLed container; stopping the pod's VM");
                t.power_off_tracked(vm, KILL_POWER_OFF);
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the kill watcher");
        }
    }

    /// With no task left and no Create in flight, the VM powers off (in
    /// the background; Shutdown and the next VM's start wait for it).
    pub(super) fn power_off_if_idle(&self) {
        let _starting = lock(&self.pod_start);
        {
            let containers = lock(&self.containers);
            if !containers.is_empty() || !lock(&self.creating).ids.is_empty() {
                return;
            }
        }
        let Some(slot) = lock(&self.pod).take() else {
            return;
        };
        tracing::info!(pod = slot.vm.id(), "last task deleted; powering the VM off");
        self.power_off_tracked(slot.vm, POWER_OFF_DEADLINE);
    }

    /// Powers `vm` off (or, if it ended, releases its host files) on a
    /// thread that Shutdown and the next VM's start wait for: the pod's
    /// host files (mounts, directory, host cgroup) are released before the
    /// shim exits or another VM takes the pod's place, whoever else still
    /// holds the VM.
    fn power_off_tracked(&self, vm: Arc<dyn PodVm>, deadline: Duration) {
        let spawned = std::thread::Builder::new()
            .name("husk-power-off".into())
            .spawn(move || {
                vm.power_off(deadline);
                drop(vm);
            });
        match spawned {
            Ok(h) => lock(&self.stopping).push(h),
            Err(e) => tracing::error!(error = %e, "cannot start the power-off thread"),
        }
    }

    /// Waits until VMs powering off are gone (Shutdown, a new VM).
    pub fn join_power_off(&self) {
        let handles: Vec<_> = lock(&self.stopping).drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }

    /// Ends everything now (the shim is going away): processes, VM.
    pub fn teardown(&self) {
        let containers: Vec<_> = lock(&self.containers).drain().map(|(_, c)| c).collect();
        for c in &containers {
            for p in c.processes() {
                p.stop_io();
                // Wait callers and containerd learn that it ended.
                self.process_ended(&p, VM_GONE_EXIT);
            }
        }
        if let Some(slot) = lock(&self.pod).take() {
            slot.vm.power_off(POWER_OFF_DEADLINE);
        }
        self.join_power_off();
    }
}
