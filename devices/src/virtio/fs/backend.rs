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
//! policy; no device nodes (MKNOD of one gets EPERM); the `relay` (the
//! header the policy checked is the one the server reads); the process
//! umask (`import` sets it to 0 for the whole process; it is put back); and
//! a panic in the server answers the request with EIO instead of taking
//! down the VMM thread.

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

/// Puts the process umask back when dropped.
struct UmaskGuard(libc::mode_t);

impl UmaskGuard {
    fn save() -> Self {
        // SAFETY: umask only swaps the process's file creation mask; the
        // value read is put back at drop.
        let old = unsafe { libc::umask(0o077) };
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        UmaskGuard(old)
    }
}

impl Drop for UmaskGuard {
    fn drop(&mut self) {
        // SAFETY: as in `save`.
        unsafe { libc::umask(self.0) };
    }
}

/// A FUSE server over one directory.
pub(super) struct Backend {
    server: Server<PassthroughFs>,
}

impl Backend {
    /// Serves `root_dir` (canonical, UTF-8) and imports its root.
    pub fn new(root_dir: &str) -> io::Result<Backend> {
        let fs = PassthroughFs::new(passthrough_config(root_dir))?;
        {
            let _umask = UmaskGuard::save();
            fs.import()?;
        }
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
        // INIT and DESTROY re-import the root, which clears the umask.
        let _umask = matches!(op, opcode::INIT | opcode::DESTROY).then(UmaskGuard::save);
        let served = panic::catch_unwind(AssertUnwindSafe(|| {
            self.server
                .handle_message(reader, Writer::VirtioFs(writer), None, None)
        }));
        match served {
            // The writer is bounded by MAX_REPLY_BYTES.
            Ok(Ok(n)) => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok(Err(e)) => Err(ServeError::Server(e)),
            Err(_) => Err(ServeError::Panic),
        }
    }
}
