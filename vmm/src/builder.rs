//! Putting a VM together and starting its threads: from a [`VmConfig`]
//! (cold boot) or from a snapshot directory (restore). Orchestration only:
//! each step lives in its own module.

use std::fs::File;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use husk_devices::bus::{Bus, SharedDevice};
use husk_devices::counters::Counter;
use husk_devices::legacy::{cmos, i8042, serial, Cmos, ConsoleSink, ConsoleWatch, Serial, I8042};
use husk_devices::virtio::block::Block;
use husk_devices::virtio::fs::{isolate_umask, Fs};
use husk_devices::virtio::net::{open_backend, Net};
use husk_devices::virtio::transport::mmio::MmioTransportState;
use husk_devices::virtio::vsock::Vsock;
use husk_devices::virtio::VirtioDevice;
use husk_devices::EventFdTrigger;
use husk_seccomp::ThreadKind;
use kvm_ioctls::Kvm;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::api::VmmHandle;
use crate::boot::{self, cmdline, kernel, mptable, paging, params};
pub use crate::config::RestoreConfig;
use crate::config::{ConsoleConfig, PvmCompat, SeccompMode, VmConfig, READY_MARKER};
use crate::confine::{self, FsAccess};
use crate::controller::{self, Controller, Facts, PANIC_MARKER};
use crate::device_manager::{DeviceManager, Subscriber};
use crate::error::{StartError, VmmError};
use crate::host::{self, VirtKind};
use crate::runstate::RunState;
use crate::seccomp;
use crate::snapshot::{self, Snapshot};
use crate::snapshot_sources::{DeviceHandles, SnapshotSources};
use crate::stats::{self, KvmStatsFd, VcpuCounters, VmCounters};
use crate::vstate::vcpu::{self, BootEntry, SaveCaps, Vcpu, VcpuContext};
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

/// Restores a VM from a snapshot directory and resumes it.
pub fn restore(config: RestoreConfig) -> Result<VmmHandle, StartError> {
    let name = config.name.clone();
    build_restored(config).map_err(|source| StartError { vm: name, source })
}

fn io_err(what: &'static str) -> impl Fn(std::io::Error) -> VmmError {
    move |source| VmmError::Io { what, source }
}

/// Everything a VM needs to start running, however it was built.
struct Parts {
    name: String,
    started: Instant,
    kvm: Kvm,
    pio: Bus,
    mmio: Bus,
    reset_evt: EventFd,
    console: Arc<ConsoleWatch>,
    vcpus: Vec<Vcpu>,
    devices: DeviceManager,
    facts: Facts,
    sources: SnapshotSources,
    seccomp: SeccompMode,
    /// The serial port's interrupt count.
    serial_irqs: Arc<Counter>,
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
    let console = Arc::new(ConsoleWatch::new(console_markers(&config.ready_marker)));
    let serial_trigger = EventFdTrigger::new(serial_irq(&vm)?);
    let serial_irqs = serial_trigger.count();
    let serial_dev = Serial::new(serial_trigger, console_sink(&config.console, &console)?);
    let (mut pio, serial, cmos, reset_evt) = legacy_devices(serial_dev, Cmos::default())?;
    let mut mmio = Bus::new();
    let mut devices = DeviceManager::new();
    let vsock = match &config.vsock {
        Some(v) => {
            let dev = Vsock::new(u64::from(v.guest_cid), v.uds_path.clone())?;
            Some(attach(&mut devices, &vm, &mem, &mut mmio, dev, None)?)
        }
        None => None,
    };
    let mut disks = Vec::with_capacity(config.disks.len());
    for d in &config.disks {
        let dev = Block::new(d.clone())?;
        disks.push(attach(&mut devices, &vm, &mem, &mut mmio, dev, None)?);
    }
    let mut shares = Vec::with_capacity(config.shares.len());
    for sh in &config.shares {
        let dev = Fs::new(sh.clone())?;
        shares.push(attach(&mut devices, &vm, &mem, &mut mmio, dev, None)?);
    }
    let mut nets = Vec::with_capacity(config.nets.len());
    for n in &config.nets {
        let dev = Net::new(n.clone())?;
        nets.push(attach(&mut devices, &vm, &mem, &mut mmio, dev, None)?);
    }
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

