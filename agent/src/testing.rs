//! Test doubles for host-side tests (here and in the shim, through the
//! `test-support` feature): fixed guest facts that record the identity
//! changes asked of them, and the real service on a Unix socket.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::facts::{FactsError, GuestFacts, MemInfo};
use crate::identity::GuestControl;
use crate::service::{serve, AgentService, ServeError};

/// What [`FakeFacts`] was asked to change (shared by its clones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every seed `reseed_rng` got, in order.
    pub seeds: Vec<Vec<u8>>,
    /// The last `set_hostname`; `hostname()` reports it from then on.
    pub hostname: Option<String>,
    /// The last `set_realtime`.
    pub realtime_ns: Option<i64>,
}

/// Guest facts with fixed values; identity changes are recorded in
/// [`applied`](Self::applied), never made.
#[derive(Debug, Clone)]
pub struct FakeFacts {
    pub kernel_release: String,
    pub hostname: String,
    pub boot_id: String,
    pub mem: MemInfo,
    pub uptime_seconds: f64,
    /// Make `meminfo` fail as if `/proc/meminfo` were unreadable.
    pub fail_meminfo: bool,
    /// The guest's wall clock before any `set_realtime`, ns since the epoch
    /// (`set_realtime` returns its step from here).
    pub realtime_ns: i64,
    /// Make `reseed_rng` fail with EPERM.
    pub fail_reseed: bool,
    /// Make `set_realtime` fail with EINVAL.
    pub fail_set_realtime: bool,
    /// What was changed, shared by every clone.
    pub applied: Arc<Mutex<Applied>>,
}

impl FakeFacts {
    /// What was changed so far.
    pub fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
            // 2023-11-14T22:13:20Z.
            realtime_ns: 1_700_000_000_000_000_000,
            fail_reseed: false,
            fail_set_realtime: false,
            applied: Arc::default(),
        }
    }
}

impl GuestFacts for FakeFacts {
    fn kernel_release(&self) -> Result<String, FactsError> {
        Ok(self.kernel_release.clone())
    }

    fn hostname(&self) -> Result<String, FactsError> {
        Ok(self
            .applied()
            .hostname
            .clone()
            .unwrap_or_else(|| self.hostname.clone()))
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

impl GuestControl for FakeFacts {
    fn reseed_rng(&self, seed: &[u8]) -> io::Result<()> {
        if self.fail_reseed {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.applied().seeds.push(seed.to_vec());
        Ok(())
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.applied().hostname = Some(name.to_owned());
        Ok(())
    }

    fn set_realtime(&self, unix_ns: i64) -> io::Result<i64> {
        if self.fail_set_realtime {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut applied = self.applied();
        let before = applied.realtime_ns.unwrap_or(self.realtime_ns);
        applied.realtime_ns = Some(unix_ns);
        Ok(unix_ns.saturating_sub(before))
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
