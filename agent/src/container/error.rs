//! What the container library answers when something is refused or fails,
//! and the ttrpc code for each ([`ContainerError::code`]).

use std::io;

use thiserror::Error;

/// A spec (or process, or resources) document that is refused: the field,
/// as a JSON path (`process.args`, `linux.namespaces[2].type`), and why.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
    /// Something the spec names is not there (the rootfs, a bind source):
    /// NOT_FOUND rather than INVALID_ARGUMENT.
    pub missing: bool,
}

impl SpecError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
            missing: false,
        }
    }

    pub fn missing(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            missing: true,
            ..Self::new(field, reason)
        }
    }

    pub fn code(&self) -> ttrpc::Code {
        if self.missing {
            ttrpc::Code::NOT_FOUND
        } else {
            ttrpc::Code::INVALID_ARGUMENT
        }
    }
}

/// Why a container operation failed.
#[derive(Debug, Error)]
pub enum ContainerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("container {id:?}: not found")]
    NotFound { id: String },
    #[error("container {id:?}: process {exec_id:?} not found")]
    ProcessNotFound { id: String, exec_id: String },
    #[error("container {id:?}: already exists")]
    AlreadyExists { id: String },
    #[error("container {id:?}: process {exec_id:?} already exists")]
    ProcessExists { id: String, exec_id: String },
    #[error("container {id:?}{process}: is {state}, {want}")]
    State {
        id: String,
        /// `""` for the container, `" process \"x\""` for an exec.
        process: String,
        state: &'static str,
        want: &'static str,
    },
    #[error("container {id:?}: {what}: cgroups are off in this agent")]
    NoCgroups { id: String, what: &'static str },
    /// The child failed before exec: the step (and which spec entry), and
    /// errno.
    #[error("container {id:?}: starting {process}: {step}: {source}")]
    Start {
        id: String,
        process: String,
        step: String,
        source: io::Error,
    },
    #[error("container {id:?}: {what}: {source}")]
    Io {
        id: String,
        what: String,
        source: io::Error,
    },
}

impl ContainerError {
    pub(crate) fn io(id: &str, what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let (id, what) = (id.to_owned(), what.into());
        move |source| Self::Io { id, what, source }
    }

    /// The ttrpc code the error is answered with.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Self::Spec(e) => e.code(),
            Self::NotFound { .. } | Self::ProcessNotFound { .. } => ttrpc::Code::NOT_FOUND,
            Self::AlreadyExists { .. } | Self::ProcessExists { .. } => ttrpc::Code::ALREADY_EXISTS,
            Self::State { .. } | Self::NoCgroups { .. } => ttrpc::Code::FAILED_PRECONDITION,
            Self::Start { source, step, .. } => match source.raw_os_error() {
                Some(libc::ENOENT | libc::ENOTDIR) if step.starts_with("exec") => {
                    ttrpc::Code::NOT_FOUND
                }
                Some(libc::EACCES) if step.starts_with("exec") => ttrpc::Code::PERMISSION_DENIED,
                Some(libc::ENOEXEC) => ttrpc::Code::INVALID_ARGUMENT,
                _ => ttrpc::Code::INTERNAL,
            },
            Self::Io { .. } => ttrpc::Code::INTERNAL,
        }
    }
}
