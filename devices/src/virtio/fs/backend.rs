//! The FUSE server: fuse-backend-rs's `PassthroughFs` rooted at the shared
//! directory.
//!
//! Configuration (see `passthrough_config`):
//! - `root_dir` = the canonical shared directory, `do_import = true` (the
//!   server re-imports the root at INIT and DESTROY; `new` imports it once
//!   so a directory that cannot be served fails at creation);
//! - `CachePolicy::Auto` with 1 s entry and attribute timeouts: the guest
//!   keeps no page cache across opens (close-to-open consistency) and sees
//!   host-side metadata changes within a second, while mmap still works
//!   (`Never` would force DIRECT_IO, which breaks shared mmap);
//! - `writeback = false`, `xattr = false` (xattr requests get ENOSYS), no
//!   DAX, no file handles, virtual inode numbers.
//!
//! What PassthroughFs does against escapes, checked by the tests: every
//! lookup opens the name with `O_PATH | O_NOFOLLOW` relative to the parent's
//! fd, so a symlink yields the link itself and is never followed on the
//! host; names with `/` are refused (EINVAL); `..` at the root is looked up
//! as `.`; creations validate the name (no `/`, `.`, `..`); opening goes
//! through `/proc/self/fd` and only for regular files and directories
//! (a symlink gets EBADF); READLINK returns the link's text. Replies carry
//! errnos, attributes and names inside the share, never host paths.
//!
//! What the device adds: the shared directory is canonicalised (the server
//! opens its root with `O_NOFOLLOW`); the opcode filter of
//! [`decide`](super::request::decide) (unknown opcodes never reach
//! fuse-backend-rs, whose `Opcode::from` transmutes them); the read-only
//! policy; no device nodes (MKNOD of one gets EPERM); no set-id bits
//! (`strip_setid`); the `relay` (the
//! header the policy checked is the one the server reads); the process
//! umask (`import` sets it to 0; it is only ever done on a thread with its
//! own fs_struct, see [`isolate_umask`], and that thread's umask is put
//! back, so the process umask never changes under guest control); and
//! a panic in the server answers the request with EIO instead of taking
//! down the VMM thread.

use std::cell::Cell;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

use super::request::opcode;

/// How long the guest may cache entries and attributes.
const CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a request could not be served (the device answers it itself).
#[derive(Debug, thiserror::Error)]
pub(super) enum ServeError {
    #[error("building the request buffers: {0}")]
    Transport(fuse_backend_rs::transport::Error),
    #[error("{0}")]
    Server(fuse_backend_rs::Error),
    #[error("the FUSE server panicked")]
    Panic,
    #[error("cannot give the serving thread its own umask (unshare(CLONE_FS)): {0}")]
    Umask(io::Error),
}

impl ServeError {
    /// The errno to answer with.
    pub fn errno(&self) -> i32 {
        use fuse_backend_rs::Error as E;
        match self {
            ServeError::Server(
                E::DecodeMessage(_)
                | E::MissingParameter
                | E::InvalidCString(_)
                | E::InvalidHeaderLength
                | E::InvalidXattrSize(_)
                | E::InvalidMessage(_),
            ) => libc::EINVAL,
            _ => libc::EIO,
        }
    }
}

fn passthrough_config(root_dir: &str) -> Config {
    Config {
        root_dir: root_dir.to_string(),
        do_import: true,
        xattr: false,
        writeback: false,
        cache_policy: CachePolicy::Auto,
        entry_timeout: CACHE_TIMEOUT,
        attr_timeout: CACHE_TIMEOUT,
        dir_entry_timeout: None,
        dir_attr_timeout: None,
        no_open: false,
        no_opendir: false,
        killpriv_v2: false,
        inode_file_handles: false,
        no_readdir: false,
        seal_size: false,
        dax_file_size: None,
        use_host_ino: false,
        ..Config::default()
    }
}

thread_local! {
    /// This thread has its own fs_struct (see [`isolate_umask`]).
    static PRIVATE_FS: Cell<bool> = const { Cell::new(false) };
}

