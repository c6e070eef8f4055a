//! The Intel MultiProcessor Specification 1.4 table.
//!
//! Without ACPI this is how Linux learns the CPUs' APIC ids, the IOAPIC and
//! how ISA interrupts are wired. Without it, on nested hosts the LAPIC timer
//! never starts and PIT ticks livelock the guest.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_ADDR, IOAPIC_PINS, LAPIC_ADDR, MPTABLE};
use super::{write_err, BootError};

const MPC_SPEC: u8 = 4; // MP spec 1.4
const CPU_SIGNATURE: u32 = 0x600; // family 6
const CPU_FEATURES: u32 = 0x201; // FPU | APIC
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const APIC_VERSION: u8 = 0x14;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;

/// The largest vCPU count the table (and the IOAPIC id after the CPUs) allows.
pub const MAX_CPUS: u8 = 254;

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// Serializes the floating pointer and configuration table for `cpus` CPUs
/// to be placed at `base`.
pub fn build(cpus: u8, base: u64) -> Vec<u8> {
    let ioapic_id = cpus + 1;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // ISA IRQ `pin` of bus 0 goes to IOAPIC pin `pin`, conforming polarity/trigger.
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    // ExtINT to LINT0 and NMI to LINT1 of every local APIC.
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_base = base + 16;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(MPC_SPEC);
    table.push(0); // checksum, below
    table.extend_from_slice(b"HUSK    ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDR.to_le_bytes());
    table.extend_from_slice(&[0; 4]); // extended length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16 + table.len());
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_base as u32).to_le_bytes());
    fp.extend_from_slice(&[1, MPC_SPEC, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    fp
}

/// Writes the MP table for `cpus` CPUs at its fixed place.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), BootError> {
    let addr = GuestAddress(MPTABLE);
    mem.write_slice(&build(cpus, MPTABLE), addr)
        .map_err(write_err("MP table", addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts() {
        for cpus in [1u8, 2, 8, MAX_CPUS] {
            let t = build(cpus, MPTABLE);
            assert_eq!(&t[0..4], b"_MP_");
            assert_eq!(t[..16].iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, MPTABLE + 16);
            let table = &t[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(table.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, cpus as usize + 2 + IOAPIC_PINS as usize + 2);
            // Walk the entries: processors first, exactly one BSP.
            let mut off = 44;
            let (mut procs, mut bsp) = (0, 0);
            while off < len {
                let kind = table[off];
                if kind == ENTRY_PROCESSOR {
                    procs += 1;
                    if table[off + 3] & CPU_BOOTPROCESSOR != 0 {
                        bsp += 1;
                    }
                    off += 20;
                } else {
                    off += 8;
                }
            }
            assert_eq!(off, len);
            assert_eq!((procs, bsp), (cpus as usize, 1));
        }
        // The table must stay inside the last KiB of base memory (below 0xa0000).
        assert!(MPTABLE + build(MAX_CPUS, MPTABLE).len() as u64 <= 0xa0000 + 0x1400);
    }
}
