//! The template store: templates keyed by what makes a restore valid
//! ([`TemplateSpec`]), under one directory, made on demand.
//!
//! ```text
//! ROOT/<key>/            a published template: snapshot.json, memory.bin,
//!                        template.json (its manifest), console.log
//! ROOT/.locks/<key>.lock flock(2): one maker per key, across processes
//! ROOT/.tmp-<key>-<pid>  a template being made (renamed into place)
//! ROOT/.trash-...        a template being removed
//! ```
//!
//! Rules: a template is built in a temporary directory and published by
//! `rename(2)`, so a reader sees all of it or nothing; it is **never
//! rewritten in place** (restored VMs map its `memory.bin`: truncating it
//! would SIGBUS them); a corrupt or foreign one is renamed away (VMs that
//! map it keep their pages) and rebuilt, never restored. Concurrent first
//! users of a key (threads or processes) serialise on the key's lock: one
//! builds, the others find its result.
//!
//! The manifest records the SHA-256 of `snapshot.json` and the size and
//! modification time of `memory.bin`: a changed or truncated file fails
//! the check cheaply on every use (hashing the guest memory on every pod
//! start would cost more than the restore).

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::template_key::{hex, is_key, key_of, TemplateSpec};

/// Where templates live unless configured otherwise.
pub const DEFAULT_ROOT: &str = "/var/lib/husk/templates";
/// The manifest file of a template.
pub const MANIFEST_FILE: &str = "template.json";
const STATE_FILE: &str = husk_vmm::snapshot::STATE_FILE;
const MEMORY_FILE: &str = husk_vmm::snapshot::MEMORY_FILE;
/// How long a caller waits for another maker of the same key.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(900);

/// Why the store could not give a template.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("template store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("template store: describing the template: {0}")]
    Describe(#[source] std::io::Error),
    #[error("template {key}: another process has been making it for over {waited:?}")]
    LockTimeout { key: String, waited: Duration },
    #[error("template {key}: making it failed: {source}")]
    Build {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0:?} is not a template key (32 lower-case hex digits)")]
    BadKey(String),
    #[error("template {0} is not in the store")]
    NotFound(String),
    #[error("{} exists: remove it first (a template is never rewritten in place: VMs map its memory)", .0.display())]
    Exists(PathBuf),
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Makes a template's files: boots the spec's guest to agent-ready and
/// snapshots it into `dir` (which exists and is empty). The store does the
/// rest (manifest, publishing).
pub trait TemplateBuilder {
    fn build(
        &self,
        spec: &TemplateSpec,
        dir: &Path,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

/// The manifest: what the template is, and what its files were when it was
/// published.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub key: String,
    /// The canonical description the key hashes.
    pub description: String,
    pub created_unix_s: u64,
    pub snapshot_sha256: String,
    pub memory_len: u64,
    pub memory_mtime_ns: i128,
}

/// A template ready to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub key: String,
    pub dir: PathBuf,
    /// This call made it (false: it was there, or another caller made it).
    pub created: bool,
}

/// One entry of [`TemplateStore::list`].
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub dir: PathBuf,
    /// The manifest, or why the template is unusable.
    pub manifest: Result<Manifest, String>,
    /// Bytes the template takes on disk (memory.bin is sparse).
    pub disk_bytes: u64,
}

/// A directory of templates.
#[derive(Debug, Clone)]
pub struct TemplateStore {
    root: PathBuf,
    build_id: String,
    lock_wait: Duration,
}

