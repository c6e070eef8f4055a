//! The Linux zero page (`struct boot_params`): e820 map, command line and
//! initrd pointers, and a `setup_data` RNG seed (saves seconds of entropy
//! gathering on emulated hosts and unblocks early `getrandom`).

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{self, EBDA_START, HIMEM_START, SETUP_DATA, ZERO_PAGE};
use super::{write_err, BootError};

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const BOOT_PROTOCOL_VERSION: u16 = 0x020f;
const LOADER_UNDEFINED: u8 = 0xff;
const LOADED_HIGH: u8 = 0x01;
const CAN_USE_HEAP: u8 = 0x80;
const KERNEL_ALIGNMENT: u32 = 0x100_0000;
const SETUP_RNG_SEED: u32 = 9;
/// Bytes of seed; the kernel mixes them into its pool at boot.
pub const RNG_SEED_LEN: usize = 32;

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// The e820 RAM map for `mem_size` bytes.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for (start, len) in layout::ram_ranges(mem_size) {
        let start = start.max(HIMEM_START);
        let end = if start == HIMEM_START {
            len
        } else {
            start + len
        };
        if end > start {
            map.push((start, end - start));
        }
    }
    map
}

/// Fills a zero page.
pub fn boot_params(
    mem_size: u64,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    setup_data: Option<u64>,
) -> boot_params {
    let mut p = boot_params::default();
    p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    p.hdr.header = KERNEL_HDR_MAGIC;
    p.hdr.version = BOOT_PROTOCOL_VERSION;
    p.hdr.type_of_loader = LOADER_UNDEFINED;
    p.hdr.loadflags = LOADED_HIGH | CAN_USE_HEAP;
    p.hdr.heap_end_ptr = 0xfe00;
    p.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    p.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    p.hdr.cmdline_size = cmdline_len as u32;
    if let Some(i) = initrd {
        // The initrd lies below the MMIO gap, so it fits in 32 bits.
        p.hdr.ramdisk_image = i.addr as u32;
        p.hdr.ramdisk_size = i.size as u32;
    }
    if let Some(sd) = setup_data {
        p.hdr.setup_data = sd;
    }
    let map = e820_map(mem_size);
    for (slot, (addr, size)) in p.e820_table.iter_mut().zip(map.iter()) {
        *slot = boot_e820_entry {
            addr: *addr,
            size: *size,
            type_: E820_RAM,
        };
    }
    p.e820_entries = map.len() as u8;
    p
}

/// Writes the `SETUP_RNG_SEED` setup_data node; returns its address.
pub fn write_rng_seed(mem: &GuestMemoryMmap, seed: &[u8; RNG_SEED_LEN]) -> Result<u64, BootError> {
    let addr = GuestAddress(SETUP_DATA);
    let mut node = Vec::with_capacity(16 + RNG_SEED_LEN);
    node.extend_from_slice(&0u64.to_le_bytes()); // next
    node.extend_from_slice(&SETUP_RNG_SEED.to_le_bytes());
    node.extend_from_slice(&(RNG_SEED_LEN as u32).to_le_bytes());
    node.extend_from_slice(seed);
    mem.write_slice(&node, addr)
        .map_err(write_err("RNG seed setup_data", addr))?;
    Ok(SETUP_DATA)
}

/// Writes the zero page.
pub fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<(), BootError> {
    let addr = GuestAddress(ZERO_PAGE);
    mem.write_obj(*params, addr)
        .map_err(write_err("zero page", addr))
}

/// A fresh random seed from the host.
pub fn random_seed() -> Result<[u8; RNG_SEED_LEN], BootError> {
    let mut seed = [0u8; RNG_SEED_LEN];
    let mut filled = 0;
    while filled < seed.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `seed`,
        // which outlives the call.
        let n =
            unsafe { libc::getrandom(seed[filled..].as_mut_ptr().cast(), seed.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(BootError::Random(e));
        }
        filled += n as usize;
    }
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn e820_small_and_split() {
        assert_eq!(
            e820_map(128 << 20),
            vec![(0, 0x9fc00), (0x10_0000, (128 << 20) - 0x10_0000)]
        );
        let big = 6u64 << 30;
        assert_eq!(
            e820_map(big),
            vec![
                (0, 0x9fc00),
                (0x10_0000, MMIO_GAP_START - 0x10_0000),
                (MMIO_GAP_END, big - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn zero_page_fields() {
        let p = boot_params(
            64 << 20,
            42,
            Some(InitrdPlacement {
                addr: 0x3f0_0000,
                size: 0x1234,
            }),
            Some(SETUP_DATA),
        );
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.boot_flag }, 0xaa55);
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x3f0_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x1234);
        assert_eq!({ p.hdr.setup_data }, SETUP_DATA);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }, { e.type_ }),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
    }

    #[test]
    fn seed_node_layout() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let seed = random_seed().unwrap();
        assert_ne!(seed, [0u8; RNG_SEED_LEN]);
        assert_eq!(write_rng_seed(&mem, &seed).unwrap(), SETUP_DATA);
        let kind: u32 = mem.read_obj(GuestAddress(SETUP_DATA + 8)).unwrap();
        let len: u32 = mem.read_obj(GuestAddress(SETUP_DATA + 12)).unwrap();
        assert_eq!((kind, len), (9, 32));
        let mut back = [0u8; RNG_SEED_LEN];
        mem.read_slice(&mut back, GuestAddress(SETUP_DATA + 16))
            .unwrap();
        assert_eq!(back, seed);
    }
}
