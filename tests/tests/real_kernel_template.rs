//! Templates on the real guest image: a VM with open vsock streams is
//! snapshotted; three VMs restored from it run at once, each answers over
//! its own vsock socket with its own identity after Reidentify, streams
//! work again (the host reconnects), and the template's memory pages are
//! shared between them (PSS well below RSS).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use husk_shim::agent_client::{hybrid_vsock_connect, AgentClient, Identity};
use husk_tests::{guest_image, kvm_available, temp_path};
use husk_vmm::{ExitReason, RestoreConfig, VmConfig, VmmRequest, VmmResponse, VsockConfig};

const ECHO_PORT: u32 = 1026;

fn echo_once(uds: &Path, msg: &[u8]) {
    let mut s = hybrid_vsock_connect(uds, ECHO_PORT, Duration::from_secs(30)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(msg).unwrap();
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, msg);
}

/// (Rss, Pss) in KiB of this process's mappings of `file`.
fn mapping_rss_pss(file: &Path) -> (u64, u64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let name = file.to_str().unwrap();
    let (mut rss, mut pss, mut inside) = (0, 0, false);
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.ends_with(name);
            continue;
        }
        if !inside {
            continue;
        }
        let kib = || {
            line.split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
        };
        if line.starts_with("Rss:") {
            rss += kib();
        } else if line.starts_with("Pss:") {
            pss += kib();
        }
    }
    (rss, pss)
}

#[test]
fn template_restores_three_vms_with_own_identities_and_shared_memory() {
    if !kvm_available("template_restores_three_vms_with_own_identities_and_shared_memory") {
        return;
    }
    let (kernel, initrd) = guest_image();
    let dir = temp_path("template");
    std::fs::create_dir_all(&dir).unwrap();
    let tpl = dir.join("tpl");
    let uds = dir.join("base.sock");
    let base = husk_vmm::start(VmConfig {
        name: "template-base".into(),
        kernel,
        initrd: Some(initrd),
        cmdline_extra: format!("husk.echo_port={ECHO_PORT}"),
        console: husk_vmm::ConsoleConfig {
            file: Some(dir.join("base-console.log")),
            log: false,
        },
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
        }),
        ..VmConfig::default()
    })
    .unwrap();
    let client = AgentClient::connect(&uds, Duration::from_secs(600)).unwrap();
    let base_info = client.guest_info().unwrap();
    // Streams open at snapshot time: a ttrpc connection and an echo stream.
    let mut open_stream = hybrid_vsock_connect(&uds, ECHO_PORT, Duration::from_secs(30)).unwrap();
    open_stream.write_all(b"before snapshot").unwrap();
    let mut buf = [0u8; 15];
    open_stream.read_exact(&mut buf).unwrap();
    // Then idle, with no timer due: a restored guest must still take the
    // vsock transport reset's interrupt (it was once raised before the
    // local APIC's state was restored over it, and such a guest slept on).
    std::thread::sleep(Duration::from_secs(3));

    assert_eq!(
        base.request(VmmRequest::Pause).unwrap(),
        VmmResponse::Paused
    );
    let written = match base
        .request(VmmRequest::Snapshot { dir: tpl.clone() })
        .unwrap()
    {
        VmmResponse::Snapshot { memory_bytes } => memory_bytes,
        r => panic!("unexpected {r:?}"),
    };
    assert!(written > 0 && written < 128 << 20, "{written}");
    base.stop().unwrap();
    assert_eq!(
        base.wait(Some(Duration::from_secs(30))).unwrap().reason,
        ExitReason::HostRequest
    );
    drop(client);
    drop(open_stream);

    // Three VMs from the template, at once.
    let t = Instant::now();
    let vms: Vec<_> = (0..3)
        .map(|i| {
            let sock = dir.join(format!("vm{i}.sock"));
            let h = husk_vmm::restore(RestoreConfig {
                disks: Vec::new(),
                shares: Vec::new(),
                nets: Vec::new(),
                name: format!("restored-{i}"),
                snapshot_dir: tpl.clone(),
                console: husk_vmm::ConsoleConfig {
                    file: Some(dir.join(format!("vm{i}-console.log"))),
                    log: false,
                },
                vsock_uds: Some(sock.clone()),
                mem_mib: Some(128),
                vcpus: Some(1),
                seccomp: Default::default(),
            })
            .unwrap();
            (h, sock)
        })
        .collect();
    let mut ids = Vec::new();
    let mut clients = Vec::new();
    for (i, (_, sock)) in vms.iter().enumerate() {
        // Well under the 60 s the vsock device holds host connections for
        // a transport reset the guest never takes.
        let c = AgentClient::connect(sock, Duration::from_secs(40)).unwrap();
        let identity = Identity::fresh(format!("restored-{i}")).unwrap();
        let out = c.reidentify(&identity).unwrap();
        assert_eq!(out.instance_id, identity.instance_id);
        let info = c.guest_info().unwrap();
        assert_eq!(info.instance_id, identity.instance_id);
        assert_eq!(info.hostname, format!("restored-{i}"));
        assert_eq!(info.kernel_release, base_info.kernel_release);
        assert_ne!(info.instance_id, base_info.instance_id);
        ids.push(info.instance_id);
        // The host reconnects to a stream service that had an open
        // connection at snapshot time.
        echo_once(sock, format!("after restore {i}").as_bytes());
        clients.push(c);
    }
    eprintln!(
        "3 VMs restored and reidentified in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "identities must differ");

    // Copy-on-write: the three mappings of the template's memory share pages.
    let (rss, pss) = mapping_rss_pss(&tpl.join("memory.bin"));
    eprintln!("template memory mappings: Rss {rss} KiB, Pss {pss} KiB");
    assert!(rss > 0);
    assert!(
        pss * 2 < rss,
        "pages are not shared: Rss {rss} KiB, Pss {pss} KiB"
    );

    for c in &clients {
        c.shutdown().unwrap();
    }
    for (h, _) in &vms {
        let o = h.wait(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(o.reason, ExitReason::GuestShutdown);
    }
    drop(vms);
    std::fs::remove_dir_all(&dir).unwrap();
}