/// Gives the calling thread its own fs_struct (`unshare(CLONE_FS)`: its
/// own umask, working directory and root, copies of the process's), once
/// per thread; later calls do nothing.
///
/// PassthroughFs sets the umask to 0 whenever it imports its root (at
/// creation, and on every FUSE INIT and DESTROY the guest sends). The umask
/// lives in the fs_struct, which every thread of a process shares unless it
/// unshared it: without this, a guest could clear the umask of the whole
/// process (the shim's other threads, other pods' VMs and their sockets).
/// The backend calls it itself before serving INIT/DESTROY; a thread that
/// serves virtio-fs under a seccomp filter must call it before installing
/// the filter (the VMM event loop does). Afterwards a `chdir` elsewhere in
/// the process no longer moves this thread's working directory.
pub fn isolate_umask() -> io::Result<()> {
    if PRIVATE_FS.with(Cell::get) {
        return Ok(());
    }
    // SAFETY: unshare only changes the calling thread's kernel context
    // (its fs_struct becomes a private copy); no memory is involved.
    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    PRIVATE_FS.with(|p| p.set(true));
    Ok(())
}

/// Runs `f`, which may change the umask, on this thread and puts the
/// thread's umask back afterwards. The thread must have a private
/// fs_struct ([`isolate_umask`]): then nobody else sees the change and the
/// save/restore cannot race.
fn with_thread_umask<R>(f: impl FnOnce() -> R) -> io::Result<R> {
    isolate_umask()?;
    // SAFETY: umask swaps this thread's (private) file creation mask; the
    // value read is put back below.
    let old = unsafe { libc::umask(0o077) };
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let r = f();
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    Ok(r)
}

/// Imports `fs`'s root without changing the umask of any thread but a
/// private one: inline on a thread that already has its own fs_struct,
/// else on a short-lived helper thread that unshares it first (the caller's
/// thread, a shim thread, is left as it is).
fn import(fs: &PassthroughFs) -> io::Result<()> {
    if PRIVATE_FS.with(Cell::get) {
        return with_thread_umask(|| fs.import())?;
    }
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("husk-fs-import".into())
            .spawn_scoped(s, || with_thread_umask(|| fs.import())?)?
            .join()
            .unwrap_or_else(|_| {
                Err(io::Error::other(
                    "the FUSE server panicked importing its root",
                ))
            })
    })
}

/// A FUSE server over one directory.
pub(super) struct Backend {
    server: Server<PassthroughFs>,
}

impl Backend {
    /// Serves `root_dir` (canonical, UTF-8) and imports its root.
    pub fn new(root_dir: &str) -> io::Result<Backend> {
        let fs = PassthroughFs::new(passthrough_config(root_dir))?;
        import(&fs)?;
        Ok(Backend {
            server: Server::new(fs),
        })
    }

    /// Serves one request described by `chain` over `mem`; returns the
    /// bytes of the reply (0 for one-way requests).
    pub fn serve(
        &self,
        op: u32,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<u32, ServeError> {
        let reader =
            Reader::from_descriptor_chain(mem, chain.clone()).map_err(ServeError::Transport)?;
        let writer = VirtioFsWriter::new(mem, chain).map_err(ServeError::Transport)?;
        let handle = || {
            panic::catch_unwind(AssertUnwindSafe(|| {
                self.server
                    .handle_message(reader, Writer::VirtioFs(writer), None, None)
            }))
        };
        // INIT and DESTROY re-import the root, which clears the umask: only
        // this thread's, and only for the request.
        let served = if matches!(op, opcode::INIT | opcode::DESTROY) {
            with_thread_umask(handle).map_err(ServeError::Umask)?
        } else {
            handle()
        };
        match served {
            // The writer is bounded by MAX_REPLY_BYTES.
            Ok(Ok(n)) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(Err(e)) => Err(ServeError::Server(e)),
            Err(_) => Err(ServeError::Panic),
        }
    }
}
