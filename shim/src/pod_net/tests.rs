//! Against the real kernel: a "host" namespace and a pod namespace joined
//! by a veth, as CNI leaves them; setup, a frame through the redirect both
//! ways, teardown. Needs root (skips without it).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;

use husk_netlink::{INGRESS_HANDLE, SCOPE_UNIVERSE};

use super::*;

const POD_IP: [u8; 4] = [10, 77, 0, 2];
const HOST_IP: [u8; 4] = [10, 77, 0, 1];
const POD_IP6: &str = "fd77::2";
const HOST_IP6: &str = "fd77::1";

/// A host-like namespace and a pod namespace (veth `eth0` with
/// 10.77.0.2/24 and a default route, its peer in the host namespace with
/// 10.77.0.1/24; with `ipv6` also fd77::2/64 and an IPv6 default route,
/// the peer fd77::1/64), alive until the returned sender drops. Returns
/// the pod namespace's path and an fd of the host one.
fn pod_namespace(ipv6: bool) -> Option<(PathBuf, File, mpsc::Sender<()>)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: unshare with a flag only; this thread alone moves.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!("skipped: unshare: {}", io::Error::last_os_error());
            tx.send(None).unwrap();
            return;
        }
        let host = File::open("/proc/thread-self/ns/net").unwrap();
        let mut hnl = Netlink::new().unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let mut nl = Netlink::new().unwrap();
        nl.add_veth("eth0", "vhost").unwrap();
        let peer = nl.link_by_name("vhost").unwrap();
        nl.move_link(peer.index, host.as_raw_fd()).unwrap();
        let eth = nl.link_by_name("eth0").unwrap();
        nl.set_link(
            eth.index,
            LinkChange {
                up: Some(true),
                mtu: Some(1450),
                mac: None,
            },
        )
        .unwrap();
        let ip = |o: [u8; 4]| IpAddr::V4(Ipv4Addr::from(o));
        nl.add_address(
            eth.index,
            Address {
                addr: ip(POD_IP),
                prefix_len: 24,
            },
        )
        .unwrap();
        nl.add_route(Route {
            dest: None,
            gateway: Some(ip(HOST_IP)),
            oif: Some(eth.index),
            scope: SCOPE_UNIVERSE,
            protocol: 0,
            ipv6: false,
        })
        .unwrap();
        let ip6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
        if ipv6 {
            let a = Address {
                addr: ip6(POD_IP6),
                prefix_len: 64,
            };
            nl.add_address(eth.index, a).unwrap();
            nl.add_route(Route {
                dest: None,
                gateway: Some(ip6(HOST_IP6)),
                oif: Some(eth.index),
                scope: SCOPE_UNIVERSE,
                protocol: 0,
                ipv6: true,
            })
            .unwrap();
        }
        let h = hnl.link_by_name("vhost").unwrap();
        hnl.set_link(
            h.index,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        hnl.add_address(
            h.index,
            Address {
                addr: ip(HOST_IP),
                prefix_len: 24,
            },
        )
        .unwrap();
        if ipv6 {
            let a = Address {
                addr: ip6(HOST_IP6),
                prefix_len: 64,
            };
            hnl.add_address(h.index, a).unwrap();
        }
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::gettid() };
        let path = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
        let (keep_tx, keep_rx) = mpsc::channel::<()>();
        tx.send(Some((path, host, keep_tx))).unwrap();
        let _ = keep_rx.recv();
    });
    rx.recv().unwrap()
}

/// Runs `f` with a netlink socket in the namespace at `path`.
fn with_nl<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce(&mut Netlink) -> T + Send + 'static,
) -> T {
    let ns = Arc::new(File::open(path).unwrap());
    in_netns("test", &ns, path, move || f(&mut Netlink::new().unwrap())).unwrap()
}

/// An ARP request from the guest's side (the pod's MAC and IP) for the
/// host's address, behind a 10-byte vnet header.
fn arp_request(mac: [u8; 6]) -> Vec<u8> {
    let mut f = vec![0u8; 10];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&POD_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP);
    f
}

/// Reads frames from the tap until an ARP reply for the pod's IP (or 5 s).
fn wait_arp_reply(tap: &OwnedFd) -> bool {
    // EtherType ARP, opcode 2 (reply), target IP the pod's.
    wait_frame(tap, std::time::Duration::from_secs(5), |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[38..42] == POD_IP
    })
}

/// Reads frames (less the vnet header) from the tap until `want` takes one
/// (true) or `timeout` passes (false).
fn wait_frame(tap: &OwnedFd, timeout: std::time::Duration, want: impl Fn(&[u8]) -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    while std::time::Instant::now() < deadline {
        let mut pfd = libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            continue;
        }
        // SAFETY: reads into `buf`, which is valid for its length.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        let Ok(n) = usize::try_from(n) else { continue };
        if want(&buf[10..n.max(10)]) {
            return true;
        }
    }
    false
}

