//! Against the real kernel: a "host" namespace and a pod namespace joined
//! by a veth, as CNI leaves them; setup, a frame through the redirect both
//! ways, teardown. Needs root (skips without it).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr};
use std::sync::mpsc;

use husk_netlink::{INGRESS_HANDLE, SCOPE_UNIVERSE};

use super::*;

const POD_IP: [u8; 4] = [10, 77, 0, 2];
const HOST_IP: [u8; 4] = [10, 77, 0, 1];

/// A host-like namespace and a pod namespace (veth `eth0` with
/// 10.77.0.2/24 and a default route, its peer in the host namespace with
/// 10.77.0.1/24), alive until the returned sender drops. Returns the pod
/// namespace's path and an fd of the host one.
fn pod_namespace() -> Option<(PathBuf, File, mpsc::Sender<()>)> {
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
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
        let f = &buf[10..n.max(10)];
        // EtherType ARP, opcode 2 (reply), target IP the pod's.
        if f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2] && f[38..42] == POD_IP
        {
            return true;
        }
    }
    false
}

#[test]
fn setup_redirects_both_ways_and_drop_removes_everything() {
    let Some((path, _host, keep)) = pod_namespace() else {
        return;
    };
    let net = PodNetwork::setup("test-pod", &path).unwrap();
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
    for q in &qdiscs {
        assert!(
            q.iter()
                .any(|q| q.kind == "ingress" && q.handle == INGRESS_HANDLE),
            "{q:?}"
        );
    }
    // Into the guest: ARP and IPv4 only (this pod has no IPv6 address);
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
