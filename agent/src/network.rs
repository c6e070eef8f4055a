//! `ConfigureNetwork`: the guest's one network interface made the pod's.
//!
//! The host redirects every frame of the pod's veth to the VM's tap and
//! back (tc), so the guest's eth0 must answer as the veth did: its MAC, its
//! addresses, its routes, its MTU. The request is checked whole first
//! ([`NetworkPlan::from_request`], pure), then applied through netlink in
//! one socket: lo up, eth0's MAC + MTU + up in one request, each address,
//! then the routes (those on the link before those through a gateway, which
//! need them). That is a few dozen syscalls (~0.3 ms each in an emulated
//! guest kernel) and no fork.
//!
//! IPv6 ([`ipv6`]): quiet on eth0 from boot (no router solicitations, no
//! DAD, off); a request with IPv6 addresses turns it on before eth0 goes
//! up (one sysctl write), and its addresses are added without DAD (usable
//! at once). The response says whether eth0 has every IPv6 address asked
//! for: only then does the host pass the pod's IPv6 frames in.

use std::net::IpAddr;

use husk_agent_protocol::agent::{ConfigureNetworkRequest, ConfigureNetworkResponse};
use husk_netlink::{Address, Link, LinkChange, Netlink, NetlinkError, Route};
use thiserror::Error;

/// Why `ConfigureNetwork` failed.
#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("the guest has {0} Ethernet interfaces besides lo and not one device among them to take as the pod's")]
    Interfaces(usize),
    #[error("turning IPv6 on for {interface}: {source}")]
    Ipv6 {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{step}: {source}")]
    Netlink {
        step: String,
        #[source]
        source: NetlinkError,
    },
}

impl NetworkError {
    /// The ttrpc code the error is answered with.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Self::Invalid { .. } => ttrpc::Code::INVALID_ARGUMENT,
            Self::Interfaces(_) => ttrpc::Code::FAILED_PRECONDITION,
            Self::Ipv6 { .. } | Self::Netlink { .. } => ttrpc::Code::INTERNAL,
        }
    }
}

/// A checked request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The host's name of the interface (for messages).
    pub host_name: String,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub addresses: Vec<Address>,
    /// In the order they are added.
    pub routes: Vec<Route>,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> NetworkError {
    NetworkError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

fn parse_mac(field: &str, s: &str) -> Result<[u8; 6], NetworkError> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts
            .next()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| invalid(field, format!("{s:?} is not aa:bb:cc:dd:ee:ff")))?;
        *b = u8::from_str_radix(p, 16)
            .map_err(|_| invalid(field, format!("{s:?} is not aa:bb:cc:dd:ee:ff")))?;
    }
    if parts.next().is_some() {
        return Err(invalid(field, format!("{s:?} is not aa:bb:cc:dd:ee:ff")));
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(invalid(field, format!("{s} is multicast or all zeros")));
    }
    Ok(mac)
}

fn parse_ip(field: &str, s: &str) -> Result<IpAddr, NetworkError> {
    s.parse()
        .map_err(|_| invalid(field, format!("{s:?} is not an IP address")))
}

fn check_prefix(field: &str, ip: &IpAddr, len: u32) -> Result<u8, NetworkError> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    u8::try_from(len)
        .ok()
        .filter(|l| u32::from(*l) <= max)
        .ok_or_else(|| invalid(field, format!("prefix length {len} is above {max}")))
}

