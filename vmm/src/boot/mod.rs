//! Everything written into guest memory before the first instruction: the
//! kernel, the initrd, the command line, the zero page with the e820 map, the
//! MP table, the boot page tables and GDT. Pure functions over guest memory,
//! tested without KVM.

pub mod cmdline;
pub mod kernel;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod params;

use vm_memory::GuestAddress;

/// Errors preparing guest memory for boot.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel image {path}: {source}")]
    KernelOpen {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel image {path} is a bzImage; husk boots the ELF `vmlinux` (entered in 64-bit mode; a bzImage's boot trampoline hangs on nested PVM hosts). Use target/guest-image/vmlinux or the vmlinux from your kernel build")]
    BzImage { path: String },
    #[error("kernel image {path} is not an ELF vmlinux (no ELF magic)")]
    NotElf { path: String },
    #[error(
        "kernel image {path} could not be loaded into {mem_mib} MiB of guest memory: {reason}"
    )]
    KernelLoad {
        path: String,
        mem_mib: u64,
        reason: String,
    },
    #[error("initrd {path}: {source}")]
    InitrdOpen {
        path: String,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory: {avail} bytes free between the kernel's end ({kernel_end:#x}) and the top of low memory; raise --mem-mib")]
    InitrdTooLarge {
        path: String,
        size: u64,
        avail: u64,
        kernel_end: u64,
    },
    #[error("initrd {path}: reading into guest memory failed: {reason}")]
    InitrdLoad { path: String, reason: String },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("writing {what} at {addr:#x} into guest memory failed: {reason}")]
    GuestWrite {
        what: &'static str,
        addr: u64,
        reason: String,
    },
    #[error("the host's random source failed: {0}")]
    Random(std::io::Error),
}

pub(crate) fn write_err(
    what: &'static str,
    addr: GuestAddress,
) -> impl Fn(vm_memory::GuestMemoryError) -> BootError {
    move |e| BootError::GuestWrite {
        what,
        addr: addr.0,
        reason: e.to_string(),
    }
}
