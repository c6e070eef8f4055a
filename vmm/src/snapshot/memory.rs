//! Guest memory in a snapshot: written sparsely (pages that are all zero
//! become holes, so only touched memory costs disk), and mapped back
//! MAP_PRIVATE from the file, so that every VM restored from one template
//! shares the template's pages until it writes them (copy-on-write).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

use crate::boot::layout::ram_ranges;

const PAGE: usize = 4096;

/// Errors dumping or mapping snapshot memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("snapshot memory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("snapshot memory {path} holds {actual} bytes; the snapshot says {expected}")]
    Size {
        path: String,
        expected: u64,
        actual: u64,
    },
    #[error("snapshot memory {path}: cannot map: {reason}")]
    Map { path: String, reason: String },
}

/// Writes all guest RAM into a new file at `path` (regions back to back;
/// zero pages become holes), renamed over any file already there, which is
/// never truncated. Returns the number of bytes actually written.
pub fn dump(mem: &GuestMemoryMmap, path: &Path) -> Result<u64, MemoryFileError> {
    let p = path.display().to_string();
    let io = |source| MemoryFileError::Io {
        path: p.clone(),
        source,
    };
    // A new file renamed into place: a `memory.bin` already there may be
    // mapped by VMs restored from it, and must not change under them.
    super::replace_file(path, |file| write_pages(mem, file)).map_err(io)
}

/// Writes every non-zero page of `mem` into `file` (sized to hold all of
/// it); returns the bytes written.
fn write_pages(mem: &GuestMemoryMmap, file: &mut File) -> io::Result<u64> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total)?;
    let mut offset = 0u64;
    let mut written = 0u64;
    let zero = [0u8; PAGE];
    for region in mem.iter() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| io::Error::other(format!("guest memory region: {e}")))?;
        let len = region.len() as usize;
        // SAFETY: `host` maps `len` bytes of guest memory that live as long as
        // `mem`; the VM is paused, so nothing writes them while we read.
        let bytes = unsafe { std::slice::from_raw_parts(host.cast_const(), len) };
        for (i, page) in bytes.chunks(PAGE).enumerate() {
            if page != &zero[..page.len()] {
                file.write_all_at(page, offset + (i * PAGE) as u64)?;
                written += page.len() as u64;
            }
        }
        offset += len as u64;
    }
    Ok(written)
}

/// Maps `path` as the guest RAM of a `size`-byte guest, privately
/// (copy-on-write: the file never changes).
pub fn map_private(path: &Path, size: u64) -> Result<GuestMemoryMmap, MemoryFileError> {
    let p = path.display().to_string();
    let file = File::open(path).map_err(|source| MemoryFileError::Io {
        path: p.clone(),
        source,
    })?;
    let actual = file
        .metadata()
        .map_err(|source| MemoryFileError::Io {
            path: p.clone(),
            source,
        })?
        .len();
    if actual != size {
        return Err(MemoryFileError::Size {
            path: p,
            expected: size,
            actual,
        });
    }
    let mut regions = Vec::new();
    let mut offset = 0u64;
    for (start, len) in ram_ranges(size) {
        let fo = FileOffset::new(
            file.try_clone().map_err(|source| MemoryFileError::Io {
                path: p.clone(),
                source,
            })?,
            offset,
        );
        let region = MmapRegionBuilder::new(len as usize)
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryFileError::Map {
                path: p.clone(),
                reason: e.to_string(),
            })?;
        let r = GuestRegionMmap::new(region, GuestAddress(start)).ok_or_else(|| {
            MemoryFileError::Map {
                path: p.clone(),
                reason: "region overflows".into(),
            }
        })?;
        regions.push(r);
        offset += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryFileError::Map {
        path: p,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    #[test]
    fn sparse_dump_and_private_map() {
        let size = 8u64 << 20;
        let mem = crate::vstate::memory::create(size).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x1234_u16, GuestAddress(size - 2)).unwrap();
        let path = std::env::temp_dir().join(format!("husk-mem-{}", std::process::id()));
        let written = dump(&mem, &path).unwrap();
        assert_eq!(written, 2 * 4096);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), size);
        assert!(meta.blocks() * 512 < size / 4, "the file must be sparse");
        let m2 = map_private(&path, size).unwrap();
        assert_eq!(
            m2.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(m2.read_obj::<u16>(GuestAddress(size - 2)).unwrap(), 0x1234);
        // Writes stay private: the file does not change.
        m2.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        let m3 = map_private(&path, size).unwrap();
        assert_eq!(
            m3.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(matches!(
            map_private(&path, size * 2),
            Err(MemoryFileError::Size { .. })
        ));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_new_dump_leaves_mapped_memory_intact() {
        let size = 8u64 << 20;
        let dir = std::env::temp_dir().join(format!("husk-mem-remap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(crate::snapshot::MEMORY_FILE);
        let old = crate::vstate::memory::create(size).unwrap();
        old.write_obj(0xaaaa_aaaa_u32, GuestAddress(0x1000))
            .unwrap();
        old.write_obj(0x5555_u16, GuestAddress(size - 2)).unwrap();
        dump(&old, &path).unwrap();
        // A VM restored from it: its pages are read from the file lazily.
        let restored = map_private(&path, size).unwrap();

        // A new snapshot into the same directory.
        let new = crate::vstate::memory::create(size).unwrap();
        new.write_obj(0xbbbb_bbbb_u32, GuestAddress(0x1000))
            .unwrap();
        dump(&new, &path).unwrap();

        // The restored VM still sees the memory it was restored from (an
        // in-place truncation showed it zeros or the new contents, or, for
        // a smaller file, SIGBUS).
        assert_eq!(
            restored.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xaaaa_aaaa
        );
        assert_eq!(
            restored.read_obj::<u16>(GuestAddress(size - 2)).unwrap(),
            0x5555
        );
        let fresh = map_private(&path, size).unwrap();
        assert_eq!(
            fresh.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xbbbb_bbbb
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [crate::snapshot::MEMORY_FILE]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
