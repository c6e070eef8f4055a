//! Putting a VM together from a [`VmConfig`] and starting its threads.
//! Orchestration only: each step lives in its own module.

use std::fs::File;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use husk_devices::bus::{Bus, SharedDevice};
use husk_devices::legacy::{cmos, i8042, serial, Cmos, ConsoleSink, ConsoleWatch, Serial, I8042};
use husk_devices::virtio::vsock::Vsock;
use husk_devices::EventFdTrigger;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::VmmHandle;
use crate::boot::{self, cmdline, kernel, mptable, paging, params};
use crate::config::{PvmCompat, VmConfig};
use crate::controller::{self, Controller, Facts, PANIC_MARKER};
use crate::device_manager::DeviceManager;
use crate::error::{StartError, VmmError};
use crate::host::{self, VirtKind};
use crate::runstate::RunState;
use crate::vstate::vcpu::{self, BootEntry, Vcpu, VcpuContext};
use crate::vstate::{kvm, memory, vm::Vm};

/// Extra devices a caller puts on the buses (tests, and later devices that
/// are not built in).
#[derive(Default)]
pub struct ExtraDevices {
    pub pio: Vec<(u64, u64, String, SharedDevice)>,
    pub mmio: Vec<(u64, u64, String, SharedDevice)>,
}

/// Boots a VM in this process and returns its handle.
pub fn start(config: VmConfig) -> Result<VmmHandle, StartError> {
    start_with(config, ExtraDevices::default())
}

/// [`start`] with extra devices on the buses.
pub fn start_with(config: VmConfig, extra: ExtraDevices) -> Result<VmmHandle, StartError> {
    let name = config.name.clone();
    build(config, extra).map_err(|source| StartError { vm: name, source })
}

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

fn build(config: VmConfig, extra: ExtraDevices) -> Result<VmmHandle, VmmError> {
    let started = Instant::now();
    config.validate()?;
    let kvm = kvm::open()?;
    let mem_size = config.mem_bytes();
    let mem = memory::create(mem_size)?;
    let vm = Vm::new(&kvm, &mem)?;

    // Guest memory contents.
    let loaded = kernel::load_kernel(&mem, &config.kernel, mem_size)?;
    let initrd = match &config.initrd {
        Some(p) => Some(kernel::load_initrd(&mem, p, loaded.end, mem_size)?),
        None => None,
    };
    let pvm = match config.pvm_compat {
        PvmCompat::On => true,
        PvmCompat::Off => false,
        PvmCompat::Auto => host::detect() == VirtKind::Pvm,
    };
    // Devices.
    let console = Arc::new(ConsoleWatch::new(console_markers(&config)));
    let (mut pio, reset_evt) = legacy_devices(&config, &vm, &console)?;
    let mut mmio = Bus::new();
    let mut devices = DeviceManager::new();
    attach_virtio_devices(&config, &vm, &mem, &mut mmio, &mut devices)?;
    for (base, len, name, dev) in extra.pio {
        pio.insert(base, len, &name, dev)?;
    }
    for (base, len, name, dev) in extra.mmio {
        mmio.insert(base, len, &name, dev)?;
    }
    // vCPU fds come first: on PVM hosts the command line carries the TSC
    // frequency KVM reports (the guest cannot calibrate it there).
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        vcpus.push(Vcpu::new(vm.fd(), id)?);
    }
    let tsc_khz = if pvm {
        vcpus.first().and_then(Vcpu::tsc_khz)
    } else {
        None
    };
    let cmdline = cmdline::build(&cmdline::Options {
        pvm_compat: pvm,
        tsc_khz,
        devices: &devices.cmdline_entries(),
        extra: &config.cmdline_extra,
        oneshot: config.oneshot,
    })?;
    let cmdline_text = cmdline
        .as_cstring()
        .map_err(|e| boot::BootError::Cmdline(e.to_string()))?
        .into_string()
        .map_err(|e| boot::BootError::Cmdline(e.to_string()))?;
    linux_loader::loader::load_cmdline(
        &mem,
        vm_memory::GuestAddress(boot::layout::CMDLINE),
        &cmdline,
    )
    .map_err(|e| boot::BootError::Cmdline(e.to_string()))?;
    let seed = params::write_rng_seed(&mem, &params::random_seed()?)?;
    let zp = params::boot_params(mem_size, cmdline_text.len(), initrd, Some(seed));
    params::write_zero_page(&mem, &zp)?;
    mptable::write(&mem, config.vcpus)?;
    let cr3 = paging::write_page_tables(&mem)?;
    paging::write_gdt(&mem)?;

    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

    // vCPUs.
    let supported = vcpu::supported_cpuid(&kvm).map_err(|source| VmmError::Kvm {
        what: "KVM_GET_SUPPORTED_CPUID",
        source,
    })?;
    let entry = BootEntry {
        rip: loaded.entry,
        cr3,
    };
    for v in &vcpus {
        v.configure(&supported, config.vcpus, entry)?;
    }

    // Threads.
    controller::install_kick_handler().map_err(io_err("vCPU kick signal handler"))?;
    let state = Arc::new(RunState::new().map_err(io_err("exit eventfd"))?);
    let api_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("API eventfd"))?;
    let (req_tx, req_rx) = mpsc::channel();
    let mut threads = Vec::with_capacity(vcpus.len());
    for v in vcpus {
        let ctx = VcpuContext {
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
            state: state.clone(),
        };
        let t = std::thread::Builder::new()
            .name(format!("husk-vcpu{}", v.id()))
            .spawn(move || v.run(ctx))
            .map_err(io_err("spawning a vCPU thread"));
        match t {
            Ok(t) => threads.push(t),
            Err(e) => {
                // Stop what already runs before reporting.
                state.report(crate::exit::ExitReason::HostRequest);
                controller::stop_started(&state, threads);
                return Err(e);
            }
        }
    }
    tracing::info!(vm = %config.name, vcpus = config.vcpus, mem_mib = config.mem_mib, pvm_compat = pvm, cmdline = %cmdline_text, "VM started");
    let facts = Facts {
        name: config.name.clone(),
        vcpus: config.vcpus,
        mem_mib: config.mem_mib,
        pvm_compat: pvm,
        cmdline: cmdline_text,
        ready_marker: config.ready_marker.clone(),
    };
    let ctl = Controller::new(
        facts,
        state.clone(),
        reset_evt,
        api_evt.try_clone().map_err(io_err("API eventfd"))?,
        req_rx,
        console.clone(),
        started,
    );
    let subscribers = devices.take_subscribers();
    // The VM (and its memory) must outlive the vCPU threads: the controller
    // thread owns it until they have all stopped.
    let ctl_thread = std::thread::Builder::new()
        .name("husk-vmm".into())
        .spawn(move || {
            let _vm = vm;
            let _kvm = kvm;
            controller::run(ctl, subscribers, threads);
        })
        .map_err(io_err("spawning the VMM thread"))?;
    Ok(VmmHandle {
        name: config.name,
        requests: req_tx,
        kick: api_evt,
        state,
        console,
        started,
        thread: Some(ctl_thread),
    })
}

