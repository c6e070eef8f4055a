//! The VMM event loop thread (`husk-vmm`): the event manager, the virtio
//! devices' event handlers (vsock's Unix-socket muxer, virtio-blk and the
//! in-process virtio-fs server), the `VmmHandle` requests
//! (Info/Stop/Pause/Resume/Snapshot: a snapshot writes files), and the VM's
//! teardown (kicking and joining the vCPU threads, reading the final
//! counters, dropping guest memory). Live counters are read on the
//! asking thread (`VmmHandle::stats`), not here.

use super::kvm::*;
use super::{allow, allow_args, allow_when, ioctls, Cond, Rule};

pub fn rules() -> Vec<Rule> {
    let mut r = vec![
        // The event manager, created on this thread (controller::run):
        // its epoll fd and its remote-endpoint eventfd.
        allow(sys!(SYS_epoll_create1)),
        allow(sys!(SYS_eventfd2)),
        // The event loop (event-manager run_with_timeout) and devices
        // adding/removing their fds as connections come and go.
        allow(sys!(SYS_epoll_wait)),
        allow(sys!(SYS_epoll_ctl)),
        // Eventfds (requests, reset, exit, queue notifications); the
        // CONNECT line and data of vsock's Unix streams (std UnixStream
        // read = recvfrom, write = sendto with MSG_NOSIGNAL), and their
        // half-close when the guest shuts a direction down.
        allow(sys!(SYS_read)),
        allow(sys!(SYS_recvfrom)),
        allow(sys!(SYS_sendto)),
        allow(sys!(SYS_shutdown)),
        // vsock: arming/disarming the handshake timer (host connections
        // that never finish their CONNECT line; TimerFd::reset/clear =
        // timerfd_settime; the expiry count is read with read).
        allow(sys!(SYS_timerfd_settime)),
        // vsock: host connections arrive on the hybrid-vsock listener
        // (std UnixListener::accept = accept4 with SOCK_CLOEXEC).
        allow(sys!(SYS_accept4)),
        // vsock: guest connections to host port P connect to `<uds>_P`
        // (vsock/uds.rs connect_nonblocking): Unix sockets only.
        allow_args(sys!(SYS_socket), 0, &[libc::AF_UNIX as u64]),
        allow(sys!(SYS_connect)),
        // vsock: accepted host streams become non-blocking
        // (std set_nonblocking = ioctl FIONBIO).
        ioctls(&[libc::FIONBIO]),
        // Snapshot (VmState::save): the in-kernel irqchips, PIT and clock.
        ioctls(&[KVM_GET_IRQCHIP, KVM_GET_PIT2, KVM_GET_CLOCK]),
        // Snapshot: create_dir_all(dir) (mkdir; stat when it exists), each
        // file written as a new temporary (open O_EXCL), memory.bin's size
        // (set_len = ftruncate), its non-zero pages (write_all_at =
        // pwrite64), fsync (sync_all, also of the directory), rename into
        // place, and unlink of the temporary when writing it failed.
        allow(sys!(SYS_mkdir)),
        allow(sys!(SYS_statx)),
        allow(sys!(SYS_openat)),
        allow(sys!(SYS_ftruncate)),
        allow(sys!(SYS_pwrite64)),
        allow(sys!(SYS_fsync)),
        allow(sys!(SYS_rename)),
        allow(sys!(SYS_unlink)),
        // Stopping the VM: stop_vcpus sleeps 2 ms between kicks
        // (thread::sleep = clock_nanosleep).
        allow(sys!(SYS_clock_nanosleep)),
        // HashMap::new on this thread seeds its hasher once per thread
        // (std RandomState: getrandom).
        allow(sys!(SYS_getrandom)),
    ];
    r.extend(block());
    r.extend(fs());
    r.extend(net());
    r
}

/// virtio-net: frames are read from and written to the TAP opened by the
/// builder (read, and write in the common rules); offloads are set once
/// per activation.
fn net() -> Vec<Rule> {
    vec![
        // virtio-net: the guest's accepted offloads become the tap's
        // (TUNSETOFFLOAD, applied on this thread after activation).
        ioctls(&[libc::TUNSETOFFLOAD]),
    ]
}

/// virtio-blk: requests are served on this thread against the image fd
/// opened by the builder.
fn block() -> Vec<Rule> {
    vec![
        // virtio-blk: reads and writes of the image (read_exact_at /
        // write_all_at = pread64 / pwrite64; pwrite64 is allowed above).
        // Also the VM's final counters when it stops (controller::run →
        // VmCounters::finish): one pread64 of each KVM binary stats fd,
        // opened by the builder (KVM_GET_STATS_FD is not allowed here).
        allow(sys!(SYS_pread64)),
        // virtio-blk: FLUSH (sync_data).
        allow(sys!(SYS_fdatasync)),
        // virtio-blk: DISCARD / WRITE_ZEROES (punch hole, zero range);
        // virtio-fs (fuse-backend-rs passthrough): FUSE_FALLOCATE.
        allow(sys!(SYS_fallocate)),
    ]
}

