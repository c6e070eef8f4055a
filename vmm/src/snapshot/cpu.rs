//! vCPU and VM-wide KVM state (irqchip, PIT, clock) as plain data.

use kvm_bindings::{
    kvm_clock_data, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Errors saving or loading KVM state.
#[derive(Debug, thiserror::Error)]
pub enum CpuStateError {
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

fn kvm(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> CpuStateError {
    move |source| CpuStateError::Kvm { what, source }
}

/// The legacy FPU/SSE state (kvm_fpu has no serde support).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FpuState {
    pub fpr: Vec<[u8; 16]>,
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: Vec<[u8; 16]>,
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(f: &kvm_fpu) -> Self {
        Self {
            fpr: f.fpr.to_vec(),
            fcw: f.fcw,
            fsw: f.fsw,
            ftwx: f.ftwx,
            last_opcode: f.last_opcode,
            last_ip: f.last_ip,
            last_dp: f.last_dp,
            xmm: f.xmm.to_vec(),
            mxcsr: f.mxcsr,
        }
    }
}

impl FpuState {
    fn to_kvm(&self) -> Result<kvm_fpu, CpuStateError> {
        let mut f = kvm_fpu {
            fcw: self.fcw,
            fsw: self.fsw,
            ftwx: self.ftwx,
            last_opcode: self.last_opcode,
            last_ip: self.last_ip,
            last_dp: self.last_dp,
            mxcsr: self.mxcsr,
            ..Default::default()
        };
        if self.fpr.len() != f.fpr.len() || self.xmm.len() != f.xmm.len() {
            return Err(CpuStateError::Invalid(format!(
                "FPU state has {} x87 and {} XMM registers",
                self.fpr.len(),
                self.xmm.len()
            )));
        }
        f.fpr.copy_from_slice(&self.fpr);
        f.xmm.copy_from_slice(&self.xmm);
        Ok(f)
    }
}

/// The XSAVE area (the legacy 4 KiB region).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct XsaveState {
    pub region: Vec<u32>,
}

impl XsaveState {
    fn to_kvm(&self) -> Result<kvm_xsave, CpuStateError> {
        let mut x = kvm_xsave::default();
        if self.region.len() != x.region.len() {
            return Err(CpuStateError::Invalid(format!(
                "XSAVE area of {} words",
                self.region.len()
            )));
        }
        x.region.copy_from_slice(&self.region);
        Ok(x)
    }
}

/// One vCPU's architectural state.
#[derive(Clone, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    pub xsave: Option<XsaveState>,
    pub xcrs: Option<kvm_xcrs>,
    /// (index, value) of every MSR KVM let us read.
    pub msrs: Vec<(u32, u64)>,
    pub lapic: kvm_lapic_state,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("id", &self.id)
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("msrs", &self.msrs.len())
            .finish_non_exhaustive()
    }
}

