//! The VMM boots tiny freestanding test guests (tests/guests/*.S) in
//! milliseconds: serial output, PIO/MMIO dispatch, i8042 reset, vCPU count,
//! panics, triple faults, host stop, console flooding.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use husk_devices::bus::BusDevice;
use husk_tests::{kvm_available, temp_path, test_guest};
use husk_vmm::{ExitReason, ExtraDevices, VmConfig, VmOutcome, VmmRequest, VmmResponse};

const WAIT: Duration = Duration::from_secs(60);

fn config(guest: &str) -> VmConfig {
    VmConfig {
        name: format!("test-{guest}"),
        kernel: test_guest(guest),
        mem_mib: 32,
        ..VmConfig::default()
    }
}

fn boot(cfg: VmConfig, extra: ExtraDevices) -> VmOutcome {
    let h = husk_vmm::start_with(cfg, extra).expect("VM starts");
    h.wait(Some(WAIT)).expect("the test guest finishes in time")
}

#[test]
fn hello_prints_and_resets() {
    if !kvm_available("hello_prints_and_resets") {
        return;
    }
    let console = temp_path("hello-console");
    let mut cfg = config("hello");
    cfg.console.file = Some(console.clone());
    let o = boot(cfg, ExtraDevices::default());
    assert_eq!(o.reason, ExitReason::GuestShutdown, "{:?}", o.console_tail);
    assert_eq!(o.console_tail, vec!["husk-test-guest: hello"]);
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "husk-test-guest: hello\n"
    );
    let t = &o.timeline;
    assert!(t.first_run.is_some() && t.first_console_line >= t.first_run);
    std::fs::remove_file(console).unwrap();
}

#[test]
fn panic_line_is_reported_as_guest_panic() {
    if !kvm_available("panic_line_is_reported_as_guest_panic") {
        return;
    }
    let o = boot(config("panic"), ExtraDevices::default());
    match &o.reason {
        ExitReason::GuestPanic { message } => assert!(message.contains("on purpose")),
        r => panic!("expected a guest panic, got {r}"),
    }
    assert!(o.reason.is_guest_crash());
}

#[derive(Default)]
struct TestDevice {
    writes: Vec<(u64, Vec<u8>)>,
    last_port: u8,
}

struct Shared(Arc<Mutex<TestDevice>>);

impl BusDevice for Shared {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let d = self.0.lock().unwrap();
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&0x1234_5677u32.to_le_bytes()),
            (0, 1) => data[0] = d.last_port.wrapping_add(1),
            _ => data.fill(0),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut d = self.0.lock().unwrap();
        if data.len() == 1 {
            d.last_port = data[0];
        }
        d.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn pio_and_mmio_exits_reach_bus_devices() {
    if !kvm_available("pio_and_mmio_exits_reach_bus_devices") {
        return;
    }
    let mmio_dev = Arc::new(Mutex::new(TestDevice::default()));
    let pio_dev = Arc::new(Mutex::new(TestDevice::default()));
    let extra = ExtraDevices {
        pio: vec![(
            0x510,
            1,
            "test-port".into(),
            Arc::new(Mutex::new(Shared(pio_dev.clone()))),
        )],
        mmio: vec![(
            0xd000_0000,
            0x1000,
            "test-mmio".into(),
            Arc::new(Mutex::new(Shared(mmio_dev.clone()))),
        )],
    };
    let o = boot(config("devices"), extra);
    assert_eq!(o.reason, ExitReason::GuestShutdown);
    assert_eq!(o.console_tail, vec!["devices: ok"]);
    assert_eq!(
        mmio_dev.lock().unwrap().writes,
        vec![(4, 0x1234_5678u32.to_le_bytes().to_vec())]
    );
    assert_eq!(pio_dev.lock().unwrap().writes, vec![(0, vec![0x42])]);
}

/// The VM's counters after the `devices` guest: its exact accesses per
/// bus device (a byte per console character), the run loop's exits by
/// reason, and KVM's own statistics where the kernel has them.
#[test]
fn counters_count_each_exit_per_device() {
    if !kvm_available("counters_count_each_exit_per_device") {
        return;
    }
    let dev = || {
        Arc::new(Mutex::new(Shared(Arc::new(Mutex::new(
            TestDevice::default(),
        )))))
    };
    let extra = ExtraDevices {
        pio: vec![(0x510, 1, "test-port".into(), dev())],
        mmio: vec![(0xd000_0000, 0x1000, "test-mmio".into(), dev())],
    };
    let h = husk_vmm::start_with(config("devices"), extra).expect("VM starts");
    let o = h.wait(Some(WAIT)).expect("the test guest finishes in time");
    assert_eq!(o.reason, ExitReason::GuestShutdown, "{:?}", o.console_tail);
    let s = h.stats();
    assert!(!s.running);
    assert!(s.uptime_ns > 0);
    let access = |bus: &husk_vmm::stats::BusStats, name: &str| {
        let d = bus.devices.iter().find(|d| d.device == name).unwrap();
        (d.reads, d.writes)
    };
    let console = "devices: ok\n".len() as u64;
    assert_eq!(access(&s.pio, "serial").1, console);
    assert_eq!(access(&s.pio, "i8042"), (0, 1));
    assert_eq!(access(&s.pio, "test-port"), (1, 1));
    assert_eq!(access(&s.mmio, "test-mmio"), (2, 1));
    assert_eq!((s.mmio.unclaimed.reads, s.mmio.unclaimed.writes), (1, 0));
    assert_eq!(s.vcpus.len(), 1);
    let v = &s.vcpus[0];
    let e = &v.exits;
    assert_eq!((e.io_out, e.io_in), (console + 2, 1), "{e:?}");
    assert_eq!((e.mmio_read, e.mmio_write), (3, 1), "{e:?}");
    assert_eq!((e.shutdown, e.other), (0, 0), "{e:?}");
    assert!(v.cpu_ns.is_some_and(|ns| ns > 0), "{v:?}");
    // The final counts stay: another read gives the same.
    assert_eq!(h.stats(), s);
    match &v.kvm {
        Some(k) => {
            // What KVM counts where differs between hosts (on PVM, port
            // I/O shows as instruction emulation, not io_exits): only
            // what holds everywhere.
            let get = |n: &str| k.get(n).unwrap_or_else(|| panic!("no KVM stat {n}: {k:?}"));
            assert!(get("exits") > 0, "{k:?}");
            assert!(get("exits") >= get("mmio_exits"), "{k:?}");
            assert!(s.kvm.is_some());
        }
        None => eprintln!("no KVM binary stats on this host: the kernel's counters are absent"),
    }
}

