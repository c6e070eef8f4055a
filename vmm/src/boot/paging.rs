//! Identity-mapped page tables and the GDT for entering the kernel in 64-bit
//! long mode (the ELF `vmlinux` entry point, `startup_64`).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BOOT_GDT, BOOT_IDT, PD, PDPT, PD_COUNT, PML4};
use super::{write_err, BootError};

/// Flat GDT: null, 64-bit code, data, TSS.
pub const GDT: [u64; 4] = [
    0,
    0x00af_9b00_0000_ffff,
    0x00cf_9300_0000_ffff,
    0x008f_8b00_0000_ffff,
];
pub const CODE_SELECTOR: u16 = 0x08;
pub const DATA_SELECTOR: u16 = 0x10;
pub const TSS_SELECTOR: u16 = 0x18;

const PRESENT_RW: u64 = 0x3;
const HUGE: u64 = 0x80;

/// Writes the PML4, PDPT and page directories that identity-map the first
/// `PD_COUNT` GiB with 2 MiB pages; returns the CR3 value.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<u64, BootError> {
    let pml4 = GuestAddress(PML4);
    mem.write_obj(PDPT | PRESENT_RW, pml4)
        .map_err(write_err("PML4", pml4))?;
    for g in 0..PD_COUNT {
        let pd = PD + g * 0x1000;
        let pdpte = GuestAddress(PDPT + g * 8);
        mem.write_obj(pd | PRESENT_RW, pdpte)
            .map_err(write_err("PDPT", pdpte))?;
        let mut table = [0u8; 4096];
        for (i, e) in table.chunks_exact_mut(8).enumerate() {
            let phys = (g << 30) | ((i as u64) << 21);
            e.copy_from_slice(&(phys | PRESENT_RW | HUGE).to_le_bytes());
        }
        mem.write_slice(&table, GuestAddress(pd))
            .map_err(write_err("page directory", GuestAddress(pd)))?;
    }
    Ok(PML4)
}

/// Writes the GDT and an empty IDT.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, e) in GDT.iter().enumerate() {
        let a = GuestAddress(BOOT_GDT + i as u64 * 8);
        mem.write_obj(*e, a).map_err(write_err("GDT", a))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT))
        .map_err(write_err("IDT", GuestAddress(BOOT_IDT)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::gva_to_gpa;

    #[test]
    fn identity_maps_four_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let cr3 = write_page_tables(&mem).unwrap();
        for va in [
            0u64,
            0x1000,
            0x100_0123,
            0x3fff_ffff,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(gva_to_gpa(&mem, cr3, va), Some(va), "va {va:#x}");
        }
        assert_eq!(gva_to_gpa(&mem, cr3, 0x1_0000_0000), None);
        write_gdt(&mem).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT + 8)).unwrap();
        assert_eq!(code, GDT[1]);
    }
}
