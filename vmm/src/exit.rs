//! Why a VM stopped, reported with enough detail to act on.

use std::fmt;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The outcome of a VM run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine through the i8042 (`reboot=k`): how a
    /// husk guest powers off or reboots; both end the VM.
    GuestShutdown,
    /// The guest kernel panicked (and then reset, `panic=-1`).
    GuestPanic { message: String },
    /// The vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault { vcpu: u8 },
    /// KVM reported a system event (shutdown, reset, crash).
    SystemEvent { vcpu: u8, kind: u32 },
    /// The host's KVM could not emulate a guest instruction.
    EmulationFailure(EmulationFailure),
    /// Another KVM internal error.
    InternalError {
        vcpu: u8,
        suberror: u32,
        data: Vec<u64>,
    },
    /// KVM could not enter the guest.
    FailEntry { vcpu: u8, reason: u64 },
    /// A vCPU ioctl failed.
    VcpuError { vcpu: u8, error: String },
    /// An exit the VMM does not handle.
    Unexpected { vcpu: u8, exit: String },
    /// The host asked the VM to stop.
    HostRequest,
}

impl ExitReason {
    /// True when the guest shut itself down in order, or the host stopped it.
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::GuestShutdown | ExitReason::HostRequest)
    }

    /// True when the guest itself crashed (as opposed to the VMM or host).
    pub fn is_guest_crash(&self) -> bool {
        matches!(
            self,
            ExitReason::GuestPanic { .. }
                | ExitReason::TripleFault { .. }
                | ExitReason::EmulationFailure(_)
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::GuestShutdown => write!(f, "guest shut down (i8042 reset)"),
            ExitReason::GuestPanic { message } => write!(f, "guest kernel panic: {message}"),
            ExitReason::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple fault"),
            ExitReason::SystemEvent { vcpu, kind } => {
                write!(f, "vCPU {vcpu} system event {kind}")
            }
            ExitReason::EmulationFailure(e) => write!(f, "{e}"),
            ExitReason::InternalError {
                vcpu,
                suberror,
                data,
            } => write!(
                f,
                "vCPU {vcpu} KVM internal error (exit reason 17), suberror {suberror}, data {data:x?}"
            ),
            ExitReason::FailEntry { vcpu, reason } => {
                write!(f, "vCPU {vcpu} failed to enter the guest (hardware reason {reason:#x})")
            }
            ExitReason::VcpuError { vcpu, error } => write!(f, "vCPU {vcpu} error: {error}"),
            ExitReason::Unexpected { vcpu, exit } => write!(f, "vCPU {vcpu} unexpected exit {exit}"),
            ExitReason::HostRequest => write!(f, "stopped by the host"),
        }
    }
}

/// KVM_EXIT_INTERNAL_ERROR with suberror KVM_INTERNAL_ERROR_EMULATION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmulationFailure {
    pub vcpu: u8,
    pub rip: u64,
    /// The instruction bytes at RIP (from KVM or read from guest memory).
    pub insn: Vec<u8>,
}

/// KVM_INTERNAL_ERROR_EMULATION.
pub const SUBERROR_EMULATION: u32 = 1;
const FLAG_INSTRUCTION_BYTES: u64 = 1;

/// The hint shown with an emulation failure.
pub const EMULATION_HINT: &str = "the host's KVM could not execute a guest kernel instruction. On nested PVM hosts (kvm_pvm; `husk check` says so) the guest kernel runs in an instruction emulator: boot husk's guest kernel (guest-image/, with its patches) and keep the PVM compatibility command line on (see shared/notes/kvm-here.md)";

impl fmt::Display for EmulationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vCPU {} KVM internal error (exit reason 17): instruction emulation failed at rip {:#x}, bytes [",
            self.vcpu, self.rip
        )?;
        for (i, b) in self.insn.iter().enumerate() {
            write!(f, "{}{b:02x}", if i == 0 { "" } else { " " })?;
        }
        write!(f, "]; hint: {EMULATION_HINT}")
    }
}

