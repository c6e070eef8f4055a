#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use husk_agent_protocol::agent::{IpAddress, NetInterface, NetRoute};

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

        let resp = NetworkPlan::from_request(&request())
            .unwrap()
            .apply()
            .unwrap();
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
        // Again: everything is there already, which is fine.
        NetworkPlan::from_request(&request())
            .unwrap()
            .apply()
            .unwrap();

        // Two interfaces: which one is the pod's is not guessed.
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