/// Reads the MSRs in `indices` that KVM lets us read (nested hosts refuse
/// some: those are skipped).
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Vec<(u32, u64)> {
    let mut out = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(64) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let Ok(mut msrs) = Msrs::from_entries(&entries) else {
            continue;
        };
        match fd.get_msrs(&mut msrs) {
            Ok(n) if n == entries.len() => {
                out.extend(msrs.as_slice().iter().map(|e| (e.index, e.data)));
            }
            // KVM stops at the first MSR it refuses: go one by one.
            _ => {
                for &index in chunk {
                    let Ok(mut one) = Msrs::from_entries(&[kvm_msr_entry {
                        index,
                        ..Default::default()
                    }]) else {
                        continue;
                    };
                    if matches!(fd.get_msrs(&mut one), Ok(1)) {
                        if let Some(e) = one.as_slice().first() {
                            out.push((e.index, e.data));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The MSRs worth saving: everything KVM lists.
pub fn msr_indices(system: &Kvm) -> Result<Vec<u32>, CpuStateError> {
    Ok(system
        .get_msr_index_list()
        .map_err(kvm("KVM_GET_MSR_INDEX_LIST"))?
        .as_slice()
        .to_vec())
}

impl VcpuState {
    /// Saves vCPU `id` (it must be out of KVM_RUN).
    pub fn save(
        fd: &VcpuFd,
        id: u8,
        msr_indices: &[u32],
        xsave: bool,
        xcrs: bool,
    ) -> Result<Self, CpuStateError> {
        Ok(Self {
            id,
            regs: fd.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            fpu: FpuState::from(&fd.get_fpu().map_err(kvm("KVM_GET_FPU"))?),
            xsave: if xsave {
                fd.get_xsave().ok().map(|x| XsaveState {
                    region: x.region.to_vec(),
                })
            } else {
                None
            },
            xcrs: if xcrs { fd.get_xcrs().ok() } else { None },
            msrs: read_msrs(fd, msr_indices),
            lapic: fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            events: fd.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            mp_state: fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
        })
    }

    /// Loads the state into a vCPU whose CPUID is already set.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), CpuStateError> {
        fd.set_sregs(&self.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        fd.set_regs(&self.regs).map_err(kvm("KVM_SET_REGS"))?;
        fd.set_fpu(&self.fpu.to_kvm()?)
            .map_err(kvm("KVM_SET_FPU"))?;
        if let Some(x) = &self.xsave {
            let x = x.to_kvm()?;
            // SAFETY: `x` is a complete legacy kvm_xsave (no extended area
            // follows it); KVM validates the contents.
            unsafe { fd.set_xsave(&x) }.map_err(kvm("KVM_SET_XSAVE"))?;
        }
        if let Some(x) = &self.xcrs {
            fd.set_xcrs(x).map_err(kvm("KVM_SET_XCRS"))?;
        }
        // The LAPIC before the MSRs: KVM_SET_LAPIC cancels the TSC-deadline
        // timer, which writing IA32_TSC_DEADLINE afterwards re-arms.
        fd.set_lapic(&self.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        let entries: Vec<kvm_msr_entry> = self
            .msrs
            .iter()
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        for chunk in entries.chunks(64) {
            let msrs = Msrs::from_entries(chunk)
                .map_err(|e| CpuStateError::Invalid(format!("MSR list: {e:?}")))?;
            let n = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            if n < chunk.len() {
                // As at boot: a nested host may refuse an MSR it listed.
                for e in &chunk[n..] {
                    tracing::debug!(
                        vcpu = self.id,
                        msr = format_args!("{:#x}", e.index),
                        "MSR not restored"
                    );
                }
            }
        }
        fd.set_vcpu_events(&self.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        fd.set_mp_state(self.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        Ok(())
    }
}

/// VM-wide state: the in-kernel PICs and IOAPIC, the PIT, the clock.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState").finish_non_exhaustive()
    }
}

fn irqchip(fd: &VmFd, chip_id: u32) -> Result<kvm_irqchip, CpuStateError> {
    let mut c = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    fd.get_irqchip(&mut c).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(c)
}

impl VmState {
    pub fn save(fd: &VmFd) -> Result<Self, CpuStateError> {
        Ok(Self {
            pic_master: irqchip(fd, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: irqchip(fd, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: irqchip(fd, KVM_IRQCHIP_IOAPIC)?,
            pit: fd.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
            clock: fd.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
        })
    }

    pub fn restore(&self, fd: &VmFd) -> Result<(), CpuStateError> {
        for (chip, want) in [
            (&self.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&self.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&self.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            if chip.chip_id != want {
                return Err(CpuStateError::Invalid(format!(
                    "irqchip {} saved where chip {want} belongs",
                    chip.chip_id
                )));
            }
            fd.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
        }
        fd.set_pit2(&self.pit).map_err(kvm("KVM_SET_PIT2"))?;
        // Only the clock value: the flags KVM reports (e.g. TSC-stable) are
        // not accepted back.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        fd.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))
    }
}
