//! A sandbox's own directory for its sockets: `<run_dir>/<id>/`, mode 0700,
//! removed when the sandbox goes away.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

/// Why the directory could not be had.
#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is in use: a live VM answers on {}", dir.display(), socket.display())]
    InUse { dir: PathBuf, socket: PathBuf },
}

/// The directory; dropping it removes it with everything in it.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates `parent/id` (and `parent`, mode 0700). A directory left by a
    /// sandbox that died is cleaned first; one whose sockets still answer
    /// belongs to a live sandbox and is refused.
    pub fn create(parent: &Path, id: &str) -> Result<Self, RunDirError> {
        let path = parent.join(id);
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunDirError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io(parent))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if let Some(socket) = live_socket(&path) {
                    return Err(RunDirError::InUse { dir: path, socket });
                }
                tracing::info!(dir = %path.display(), "removing what a dead sandbox left");
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&path)
                    .map_err(io(&path))?;
            }
            Err(e) => return Err(io(&path)(e)),
        }
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove a sandbox's directory");
            }
        }
    }
}

/// A socket in `dir` that accepts a connection, if any.
fn live_socket(dir: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        .map(|e| e.path())
        .find(|p| UnixStream::connect(p).is_ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn created_private_cleaned_when_stale_refused_when_live_and_removed_on_drop() {
        let parent = std::env::temp_dir().join(format!("husk-rundir-{}", std::process::id()));
        let d = RunDir::create(&parent, "pod1").unwrap();
        let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // A live socket: a second sandbox of that id is refused.
        let listener = UnixListener::bind(d.path().join("agent.vsock")).unwrap();
        let e = RunDir::create(&parent, "pod1").unwrap_err();
        assert!(matches!(e, RunDirError::InUse { .. }), "{e}");
        // Its owner dies (the socket file stays, nobody listens): cleaned.
        drop(listener);
        std::mem::forget(d);
        std::fs::write(parent.join("pod1/leftover"), b"x").unwrap();
        let d = RunDir::create(&parent, "pod1").unwrap();
        assert!(!d.path().join("leftover").exists());
        let p = d.path().to_path_buf();
        drop(d);
        assert!(!p.exists());
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