#[test]
fn setup_redirects_both_ways_and_drop_removes_everything() {
    let Some((path, _host, keep)) = pod_namespace(false) else {
        return;
    };
    let net = PodNetwork::setup("test-pod", &path).unwrap();
    assert!(!net.guest().has_ipv6());
    let g = net.guest().clone();
    assert_eq!(g.host_name, "eth0");
    assert_eq!(g.mtu, Some(1450));
    assert_eq!(
        g.addresses,
        vec![Address {
            addr: IpAddr::V4(Ipv4Addr::from(POD_IP)),
            prefix_len: 24
        }]
    );
    assert_eq!(
        g.routes.len(),
        1,
        "the default route only, not the kernel's prefix route: {:?}",
        g.routes
    );
    assert_eq!(
        g.routes[0].gateway,
        Some(IpAddr::V4(Ipv4Addr::from(HOST_IP)))
    );
    assert!(matches!(net.tap_source(), TapSource::Fd(_)));

    let (veth, tapi) = (net.veth_index(), net.tap_index());
    let (tap, qdiscs, fv, ft) = with_nl(&path, move |nl| {
        (
            nl.link_by_name(TAP_NAME).unwrap(),
            [nl.qdiscs(veth).unwrap(), nl.qdiscs(tapi).unwrap()],
            nl.ingress_filters(veth).unwrap(),
            nl.ingress_filters(tapi).unwrap(),
        )
    });
    assert_eq!((tap.mtu, tap.up), (Some(1450), true));
    let tap_ipv6 = with_nl(&path, |_| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{TAP_NAME}/disable_ipv6"))
    });
    assert_eq!(tap_ipv6.unwrap().trim(), "1", "IPv6 on the tap");
    for q in &qdiscs {
        assert!(
            q.iter()
                .any(|q| q.kind == "ingress" && q.handle == INGRESS_HANDLE),
            "{q:?}"
        );
    }
    // Into the guest: ARP and IPv4 only (IPv6 waits for redirect_ipv6);
    // out of it: everything.
    let mut into: Vec<(u32, u16)> = fv
        .iter()
        .filter_map(|f| Some((f.redirect_to?, f.protocol)))
        .collect();
    into.sort_unstable();
    assert_eq!(
        into,
        vec![
            (tapi, libc::ETH_P_IP as u16),
            (tapi, libc::ETH_P_ARP as u16)
        ]
    );
    assert_eq!(
        ft.iter()
            .filter_map(|f| Some((f.redirect_to?, f.protocol)))
            .collect::<Vec<_>>(),
        vec![(veth, husk_netlink::ETH_P_ALL)]
    );

    // The guest's ARP request leaves by the veth; the host's reply comes
    // back through the tap.
    let frame = arp_request(g.mac);
    // SAFETY: writes `frame`, valid for its length.
    let n = unsafe { libc::write(net.tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(
        usize::try_from(n).ok(),
        Some(frame.len()),
        "{}",
        io::Error::last_os_error()
    );
    assert!(
        wait_arp_reply(&net.tap),
        "no ARP reply through the redirect"
    );

    drop(net);
    let (tap_left, veth_q, veth_f) = with_nl(&path, move |nl| {
        (
            nl.link_by_name(TAP_NAME).is_ok(),
            nl.qdiscs(veth).unwrap(),
            nl.ingress_filters(veth).map(|f| f.len()).unwrap_or(0),
        )
    });
    assert!(!tap_left, "the tap goes with its fd");
    assert!(veth_q.iter().all(|q| q.kind != "ingress"), "{veth_q:?}");
    assert_eq!(veth_f, 0);
    drop(keep);
}

#[test]
fn a_namespace_without_an_interface_is_refused_and_left_clean() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: unshare with a flag only; this thread alone moves.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            tx.send(None).unwrap();
            return;
        }
        // SAFETY: gettid has no arguments.
        let tid = unsafe { libc::gettid() };
        let (keep_tx, keep_rx) = mpsc::channel::<()>();
        tx.send(Some((
            format!("/proc/{}/task/{tid}/ns/net", std::process::id()),
            keep_tx,
        )))
        .unwrap();
        let _ = keep_rx.recv();
    });
    let Some((path, keep)) = rx.recv().unwrap() else {
        return;
    };
    let e = PodNetwork::setup("p", Path::new(&path)).unwrap_err();
    assert!(matches!(e, PodNetError::NoInterface { .. }), "{e}");
    assert!(e.to_string().contains("pod p"), "{e}");
    let e = PodNetwork::setup("p", Path::new("/nonexistent/netns")).unwrap_err();
    assert!(matches!(e, PodNetError::Netns { .. }), "{e}");
    drop(keep);
}

/// The IPv6 frames of the veth as they go (or not) to the tap.
fn ipv6_into(path: &Path, veth: u32, tap: u32) -> usize {
    with_nl(path, move |nl| {
        nl.ingress_filters(veth)
            .unwrap()
            .iter()
            .filter(|f| f.redirect_to == Some(tap) && f.protocol == libc::ETH_P_IPV6 as u16)
            .count()
    })
}

