//! The Task service's errors: each keeps the ttrpc code containerd reads
//! (`NOT_FOUND` for an unknown task or exec, `ALREADY_EXISTS`,
//! `INVALID_ARGUMENT` naming the field, `FAILED_PRECONDITION` for the wrong
//! state) and names the task it is about.

use crate::agent_client::AgentClientError;

/// Why a Task request failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("task {task}: not found")]
    NotFound { task: String },
    #[error("task {task} exec {exec}: not found")]
    ExecNotFound { task: String, exec: String },
    #[error("task {task}: already exists")]
    AlreadyExists { task: String },
    #[error("task {task}: {message}")]
    InvalidArgument { task: String, message: String },
    #[error("task {task}: {message}")]
    FailedPrecondition { task: String, message: String },
    /// The agent refused or failed; its code is kept.
    #[error("task {task}: {what}: {source}")]
    Agent {
        task: String,
        what: &'static str,
        source: Box<AgentClientError>,
    },
    /// The pod's VM could not start, or is gone.
    #[error("pod {pod}: {message}")]
    Pod { pod: String, message: String },
    #[error("task {task}: {message}")]
    Internal { task: String, message: String },
    #[error("{0} is not supported by husk")]
    Unsupported(&'static str),
}

impl TaskError {
    pub fn invalid(task: &str, message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            task: task.to_owned(),
            message: message.into(),
        }
    }

    pub fn precondition(task: &str, message: impl Into<String>) -> Self {
        Self::FailedPrecondition {
            task: task.to_owned(),
            message: message.into(),
        }
    }

    pub fn internal(task: &str, message: impl Into<String>) -> Self {
        Self::Internal {
            task: task.to_owned(),
            message: message.into(),
        }
    }

    pub fn agent(task: &str, what: &'static str, source: AgentClientError) -> Self {
        Self::Agent {
            task: task.to_owned(),
            what,
            source: Box::new(source),
        }
    }

    /// The ttrpc code containerd sees.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self {
            Self::NotFound { .. } | Self::ExecNotFound { .. } => Code::NOT_FOUND,
            Self::AlreadyExists { .. } => Code::ALREADY_EXISTS,
            Self::InvalidArgument { .. } => Code::INVALID_ARGUMENT,
            Self::FailedPrecondition { .. } => Code::FAILED_PRECONDITION,
            Self::Agent { source, .. } => match source.as_ref() {
                AgentClientError::Rpc { code, .. } => *code,
                AgentClientError::Timeout { .. } => Code::DEADLINE_EXCEEDED,
                AgentClientError::TooLarge { .. } => Code::INVALID_ARGUMENT,
                AgentClientError::Unreachable { .. }
                | AgentClientError::Setup { .. }
                | AgentClientError::Transport { .. } => Code::UNAVAILABLE,
            },
            Self::Pod { .. } => Code::UNAVAILABLE,
            Self::Internal { .. } => Code::INTERNAL,
            Self::Unsupported(_) => Code::UNIMPLEMENTED,
        }
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), crate::cli::error_chain(&e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_survive() {
        let e = TaskError::agent(
            "c1",
            "create",
            AgentClientError::Rpc {
                method: "CreateContainer",
                code: ttrpc::Code::INVALID_ARGUMENT,
                message: "process.args: empty".into(),
            },
        );
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT);
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
                assert!(s.message().contains("task c1: create"), "{}", s.message());
                assert!(s.message().contains("process.args"), "{}", s.message());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            TaskError::NotFound { task: "x".into() }.code(),
            ttrpc::Code::NOT_FOUND
        );
    }
}
