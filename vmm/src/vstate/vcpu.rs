//! vCPUs: boot-time register state and the run loop each vCPU thread runs.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use husk_devices::bus::Bus;

use crate::boot::layout::{BOOT_GDT, BOOT_IDT, BOOT_STACK, ZERO_PAGE};
use crate::boot::paging::{CODE_SELECTOR, DATA_SELECTOR, GDT, TSS_SELECTOR};
use crate::exit::{
    emulation_insn_bytes, read_insn, EmulationFailure, ExitReason, SUBERROR_EMULATION,
};
use crate::runstate::RunState;
use crate::snapshot::VcpuState;
use crate::stats::{KvmStatsFd, VcpuCounters};

/// Errors creating or configuring a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("vCPU {id}: {what} failed: {source}")]
    Kvm {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: {what}: {reason}")]
    Other {
        id: u8,
        what: &'static str,
        reason: String,
    },
}

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_NE: u64 = 1 << 5;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// MSRs set at boot (index, value), as a BIOS would leave them.
const BOOT_MSRS: &[(u32, u64)] = &[
    (0x174, 0),               // IA32_SYSENTER_CS
    (0x175, 0),               // IA32_SYSENTER_ESP
    (0x176, 0),               // IA32_SYSENTER_EIP
    (0xc000_0081, 0),         // STAR
    (0xc000_0082, 0),         // LSTAR
    (0xc000_0083, 0),         // CSTAR
    (0xc000_0084, 0),         // SYSCALL_MASK
    (0xc000_0102, 0),         // KERNEL_GS_BASE
    (0x10, 0),                // IA32_TSC
    (0x1a0, 1),               // IA32_MISC_ENABLE: fast strings
    (0x2ff, (1 << 11) | 0x6), // MTRRdefType: enabled, write-back
];

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    pub rip: u64,
    pub cr3: u64,
}

/// A vCPU and its index.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    /// The kernel's statistics of this vCPU (opened here, on the
    /// builder's thread; read by whoever asks for the VM's stats).
    stats_fd: Option<KvmStatsFd>,
}