    let supported = supported_cpuid(&kvm)?;
    let entry = BootEntry {
        rip: loaded.entry,
        cr3,
    };
    for v in &vcpus {
        v.configure(&supported, config.vcpus, entry)?;
    }
    let facts = Facts {
        name: config.name.clone(),
        vcpus: config.vcpus,
        mem_mib: config.mem_mib,
        pvm_compat: pvm,
        cmdline: cmdline_text,
        ready_marker: config.ready_marker.clone(),
    };
    launch(Parts {
        name: config.name,
        started,
        kvm,
        pio,
        mmio,
        reset_evt,
        console,
        vcpus,
        devices,
        facts,
        sources: SnapshotSources {
            vm,
            mem,
            serial,
            cmos,
            vsock,
            disks,
            shares,
            nets,
        },
        seccomp: config.seccomp,
        serial_irqs,
    })
}

fn build_restored(config: RestoreConfig) -> Result<VmmHandle, VmmError> {
    let started = Instant::now();
    config.validate()?;
    let dir = &config.snapshot_dir;
    let snap = Snapshot::read(dir)?;
    snap.expect_shape(dir, config.mem_mib, config.vcpus)?;
    let kvm = kvm::open()?;
    let mem_size = snap.mem_mib << 20;
    let mem = snapshot::memory::map_private(&snapshot::memory_path(dir), mem_size)?;
    let vm = Vm::new(&kvm, &mem)?;
    snap.vm.restore(vm.fd())?;

    let console = Arc::new(ConsoleWatch::new(console_markers(READY_MARKER)));
    let serial_trigger = EventFdTrigger::new(serial_irq(&vm)?);
    let serial_irqs = serial_trigger.count();
    let serial_dev = Serial::from_state(
        &snap.devices.serial,
        serial_trigger,
        console_sink(&config.console, &console)?,
    )
    .map_err(|e| VmmError::Restore(e.to_string()))?;
    let cmos_dev =
        Cmos::from_state(&snap.devices.cmos).map_err(|e| VmmError::Restore(e.to_string()))?;
    let (pio, serial, cmos, reset_evt) = legacy_devices(serial_dev, cmos_dev)?;
    let mut mmio = Bus::new();
    let mut devices = DeviceManager::new();
    // Devices go back in the order they were attached, so each gets its
    // old MMIO slot and GSI (checked).
    let mut vsock = None;
    if let Some(v) = &snap.devices.vsock {
        let uds = config.vsock_uds.clone().ok_or_else(|| {
            VmmError::Restore("the snapshot has a vsock device: give the restored VM its own vsock socket (--vsock-uds)".into())
        })?;
        let dev = Vsock::new(v.device.guest_cid, uds)?;
        let at = Some(Saved::of(v));
        vsock = Some(attach(&mut devices, &vm, &mem, &mut mmio, dev, at)?);
    }
    let saved_disks = &snap.devices.disks;
    if !config.disks.is_empty() && config.disks.len() != saved_disks.len() {
        return Err(VmmError::Restore(format!(
            "the snapshot has {} disks, {} images were given",
            saved_disks.len(),
            config.disks.len()
        )));
    }
    let mut disks = Vec::with_capacity(saved_disks.len());
    for (i, d) in saved_disks.iter().enumerate() {
        let mut state = d.device.clone();
        if let Some(p) = config.disks.get(i) {
            state.disk_path = p.to_string_lossy().into_owned();
        }
        let dev = Block::from_state(&state)?;
        let at = Some(Saved::of(d));
        disks.push(attach(&mut devices, &vm, &mem, &mut mmio, dev, at)?);
    }
    let saved_shares = &snap.devices.shares;
    if let Some((tag, _)) = config
        .shares
        .iter()
        .find(|(t, _)| !saved_shares.iter().any(|s| &s.device.tag == t))
    {
        return Err(VmmError::Restore(format!(
            "the snapshot has no virtio-fs share tagged {tag:?}"
        )));
    }
    let mut shares = Vec::with_capacity(saved_shares.len());
    for sh in saved_shares {
        let dir = config
            .shares
            .iter()
            .find(|(t, _)| *t == sh.device.tag)
            .map(|(_, d)| d.clone());
        let dev = Fs::from_state(&sh.device, dir)?;
        let at = Some(Saved::of(sh));
        shares.push(attach(&mut devices, &vm, &mem, &mut mmio, dev, at)?);
    }
    let saved_nets = &snap.devices.nets;
    if config.nets.len() != saved_nets.len() {
        return Err(VmmError::Restore(format!(
            "the snapshot has {} net devices, {} taps were given (each restored VM needs its own)",
            saved_nets.len(),
            config.nets.len()
        )));
    }
    let mut nets = Vec::with_capacity(saved_nets.len());
    for (n, tap) in saved_nets.iter().zip(&config.nets) {
        let dev = Net::from_state(&n.device, open_backend(tap)?)?;
        let at = Some(Saved::of(n));
        nets.push(attach(&mut devices, &vm, &mem, &mut mmio, dev, at)?);
    }

    let supported = supported_cpuid(&kvm)?;
    let mut vcpus = Vec::with_capacity(usize::from(snap.vcpus));
    for st in &snap.vcpu_states {
        let v = Vcpu::new(vm.fd(), st.id)?;
        v.restore(&supported, snap.vcpus, st)?;
        vcpus.push(v);
    }
    // Connections never survive a restore: the guest's driver resets its
    // sockets on this event; its listeners keep working. Only now: its
    // interrupt, raised before the vCPUs' local APICs were restored, would
    // be overwritten by their saved state, and a guest snapshotted idle
    // (no timer due) would then sleep on, never taking the event, while
    // the device holds host connections back until it does.
    if let Some(v) = &vsock {
        v.device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send_transport_reset();
    }
    let facts = Facts {
        name: config.name.clone(),
        vcpus: snap.vcpus,
        mem_mib: snap.mem_mib,
        pvm_compat: snap.pvm_compat,
        cmdline: snap.cmdline.clone(),
        ready_marker: READY_MARKER.into(),
    };
    launch(Parts {
        name: config.name,
        started,
        kvm,
        pio,
        mmio,
        reset_evt,
        console,
        vcpus,
        devices,
        facts,
        sources: SnapshotSources {
            vm,
            mem,
            serial,
            cmos,
            vsock,
            disks,
            shares,
            nets,
        },
        seccomp: config.seccomp,
        serial_irqs,
    })
}