#[test]
fn guest_sees_vcpu_count_and_memory_map() {
    if !kvm_available("guest_sees_vcpu_count_and_memory_map") {
        return;
    }
    for (vcpus, mem) in [(1u8, 32u64), (2, 32), (4, 64)] {
        let mut cfg = config("cpus");
        cfg.vcpus = vcpus;
        cfg.mem_mib = mem;
        let h = husk_vmm::start(cfg).expect("VM starts");
        match h.request(VmmRequest::Info) {
            Ok(VmmResponse::Info(i)) => assert_eq!((i.vcpus, i.mem_mib), (vcpus, mem)),
            // The guest may already have reset; that is fine for this check.
            Ok(r) => panic!("unexpected {r:?}"),
            Err(_) => {}
        }
        let o = h.wait(Some(WAIT)).expect("finishes");
        assert_eq!(o.reason, ExitReason::GuestShutdown, "{:?}", o.console_tail);
        assert_eq!(o.console_tail, vec![format!("cpus={vcpus} e820=2")]);
    }
}

#[test]
fn triple_fault_is_reported() {
    if !kvm_available("triple_fault_is_reported") {
        return;
    }
    let o = boot(config("triple"), ExtraDevices::default());
    assert!(
        matches!(
            o.reason,
            ExitReason::TripleFault { vcpu: 0 } | ExitReason::EmulationFailure(_)
        ),
        "expected a triple fault, got {}",
        o.reason
    );
    assert!(o.reason.is_guest_crash());
}

#[test]
fn host_stops_a_spinning_guest() {
    if !kvm_available("host_stops_a_spinning_guest") {
        return;
    }
    let h = husk_vmm::start(config("spin")).expect("VM starts");
    assert!(
        h.console().wait_marker_any("spin: spinning", WAIT),
        "guest never spoke"
    );
    match h.request(VmmRequest::Info).expect("info") {
        VmmResponse::Info(i) => {
            assert_eq!(i.name, "test-spin");
            assert!(i.console_bytes >= 15);
        }
        r => panic!("unexpected {r:?}"),
    }
    let t = Instant::now();
    h.stop().expect("stop accepted");
    let o = h.wait(Some(Duration::from_secs(20))).expect("stops");
    assert_eq!(o.reason, ExitReason::HostRequest);
    assert!(t.elapsed() < Duration::from_secs(20));
    // Once stopped, requests fail clearly and stop stays harmless.
    let e = h.request(VmmRequest::Info).unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");
    h.stop().expect("stopping twice is fine");
}

#[test]
fn dropping_the_handle_stops_the_vm() {
    if !kvm_available("dropping_the_handle_stops_the_vm") {
        return;
    }
    let h = husk_vmm::start(config("spin")).expect("VM starts");
    let t = Instant::now();
    drop(h);
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn console_flood_loses_nothing() {
    if !kvm_available("console_flood_loses_nothing") {
        return;
    }
    let console = temp_path("flood-console");
    let mut cfg = config("flood");
    cfg.console.file = Some(console.clone());
    let o = boot(cfg, ExtraDevices::default());
    assert_eq!(o.reason, ExitReason::GuestShutdown);
    let text = std::fs::read_to_string(&console).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4001);
    assert!(lines[..4000].iter().all(|l| *l == "0123456789abcdef"));
    assert_eq!(lines[4000], "flood: done");
    std::fs::remove_file(console).unwrap();
}

#[test]
fn bad_input_is_refused_with_clear_errors() {
    // No KVM needed for these: they fail before or at /dev/kvm... except the
    // memory-size checks, which need the VM's memory; run all where KVM is.
    if !kvm_available("bad_input_is_refused_with_clear_errors") {
        return;
    }
    let err = |cfg: VmConfig| husk_vmm::start(cfg).err().expect("must fail").to_string();
    let mut c = config("hello");
    c.kernel = "/nonexistent/vmlinux".into();
    assert!(err(c).contains("/nonexistent/vmlinux"));
    let mut c = config("hello");
    c.mem_mib = 8;
    assert!(err(c).contains("out of range"));
    let big = temp_path("big-initrd");
    std::fs::write(&big, vec![0u8; 40 << 20]).unwrap();
    let mut c = config("hello");
    c.initrd = Some(big.clone());
    let e = err(c);
    assert!(
        e.contains("does not fit") && e.contains("big-initrd"),
        "{e}"
    );
    std::fs::remove_file(big).unwrap();
    let mut c = config("hello");
    c.kernel = husk_tests::repo_root().join("Cargo.toml");
    assert!(err(c).contains("not an ELF"));
}