impl Vcpu {
    /// Creates vCPU `id` (a cold boot's or a restore's).
    pub fn new(vm: &VmFd, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Kvm {
                id,
                what: "KVM_CREATE_VCPU",
                source,
            })?;
        let stats_fd = KvmStatsFd::open(&fd, "vCPU");
        Ok(Self { id, fd, stats_fd })
    }

    /// Takes the vCPU's KVM stats fd (for the VM's counters).
    pub fn take_stats_fd(&mut self) -> Option<KvmStatsFd> {
        self.stats_fd.take()
    }

    /// Loads a saved state (restore): CPUID first, then the rest.
    pub fn restore(
        &self,
        supported: &CpuId,
        vcpus: u8,
        state: &VcpuState,
    ) -> Result<(), VcpuError> {
        let cpuid = cpuid_for(supported, self.id, vcpus);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.kvm_err("KVM_SET_CPUID2"))?;
        state.restore(&self.fd).map_err(|e| VcpuError::Other {
            id: self.id,
            what: "restoring state",
            reason: e.to_string(),
        })
    }

    /// The vCPU index (also its APIC id).
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The guest TSC frequency KVM uses, when it says.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|k| *k > 0)
    }

    fn kvm_err(&self, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |source| VcpuError::Kvm { id, what, source }
    }

    /// Sets CPUID, MSRs, FPU, registers and the LAPIC for a 64-bit entry at
    /// `entry` (all vCPUs get it; only the BSP runs until the kernel starts
    /// the others).
    pub fn configure(
        &self,
        supported: &CpuId,
        vcpus: u8,
        entry: BootEntry,
    ) -> Result<(), VcpuError> {
        let cpuid = cpuid_for(supported, self.id, vcpus);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.kvm_err("KVM_SET_CPUID2"))?;
        self.set_boot_msrs()?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.fd.set_fpu(&fpu).map_err(self.kvm_err("KVM_SET_FPU"))?;
        self.set_sregs(entry.cr3)?;
        let regs = kvm_regs {
            rflags: 0x2,
            rip: entry.rip,
            rsp: BOOT_STACK,
            rbp: BOOT_STACK,
            rsi: ZERO_PAGE,
            ..Default::default()
        };
        self.fd
            .set_regs(&regs)
            .map_err(self.kvm_err("KVM_SET_REGS"))?;
        self.set_lint()
    }

    fn set_boot_msrs(&self) -> Result<(), VcpuError> {
        let entries: Vec<kvm_msr_entry> = BOOT_MSRS
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(|e| VcpuError::Other {
            id: self.id,
            what: "MSR list",
            reason: format!("{e:?}"),
        })?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.kvm_err("KVM_SET_MSRS"))?;
        if set < entries.len() {
            // Nested hosts refuse some MSRs (e.g. PVM); say which, and go on:
            // none of these is needed to boot.
            for e in &entries[set..] {
                tracing::warn!(
                    vcpu = self.id,
                    msr = format_args!("{:#x}", e.index),
                    "KVM_SET_MSRS did not take this boot MSR"
                );
            }
        }
        Ok(())
    }

    fn set_sregs(&self, cr3: u64) -> Result<(), VcpuError> {
        let mut sregs = self.fd.get_sregs().map_err(self.kvm_err("KVM_GET_SREGS"))?;
        let seg = |selector: u16, type_: u8, s: u8, l: u8, db: u8| kvm_segment {
            base: 0,
            limit: 0xfffff,
            selector,
            type_,
            present: 1,
            dpl: 0,
            db,
            s,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        };
        debug_assert_eq!(GDT.len(), 4);
        let code = seg(CODE_SELECTOR, 0xb, 1, 1, 0);
        let data = seg(DATA_SELECTOR, 0x3, 1, 0, 1);
        let tss = seg(TSS_SELECTOR, 0xb, 0, 0, 0);
        sregs.cs = code;
        sregs.ds = data;
        sregs.es = data;
        sregs.fs = data;
        sregs.gs = data;
        sregs.ss = data;
        sregs.tr = tss;
        sregs.gdt.base = BOOT_GDT;
        sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
        sregs.idt.base = BOOT_IDT;
        sregs.idt.limit = 7;
        sregs.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_NE | X86_CR0_PG;
        sregs.cr3 = cr3;
        sregs.cr4 = X86_CR4_PAE;
        sregs.efer = EFER_LME | EFER_LMA;
        self.fd
            .set_sregs(&sregs)
            .map_err(self.kvm_err("KVM_SET_SREGS"))
    }

    fn set_lint(&self) -> Result<(), VcpuError> {
        let mut lapic = self.fd.get_lapic().map_err(self.kvm_err("KVM_GET_LAPIC"))?;
        let mut rw = |off: usize, mode: u32| {
            let mut b = [0u8; 4];
            for (i, v) in b.iter_mut().enumerate() {
                *v = lapic.regs[off + i] as u8;
            }
            let value = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
            for (i, v) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[off + i] = *v as _;
            }
        };
        rw(APIC_LVT0, APIC_MODE_EXTINT);
        rw(APIC_LVT1, APIC_MODE_NMI);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.kvm_err("KVM_SET_LAPIC"))
    }

    /// Runs the vCPU until the VM stops; reports why through `state`.
    /// Counts each exit by reason in `ctx.counters` (a relaxed atomic add
    /// each; the buses count per device).
    pub fn run(mut self, ctx: VcpuContext) {
        let n = &ctx.counters;
        ctx.state.vcpu_started();
        let reason = loop {
            if ctx.state.stop.load(Ordering::Acquire) {
                break None;
            }
            if ctx.state.pause_requested() {
                let saved = VcpuState::save(
                    &self.fd,
                    self.id,
                    &ctx.save.msr_indices,
                    ctx.save.xsave,
                    ctx.save.xcrs,
                )
                .map_err(|e| e.to_string());
                ctx.state.park(self.id, saved);
                continue;
            }
            match self.fd.run() {
                Ok(exit) => match exit {
                    VcpuExit::IoIn(port, data) => {
                        n.io_in.inc();
                        ctx.pio.read(u64::from(port), data);
                    }
                    VcpuExit::IoOut(port, data) => {
                        n.io_out.inc();
                        ctx.pio.write(u64::from(port), data);
                    }
                    VcpuExit::MmioRead(addr, data) => {
                        n.mmio_read.inc();
                        ctx.mmio.read(addr, data);
                    }
                    VcpuExit::MmioWrite(addr, data) => {
                        n.mmio_write.inc();
                        ctx.mmio.write(addr, data);
                    }
                    VcpuExit::Shutdown => {
                        n.shutdown.inc();
                        break Some(ExitReason::TripleFault { vcpu: self.id });
                    }
                    VcpuExit::SystemEvent(kind, _) => {
                        n.system_event.inc();
                        break Some(ExitReason::SystemEvent {
                            vcpu: self.id,
                            kind,
                        });
                    }
                    VcpuExit::FailEntry(reason, _) => {
                        n.other.inc();
                        break Some(ExitReason::FailEntry {
                            vcpu: self.id,
                            reason,
                        });
                    }
                    VcpuExit::InternalError => {
                        n.other.inc();
                        break Some(self.internal_error(&ctx.mem));
                    }
                    VcpuExit::Intr => n.intr.inc(),
                    other => {
                        n.other.inc();
                        break Some(ExitReason::Unexpected {
                            vcpu: self.id,
                            exit: format!("{other:?}"),
                        });
                    }
                },
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    // Kicked (or a spurious signal): the loop re-checks `stop`.
                    n.eintr.inc();
                }
                Err(e) => {
                    break Some(ExitReason::VcpuError {
                        vcpu: self.id,
                        error: format!("KVM_RUN: {e}"),
                    })
                }
            }
        };
        if let Some(r) = reason {
            tracing::debug!(vcpu = self.id, reason = %r, "vCPU stopped");
            ctx.state.report(r);
        }
    }

    fn internal_error(&mut self, mem: &GuestMemoryMmap) -> ExitReason {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM wrote the `internal` member of the exit union for
        // KVM_EXIT_INTERNAL_ERROR, which kvm-ioctls has just reported.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let ndata = internal.ndata.min(internal.data.len() as u32);
        let data = internal.data[..ndata as usize].to_vec();
        if internal.suberror != SUBERROR_EMULATION {
            return ExitReason::InternalError {
                vcpu: self.id,
                suberror: internal.suberror,
                data,
            };
        }
        let rip = self.fd.get_regs().map(|r| r.rip).unwrap_or(0);
        let insn = emulation_insn_bytes(ndata, &data).unwrap_or_else(|| {
            self.fd
                .get_sregs()
                .map(|s| read_insn(mem, s.cr3, rip))
                .unwrap_or_default()
        });
        ExitReason::EmulationFailure(EmulationFailure {
            vcpu: self.id,
            rip,
            insn,
        })
    }
}

