//! Loading the kernel (ELF vmlinux only) and the initrd.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{low_ram_end, HIMEM_START};
use super::params::InitrdPlacement;
use super::BootError;

/// Where the loaded kernel lies and where it starts.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Physical entry point (64-bit `startup_64`).
    pub entry: u64,
    /// First byte past the kernel image.
    pub end: u64,
}

/// Kernels link `startup_64` at its physical address, but accept a virtual
/// one in the kernel map too.
const KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;

/// Loads the ELF kernel at `path` into `mem`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
) -> Result<LoadedKernel, BootError> {
    let p = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::KernelOpen {
        path: p.clone(),
        source,
    })?;
    let mut head = [0u8; 0x210];
    let n = read_up_to(&mut file, &mut head).map_err(|source| BootError::KernelOpen {
        path: p.clone(),
        source,
    })?;
    if n < 4 || &head[..4] != b"\x7fELF" {
        if n >= 0x206 && &head[0x202..0x206] == b"HdrS" {
            return Err(BootError::BzImage { path: p });
        }
        return Err(BootError::NotElf { path: p });
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|source| BootError::KernelOpen {
            path: p.clone(),
            source,
        })?;
    let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        BootError::KernelLoad {
            path: p.clone(),
            mem_mib: mem_size >> 20,
            reason: e.to_string(),
        }
    })?;
    let mut entry = r.kernel_load.0;
    if entry >= KERNEL_MAP {
        entry -= KERNEL_MAP;
    }
    Ok(LoadedKernel {
        entry,
        end: r.kernel_end,
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Where an initrd of `size` bytes goes: page-aligned at the top of low RAM,
/// above the kernel.
pub fn place_initrd(size: u64, kernel_end: u64, mem_size: u64) -> Option<u64> {
    let top = low_ram_end(mem_size);
    let addr = top.checked_sub(size)? & !0xfff;
    (addr >= kernel_end.max(HIMEM_START)).then_some(addr)
}

/// Loads the initrd at `path` at the top of low RAM.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    mem_size: u64,
) -> Result<InitrdPlacement, BootError> {
    let p = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::InitrdOpen {
        path: p.clone(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| BootError::InitrdOpen {
            path: p.clone(),
            source,
        })?
        .len();
    let addr = place_initrd(size, kernel_end, mem_size).ok_or(BootError::InitrdTooLarge {
        path: p.clone(),
        size,
        avail: low_ram_end(mem_size).saturating_sub(kernel_end),
        kernel_end,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| BootError::InitrdLoad {
            path: p,
            reason: e.to_string(),
        })?;
    Ok(InitrdPlacement { addr, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(mib: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mib << 20)]).unwrap()
    }

    fn temp(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("husk-{}-{name}", std::process::id()));
        File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }

    #[test]
    fn initrd_placement() {
        let m = 64u64 << 20;
        assert_eq!(place_initrd(0x1800, 0x200_0000, m), Some(m - 0x2000));
        assert_eq!(place_initrd(m, 0x200_0000, m), None);
        assert_eq!(place_initrd(m - 0x200_0000 + 1, 0x200_0000, m), None);
        assert!(place_initrd(m - 0x200_0000, 0x200_0000, m).is_some());
    }

    #[test]
    fn rejects_missing_bzimage_and_garbage() {
        let m = mem(32);
        let missing = Path::new("/nonexistent/vmlinux");
        assert!(matches!(
            load_kernel(&m, missing, 32 << 20),
            Err(BootError::KernelOpen { .. })
        ));
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let p = temp("bz", &bz);
        let e = load_kernel(&m, &p, 32 << 20).unwrap_err();
        assert!(matches!(e, BootError::BzImage { .. }), "{e}");
        assert!(e.to_string().contains("vmlinux"));
        std::fs::remove_file(&p).unwrap();
        let p = temp("garbage", b"hello");
        assert!(matches!(
            load_kernel(&m, &p, 32 << 20),
            Err(BootError::NotElf { .. })
        ));
        std::fs::remove_file(&p).unwrap();
        let p = temp("truncated-elf", b"\x7fELF\x02\x01\x01");
        assert!(matches!(
            load_kernel(&m, &p, 32 << 20),
            Err(BootError::KernelLoad { .. })
        ));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn initrd_too_large_is_reported() {
        let m = mem(4);
        let p = temp("initrd", &vec![1u8; 3 << 20]);
        let e = load_initrd(&m, &p, 0x20_0000, 4 << 20).unwrap_err();
        assert!(matches!(e, BootError::InitrdTooLarge { .. }), "{e}");
        let ok = load_initrd(&m, &p, 0x10_0000, 4 << 20).unwrap();
        assert_eq!(ok.addr, 0x10_0000);
        let b: u8 = m.read_obj(GuestAddress(ok.addr + 100)).unwrap();
        assert_eq!(b, 1);
        std::fs::remove_file(&p).unwrap();
    }
}
