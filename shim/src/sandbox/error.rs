//! The sandbox's errors: each names the sandbox.

use std::path::PathBuf;
use std::time::Duration;

use crate::agent_client::AgentClientError;

use super::run_dir::RunDirError;
use super::store::StoreError;

/// A sandbox failed: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("sandbox {sandbox}: {kind}")]
pub struct SandboxError {
    pub sandbox: String,
    #[source]
    pub kind: Box<SandboxErrorKind>,
}

impl SandboxError {
    pub fn new(sandbox: impl Into<String>, kind: SandboxErrorKind) -> Self {
        Self {
            sandbox: sandbox.into(),
            kind: Box::new(kind),
        }
    }
}

/// Why.
#[derive(Debug, thiserror::Error)]
pub enum SandboxErrorKind {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    #[error("its directory: {0}")]
    RunDir(#[from] RunDirError),
    #[error("disk image {}: {source}", path.display())]
    Disk {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template: {0}")]
    Template(#[from] StoreError),
    #[error("{0}")]
    Vm(#[from] husk_vmm::StartError),
    #[error("the agent did not answer: {0}")]
    Agent(#[source] AgentClientError),
    #[error("mounting share {tag:?} on {target} in the guest: {source}")]
    ShareMount {
        tag: String,
        target: String,
        #[source]
        source: Box<AgentClientError>,
    },
    #[error(
        "the VM ended before its agent answered ({reason}){}",
        tail_text(console_tail)
    )]
    EndedBeforeReady {
        reason: String,
        console_tail: Vec<String>,
    },
    #[error("the agent did not answer within {0:?} (the guest runs, but no agent listens)")]
    AgentTimeout(Duration),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM did not stop")]
    WouldNotStop,
}

fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let mut s = String::from("; last console lines:");
    for l in lines.iter().rev().take(8).rev() {
        s.push_str("\n  | ");
        s.push_str(l);
    }
    s
}