/// The instruction bytes KVM put in `kvm_run.emulation_failure` (laid over
/// `internal.data`: data[0] = flags, then insn_size and 15 bytes), if any.
pub fn emulation_insn_bytes(ndata: u32, data: &[u64]) -> Option<Vec<u8>> {
    if ndata < 3 || data.len() < 3 || data[0] & FLAG_INSTRUCTION_BYTES == 0 {
        return None;
    }
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&data[1].to_le_bytes());
    raw[8..].copy_from_slice(&data[2].to_le_bytes());
    let size = usize::from(raw[0]).min(15);
    Some(raw[1..=size].to_vec())
}

/// Translates a guest virtual address with the 4-level page tables at `cr3`
/// (2 MiB and 1 GiB pages included). None when unmapped or outside memory.
pub fn gva_to_gpa(mem: &GuestMemoryMmap, cr3: u64, va: u64) -> Option<u64> {
    const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
    let mut table = cr3 & ADDR_MASK;
    for (level, shift) in [39u64, 30, 21, 12].into_iter().enumerate() {
        let index = (va >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & 1 == 0 {
            return None;
        }
        let huge = entry & 0x80 != 0 && (level == 1 || level == 2);
        if level == 3 || huge {
            let page = 1u64 << shift;
            return Some((entry & ADDR_MASK & !(page - 1)) | (va & (page - 1)));
        }
        table = entry & ADDR_MASK;
    }
    None
}

/// Reads up to 15 instruction bytes at virtual `rip`.
pub fn read_insn(mem: &GuestMemoryMmap, cr3: u64, rip: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..15 {
        let Some(pa) = gva_to_gpa(mem, cr3, rip.wrapping_add(i)) else {
            break;
        };
        match mem.read_obj::<u8>(GuestAddress(pa)) {
            Ok(b) => out.push(b),
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_kvm_instruction_bytes() {
        // flags=1, insn_size=3, bytes 0f 01 ca (clac)
        let d1 = u64::from_le_bytes([3, 0x0f, 0x01, 0xca, 0, 0, 0, 0]);
        assert_eq!(
            emulation_insn_bytes(3, &[1, d1, 0]),
            Some(vec![0x0f, 0x01, 0xca])
        );
        assert_eq!(emulation_insn_bytes(3, &[0, d1, 0]), None);
        assert_eq!(emulation_insn_bytes(1, &[1]), None);
        // A lying size is clamped to the 15 bytes KVM has room for.
        let d1 = u64::from_le_bytes([0xff, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            emulation_insn_bytes(3, &[1, d1, u64::MAX]).unwrap().len(),
            15
        );
    }

    #[test]
    fn display_names_rip_bytes_and_hint() {
        let e = ExitReason::EmulationFailure(EmulationFailure {
            vcpu: 0,
            rip: 0xffff_ffff_8100_0000,
            insn: vec![0x0f, 0xae, 0x2f],
        });
        let s = e.to_string();
        assert!(s.contains("exit reason 17") && s.contains("0xffffffff81000000"));
        assert!(s.contains("0f ae 2f") && s.contains("hint:"));
        assert!(e.is_guest_crash() && !e.is_clean());
        assert!(ExitReason::GuestShutdown.is_clean());
    }

    #[test]
    fn page_walk_with_kernel_mapping() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        // cr3 at 0x1000: PML4[511] -> PDPT 0x2000; PDPT[510] -> PD 0x3000;
        // PD[8] -> 2 MiB page at 0x20_0000 (VA 0xffffffff81000000 -> PA 0x200000).
        mem.write_obj(0x2003u64, GuestAddress(0x1000 + 511 * 8))
            .unwrap();
        mem.write_obj(0x3003u64, GuestAddress(0x2000 + 510 * 8))
            .unwrap();
        mem.write_obj(0x20_0083u64, GuestAddress(0x3000 + 8 * 8))
            .unwrap();
        mem.write_slice(&[0x0f, 0x01, 0xca, 0x90], GuestAddress(0x20_0010))
            .unwrap();
        let rip = 0xffff_ffff_8100_0010;
        assert_eq!(gva_to_gpa(&mem, 0x1000, rip), Some(0x20_0010));
        assert_eq!(
            &read_insn(&mem, 0x1000, rip)[..4],
            &[0x0f, 0x01, 0xca, 0x90]
        );
        assert_eq!(gva_to_gpa(&mem, 0x1000, 0x1000), None);
        // Garbage cr3 outside memory: no panic, nothing read.
        assert!(read_insn(&mem, 0xffff_f000, rip).is_empty());
    }
}
