//! The x86_64 guest physical memory layout husk uses.
//!
//! ```text
//! 0x0000_0500  GDT (4 entries), IDT (empty) at 0x520
//! 0x0000_6000  setup_data: 32-byte RNG seed (SETUP_RNG_SEED)
//! 0x0000_7000  zero page (struct boot_params)
//! 0x0000_8ff0  boot stack (grows down)
//! 0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xf000 four page directories
//! 0x0002_0000  kernel command line (4 KiB)
//! 0x0009_fc00  MP table (last KiB of base memory; not RAM in e820)
//! 0x0010_0000  high memory: the kernel at its ELF physical address, the
//!              initrd at the top of low RAM
//! 0xd000_0000  MMIO gap (virtio-mmio windows, IOAPIC, LAPIC) up to 4 GiB
//! 0x1_0000_0000 RAM above the gap when the guest has more than 3.25 GiB
//! ```

pub const BOOT_GDT: u64 = 0x500;
pub const BOOT_IDT: u64 = 0x520;
pub const SETUP_DATA: u64 = 0x6000;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// Page directories: 4 x 1 GiB of 2 MiB pages identity-map the first 4 GiB.
pub const PD_COUNT: u64 = 4;
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
pub const MPTABLE: u64 = 0x9fc00;
/// End of base memory RAM (the MP table follows).
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// KVM's TSS (three pages) just below the BIOS area, inside the MMIO gap.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// IOAPIC pins (GSIs) available for devices.
pub const IOAPIC_PINS: u8 = 24;

/// The guest RAM ranges for `size` bytes of memory.
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_GAP_START {
        vec![(0, size)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, size - MMIO_GAP_START)]
    }
}

/// The end of RAM below the MMIO gap.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_splits_around_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(
            r,
            vec![
                (0, MMIO_GAP_START),
                (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START)
            ]
        );
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
        assert_eq!(low_ram_end(8 << 30), MMIO_GAP_START);
        const { assert!(PD + PD_COUNT * 0x1000 <= CMDLINE) };
        const { assert!(ZERO_PAGE + 0x1000 <= BOOT_STACK + 0x10) };
    }
}