/// Sends a UDP datagram to the pod's IPv6 address from the host namespace
/// (first, the host's neighbour solicitation for it).
fn send_to_pod_ipv6(host: &File) {
    let host = host.try_clone().unwrap();
    std::thread::spawn(move || {
        // SAFETY: setns on an open namespace fd; this thread alone moves
        // and ends here.
        let rc = unsafe { libc::setns(host.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let s = UdpSocket::bind("[::]:0").unwrap();
        let to: SocketAddr = format!("[{POD_IP6}]:9").parse().unwrap();
        let _ = s.send_to(b"hello", to);
    })
    .join()
    .unwrap();
}

/// An IPv6 frame for the pod: to its address, or the neighbour
/// solicitation for it (to its solicited-node group, ff02::1:ff00:2).
fn is_ipv6_for_pod(f: &[u8]) -> bool {
    let pod: Ipv6Addr = POD_IP6.parse().unwrap();
    let solicited: Ipv6Addr = "ff02::1:ff00:2".parse().unwrap();
    f.len() >= 54
        && f[12..14] == [0x86, 0xdd]
        && [pod.octets(), solicited.octets()].contains(&<[u8; 16]>::try_from(&f[38..54]).unwrap())
}

/// A dual-stack pod: IPv6 frames stay with the veth until the guest has
/// the pod's IPv6 addresses (redirect_ipv6), then go to the guest; drop
/// removes that filter with the rest.
#[test]
fn ipv6_goes_to_the_guest_only_once_redirected() {
    let Some((path, host, keep)) = pod_namespace(true) else {
        return;
    };
    let mut net = PodNetwork::setup("test-pod6", &path).unwrap();
    let g = net.guest().clone();
    assert!(g.has_ipv6());
    let v6 = |s: &str| IpAddr::V6(s.parse::<Ipv6Addr>().unwrap());
    assert!(
        g.addresses.contains(&Address {
            addr: v6(POD_IP6),
            prefix_len: 64
        }),
        "{:?}",
        g.addresses
    );
    assert!(
        g.addresses.iter().all(|a| match a.addr {
            IpAddr::V6(a) => a.segments()[0] & 0xffc0 != 0xfe80,
            IpAddr::V4(_) => true,
        }),
        "no link-local address for the guest: {:?}",
        g.addresses
    );
    assert!(
        g.routes
            .iter()
            .any(|r| r.ipv6 && r.dest.is_none() && r.gateway == Some(v6(HOST_IP6))),
        "{:?}",
        g.routes
    );
    let (veth, tapi) = (net.veth_index(), net.tap_index());
    assert_eq!(ipv6_into(&path, veth, tapi), 0, "IPv6 redirected at setup");
    assert!(!net.ipv6_redirected());
    send_to_pod_ipv6(&host);
    assert!(
        !wait_frame(
            &net.tap,
            std::time::Duration::from_millis(500),
            is_ipv6_for_pod
        ),
        "an IPv6 frame reached the tap before the redirect"
    );

    net.redirect_ipv6().unwrap();
    net.redirect_ipv6().unwrap(); // once only
    assert!(net.ipv6_redirected());
    assert_eq!(ipv6_into(&path, veth, tapi), 1);
    send_to_pod_ipv6(&host);
    assert!(
        wait_frame(&net.tap, std::time::Duration::from_secs(5), is_ipv6_for_pod),
        "no IPv6 frame through the redirect"
    );

    drop(net);
    let (veth_q, veth_f) = with_nl(&path, move |nl| {
        (
            nl.qdiscs(veth).unwrap(),
            nl.ingress_filters(veth).map(|f| f.len()).unwrap_or(0),
        )
    });
    assert!(veth_q.iter().all(|q| q.kind != "ingress"), "{veth_q:?}");
    assert_eq!(veth_f, 0);
    drop(keep);
}

/// A failed IPv6 redirect names the pod and the step, adds nothing, and
/// the drop that follows (the pod's start failed) leaves nothing.
#[test]
fn a_failed_ipv6_redirect_leaves_nothing() {
    let Some((path, _host, keep)) = pod_namespace(true) else {
        return;
    };
    let mut net = PodNetwork::setup("test-pod6f", &path).unwrap();
    let veth = net.veth_index();
    // The filter's qdisc gone from under it: the kernel refuses the filter.
    with_nl(&path, move |nl| nl.del_ingress_qdisc(veth).unwrap());
    let e = net.redirect_ipv6().unwrap_err();
    assert!(matches!(e, PodNetError::Netlink { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("pod test-pod6f") && msg.contains("IPv6"),
        "{msg}"
    );
    assert!(!net.ipv6_redirected());
    drop(net);
    let (q, f) = with_nl(&path, move |nl| {
        (
            nl.qdiscs(veth).unwrap(),
            nl.ingress_filters(veth).map(|f| f.len()).unwrap_or(0),
        )
    });
    assert!(q.iter().all(|q| q.kind != "ingress"), "{q:?}");
    assert_eq!(f, 0);
    drop(keep);
}