/// The in-process virtio-fs device: FUSE requests served by
/// fuse-backend-rs 0.14's `PassthroughFs` on this thread. The list follows its `src/passthrough/{sync_io,mod,util,
/// file_handle,mount_fd,statx}.rs` and `src/common/file_traits.rs`.
fn fs() -> Vec<Rule> {
    vec![
        // virtio-fs (fuse-backend-rs passthrough): lookup/open/create
        // (openat relative to an O_PATH fd or /proc/self/fd; `open` of a
        // mount point = openat in glibc, allowed above) and inode
        // attributes (stat_fd = fstatat64 = newfstatat; statx; fstat).
        allow(sys!(SYS_newfstatat)),
        allow(sys!(SYS_fstat)),
        // virtio-fs (fuse-backend-rs passthrough): inode file handles
        // (name_to_handle_at; open_by_handle_at when the inode fd cache is
        // not kept).
        allow(sys!(SYS_name_to_handle_at)),
        allow(sys!(SYS_open_by_handle_at)),
        // virtio-fs (fuse-backend-rs passthrough): FUSE_STATFS
        // (fstatvfs64 = fstatfs).
        allow(sys!(SYS_fstatfs)),
        // virtio-fs (fuse-backend-rs passthrough): FUSE_READDIR(PLUS)
        // (lseek + getdents64) and FUSE_LSEEK.
        allow(sys!(SYS_getdents64)),
        allow(sys!(SYS_lseek)),
        // virtio-fs (fuse-backend-rs passthrough): FUSE_READLINK and
        // /proc/self/fd lookups.
        allow(sys!(SYS_readlinkat)),
        // virtio-fs (fuse-backend-rs passthrough): FUSE_MKDIR, FUSE_MKNOD,
        // FUSE_UNLINK/RMDIR, FUSE_RENAME(2), FUSE_LINK, FUSE_SYMLINK.
        allow(sys!(SYS_mkdirat)),
        allow(sys!(SYS_mknodat)),
        allow(sys!(SYS_unlinkat)),
        allow(sys!(SYS_renameat2)),
        allow(sys!(SYS_linkat)),
        allow(sys!(SYS_symlinkat)),
        // virtio-fs (fuse-backend-rs passthrough): FUSE_SETATTR (mode,
        // owner, size, times: fchmod/fchmodat, fchownat, ftruncate above,
        // futimens/utimensat).
        allow(sys!(SYS_fchmod)),
        allow(sys!(SYS_fchmodat)),
        allow(sys!(SYS_fchownat)),
        allow(sys!(SYS_utimensat)),
        // virtio-fs (fuse-backend-rs passthrough): FUSE_FSYNC(DIR)
        // (fsync above, fdatasync in block()), FUSE_FLUSH (dup + close).
        allow(sys!(SYS_dup)),
        // virtio-fs (fuse-backend-rs passthrough): FUSE_READ/FUSE_WRITE
        // into guest memory (file_traits: pread64/preadv/pwrite64/pwritev).
        allow(sys!(SYS_preadv)),
        allow(sys!(SYS_pwritev)),
        // virtio-fs (fuse-backend-rs passthrough): a handle's open flags
        // follow each request's (sync_io.rs check_fd_flags: F_SETFL).
        allow_args(sys!(SYS_fcntl), 1, &[libc::F_SETFL as u64]),
        // virtio-fs (fuse-backend-rs passthrough): xattrs, path based on
        // /proc/self/fd/N (FUSE_{GET,SET,LIST,REMOVE}XATTR).
        allow(sys!(SYS_getxattr)),
        allow(sys!(SYS_setxattr)),
        allow(sys!(SYS_listxattr)),
        allow(sys!(SYS_removexattr)),
        // virtio-fs (fuse-backend-rs passthrough): requests run with the
        // guest caller's fsuid/fsgid, per thread (raw setresuid/setresgid
        // with -1 for the real and saved ids: ScopedUid/ScopedGid).
        allow_when(
            sys!(SYS_setresuid),
            vec![vec![
                Cond::Eq32(0, u32::MAX as u64),
                Cond::Eq32(2, u32::MAX as u64),
            ]],
        ),
        allow_when(
            sys!(SYS_setresgid),
            vec![vec![
                Cond::Eq32(0, u32::MAX as u64),
                Cond::Eq32(2, u32::MAX as u64),
            ]],
        ),
        // virtio-fs (fuse-backend-rs passthrough): CAP_FSETID is dropped
        // from the effective set around writes/setattr and raised again
        // (caps crate: capget + capset on this thread).
        allow(sys!(SYS_capget)),
        allow(sys!(SYS_capset)),
        // (virtio-fs: mount ids of file handles are looked up in
        // /proc/self/mountinfo: openat, read, lseek, all allowed above.)
        // virtio-fs (fuse-backend-rs passthrough): FUSE_INIT imports the
        // shared directory when cfg.do_import (PassthroughFs::import) and
        // clears the umask.
        allow(sys!(SYS_umask)),
    ]
}