/// Where a restored device sat, and its transport's state.
struct Saved<'a> {
    base: u64,
    gsi: u32,
    transport: &'a MmioTransportState,
}

impl<'a> Saved<'a> {
    fn of<S>(s: &'a snapshot::DeviceSnapshot<S>) -> Self {
        Self {
            base: s.base,
            gsi: s.gsi,
            transport: &s.transport,
        }
    }
}

/// Attaches a virtio device; a restored one (`saved`) gets its transport
/// state back and must land where it was.
fn attach<D>(
    devices: &mut DeviceManager,
    vm: &Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut Bus,
    dev: D,
    saved: Option<Saved<'_>>,
) -> Result<DeviceHandles<D>, VmmError>
where
    D: VirtioDevice + event_manager::MutEventSubscriber + Send + 'static,
{
    let name = dev.name().to_string();
    let device = Arc::new(Mutex::new(dev));
    let Some(saved) = saved else {
        let (slot, transport) = devices.attach(vm, mem, mmio, device.clone())?;
        return Ok(DeviceHandles {
            slot,
            device,
            transport,
        });
    };
    let (slot, transport) =
        devices.attach_restored(vm, mem, mmio, device.clone(), saved.transport)?;
    if (slot.base, slot.gsi) != (saved.base, saved.gsi) {
        return Err(VmmError::Restore(format!(
            "{name} was at {:#x} (GSI {}) in the snapshot, now at {:#x} (GSI {})",
            saved.base, saved.gsi, slot.base, slot.gsi
        )));
    }
    Ok(DeviceHandles {
        slot,
        device,
        transport,
    })
}

fn supported_cpuid(kvm: &Kvm) -> Result<kvm_bindings::CpuId, VmmError> {
    vcpu::supported_cpuid(kvm).map_err(|source| VmmError::Kvm {
        what: "KVM_GET_SUPPORTED_CPUID",
        source,
    })
}

