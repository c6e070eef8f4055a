//! Test doubles for host-side tests (here and in the shim, through the
//! `test-support` feature): fixed guest facts, and the real service on a Unix
//! socket.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::facts::{FactsError, GuestFacts, MemInfo};
use crate::service::{serve, AgentService, ServeError};

/// Guest facts with fixed values.
#[derive(Debug, Clone)]
pub struct FakeFacts {
    pub kernel_release: String,
    pub hostname: String,
    pub boot_id: String,
    pub mem: MemInfo,
    pub uptime_seconds: f64,
    /// Make `meminfo` fail as if `/proc/meminfo` were unreadable.
    pub fail_meminfo: bool,
}

impl Default for FakeFacts {
    fn default() -> Self {
        Self {
            kernel_release: "6.1.0-fake".into(),
            hostname: "fake-guest".into(),
            boot_id: "0f4b9a52-6c1d-4c39-9d43-5a0e1f7c2b11".into(),
            mem: MemInfo {
                total_kib: 118_840,
                available_kib: 99_828,
            },
            uptime_seconds: 1.5,
            fail_meminfo: false,
        }
    }
}

impl GuestFacts for FakeFacts {
    fn kernel_release(&self) -> Result<String, FactsError> {
        Ok(self.kernel_release.clone())
    }

    fn hostname(&self) -> Result<String, FactsError> {
        Ok(self.hostname.clone())
    }

    fn boot_id(&self) -> Result<String, FactsError> {
        Ok(self.boot_id.clone())
    }

    fn meminfo(&self) -> Result<MemInfo, FactsError> {
        if self.fail_meminfo {
            return Err(FactsError::Read {
                path: "/proc/meminfo",
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        Ok(self.mem)
    }

    fn uptime_seconds(&self) -> Result<f64, FactsError> {
        Ok(self.uptime_seconds)
    }
}

/// The real [`AgentService`] over fake facts, served on a fresh Unix socket;
/// counts `Shutdown` requests instead of powering off. Stops and removes the
/// socket when dropped.
pub struct UnixAgent {
    pub path: PathBuf,
    pub shutdowns: Arc<AtomicUsize>,
    server: Option<ttrpc::Server>,
}

impl UnixAgent {
    /// Serves on `$TMPDIR/husk-agent-<pid>-<name>-<n>.sock`.
    pub fn start(name: &str, facts: FakeFacts) -> Result<Self, ServeError> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("husk-agent-{}-{name}-{n}.sock", std::process::id()));
        // A stale socket from an earlier run with the same pid.
        let _ = std::fs::remove_file(&path);
        let shutdowns = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&shutdowns);
        let service = AgentService::new(
            facts,
            Box::new(move || {
                counter.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let server = serve(&format!("unix://{}", path.display()), service)?;
        Ok(Self {
            path,
            shutdowns,
            server: Some(server),
        })
    }

    /// The ttrpc address (`unix://PATH`).
    pub fn address(&self) -> String {
        format!("unix://{}", self.path.display())
    }
}

impl Drop for UnixAgent {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
