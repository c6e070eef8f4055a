//! The `containerd.task.v2.Task` ttrpc service: decodes nothing itself,
//! hands each request to [`Tasks`] and turns its errors into ttrpc
//! statuses with their codes.

use std::sync::Arc;

use husk_shim_protos::shim::*;
use husk_shim_protos::shim_ttrpc::Task;
use protobuf::well_known_types::empty::Empty;
use ttrpc::TtrpcContext;

use super::error::TaskError;
use super::tasks::Tasks;

/// The service containerd talks to.
pub struct TaskService {
    pub tasks: Arc<Tasks>,
    /// Called when `Shutdown` is accepted (no task left): the shim exits
    /// once the reply is out.
    pub on_shutdown: Box<dyn Fn() + Send + Sync>,
}

fn done(method: &'static str, r: Result<(), TaskError>) -> ttrpc::Result<Empty> {
    answer(method, r.map(|()| Empty::new()))
}

fn answer<T>(method: &'static str, r: Result<T, TaskError>) -> ttrpc::Result<T> {
    r.map_err(|e| {
        tracing::warn!(method, code = ?e.code(), error = %crate::cli::error_chain(&e), "request failed");
        e.into()
    })
}

impl Task for TaskService {
    fn state(&self, _: &TtrpcContext, r: StateRequest) -> ttrpc::Result<StateResponse> {
        answer("State", self.tasks.state(&r))
    }
    fn create(&self, _: &TtrpcContext, r: CreateTaskRequest) -> ttrpc::Result<CreateTaskResponse> {
        tracing::debug!(id = %r.id, bundle = %r.bundle, "Create");
        answer("Create", self.tasks.create(&r))
    }
    fn start(&self, _: &TtrpcContext, r: StartRequest) -> ttrpc::Result<StartResponse> {
        answer("Start", self.tasks.start(&r))
    }
    fn delete(&self, _: &TtrpcContext, r: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        answer("Delete", self.tasks.delete(&r))
    }
    fn pids(&self, _: &TtrpcContext, r: PidsRequest) -> ttrpc::Result<PidsResponse> {
        answer("Pids", self.tasks.pids(&r))
    }
    fn pause(&self, _: &TtrpcContext, r: PauseRequest) -> ttrpc::Result<Empty> {
        done("Pause", self.tasks.pause(&r))
    }
    fn resume(&self, _: &TtrpcContext, r: ResumeRequest) -> ttrpc::Result<Empty> {
        done("Resume", self.tasks.resume(&r))
    }
    fn checkpoint(&self, _: &TtrpcContext, _: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        done("Checkpoint", Err(TaskError::Unsupported("checkpoint")))
    }
    fn kill(&self, _: &TtrpcContext, r: KillRequest) -> ttrpc::Result<Empty> {
        done("Kill", self.tasks.kill(&r))
    }
    fn exec(&self, _: &TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<Empty> {
        done("Exec", self.tasks.exec(&r))
    }
    fn resize_pty(&self, _: &TtrpcContext, r: ResizePtyRequest) -> ttrpc::Result<Empty> {
        done("ResizePty", self.tasks.resize_pty(&r))
    }
    fn close_io(&self, _: &TtrpcContext, r: CloseIORequest) -> ttrpc::Result<Empty> {
        done("CloseIO", self.tasks.close_io(&r))
    }
    fn update(&self, _: &TtrpcContext, r: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        done("Update", self.tasks.update(&r))
    }
    fn wait(&self, _: &TtrpcContext, r: WaitRequest) -> ttrpc::Result<WaitResponse> {
        answer("Wait", self.tasks.wait(&r))
    }
    fn stats(&self, _: &TtrpcContext, r: StatsRequest) -> ttrpc::Result<StatsResponse> {
        answer("Stats", self.tasks.stats(&r))
    }
    fn connect(&self, _: &TtrpcContext, r: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        answer("Connect", self.tasks.connect(&r))
    }
    fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        // No task left and no Create in flight (a Create racing the
        // Shutdown keeps the shim, and its VM, up; later ones are refused).
        if self.tasks.try_shutdown() {
            tracing::info!("shutdown: no task left");
            self.tasks.join_power_off();
            (self.on_shutdown)();
        } else {
            tracing::debug!("shutdown asked with tasks left; staying");
        }
        Ok(Empty::new())
    }
}
