//! A dual-stack husk pod (issue 20): on a CNI network with an IPv4 and an
//! IPv6 range (`CriFixture::start_dual_stack`), a pod's VM has both of its
//! veth's addresses and routes on eth0, its IPv6 address usable at once
//! (no DAD) and no router solicitations, and a server in it (busybox
//! `httpd`, on `[::]:80`, which takes IPv4 too) answers on both addresses
//! from the host and from a second husk pod; `PodSandboxStatus` lists both
//! IPs. Through containerd's CRI with the `husk` handler, as `cri_runc.rs`
//! runs it; nothing is left behind. Needs root, /dev/kvm, containerd, the
//! CNI plugins and busybox-static; skips with a SKIP line without them.
//! (IPv4-only pods, the default network: `cri_runc.rs` `husk_pod_network`.)

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use husk_tests::containerd::run_timeout;
use husk_tests::cri::{container_config, husk_setup, CriFixture, Pod};
use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;
use std::time::{Duration, Instant};

/// Generous: a first exec in a fresh pod VM pages busybox in over virtio-fs
/// on a loaded emulated host.
const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// A new guest image makes its template by a cold boot first (minutes on
/// this emulated host).
const FIRST_POD_TIMEOUT: Duration = Duration::from_secs(300);
/// What the server in the pod serves.
const PAGE: &str = "dual-stack-pod\n";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `http://<ip>/` (an IPv6 address in brackets).
fn url(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("http://[{ip}]/"),
        _ => format!("http://{ip}/"),
    }
}

