//! The real guest image with a vsock device: the host reaches the agent's
//! ttrpc API through the hybrid-vsock socket, the agent's log stream reaches
//! the host (guest-initiated), several MiB go each way over concurrent
//! streams without a byte lost or reordered, and the agent shuts the VM
//! down on request. The VM's counters show what that took (exits,
//! vsock interrupts, KVM's statistics) while it runs and once it ended.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use husk_shim::agent_client::{hybrid_vsock_connect, AgentClient};
use husk_tests::{guest_image, kvm_available, pattern, temp_path};
use husk_vmm::{ExitReason, VmConfig, VsockConfig};

const ECHO_PORT: u32 = 1026;
const STREAMS: usize = 4;
const BYTES_PER_STREAM: usize = 2 << 20;

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

fn echo_round_trip(uds: &Path, seed: u64) -> Duration {
    let t = Instant::now();
    let stream = hybrid_vsock_connect(uds, ECHO_PORT, Duration::from_secs(30)).unwrap();
    let data = pattern(seed, BYTES_PER_STREAM);
    let mut w = stream.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::with_capacity(data.len());
    let mut r = stream;
    r.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    r.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len(), "stream {seed}: length");
    assert!(back == data, "stream {seed}: content differs");
    t.elapsed()
}

/// What a guest that booted and moved MiB over vsock must have counted.
fn check_counters(s: &husk_vmm::VmStats, running: bool) {
    assert_eq!(s.running, running);
    let text = serde_json::to_string(s).unwrap();
    // The vsock device raised used-ring interrupts, and the driver read
    // and acked them through its MMIO registers.
    assert!(s.interrupts_of("vsock", "queue").unwrap() > 0, "{text}");
    let vsock = s.mmio.devices.iter().find(|d| d.device == "vsock").unwrap();
    assert!(vsock.reads > 0 && vsock.writes > 0, "{text}");
    // The console spoke through the serial port.
    let serial = s.pio.devices.iter().find(|d| d.device == "serial").unwrap();
    assert!(serial.writes > 0, "{text}");
    assert!(s.loop_exits() > 0, "{text}");
    assert!(s.vcpu_cpu_ns().is_some_and(|ns| ns > 0), "{text}");
    // KVM's own counts, where the kernel has them: every exit, those it
    // handles itself too (what it counts where differs between hosts).
    if s.vcpus.iter().all(|v| v.kvm.is_some()) {
        assert!(s.kvm_vcpu_sum("exits").unwrap() > 0, "{text}");
    }
}

#[test]
fn agent_over_vsock_streams_and_shutdown() {
    if !kvm_available("agent_over_vsock_streams_and_shutdown") {
        return;
    }
    let (kernel, initrd) = guest_image();
    let dir = temp_path("vsock");
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    // The agent connects to host port 1025 for its log stream.
    let log_listener = UnixListener::bind(format!("{}_1025", uds.display())).unwrap();
    let console = dir.join("console.log");
    let cfg = VmConfig {
        name: "real-kernel-vsock".into(),
        kernel,
        initrd: Some(initrd),
        cmdline_extra: format!("husk.echo_port={ECHO_PORT}"),
        console: husk_vmm::ConsoleConfig {
            file: Some(console.clone()),
            log: false,
        },
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        }),
        ..VmConfig::default()
    };
    let h = husk_vmm::start(cfg).expect("VM starts");
    let fail = |what: &str| -> ! {
        let _ = h.stop();
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        panic!("{what}; console:\n{text}");
    };

    let client = match AgentClient::connect(&uds, Duration::from_secs(600)) {
        Ok(c) => c,
        Err(e) => fail(&format!("agent unreachable: {e}")),
    };
    let v = client.version().unwrap();
    assert_eq!(v.agent_version, env!("CARGO_PKG_VERSION"));
    let info = client.guest_info().unwrap();
    assert!(info.kernel_release.starts_with("6.1."), "{info:?}");
    assert_ne!(
        info.kernel_release,
        host_release(),
        "must be the guest's kernel"
    );
    assert_eq!(info.boot_id.len(), 36, "{info:?}");
    assert!(
        info.mem_total_kib > 64 * 1024 && info.mem_total_kib < 128 * 1024,
        "{info:?}"
    );
    assert_eq!(client.health().unwrap(), "SERVING");

    // Guest-initiated stream: the agent's log lines.
    let (log_stream, _) = log_listener.accept().unwrap();
    log_stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut first = String::new();
    BufReader::new(log_stream).read_line(&mut first).unwrap();
    assert!(first.contains("husk-agent"), "log line: {first:?}");

    // Several MiB each way over concurrent host-initiated streams.
    let t = Instant::now();
    let workers: Vec<_> = (0..STREAMS as u64)
        .map(|seed| {
            let uds = uds.clone();
            std::thread::spawn(move || echo_round_trip(&uds, seed + 1))
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "vsock echo: {STREAMS} streams x {} MiB each way in {secs:.1} s",
        BYTES_PER_STREAM >> 20
    );

    // The ttrpc connection still works after the bulk traffic.
    assert_eq!(client.health().unwrap(), "SERVING");
    let live = h.stats();
    check_counters(&live, true);
    client.shutdown().unwrap();
    let o = h
        .wait(Some(Duration::from_secs(120)))
        .unwrap_or_else(|| fail("no shutdown"));
    assert_eq!(o.reason, ExitReason::GuestShutdown);
    let last = h.stats();
    check_counters(&last, false);
    // Counters only grow.
    let irqs = |s: &husk_vmm::VmStats| s.interrupts_of("vsock", "queue").unwrap();
    assert!(irqs(&last) >= irqs(&live));
    assert!(last.loop_exits() >= live.loop_exits());
    assert!(last.uptime_ns >= live.uptime_ns);
    eprintln!(
        "counters at the end: run-loop exits {}, KVM exits {:?}, vsock queue interrupts {}, vCPU CPU {:?} ns",
        last.loop_exits(),
        last.kvm_vcpu_sum("exits"),
        irqs(&last),
        last.vcpu_cpu_ns()
    );
    let text = std::fs::read_to_string(&console).unwrap();
    assert!(text.contains("powering off (shutdown request)"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
