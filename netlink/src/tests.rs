//! Against the real kernel, each test in a network namespace of its own
//! (entered by one thread, so nothing of the host's is touched). They need
//! CAP_SYS_ADMIN and CAP_NET_ADMIN and say so (skipping) without them.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr};

use super::*;

/// Runs `f` on a thread in a new network namespace; `None` when this
/// process may not make one.
fn in_new_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare with a flag only; it affects this thread alone.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            eprintln!(
                "skipped: unshare(CLONE_NEWNET): {}",
                io::Error::last_os_error()
            );
            return None;
        }
        Some(f())
    })
    .join()
    .unwrap()
}

#[test]
fn links_set_and_veth() {
    in_new_netns(|| {
        let mut nl = Netlink::new().unwrap();
        let lo = nl.link_by_name("lo").unwrap();
        assert!(lo.loopback && !lo.up);
        nl.set_link(
            lo.index,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(nl.link_by_name("lo").unwrap().up);

        nl.add_veth("ta", "tb").unwrap();
        let a = nl.link_by_name("ta").unwrap();
        assert_eq!(a.kind.as_deref(), Some("veth"));
        let mac = [0x02, 0, 0, 0, 0, 0x42];
        nl.set_link(
            a.index,
            LinkChange {
                mtu: Some(1400),
                mac: Some(mac),
                up: Some(true),
            },
        )
        .unwrap();
        let a = nl.link_by_name("ta").unwrap();
        assert_eq!((a.mtu, a.mac, a.up), (Some(1400), Some(mac), true));
        assert!(matches!(
            nl.link_by_name("nope"),
            Err(NetlinkError::NoLink(_))
        ));
        nl.del_link(a.index).unwrap();
        assert!(nl.link_by_name("tb").is_err(), "the peer goes with it");
    });
}

#[test]
fn addresses_and_routes() {
    in_new_netns(|| {
        let mut nl = Netlink::new().unwrap();
        nl.add_veth("ra", "rb").unwrap();
        let a = nl.link_by_name("ra").unwrap();
        nl.set_link(
            a.index,
            LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .unwrap();
        let addr = Address {
            addr: IpAddr::V4(Ipv4Addr::new(10, 9, 8, 7)),
            prefix_len: 24,
        };
        nl.add_address(a.index, addr).unwrap();
        nl.add_address(a.index, addr).unwrap(); // already there: fine
        assert_eq!(nl.addresses(a.index).unwrap(), vec![addr]);
        let default = Route {
            dest: None,
            gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 9, 8, 1))),
            oif: Some(a.index),
            scope: SCOPE_UNIVERSE,
            protocol: 0,
            ipv6: false,
        };
        nl.add_route(default).unwrap();
        nl.add_route(default).unwrap();
        let routes: Vec<Route> = nl
            .routes()
            .unwrap()
            .into_iter()
            .filter(|r| r.oif == Some(a.index) && !r.ipv6)
            .collect();
        // The address's own prefix route (made by the kernel) and ours.
        let kernel = routes.iter().find(|r| r.protocol == PROTO_KERNEL).unwrap();
        assert_eq!(
            kernel.dest,
            Some((IpAddr::V4(Ipv4Addr::new(10, 9, 8, 0)), 24))
        );
        assert_eq!(kernel.scope, SCOPE_LINK);
        let ours = routes.iter().find(|r| r.dest.is_none()).unwrap();
        assert_eq!(ours.gateway, default.gateway);
        let bad = Address {
            addr: addr.addr,
            prefix_len: 33,
        };
        assert!(matches!(
            nl.add_address(a.index, bad),
            Err(NetlinkError::Invalid { .. })
        ));
    });
}