/// busybox `wget` of `url` from the host, retried until it gives the page
/// or `timeout` passes; the last failure otherwise.
fn host_get(url: &str, timeout: Duration) -> Result<String, String> {
    let end = Instant::now() + timeout;
    loop {
        // No `-T`: this busybox's (1.35, Debian's static build) wget dies
        // of SIGSEGV whenever it has one.
        let mut cmd = Command::new(husk_tests::oci::BUSYBOX_BINARY);
        cmd.args(["wget", "-q", "-O", "-", url]);
        let out = run_timeout(cmd, None, Duration::from_secs(20));
        match out {
            Ok(o) if o.status.success() => return Ok(text(&o.stdout)),
            o if Instant::now() >= end => return Err(format!("{o:?}")),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// The pod's IPv6 address: its one additional IP, in `subnet6`'s /64.
fn pod_ipv6(pod: &Pod, prefix6: &str) -> String {
    let v6: Vec<&String> = pod
        .additional_ips
        .iter()
        .filter(|ip| ip.parse::<Ipv6Addr>().is_ok())
        .collect();
    assert_eq!(
        v6.len(),
        1,
        "one IPv6 address in additional_ips: {:?}",
        pod.additional_ips
    );
    assert!(
        v6[0].starts_with(prefix6),
        "{} not in {prefix6}::/64",
        v6[0]
    );
    v6[0].clone()
}

/// Whether this host has IPv6 on (else a SKIP line).
fn host_ipv6(test: &str) -> bool {
    let off = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/disable_ipv6");
    match off.as_deref().map(str::trim) {
        Ok("0") => true,
        other => {
            eprintln!(
                "SKIP {test}: this host has no IPv6 (net.ipv6.conf.all.disable_ipv6: {other:?})"
            );
            false
        }
    }
}

#[test]
fn husk_dual_stack_pod_answers_on_ipv4_and_ipv6() {
    let test = "husk_dual_stack_pod_answers_on_ipv4_and_ipv6";
    if !host_ipv6(test) {
        return;
    }
    let Some((shim, opts, cleanup)) = husk_setup(test, "cri-ds") else {
        return;
    };
    let ip6_forward = std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").ok();
    let f = CriFixture::start_dual_stack("husk", Some(&shim), opts).expect("start the CRI fixture");
    let cri = f.cri();
    let subnet6 = f.net.subnet6.clone().expect("a dual-stack network");
    let gateway6 = f.net.gateway6.clone().expect("its IPv6 gateway");
    let prefix6 = subnet6.trim_end_matches("::/64").to_string();
    eprintln!(
        "network {} on {}: {} and {subnet6}",
        f.net.name, f.net.bridge, f.net.subnet
    );

    // The server's pod: both IPs in its status, IPv4 the primary one (as
    // containerd picks it).
    let t = Instant::now();
    let web = f
        .run_pod_within(f.pod_config("web"), FIRST_POD_TIMEOUT)
        .expect("RunPodSandbox web");
    eprintln!("RunPodSandbox web: {} ms", t.elapsed().as_millis());
    let ip4 = web.ip.clone().expect("the pod's IPv4 in PodSandboxStatus");
    assert!(
        ip4.starts_with(f.net.gateway.trim_end_matches(".1")),
        "{ip4} not in {}",
        f.net.subnet
    );
    let ip6 = pod_ipv6(&web, &prefix6);
    let server = container_config(
        "server",
        &f.busybox,
        &[
            "sh",
            "-c",
            &format!(
                "mkdir -p /www && printf '{}' > /www/index.html && exec httpd -f -p 80 -h /www",
                PAGE.replace('\n', "\\n")
            ),
        ],
        "server.log",
    );
    let server = cri
        .create_container(&web.id, &server, &web.config)
        .expect("CreateContainer server");
    cri.start_container(&server).expect("StartContainer server");

    // In the guest: eth0 has the pod's IPv6 address, usable (not
    // tentative: no DAD), the default route through the bridge's address,
    // and no router solicitations.
    let sh = |id: &str, script: &str| {
        let t = Instant::now();
        let o = cri
            .exec_sync(id, &["sh", "-c", script], EXEC_TIMEOUT)
            .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"));
        eprintln!("ExecSync {script:?}: {} ms", t.elapsed().as_millis());
        (o.exit_code, text(&o.stdout), text(&o.stderr))
    };
    let (rc, out, err) = sh(
        &server,
        "ip -6 addr show dev eth0; ip -6 route; ip -4 addr show dev eth0; cat /proc/net/if_inet6; \
         cat /proc/sys/net/ipv6/conf/eth0/accept_ra /proc/sys/net/ipv6/conf/eth0/disable_ipv6",
    );
    assert_eq!(rc, 0, "{out} {err}");
    eprintln!("the guest's network:\n{out}");
    assert!(out.contains(&format!("inet6 {ip6}/64")), "{out}");
    assert!(out.contains(&format!("inet {ip4}/24")), "{out}");
    // if_inet6: address (32 hex digits), index, prefix, scope, IFA_F_*
    // flags, name. NODAD (0x02) set, TENTATIVE (0x40) not.
    let hex: String = ip6
        .parse::<Ipv6Addr>()
        .unwrap()
        .octets()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let flags = out
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&hex.as_str()))
        .and_then(|f| u32::from_str_radix(f.get(4)?, 16).ok())
        .unwrap_or_else(|| panic!("{ip6} not in /proc/net/if_inet6: {out}"));
    assert_eq!(flags & 0x42, 0x02, "{ip6}: flags {flags:#x}");
    assert!(
        out.contains(&format!("default via {gateway6} dev eth0")),
        "{out}"
    );
    assert!(out.ends_with("0\n0\n"), "accept_ra, disable_ipv6: {out}");

    // What the pod and the host see, for a failure's report.
    let diagnose = || {
        let (_, out, err) = sh(&server, "netstat -ltn; ps; ip neigh; ip -6 neigh");
        let mut d = format!("in the pod:\n{out}{err}");
        let netns = web.netns.clone().unwrap_or_default();
        let name = netns.rsplit('/').next().unwrap_or_default().to_string();
        for args in [
            vec!["ip", "neigh"],
            vec!["ip", "-6", "neigh"],
            vec![
                "ip", "netns", "exec", &name, "tc", "-s", "filter", "show", "dev", "eth0",
                "ingress",
            ],
            vec!["ip", "netns", "exec", &name, "ip", "addr"],
        ] {
            let mut cmd = Command::new(args[0]);
            cmd.args(&args[1..]);
            let o = run_timeout(cmd, None, Duration::from_secs(10));
            d += &format!("host {args:?}: {o:?}\n");
        }
        d
    };

    // From the host, on both addresses.
    for ip in [&ip4, &ip6] {
        let t = Instant::now();
        let page = host_get(&url(ip), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("host: wget {}: {e}\n{}", url(ip), diagnose()));
        assert_eq!(page, PAGE, "{}", url(ip));
        eprintln!("host → {}: {} ms", url(ip), t.elapsed().as_millis());
    }

    // From a second dual-stack husk pod, on both addresses.
    let client = f.run_pod("client").expect("RunPodSandbox client");
    let client_ip6 = pod_ipv6(&client, &prefix6);
    assert_ne!(client_ip6, ip6);
    let c = container_config("wget", &f.busybox, &["sleep", "600"], "wget.log");
    let c = cri
        .create_container(&client.id, &c, &client.config)
        .expect("CreateContainer wget");
    cri.start_container(&c).expect("StartContainer wget");
    for ip in [&ip4, &ip6] {
        // Bounded by `timeout`: busybox wget's own `-T` crashes it.
        let (rc, out, err) = sh(&c, &format!("timeout 60 wget -q -O - {}", url(ip)));
        assert_eq!((rc, out.as_str()), (0, PAGE), "pod → {}: {err}", url(ip));
    }
    // ICMPv6 too.
    let (rc, out, err) = sh(&c, &format!("ping -6 -c 1 -W 5 {ip6}"));
    assert_eq!(rc, 0, "ping -6 {ip6} from the client pod: {out} {err}");

    for pod in [&client, &web] {
        cri.stop_pod_sandbox(&pod.id).expect("StopPodSandbox");
        cri.remove_pod_sandbox(&pod.id).expect("RemovePodSandbox");
    }
    f.assert_no_leaks(Duration::from_secs(10));
    drop(f);
    cleanup.assert_no_pod_dirs();
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding").ok(),
        ip6_forward,
        "IPv6 forwarding not restored"
    );
}