/// What a vCPU thread needs besides its fd.
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemoryMmap,
    pub state: Arc<RunState>,
    pub save: Arc<SaveCaps>,
    /// This vCPU's exit counters.
    pub counters: Arc<VcpuCounters>,
}

/// What a vCPU saves when it parks.
#[derive(Debug, Default)]
pub struct SaveCaps {
    pub msr_indices: Vec<u32>,
    pub xsave: bool,
    pub xcrs: bool,
}

impl SaveCaps {
    /// What this host's KVM can save.
    pub fn probe(kvm: &Kvm) -> Self {
        Self {
            msr_indices: crate::snapshot::cpu::msr_indices(kvm).unwrap_or_default(),
            xsave: kvm.check_extension(kvm_ioctls::Cap::Xsave),
            xcrs: kvm.check_extension(kvm_ioctls::Cap::Xcrs),
        }
    }
}

/// The host's supported CPUID.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, kvm_ioctls::Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
}

/// CPUID for vCPU `id` of `vcpus`: APIC ids, logical processor count and the
/// hypervisor bit.
pub fn cpuid_for(supported: &CpuId, id: u8, vcpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(vcpus) << 16);
                if vcpus > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is meaningful
                }
                e.ecx |= 1 << 31; // running under a hypervisor
            }
            0xb | 0x1f => e.edx = u32::from(id),
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpuid_carries_apic_id_and_count() {
        let entries = [
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xff00_0800,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                edx: 9,
                ..Default::default()
            },
        ];
        let supported = CpuId::from_entries(&entries).unwrap();
        let c = cpuid_for(&supported, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_eq!(s[0].ebx & 0xffff, 0x0800);
        assert_ne!(s[0].ecx & (1 << 31), 0);
        assert_ne!(s[0].edx & (1 << 28), 0);
        assert_eq!(s[1].edx, 3);
    }
}