/// Attaches the configured virtio devices.
fn attach_virtio_devices(
    config: &VmConfig,
    vm: &Vm,
    mem: &vm_memory::GuestMemoryMmap,
    mmio: &mut Bus,
    devices: &mut DeviceManager,
) -> Result<(), VmmError> {
    if let Some(v) = &config.vsock {
        let vsock = Vsock::new(u64::from(v.guest_cid), v.uds_path.clone())?;
        devices.attach(vm, mem, mmio, Arc::new(Mutex::new(vsock)))?;
    }
    Ok(())
}

/// What the console watch looks for.
fn console_markers(config: &VmConfig) -> Vec<String> {
    let mut markers = vec![PANIC_MARKER.to_string()];
    if !config.ready_marker.is_empty() {
        markers.push(config.ready_marker.clone());
    }
    markers
}

/// The PIO bus with the serial console, the i8042 and the CMOS clock;
/// returns it with the eventfd the i8042 signals on a guest reset.
fn legacy_devices(
    config: &VmConfig,
    vm: &Vm,
    console: &Arc<ConsoleWatch>,
) -> Result<(Bus, EventFd), VmmError> {
    let console_file = match &config.console.file {
        Some(p) => Some(File::create(p).map_err(|source| VmmError::ConsoleFile {
            path: p.display().to_string(),
            source,
        })?),
        None => None,
    };
    let serial_irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("serial eventfd"))?;
    vm.register_irqfd(&serial_irq, serial::COM1_IRQ)?;
    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("reset eventfd"))?;
    let serial_dev = Serial::new(
        EventFdTrigger::new(serial_irq),
        ConsoleSink::new(console_file, config.console.log, console.clone()),
    );
    let i8042_dev = I8042::new(EventFdTrigger::new(
        reset_evt.try_clone().map_err(io_err("reset eventfd"))?,
    ));
    let mut pio = Bus::new();
    pio.insert(
        serial::COM1_BASE,
        serial::COM1_LEN,
        "serial",
        Arc::new(Mutex::new(serial_dev)),
    )?;
    pio.insert(
        i8042::I8042_BASE,
        i8042::I8042_LEN,
        "i8042",
        Arc::new(Mutex::new(i8042_dev)),
    )?;
    pio.insert(
        cmos::CMOS_BASE,
        cmos::CMOS_LEN,
        "cmos",
        Arc::new(Mutex::new(Cmos::default())),
    )?;
    Ok((pio, reset_evt))
}
