//! Addresses and routes (main table, unicast).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope as Scope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::{Netlink, NetlinkError, Result};

/// An interface address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

/// `RT_SCOPE_*`, as the kernel numbers them.
pub type RouteScope = u8;
pub const SCOPE_UNIVERSE: RouteScope = 0;
pub const SCOPE_LINK: RouteScope = 253;
pub const SCOPE_HOST: RouteScope = 254;
/// `RTPROT_KERNEL`: a route the kernel made itself (an address's prefix).
pub const PROTO_KERNEL: u8 = 2;

/// A unicast route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Destination and prefix length; `None` is the default route.
    pub dest: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// The output interface's index.
    pub oif: Option<u32>,
    pub scope: RouteScope,
    /// `RTPROT_*` (who made it): [`PROTO_KERNEL`] for an address's own
    /// prefix route, which the kernel makes again wherever the address is
    /// added.
    pub protocol: u8,
    /// IPv6 when true (for a default route, which has no address).
    pub ipv6: bool,
}

fn family(ipv6: bool) -> AddressFamily {
    if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

impl Netlink {
    /// The addresses of interface `index` (both families).
    pub fn addresses(&mut self, index: u32) -> Result<Vec<Address>> {
        let replies = self.dump(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            "listing addresses",
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // IFA_LOCAL is the interface's own address on point-to-point
            // links; IFA_ADDRESS everywhere else.
            let mut addr = None;
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(addr) = addr {
                out.push(Address {
                    addr,
                    prefix_len: a.header.prefix_len,
                });
            }
        }
        Ok(out)
    }

    /// Adds an address to interface `index`; an address already there is
    /// left as it is. An IPv6 address is added without duplicate address
    /// detection (`IFA_F_NODAD`): every address given here was checked
    /// where it was assigned (a pod's, by CNI on its veth), and DAD would
    /// hold it tentative (unusable as a source) for a second and cost the
    /// interface a neighbour solicitation and a timer.
    pub fn add_address(&mut self, index: u32, a: Address) -> Result<()> {
        let max = if a.addr.is_ipv4() { 32 } else { 128 };
        if a.prefix_len > max {
            return Err(NetlinkError::Invalid {
                what: format!("address {}/{}", a.addr, a.prefix_len),
                detail: format!("the prefix length is above {max}"),
            });
        }
        let mut m = AddressMessage::default();
        m.header.family = family(a.addr.is_ipv6());
        m.header.prefix_len = a.prefix_len;
        m.header.index = index;
        if a.addr.is_ipv6() {
            m.header.flags = AddressHeaderFlags::Nodad;
        }
        m.attributes.push(AddressAttribute::Local(a.addr));
        m.attributes.push(AddressAttribute::Address(a.addr));
        let r = self.change(
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!(
                "adding address {}/{} to interface {index}",
                a.addr, a.prefix_len
            ),
        );
        ok_if_exists(r)
    }

    /// The unicast routes of the main table (both families).
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut out = Vec::new();
        for ipv6 in [false, true] {
            let mut q = RouteMessage::default();
            q.header.address_family = family(ipv6);
            let replies = match self.dump(RouteNetlinkMessage::GetRoute(q), "listing routes") {
                Ok(r) => r,
                // A kernel without IPv6 refuses the family.
                Err(e) if ipv6 && e.errno() == Some(libc::EAFNOSUPPORT) => continue,
                Err(e) => return Err(e),
            };
            for m in replies {
                let RouteNetlinkMessage::NewRoute(r) = m else {
                    continue;
                };
                if let Some(route) = route_of(&r, ipv6) {
                    out.push(route);
                }
            }
        }
        Ok(out)
    }

    /// Adds a route to the main table; a route already there is left as it
    /// is.
    pub fn add_route(&mut self, r: Route) -> Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = family(r.ipv6);
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = Scope::from(r.scope);
        m.header.kind = RouteType::Unicast;
        if let Some((dest, len)) = r.dest {
            m.header.destination_prefix_length = len;
            m.attributes
                .push(RouteAttribute::Destination(route_address(dest)));
        }
        if let Some(gw) = r.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(route_address(gw)));
        }
        if let Some(oif) = r.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        let res = self.change(
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding route {r:?}"),
        );
        ok_if_exists(res)
    }
}

fn route_of(r: &RouteMessage, ipv6: bool) -> Option<Route> {
    let h = &r.header;
    let mut table = u32::from(h.table);
    let mut dest = None;
    let mut gateway = None;
    let mut oif = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dest = ip_of(d),
            RouteAttribute::Gateway(g) => gateway = ip_of(g),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || h.kind != RouteType::Unicast {
        return None;
    }
    let dest = match dest {
        Some(d) => Some((d, h.destination_prefix_length)),
        None if h.destination_prefix_length == 0 => None,
        // A prefix without an address: not a route we can give again.
        None => return None,
    };
    Some(Route {
        dest,
        gateway,
        oif,
        scope: u8::from(h.scope),
        protocol: u8::from(h.protocol),
        ipv6,
    })
}

fn ok_if_exists(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}
