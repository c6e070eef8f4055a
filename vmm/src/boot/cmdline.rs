//! The guest kernel command line.

use super::layout::CMDLINE_MAX;
use super::BootError;

/// What every husk guest gets: the serial console, resets through the i8042
/// (the VMM sees them; there is no ACPI), reboot at once on panic, and no
/// interfaces of the built-in dummy and ifb drivers at boot (they would
/// make dummy0, ifb0 and ifb1: a pod's guest has eth0 as its one interface
/// besides lo, which the agent's ConfigureNetwork checks; containers still
/// make their own with `ip link add`).
pub const BASE: &str = "console=ttyS0 reboot=k panic=-1 nomodule dummy.numdummies=0 ifb.numifbs=0";

/// Extra arguments for nested PVM hosts (`kvm_pvm`), where the guest kernel's
/// CPL0 code runs in the host's instruction emulator, which cannot execute
/// several instructions, and KVM_SET_CPUID2 does not reach the guest: the
/// features are cleared on the command line instead. `clearcpuid=` is read
/// only up to 127 characters. See shared/notes/kvm-here.md.
pub const PVM_COMPAT: &str = "clearcpuid=xsave,smap,smep,fsgsbase,rdpid,pcid,invpcid,popcnt,rdrand,rdseed,erms,fsrm,cx16,clflushopt,clwb,umip mitigations=off tsc=reliable no-kvmclock noreplace-smp rodata=off io_delay=none quiet";

/// With [`PVM_COMPAT`]: glibc's AVX, AVX2, AVX-512 and FMA code paths off
/// in every guest process. The guest kernel there saves only x87/SSE state
/// at a context switch (`clearcpuid=xsave`: the emulator has no XSAVE),
/// while user code runs natively and sees the host's CPUID; processes that
/// use the wider registers corrupt each other's (intermittent SIGSEGVs).
/// The kernel hands this to PID 1 as an environment variable; the agent
/// passes it on to every process it starts (`agent/src/guest_env.rs`).
/// Both spellings of the names: glibc ≥ 2.33 (`AVX2`) and older
/// (`AVX2_Usable`); unknown names are ignored.
pub const PVM_GUEST_TUNABLES: &str = "GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD,-FMA,-FMA4,-AVX_Fast_Unaligned_Load,-AVX_Usable,-AVX2_Usable,-AVX512F_Usable,-AVX512VL_Usable,-AVX512BW_Usable,-AVX512DQ_Usable,-AVX512CD_Usable,-FMA_Usable,-FMA4_Usable";

/// Tells the agent to power the guest off once it is ready.
pub const ONESHOT: &str = "husk.oneshot=1";

/// What goes into the command line besides [`BASE`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Options<'a> {
    /// Add [`PVM_COMPAT`].
    pub pvm_compat: bool,
    /// With `pvm_compat`: the TSC frequency KVM reports, passed as
    /// `tsc_early_khz=` (the guest cannot calibrate its TSC there: no HPET,
    /// no PM timer, and the PIT is too slow under emulation).
    pub tsc_khz: Option<u32>,
    /// `virtio_mmio.device=` entries of the attached devices.
    pub devices: &'a [String],
    /// The user's extra arguments.
    pub extra: &'a str,
    /// Add [`ONESHOT`].
    pub oneshot: bool,
}

/// Builds the command line: base, PVM compatibility (when asked), the
/// devices, the user's extra arguments, then `husk.oneshot=1` (when asked).
pub fn build(o: &Options<'_>) -> Result<linux_loader::cmdline::Cmdline, BootError> {
    let mut c = linux_loader::cmdline::Cmdline::new(CMDLINE_MAX)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let mut push = |s: &str| {
        c.insert_str(s)
            .map_err(|e| BootError::Cmdline(format!("{e} (while adding {s:?})")))
    };
    push(BASE)?;
    if o.pvm_compat {
        push(PVM_COMPAT)?;
        push(PVM_GUEST_TUNABLES)?;
        if let Some(khz) = o.tsc_khz {
            push(&format!("tsc_early_khz={khz}"))?;
        }
    }
    for d in o.devices {
        push(d)?;
    }
    let extra = o.extra.trim();
    if !extra.is_empty() {
        push(extra)?;
    }
    if o.oneshot {
        push(ONESHOT)?;
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(c: &linux_loader::cmdline::Cmdline) -> String {
        c.as_cstring().unwrap().into_string().unwrap()
    }

    #[test]
    fn composes_in_order() {
        let o = Options {
            pvm_compat: true,
            tsc_khz: Some(2_445_404),
            devices: &["virtio_mmio.device=4K@0xd0000000:5".to_string()],
            extra: "  loglevel=8 ",
            oneshot: true,
        };
        let text = s(&build(&o).unwrap());
        assert!(text.starts_with(BASE));
        assert!(text.contains("clearcpuid="));
        assert!(text.contains(" GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,"));
        assert!(text.ends_with(
            "tsc_early_khz=2445404 virtio_mmio.device=4K@0xd0000000:5 loglevel=8 husk.oneshot=1"
        ));
        assert_eq!(s(&build(&Options::default()).unwrap()), BASE);
        // The TSC hint belongs to the PVM set only.
        let hw = Options {
            tsc_khz: Some(1),
            ..Options::default()
        };
        assert_eq!(s(&build(&hw).unwrap()), BASE);
    }

    #[test]
    fn clearcpuid_fits_the_kernel_limit() {
        let arg = PVM_COMPAT
            .split(' ')
            .find(|a| a.starts_with("clearcpuid="))
            .unwrap();
        let value = &arg["clearcpuid=".len()..];
        assert!(
            value.len() < 128,
            "clearcpuid list is {} chars",
            value.len()
        );
    }

    #[test]
    fn rejects_bad_input() {
        let long = "x".repeat(CMDLINE_MAX);
        assert!(build(&Options {
            extra: &long,
            ..Options::default()
        })
        .is_err());
        assert!(build(&Options {
            extra: "a\0b",
            ..Options::default()
        })
        .is_err());
    }
}