impl TemplateStore {
    /// Opens (creating, mode 0700) the store at `root`; templates are keyed
    /// with `build_id`, the husk build's identity.
    pub fn open(root: impl Into<PathBuf>, build_id: impl Into<String>) -> Result<Self, StoreError> {
        let root = root.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root.join(".locks"))
            .map_err(io_at(&root))?;
        Ok(Self {
            root,
            build_id: build_id.into(),
            lock_wait: DEFAULT_LOCK_WAIT,
        })
    }

    /// How long [`get_or_create`](Self::get_or_create) waits for another
    /// maker of the same key.
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key of `spec` in this store.
    pub fn key(&self, spec: &TemplateSpec) -> Result<String, StoreError> {
        Ok(key_of(&self.describe(spec)?))
    }

    fn describe(&self, spec: &TemplateSpec) -> Result<String, StoreError> {
        spec.describe(&self.build_id).map_err(StoreError::Describe)
    }

    /// The template for `spec`: the published one when it checks out,
    /// otherwise made now with `builder` (under the key's lock: concurrent
    /// callers of the same key, in any process, make it once).
    pub fn get_or_create(
        &self,
        spec: &TemplateSpec,
        builder: &dyn TemplateBuilder,
    ) -> Result<Template, StoreError> {
        let description = self.describe(spec)?;
        let key = key_of(&description);
        let dir = self.root.join(&key);
        if check(&dir, &key, Some(&description)).is_ok() {
            return Ok(Template {
                key,
                dir,
                created: false,
            });
        }
        let _lock = self.lock(&key)?;
        // Someone may have made it while we waited.
        match check(&dir, &key, Some(&description)) {
            Ok(_) => {
                return Ok(Template {
                    key,
                    dir,
                    created: false,
                })
            }
            Err(why) if dir.exists() => {
                tracing::warn!(template = %key, reason = %why, "template unusable; rebuilding it");
                self.discard(&key)?;
            }
            Err(_) => {}
        }
        self.remove_stale_temporaries(&key);
        let tmp = self.root.join(format!(".tmp-{key}-{}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io_at(&tmp))?;
        let t = Instant::now();
        tracing::info!(template = %key, "making a template (cold boot)");
        let made = builder
            .build(spec, &tmp)
            .map_err(|source| StoreError::Build {
                key: key.clone(),
                source,
            })
            .and_then(|()| publish(&tmp, &dir, &key, description));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        tracing::info!(template = %key, seconds = t.elapsed().as_secs_f64(), "template made");
        Ok(Template {
            key,
            dir,
            created: true,
        })
    }

    /// Removes template `key` (VMs restored from it keep running: their
    /// mappings outlive the files).
    pub fn remove(&self, key: &str) -> Result<(), StoreError> {
        if !is_key(key) {
            return Err(StoreError::BadKey(key.to_string()));
        }
        if !self.root.join(key).exists() {
            return Err(StoreError::NotFound(key.to_string()));
        }
        let _lock = self.lock(key)?;
        self.discard(key)
    }

    /// Marks template `key` unusable (a restore from it failed in a way its
    /// files explain): it is removed, and the next user rebuilds it.
    pub fn invalidate(&self, key: &str) -> Result<(), StoreError> {
        if !is_key(key) {
            return Err(StoreError::BadKey(key.to_string()));
        }
        let _lock = self.lock(key)?;
        self.discard(key)
    }

    /// Every template directory in the store, checked.
    pub fn list(&self) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io_at(&self.root))? {
            let entry = entry.map_err(io_at(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !is_key(&name) {
                continue;
            }
            let dir = entry.path();
            out.push(Listed {
                manifest: check(&dir, &name, None),
                disk_bytes: disk_usage(&dir),
                key: name,
                dir,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Renames `key`'s directory out of the way, then deletes it. The
    /// caller holds the key's lock.
    fn discard(&self, key: &str) -> Result<(), StoreError> {
        let dir = self.root.join(key);
        let trash = self
            .root
            .join(format!(".trash-{key}-{}-{}", std::process::id(), now_ns()));
        match std::fs::rename(&dir, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_at(&dir)(e)),
        }
        std::fs::remove_dir_all(&trash).map_err(io_at(&trash))
    }

    /// Leftovers of makers that died: only ever removed under the key's
    /// lock, so no live maker's directory is touched.
    fn remove_stale_temporaries(&self, key: &str) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!(".tmp-{key}-"))
                || name.starts_with(&format!(".trash-{key}-"))
            {
                tracing::info!(path = %e.path().display(), "removing a template maker's leftovers");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }

    /// Takes the key's lock, waiting up to the store's lock wait.
    fn lock(&self, key: &str) -> Result<File, StoreError> {
        let path = self.root.join(".locks").join(format!("{key}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_at(&path))?;
        let start = Instant::now();
        let mut logged = false;
        loop {
            // SAFETY: flock on a descriptor this function owns; the lock is
            // released when the file is closed (the guard is dropped).
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(file);
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK)
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                return Err(io_at(&path)(e));
            }
            if start.elapsed() >= self.lock_wait {
                return Err(StoreError::LockTimeout {
                    key: key.to_string(),
                    waited: self.lock_wait,
                });
            }
            if !logged {
                tracing::info!(template = %key, "another process is making this template; waiting for it");
                logged = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Makes a template at `dir` outside any store (`husk template create
/// --out DIR`): built beside it in a temporary directory and renamed into
/// place, with the same manifest as the store's. An existing `dir` is
/// refused, never overwritten: VMs may map its `memory.bin`.
pub fn create_at(
    dir: &Path,
    spec: &TemplateSpec,
    builder: &dyn TemplateBuilder,
    build_id: &str,
) -> Result<Template, StoreError> {
    let description = spec.describe(build_id).map_err(StoreError::Describe)?;
    let key = key_of(&description);
    if dir.exists() {
        return Err(StoreError::Exists(dir.to_path_buf()));
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "template".into());
    let tmp = dir.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&tmp)
        .map_err(io_at(&tmp))?;
    let made = builder
        .build(spec, &tmp)
        .map_err(|source| StoreError::Build {
            key: key.clone(),
            source,
        })
        .and_then(|()| publish(&tmp, dir, &key, description));
    if let Err(e) = made {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    Ok(Template {
        key,
        dir: dir.to_path_buf(),
        created: true,
    })
}

/// Checks a published template: its manifest names `key` (and
/// `description`, when given), `snapshot.json` has the recorded digest
/// and `memory.bin` the recorded size and modification time.
pub fn check(dir: &Path, key: &str, description: Option<&str>) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if m.key != key {
        return Err(format!("its manifest is for template {}", m.key));
    }
    if description.is_some_and(|d| d != m.description) {
        return Err("its manifest describes another guest".into());
    }
    let state = dir.join(STATE_FILE);
    let digest = sha256_file(&state).map_err(|e| format!("{}: {e}", state.display()))?;
    if digest != m.snapshot_sha256 {
        return Err(format!("{} changed since it was written", state.display()));
    }
    let memory = dir.join(MEMORY_FILE);
    let md = std::fs::metadata(&memory).map_err(|e| format!("{}: {e}", memory.display()))?;
    if md.len() != m.memory_len || mtime_ns(&md) != m.memory_mtime_ns {
        return Err(format!("{} changed since it was written", memory.display()));
    }
    Ok(m)
}

/// Writes the manifest into `tmp`, syncs everything and renames `tmp` to
/// `dir` (which does not exist: the caller holds the lock and removed it).
fn publish(tmp: &Path, dir: &Path, key: &str, description: String) -> Result<(), StoreError> {
    let state = tmp.join(STATE_FILE);
    let memory = tmp.join(MEMORY_FILE);
    for f in [&state, &memory] {
        File::open(f).and_then(|f| f.sync_all()).map_err(io_at(f))?;
    }
    let md = std::fs::metadata(&memory).map_err(io_at(&memory))?;
    let manifest = Manifest {
        key: key.to_string(),
        description,
        created_unix_s: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        snapshot_sha256: sha256_file(&state).map_err(io_at(&state))?,
        memory_len: md.len(),
        memory_mtime_ns: mtime_ns(&md),
    };
    let mpath = tmp.join(MANIFEST_FILE);
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| io_at(&mpath)(e.into()))?;
    let mut f = File::create(&mpath).map_err(io_at(&mpath))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(io_at(&mpath))?;
    File::open(tmp)
        .and_then(|d| d.sync_all())
        .map_err(io_at(tmp))?;
    // rename(2) onto an existing non-empty directory fails: a template that
    // appeared meanwhile is never replaced.
    std::fs::rename(tmp, dir).map_err(io_at(dir))?;
    if let Some(parent) = dir.parent() {
        let _ = File::open(parent).and_then(|d| d.sync_all());
    }
    Ok(())
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut h = Sha256::new();
    let mut f = File::open(path)?;
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(&h.finalize()))
}

fn mtime_ns(md: &std::fs::Metadata) -> i128 {
    i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec())
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn disk_usage(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// Writes stand-in files, slowly, and counts its builds.
    struct FakeBuilder {
        builds: AtomicUsize,
        fail: bool,
    }

    impl TemplateBuilder for FakeBuilder {
        fn build(
            &self,
            _spec: &TemplateSpec,
            dir: &Path,
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            self.builds.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(200));
            if self.fail {
                return Err("the guest never became ready".into());
            }
            std::fs::write(dir.join(STATE_FILE), b"{\"state\":1}")?;
            std::fs::write(dir.join(MEMORY_FILE), vec![7u8; 8192])?;
            Ok(())
        }
    }

    fn fake(fail: bool) -> FakeBuilder {
        FakeBuilder {
            builds: AtomicUsize::new(0),
            fail,
        }
    }

    fn setup(name: &str) -> (PathBuf, TemplateSpec) {
        let dir = std::env::temp_dir().join(format!("husk-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinux"), b"k").unwrap();
        std::fs::write(dir.join("initrd"), b"i").unwrap();
        let spec = TemplateSpec {
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd"),
            cmdline_extra: String::new(),
            mem_mib: 128,
            vcpus: 1,
            pvm_compat: false,
            disks: Vec::new(),
            shares: Vec::new(),
        };
        (dir, spec)
    }

    #[test]
    fn concurrent_first_users_make_one_template() {
        let (dir, spec) = setup("concurrent");
        let builder = Arc::new(fake(false));
        let root = dir.join("store");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (root, spec, builder) = (root.clone(), spec.clone(), builder.clone());
                // Each thread opens the store (and its lock files) itself,
                // as separate processes would.
                std::thread::spawn(move || {
                    let store = TemplateStore::open(root, "build-a").unwrap();
                    store.get_or_create(&spec, builder.as_ref()).unwrap()
                })
            })
            .collect();
        let got: Vec<Template> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(builder.builds.load(Ordering::SeqCst), 1);
        assert_eq!(got.iter().filter(|t| t.created).count(), 1);
        assert!(got
            .iter()
            .all(|t| t.key == got[0].key && t.dir == got[0].dir));
        // Nothing but the template and the locks.
        let names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_template_is_rebuilt_and_never_rewritten_in_place() {
        let (dir, spec) = setup("corrupt");
        let builder = fake(false);
        let store = TemplateStore::open(dir.join("store"), "build-a").unwrap();
        let t = store.get_or_create(&spec, &builder).unwrap();
        assert!(t.created);
        assert!(!store.get_or_create(&spec, &builder).unwrap().created);
        let old_memory = std::fs::File::open(t.dir.join(MEMORY_FILE)).unwrap();
        let old_ino = old_memory.metadata().unwrap().ino();

        // A changed snapshot.json, then a rewritten memory.bin, then a
        // missing manifest: each is rebuilt.
        let corruptions: Vec<fn(&Path)> = vec![
            |d| std::fs::write(d.join(STATE_FILE), b"{\"state\":2}").unwrap(),
            |d| {
                std::thread::sleep(Duration::from_millis(20));
                let f = OpenOptions::new()
                    .write(true)
                    .open(d.join(MEMORY_FILE))
                    .unwrap();
                f.set_len(4096).unwrap();
            },
            |d| std::fs::remove_file(d.join(MANIFEST_FILE)).unwrap(),
        ];
        for (i, corrupt) in corruptions.iter().enumerate() {
            corrupt(&t.dir);
            assert!(check(&t.dir, &t.key, None).is_err(), "corruption {i}");
            let again = store.get_or_create(&spec, &builder).unwrap();
            assert!(again.created, "corruption {i} was not rebuilt");
            assert!(check(&again.dir, &again.key, None).is_ok());
        }
        assert_eq!(builder.builds.load(Ordering::SeqCst), 4);
        // The first template's memory.bin was replaced by a new file, never
        // rewritten: the open descriptor still reads its old inode.
        let new_ino = std::fs::metadata(t.dir.join(MEMORY_FILE)).unwrap().ino();
        assert_ne!(old_ino, new_ino);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn another_build_is_another_key_and_a_failed_build_leaves_nothing() {
        let (dir, spec) = setup("build");
        let a = TemplateStore::open(dir.join("store"), "build-a").unwrap();
        let b = TemplateStore::open(dir.join("store"), "build-b").unwrap();
        assert_ne!(a.key(&spec).unwrap(), b.key(&spec).unwrap());
        let e = b.get_or_create(&spec, &fake(true)).unwrap_err();
        assert!(e.to_string().contains("never became ready"), "{e}");
        assert!(matches!(e, StoreError::Build { .. }));
        assert!(a.list().unwrap().is_empty());
        let t = a.get_or_create(&spec, &fake(false)).unwrap();
        let listed = a.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, t.key);
        assert!(listed[0].manifest.is_ok());
        assert!(listed[0].disk_bytes > 0);
        // rm: only keys, only existing ones.
        assert!(matches!(a.remove("../x"), Err(StoreError::BadKey(_))));
        assert!(matches!(
            a.remove(&"0".repeat(32)),
            Err(StoreError::NotFound(_))
        ));
        a.remove(&t.key).unwrap();
        assert!(a.list().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_waiter_gives_up_after_its_lock_wait() {
        let (dir, spec) = setup("lockwait");
        let store = TemplateStore::open(dir.join("store"), "b").unwrap();
        let key = store.key(&spec).unwrap();
        let held = store.lock(&key).unwrap();
        let impatient = store.clone().with_lock_wait(Duration::from_millis(300));
        let e = impatient.get_or_create(&spec, &fake(false)).unwrap_err();
        assert!(matches!(e, StoreError::LockTimeout { .. }), "{e}");
        drop(held);
        assert!(
            impatient
                .get_or_create(&spec, &fake(false))
                .unwrap()
                .created
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