#[test]
fn ingress_redirect_both_ways_and_removal() {
    in_new_netns(|| {
        let mut nl = Netlink::new().unwrap();
        nl.add_veth("qa", "qb").unwrap();
        let a = nl.link_by_name("qa").unwrap().index;
        let b = nl.link_by_name("qb").unwrap().index;
        for i in [a, b] {
            nl.add_ingress_qdisc(i).unwrap();
            nl.add_ingress_qdisc(i).unwrap(); // kept
            let q = nl.qdiscs(i).unwrap();
            assert!(
                q.iter()
                    .any(|q| q.kind == "ingress" && q.handle == INGRESS_HANDLE),
                "{q:?}"
            );
        }
        nl.add_redirect(a, b).unwrap();
        nl.add_redirect(b, a).unwrap();
        let fa = nl.ingress_filters(a).unwrap();
        assert!(fa.iter().all(|f| f.kind == "u32"), "{fa:?}");
        assert_eq!(
            fa.iter().filter_map(|f| f.redirect_to).collect::<Vec<_>>(),
            vec![b]
        );
        let fb = nl.ingress_filters(b).unwrap();
        assert_eq!(
            fb.iter().filter_map(|f| f.redirect_to).collect::<Vec<_>>(),
            vec![a]
        );
        assert!(fb.iter().all(|f| f.protocol == crate::ETH_P_ALL), "{fb:?}");
        // One ethertype, a filter of its own beside the first.
        nl.add_redirect_of(b, a, libc::ETH_P_ARP as u16).unwrap();
        let fb = nl.ingress_filters(b).unwrap();
        let mut p: Vec<u16> = fb
            .iter()
            .filter(|f| f.redirect_to == Some(a))
            .map(|f| f.protocol)
            .collect();
        p.sort_unstable();
        assert_eq!(p, vec![crate::ETH_P_ALL, libc::ETH_P_ARP as u16]);

        nl.del_ingress_qdisc(a).unwrap();
        assert!(nl.qdiscs(a).unwrap().iter().all(|q| q.kind != "ingress"));
        assert!(nl.ingress_filters(a).map(|f| f.is_empty()).unwrap_or(true));
        let again = nl.del_ingress_qdisc(a).unwrap_err();
        assert!(again.errno().is_some(), "{again}");
        // A filter needs its qdisc.
        assert!(nl.add_redirect(a, b).is_err());
    });
}

#[test]
fn ipv6_address_without_dad_and_a_link_local_gateway() {
    in_new_netns(|| {
        let mut nl = Netlink::new().unwrap();
        nl.add_veth("sa", "sb").unwrap();
        for name in ["sa", "sb"] {
            let l = nl.link_by_name(name).unwrap();
            let up = LinkChange {
                up: Some(true),
                ..Default::default()
            };
            nl.set_link(l.index, up).unwrap();
        }
        let a = nl.link_by_name("sa").unwrap();
        let v6: std::net::Ipv6Addr = "fd42::7".parse().unwrap();
        let addr = Address {
            addr: IpAddr::V6(v6),
            prefix_len: 64,
        };
        nl.add_address(a.index, addr).unwrap();
        nl.add_address(a.index, addr).unwrap(); // already there: fine
        assert!(nl.addresses(a.index).unwrap().contains(&addr));
        // Usable at once: no DAD, so never tentative.
        let flags = crate::testing::inet6_flags(&v6).expect("fd42::7 in if_inet6");
        assert_eq!(flags & 0x40, 0, "tentative (flags {flags:#x})");
        assert_ne!(flags & 0x02, 0, "IFA_F_NODAD missing (flags {flags:#x})");
        // A default route through a link-local gateway (on the link, no
        // route to it needed).
        let gw: IpAddr = "fe80::1".parse().unwrap();
        let default = Route {
            dest: None,
            gateway: Some(gw),
            oif: Some(a.index),
            scope: SCOPE_UNIVERSE,
            protocol: 0,
            ipv6: true,
        };
        nl.add_route(default).unwrap();
        nl.add_route(default).unwrap();
        let routes = nl.routes().unwrap();
        assert!(
            routes.iter().any(|r| r.ipv6
                && r.dest.is_none()
                && r.gateway == Some(gw)
                && r.oif == Some(a.index)),
            "{routes:?}"
        );
    });
}
