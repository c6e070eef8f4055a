#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use husk_agent_protocol::agent::{IpAddress, NetInterface, NetRoute};
use husk_netlink::Link;

use super::*;

fn request() -> ConfigureNetworkRequest {
    let addr = |a: &str, p| IpAddress {
        address: a.into(),
        prefix_len: p,
        ..Default::default()
    };
    ConfigureNetworkRequest {
        interface: Some(NetInterface {
            name: "eth0".into(),
            mac: "02:aa:bb:cc:dd:ee".into(),
            mtu: 1400,
            addresses: vec![addr("10.88.0.5", 16), addr("fd00::5", 64)],
            ..Default::default()
        })
        .into(),
        routes: vec![
            // Listed before the route that reaches its gateway.
            NetRoute {
                gateway: "10.99.0.1".into(),
                ..Default::default()
            },
            NetRoute {
                dest: "10.99.0.0".into(),
                dest_prefix_len: 16,
                scope: 253,
                ..Default::default()
            },
            // What a router on the link that is known by its link-local
            // address gives (Calico; CNI's bridge gives its range's
            // gateway).
            NetRoute {
                gateway: "fe80::1".into(),
                ipv6: true,
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

#[test]
fn plan_checks_every_field() {
    let plan = NetworkPlan::from_request(&request()).unwrap();
    assert_eq!(plan.mac, [2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]);
    assert_eq!(plan.mtu, Some(1400));
    assert_eq!(plan.addresses.len(), 2);
    assert!(plan.routes[0].gateway.is_none(), "on-link routes first");
    assert!(plan.routes[1].dest.is_none() && !plan.routes[1].ipv6);

    let bad = |f: &dyn Fn(&mut ConfigureNetworkRequest), field: &str| {
        let mut r = request();
        f(&mut r);
        let e = NetworkPlan::from_request(&r).unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::INVALID_ARGUMENT, "{e}");
        assert!(e.to_string().starts_with(field), "{e} should name {field}");
    };
    bad(&|r| r.interface = None.into(), "interface");
    bad(
        &|r| r.interface.as_mut().unwrap().mac = "01:00:00:00:00:01".into(),
        "interface.mac",
    );
    bad(
        &|r| r.interface.as_mut().unwrap().mac = "02:00:00:00:00".into(),
        "interface.mac",
    );
    bad(&|r| r.interface.as_mut().unwrap().mtu = 20, "interface.mtu");
    bad(
        &|r| r.interface.as_mut().unwrap().addresses[0].prefix_len = 33,
        "interface.addresses[0]",
    );
    bad(
        &|r| r.interface.as_mut().unwrap().addresses[1].address = "nope".into(),
        "interface.addresses[1]",
    );
    bad(&|r| r.routes[0].dest = "fd00::".into(), "routes[0]");
    bad(&|r| r.routes[0].gateway = "x".into(), "routes[0].gateway");
    bad(&|r| r.routes[0].scope = 300, "routes[0].scope");
}

const IFA_F_NODAD: u32 = 0x02;
const IFA_F_TENTATIVE: u32 = 0x40;

/// eth0's IPv6 setting `key` in this thread's namespace.
fn sysctl(key: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/eth0/{key}"))
        .unwrap()
        .trim()
        .to_string()
}

/// In a namespace whose only interface besides lo is one end of a veth
/// (the other end in a second namespace, as the host's side is): the plan
/// applied, then read back through netlink.
#[test]
fn apply_configures_the_only_interface() {
    let r = std::thread::spawn(|| {
        // SAFETY: unshare with a flag only; it affects this thread alone.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!("skipped: unshare: {}", std::io::Error::last_os_error());
            return;
        }
        let outer = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        // SAFETY: as above; `outer` keeps the first namespace alive.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        let mut nl = Netlink::new().unwrap();
        nl.add_veth("eth0", "peer").unwrap();
        let peer = nl.link_by_name("peer").unwrap();
        nl.move_link(peer.index, outer.as_raw_fd()).unwrap();

        // As the agent's boot leaves it: IPv6 off and quiet on eth0.
        assert_eq!(ipv6::quiet_at_boot().unwrap(), vec!["eth0".to_string()]);
        // An IPv4-only pod: IPv6 stays off, not even a link-local address.
        let mut v4 = request();
        v4.interface.as_mut().unwrap().addresses.truncate(1);
        v4.routes.truncate(2);
        let resp = NetworkPlan::from_request(&v4).unwrap().apply().unwrap();
        assert!(!resp.ipv6 && resp.skipped.is_empty(), "{resp:?}");
        assert_eq!(sysctl("disable_ipv6"), "1");
        let eth = nl.link_by_name("eth0").unwrap();
        assert!(
            nl.addresses(eth.index)
                .unwrap()
                .iter()
                .all(|a| a.addr.is_ipv4()),
            "IPv6 on an IPv4-only pod's eth0"
        );

        // Dual-stack: IPv6 on, its address usable at once (no DAD), the
        // default route through a link-local gateway; still no router
        // solicitations.
        let resp = NetworkPlan::from_request(&request())
            .unwrap()
            .apply()
            .unwrap();
        assert!(resp.ipv6 && resp.skipped.is_empty(), "{resp:?}");
        assert_eq!(
            (sysctl("disable_ipv6"), sysctl("accept_ra")),
            ("0".into(), "0".into())
        );
        let v6: std::net::Ipv6Addr = "fd00::5".parse().unwrap();
        let flags = husk_netlink::testing::inet6_flags(&v6).expect("fd00::5 on eth0");
        assert_eq!(flags & IFA_F_TENTATIVE, 0, "tentative: flags {flags:#x}");
        assert_ne!(flags & IFA_F_NODAD, 0, "flags {flags:#x}");
        assert_eq!(resp.guest_interface, "eth0");
        let eth = nl.link_by_name("eth0").unwrap();
        assert_eq!(eth.mac, Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee]));
        assert_eq!((eth.mtu, eth.up), (Some(1400), true));
        assert!(nl.link_by_name("lo").unwrap().up);
        let addrs = nl.addresses(eth.index).unwrap();
        assert!(addrs.contains(&Address {
            addr: IpAddr::V4(Ipv4Addr::new(10, 88, 0, 5)),
            prefix_len: 16
        }));
        let routes = nl.routes().unwrap();
        assert!(routes.iter().any(|r| r.dest.is_none()
            && r.gateway == Some(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 1)))
            && r.oif == Some(eth.index)));
        assert!(
            routes.iter().any(|r| r.dest.is_none()
                && r.ipv6
                && r.gateway == Some("fe80::1".parse().unwrap())
                && r.oif == Some(eth.index)),
            "{routes:?}"
        );
        // Again: everything is there already, which is fine.
        NetworkPlan::from_request(&request())
            .unwrap()
            .apply()
            .unwrap();

        // Interfaces the guest kernel makes at boot (dummy0, ifb0...) are
        // not the pod's; nor is a link of another kind a container made.
        // Unit: pick among them.
        let links = |v: &[(&str, Option<&str>, bool)]| -> Vec<Link> {
            v.iter()
                .enumerate()
                .map(|(i, (name, kind, mac))| Link {
                    index: i as u32 + 1,
                    name: name.to_string(),
                    mac: mac.then_some([2, 0, 0, 0, 0, i as u8]),
                    mtu: Some(1500),
                    kind: kind.map(str::to_string),
                    up: false,
                    loopback: *name == "lo",
                })
                .collect()
        };
        let boot = links(&[
            ("lo", None, false),
            ("dummy0", Some("dummy"), true),
            ("eth0", None, true),
            ("ifb0", Some("ifb"), true),
            ("ifb1", Some("ifb"), true),
            ("ip6tnl0", Some("ip6tnl"), false),
        ]);
        assert_eq!(pod_interface(&boot).unwrap().name, "eth0");
        let two = links(&[("eth0", None, true), ("eth1", None, true)]);
        assert!(matches!(
            pod_interface(&two),
            Err(NetworkError::Interfaces(2))
        ));

        // Two veths (no device): which one is the pod's is not guessed.
        nl.add_veth("x0", "x1").unwrap();
        let e = NetworkPlan::from_request(&request())
            .unwrap()
            .apply()
            .unwrap_err();
        assert_eq!(e.code(), ttrpc::Code::FAILED_PRECONDITION, "{e}");
    })
    .join();
    r.unwrap();
}