/// Starts the vCPU threads and the controller thread.
///
/// No guest code runs until every step that can fail has succeeded: each
/// vCPU thread installs its filter and then waits for a go (its channel)
/// before its first KVM_RUN. On any failure the go senders are dropped, so
/// the vCPU threads end without running the guest, and they are joined (as
/// is the event loop thread) before the error is returned: a failed start
/// leaves no thread and no running guest behind. Once the go is given,
/// nothing fails any more.
fn launch(p: Parts) -> Result<VmmHandle, VmmError> {
    let Parts {
        name,
        started,
        kvm,
        pio,
        mmio,
        reset_evt,
        console,
        vcpus,
        mut devices,
        facts,
        sources,
        seccomp,
        serial_irqs,
    } = p;
    let (filtered_tx, filtered) = mpsc::channel();
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    controller::install_kick_handler()?;
    let state = Arc::new(RunState::new().map_err(io_err("exit eventfd"))?);
    let save = Arc::new(SaveCaps::probe(&kvm));
    let api_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("API eventfd"))?;
    let ctl_api_evt = api_evt.try_clone().map_err(io_err("API eventfd"))?;
    let (req_tx, req_rx) = mpsc::channel();
    let mut vcpus = vcpus;
    let counters = Arc::new(VmCounters::new(stats::live::Sources {
        name: name.clone(),
        started,
        pio: &pio,
        mmio: &mmio,
        virtio_interrupts: devices.interrupt_counts(),
        serial_irqs,
        vcpus: vcpus
            .iter_mut()
            .map(|v| (v.id(), Arc::new(VcpuCounters::default()), v.take_stats_fd()))
            .collect(),
        // KVM_GET_STATS_FD here, on the caller's thread (the vCPUs' at
        // `Vcpu::new`): no VMM thread's filter needs the ioctl.
        vm_fd: KvmStatsFd::open(sources.vm.fd(), "VM"),
    }));
    let mut threads = Vec::with_capacity(vcpus.len());
    let mut gos = Vec::with_capacity(vcpus.len());
    // Dropping `gos` (every error path) ends the vCPU threads before their
    // first KVM_RUN; `threads` are then joined.
    let fail = |state: &RunState, threads: Vec<JoinHandle<()>>, e: VmmError| {
        state.report(crate::exit::ExitReason::HostRequest);
        controller::stop_started(state, threads);
        Err(e)
    };
    for (v, vcpu_counters) in vcpus.into_iter().zip(counters.vcpu_counters()) {
        let ctx = VcpuContext {
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: sources.mem.clone(),
            state: state.clone(),
            save: save.clone(),
            counters: vcpu_counters,
        };
        let report = filtered_tx.clone();
        let (go_tx, go) = mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name(format!("husk-vcpu{}", v.id()))
            .spawn(move || {
                // Its tid, for readers of its CPU clock: before the filter
                // (gettid is not on the vCPU list; clock_gettime, used at
                // its end, is).
                let counters = ctx.counters.clone();
                counters.thread_started();
                // Before the first KVM_RUN: guest input starts there.
                let nnp = confine::no_new_privs(seccomp);
                let ready = seccomp::setup(ThreadKind::Vcpu, seccomp, &report, || {
                    confine::vcpu_thread(nnp)
                });
                if ready && go.recv().is_ok() {
                    v.run(ctx);
                }
                counters.thread_ending();
            })
            .map_err(io_err("spawning a vCPU thread"));
        match t {
            Ok(t) => {
                threads.push(t);
                gos.push(go_tx);
            }
            Err(e) => {
                drop(gos);
                return fail(&state, threads, e);
            }
        }
    }
    if let Err(e) = seccomp::wait_installed(&filtered, threads.len()) {
        drop(gos);
        return fail(&state, threads, e);
    }
    let subscribers: Vec<Subscriber> = devices.take_subscribers();
    // The event loop reaches only its VM's shares (their final
    // directories: a restored VM's are chosen at restore).
    let fs_access = share_access(&sources.shares);
    let (vcpu_count, mem_mib, pvm_compat, cmdline) = (
        facts.vcpus,
        facts.mem_mib,
        facts.pvm_compat,
        facts.cmdline.clone(),
    );
    let ctl = Controller {
        facts,
        counters: counters.clone(),
        state: state.clone(),
        reset_evt,
        api_evt: ctl_api_evt,
        requests: req_rx,
        console: console.clone(),
        started,
        sources,
        vcpu_threads: Vec::new(),
    };
    // The vCPU threads go to the event loop only once the start cannot
    // fail any more; until then `launch` owns (and on failure joins) them.
    let (handover_tx, handover) = mpsc::channel::<Vec<JoinHandle<()>>>();
    // The VM (and its memory) must outlive the vCPU threads: the controller
    // owns it until they have all stopped.
    let ctl_thread = std::thread::Builder::new()
        .name("husk-vmm".into())
        .spawn(move || {
            let _kvm = kvm;
            // The virtio-fs server clears the umask of the thread it runs
            // on: this thread gets its own (unshare(CLONE_FS)), before its
            // privileges and filter, which do not allow unshare.
            let ready = match isolate_umask() {
                Ok(()) => seccomp::setup(ThreadKind::Vmm, seccomp, &filtered_tx, || {
                    confine::vmm_thread(&fs_access, confine::no_new_privs(seccomp))
                }),
                Err(source) => {
                    let e = VmmError::ThreadSetup {
                        thread: "husk-vmm".into(),
                        what: "unshare(CLONE_FS) for a thread-private umask",
                        source,
                    };
                    // The receiver outlives the wait in `launch`.
                    let _ = filtered_tx.send(Err(e));
                    false
                }
            };
            // Without its filter the loop serves nothing: `launch` gives
            // up, drops `handover_tx`, and this thread ends.
            if ready {
                if let Ok(threads) = handover.recv() {
                    controller::run(ctl, subscribers, threads);
                }
            }
        })
        .map_err(io_err("spawning the VMM thread"));
    let ctl_thread = match ctl_thread {
        Ok(t) => t,
        Err(e) => {
            drop(gos);
            return fail(&state, threads, e);
        }
    };
    let last_step = match seccomp::wait_installed(&filtered, 1) {
        Ok(()) if crate::fault::launch_fails(&name) => Err(VmmError::Io {
            what: "injected fault",
            source: std::io::ErrorKind::Other.into(),
        }),
        r => r,
    };
    if let Err(e) = last_step {
        drop(gos);
        drop(handover_tx);
        let r = fail(&state, threads, e);
        let _ = ctl_thread.join();
        return r;
    }
    // Nothing fails from here on. The event loop thread waits for the
    // handover, so the send succeeds unless that thread panicked.
    if let Err(mpsc::SendError(threads)) = handover_tx.send(threads) {
        drop(gos);
        let r = fail(
            &state,
            threads,
            VmmError::Io {
                what: "the VMM thread ended while starting",
                source: std::io::ErrorKind::Other.into(),
            },
        );
        let _ = ctl_thread.join();
        return r;
    }
    for go in gos {
        // A vCPU thread that is gone has no guest to run; its exit is the
        // event loop's to see.
        let _ = go.send(());
    }
    tracing::info!(vm = %name, vcpus = vcpu_count, mem_mib, pvm_compat, cmdline = %cmdline, "VM started");
    Ok(VmmHandle {
        name,
        requests: req_tx,
        kick: api_evt,
        state,
        console,
        started,
        counters,
        thread: Some(ctl_thread),
    })
}

