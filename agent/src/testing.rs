//! Test doubles for host-side tests (here and in the shim, through the
//! `test-support` feature): fixed guest facts that record the identity
//! changes and mounts asked of them, a fake `/sys/block` tree, and the real
//! service on a Unix socket.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::facts::{FactsError, GuestFacts, MemInfo};
use crate::identity::GuestControl;
use crate::mount::{GuestMounts, MountCall};
use crate::reaper::{ReapMode, Reaper};
use crate::rpc::RpcServer;
use crate::service::{serve, AgentService, ContainerService, ServeError};

/// What [`FakeFacts`] was asked to change (shared by its clones).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every seed `reseed_rng` got, in order.
    pub seeds: Vec<Vec<u8>>,
    /// The last `set_hostname`; `hostname()` reports it from then on.
    pub hostname: Option<String>,
    /// The last `set_realtime`.
    pub realtime_ns: Option<i64>,
    /// Every mount point created, in order.
    pub mount_points: Vec<PathBuf>,
    /// What is mounted now, in mount order (`unmount` removes).
    pub mounts: Vec<MountCall>,
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
    /// Where `GuestMounts::sysfs_root` points (see [`FakeSysfs`]); by
    /// default a path that does not exist.
    pub sysfs_root: PathBuf,
    /// Make `mount` fail with this errno.
    pub fail_mount: Option<i32>,
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
            sysfs_root: PathBuf::from("/nonexistent-husk-fake-sysfs"),
            fail_mount: None,
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

/// Records mounts instead of making them: `unmount` of a target nothing is
/// mounted on fails with EINVAL, as umount2(2) does.
impl GuestMounts for FakeFacts {
    fn sysfs_root(&self) -> &Path {
        &self.sysfs_root
    }

    fn create_mount_point(&self, target: &Path) -> io::Result<()> {
        self.applied().mount_points.push(target.to_owned());
        Ok(())
    }

    fn mount(&self, call: &MountCall) -> io::Result<()> {
        if let Some(errno) = self.fail_mount {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.applied().mounts.push(call.clone());
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        let mut applied = self.applied();
        let Some(i) = applied.mounts.iter().rposition(|m| m.target == target) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        applied.mounts.remove(i);
        Ok(())
    }
}

/// A fake sysfs tree in a fresh temporary directory (removed on drop):
/// `block/<name>/serial` for each [`disk`](Self::disk).
pub struct FakeSysfs {
    root: PathBuf,
}

impl FakeSysfs {
    /// An empty `block/` under `$TMPDIR/husk-sysfs-<pid>-<name>-<n>`.
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let root =
            std::env::temp_dir().join(format!("husk-sysfs-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        if let Err(e) = std::fs::create_dir_all(root.join("block")) {
            panic!("create {}: {e}", root.display());
        }
        Self { root }
    }

    /// Adds disk `name` with this serial file content (`None`: no serial
    /// file).
    pub fn disk(&self, name: &str, serial: Option<&str>) {
        let dir = self.root.join("block").join(name);
        let made = std::fs::create_dir_all(&dir).and_then(|()| match serial {
            Some(s) => std::fs::write(dir.join("serial"), s),
            None => Ok(()),
        });
        if let Err(e) = made {
            panic!("fake disk {}: {e}", dir.display());
        }
    }

    /// The sysfs root (`FakeFacts::sysfs_root`).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for FakeSysfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The real [`AgentService`] over fake facts, served on a fresh Unix socket;
/// counts `Shutdown` requests instead of powering off, and runs `Exec`'s
/// commands for real (a [`ReapMode::PerChild`] reaper unless given one).
/// Stops and removes the socket when dropped.
pub struct UnixAgent {
    pub path: PathBuf,
    pub shutdowns: Arc<AtomicUsize>,
    server: Option<RpcServer>,
}

impl UnixAgent {
    /// Serves on `$TMPDIR/husk-agent-<pid>-<name>-<n>.sock`.
    pub fn start(name: &str, facts: FakeFacts) -> Result<Self, ServeError> {
        Self::start_with_reaper(name, facts, Arc::new(Reaper::new(ReapMode::PerChild)))
    }

    /// [`start`](Self::start) with this reaper.
    pub fn start_with_reaper(
        name: &str,
        facts: FakeFacts,
        reaper: Arc<Reaper>,
    ) -> Result<Self, ServeError> {
        Self::start_full(name, facts, reaper, None)
    }

    /// [`start_with_reaper`](Self::start_with_reaper) serving the container
    /// RPCs through `containers` (whose registry reaps through `reaper`).
    pub fn start_with_containers(
        name: &str,
        facts: FakeFacts,
        reaper: Arc<Reaper>,
        containers: ContainerService,
    ) -> Result<Self, ServeError> {
        Self::start_full(name, facts, reaper, Some(containers))
    }

    fn start_full(
        name: &str,
        facts: FakeFacts,
        reaper: Arc<Reaper>,
        containers: Option<ContainerService>,
    ) -> Result<Self, ServeError> {
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
            reaper,
        );
        let service = match containers {
            Some(c) => service.with_containers(c),
            None => service,
        };
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
        drop(self.server.take());
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The environment variable that tells a copy of the test binary which
/// test [`isolated`] runs in it.
const ISOLATED_TEST: &str = "HUSK_ISOLATED_TEST";

/// For a test that must be alone in its process (it reaps every child with
/// `waitpid(-1)`, which would steal other tests' children): in the test
/// process, runs the test `name` (its full path, e.g.
/// `exec::tests::pid1_reaping`) alone in a copy of the test binary, panics
/// unless it passed, and returns `false`; in that copy, returns `true`.
///
/// ```ignore
/// if !isolated("exec::tests::pid1_reaping") { return; }
/// // ... the test itself
/// ```
pub fn isolated(name: &str) -> bool {
    if std::env::var(ISOLATED_TEST).is_ok_and(|v| v == name) {
        return true;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => panic!("the test binary: {e}"),
    };
    let out = std::process::Command::new(&exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(ISOLATED_TEST, name)
        .output();
    match out {
        // A name that matches no test passes too: insist on one.
        Ok(o) if o.status.success() && String::from_utf8_lossy(&o.stdout).contains("1 passed") => {
            false
        }
        Ok(o) => panic!(
            "{name} in its own process: {}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("run {}: {e}", exe.display()),
    }
}