impl NetworkPlan {
    /// Checks every field; the error names the first bad one.
    pub fn from_request(req: &ConfigureNetworkRequest) -> Result<NetworkPlan, NetworkError> {
        let Some(iface) = req.interface.as_ref() else {
            return Err(invalid("interface", "missing"));
        };
        let mac = parse_mac("interface.mac", &iface.mac)?;
        let mtu = match iface.mtu {
            0 => None,
            m @ 68..=65535 => Some(m),
            m => {
                return Err(invalid(
                    "interface.mtu",
                    format!("{m} is not in 68..=65535"),
                ))
            }
        };
        let mut addresses = Vec::with_capacity(iface.addresses.len());
        for (i, a) in iface.addresses.iter().enumerate() {
            let field = format!("interface.addresses[{i}]");
            let addr = parse_ip(&field, &a.address)?;
            let prefix_len = check_prefix(&field, &addr, a.prefix_len)?;
            addresses.push(Address { addr, prefix_len });
        }
        let mut routes = Vec::with_capacity(req.routes.len());
        for (i, r) in req.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            let dest = if r.dest.is_empty() {
                None
            } else {
                let d = parse_ip(&format!("{field}.dest"), &r.dest)?;
                Some((
                    d,
                    check_prefix(&format!("{field}.dest"), &d, r.dest_prefix_len)?,
                ))
            };
            let gateway = if r.gateway.is_empty() {
                None
            } else {
                Some(parse_ip(&format!("{field}.gateway"), &r.gateway)?)
            };
            let ipv6 = match (dest, gateway) {
                (Some((d, _)), _) => d.is_ipv6(),
                (None, Some(g)) => g.is_ipv6(),
                (None, None) => r.ipv6,
            };
            if [dest.map(|d| d.0), gateway]
                .iter()
                .flatten()
                .any(|ip| ip.is_ipv6() != ipv6)
            {
                return Err(invalid(field, "mixes IPv4 and IPv6"));
            }
            let scope = u8::try_from(r.scope).map_err(|_| {
                invalid(
                    format!("{field}.scope"),
                    format!("{} is above 255", r.scope),
                )
            })?;
            routes.push(Route {
                dest,
                gateway,
                oif: None,
                scope,
                protocol: 0,
                ipv6,
            });
        }
        // On-link routes first: a gateway must be reachable when its route
        // is added. The sort is stable: the host's order otherwise.
        routes.sort_by_key(|r| r.gateway.is_some());
        Ok(NetworkPlan {
            host_name: iface.name.clone(),
            mac,
            mtu,
            addresses,
            routes,
        })
    }

    /// Applies the plan to the namespace of the calling thread.
    pub fn apply(&self) -> Result<ConfigureNetworkResponse, NetworkError> {
        let step = |step: String| move |source| NetworkError::Netlink { step, source };
        let mut nl = Netlink::new().map_err(step("opening a netlink socket".into()))?;
        let links = nl.links().map_err(step("listing interfaces".into()))?;
        let eth = pod_interface(&links)?;
        if let Some(lo) = links.iter().find(|l| l.loopback && !l.up) {
            let up = LinkChange {
                up: Some(true),
                ..LinkChange::default()
            };
            nl.set_link(lo.index, up)
                .map_err(step("bringing lo up".into()))?;
        }
        // IPv6 on (it is off from boot) before eth0 goes up, so it comes
        // up once with it; a kernel without IPv6 skips what needs it.
        let ipv6_asked = self.addresses.iter().filter(|a| a.addr.is_ipv6()).count();
        let wants_ipv6 = ipv6_asked > 0;
        let has_ipv6 = wants_ipv6
            && ipv6::enable(&eth.name).map_err(|source| NetworkError::Ipv6 {
                interface: eth.name.clone(),
                source,
            })?;
        let change = LinkChange {
            mtu: self.mtu,
            mac: Some(self.mac),
            up: Some(true),
        };
        nl.set_link(eth.index, change)
            .map_err(step(format!("setting {}'s MAC, MTU and up", eth.name)))?;
        let mut skipped = Vec::new();
        let mut ipv6_added = 0;
        let no_family = |e: &NetlinkError| e.errno() == Some(libc::EAFNOSUPPORT);
        let no_ipv6 = |what: String| format!("{what}: no IPv6 in the guest");
        for a in &self.addresses {
            let v6 = a.addr.is_ipv6();
            if v6 && !has_ipv6 {
                skipped.push(no_ipv6(format!("{}/{}", a.addr, a.prefix_len)));
                continue;
            }
            match nl.add_address(eth.index, *a) {
                Ok(()) => ipv6_added += usize::from(v6),
                Err(e) if v6 && no_family(&e) => {
                    skipped.push(no_ipv6(format!("{}/{}", a.addr, a.prefix_len)))
                }
                Err(source) => {
                    return Err(NetworkError::Netlink {
                        step: format!("adding {}/{} to {}", a.addr, a.prefix_len, eth.name),
                        source,
                    })
                }
            }
        }
        for r in &self.routes {
            let route = Route {
                oif: Some(eth.index),
                ..*r
            };
            if r.ipv6 && !has_ipv6 {
                skipped.push(match wants_ipv6 {
                    true => no_ipv6(format!("route {}", describe(r))),
                    false => format!("route {}: the pod has no IPv6 address", describe(r)),
                });
                continue;
            }
            match nl.add_route(route) {
                Err(e) if r.ipv6 && no_family(&e) => {
                    skipped.push(no_ipv6(format!("route {}", describe(r))));
                }
                res => res.map_err(step(format!("adding route {}", describe(r))))?,
            }
        }
        Ok(ConfigureNetworkResponse {
            guest_interface: eth.name.clone(),
            skipped,
            ipv6: wants_ipv6 && ipv6_added == ipv6_asked,
            ..Default::default()
        })
    }
}

/// The pod's interface: the one Ethernet interface besides lo, or, among
/// several, the one device of them (no link kind: virtio-net), not one of
/// the virtual interfaces the guest kernel makes at boot (`dummy0`,
/// `ifb0`...) or a container made since.
fn pod_interface(links: &[Link]) -> Result<&Link, NetworkError> {
    let ethernet: Vec<&Link> = links
        .iter()
        .filter(|l| !l.loopback && l.mac.is_some())
        .collect();
    if let [one] = ethernet.as_slice() {
        return Ok(one);
    }
    let mut devices = ethernet.iter().filter(|l| l.kind.is_none());
    match (devices.next(), devices.next()) {
        (Some(one), None) => Ok(one),
        _ => Err(NetworkError::Interfaces(ethernet.len())),
    }
}

/// `dest/len via gw` for messages.
fn describe(r: &Route) -> String {
    let dest = r
        .dest
        .map(|(d, l)| format!("{d}/{l}"))
        .unwrap_or_else(|| "default".into());
    match r.gateway {
        Some(g) => format!("{dest} via {g}"),
        None => dest,
    }
}

pub mod ipv6;

#[cfg(test)]
mod tests;