/// What the event loop may reach: each share's directory (read-only
/// shares for reading only); template devices have none.
fn share_access(shares: &[DeviceHandles<Fs>]) -> FsAccess {
    let mut access = FsAccess::default();
    for sh in shares {
        let dev = sh
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(dir) = dev.shared_dir() {
            let list = if dev.read_only() {
                &mut access.read_only
            } else {
                &mut access.read_write
            };
            list.push(dir.to_path_buf());
        }
    }
    access
}

/// What the console watch looks for.
fn console_markers(ready_marker: &str) -> Vec<String> {
    let mut markers = vec![PANIC_MARKER.to_string()];
    if !ready_marker.is_empty() {
        markers.push(ready_marker.to_string());
    }
    markers
}

fn console_sink(cfg: &ConsoleConfig, watch: &Arc<ConsoleWatch>) -> Result<ConsoleSink, VmmError> {
    let file = match &cfg.file {
        Some(p) => Some(File::create(p).map_err(|source| VmmError::ConsoleFile {
            path: p.display().to_string(),
            source,
        })?),
        None => None,
    };
    Ok(ConsoleSink::new(file, cfg.log, watch.clone()))
}

fn serial_irq(vm: &Vm) -> Result<EventFd, VmmError> {
    let irq = EventFd::new(EFD_NONBLOCK).map_err(io_err("serial eventfd"))?;
    vm.register_irqfd(&irq, serial::COM1_IRQ)?;
    Ok(irq)
}

type Legacy = (Bus, Arc<Mutex<Serial>>, Arc<Mutex<Cmos>>, EventFd);

/// The PIO bus with the serial console, the i8042 and the CMOS clock, the
/// typed handles the snapshot needs, and the eventfd the i8042 signals on a
/// guest reset.
fn legacy_devices(serial_dev: Serial, cmos_dev: Cmos) -> Result<Legacy, VmmError> {
    let reset_evt = EventFd::new(EFD_NONBLOCK).map_err(io_err("reset eventfd"))?;
    let i8042_dev = I8042::new(EventFdTrigger::new(
        reset_evt.try_clone().map_err(io_err("reset eventfd"))?,
    ));
    let serial = Arc::new(Mutex::new(serial_dev));
    let cmos = Arc::new(Mutex::new(cmos_dev));
    let mut pio = Bus::new();
    pio.insert(
        serial::COM1_BASE,
        serial::COM1_LEN,
        "serial",
        serial.clone(),
    )?;
    pio.insert(
        i8042::I8042_BASE,
        i8042::I8042_LEN,
        "i8042",
        Arc::new(Mutex::new(i8042_dev)),
    )?;
    pio.insert(cmos::CMOS_BASE, cmos::CMOS_LEN, "cmos", cmos.clone())?;
    Ok((pio, serial, cmos, reset_evt))
}
