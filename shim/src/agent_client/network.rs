//! `ConfigureNetwork`: the pod's network as the agent is told it.

use std::net::IpAddr;

use husk_agent_protocol::agent::{
    ConfigureNetworkRequest, ConfigureNetworkResponse, IpAddress, NetInterface, NetRoute,
};

use super::{AgentClient, AgentClientError};
use crate::pod_net::GuestNetwork;

/// What the agent did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfigured {
    /// The guest's name of the interface (eth0).
    pub guest_interface: String,
    /// What the guest could not take (IPv6 in a guest without it), as the
    /// guest words it: for logs only.
    pub skipped: Vec<String>,
    /// The guest's interface has every IPv6 address it was given (and it
    /// was given one): the pod's IPv6 frames may go in.
    pub ipv6: bool,
}

/// At most this many of the guest's skipped lines are kept (for logs),
const SKIPPED_MAX: usize = 16;
/// each cut to this many characters.
const SKIPPED_LINE_MAX: usize = 200;

/// The guest's `skipped` lines, bounded for the host's logs.
fn bounded(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .take(SKIPPED_MAX)
        .map(|l| l.chars().take(SKIPPED_LINE_MAX).collect())
        .collect()
}

fn text(ip: Option<IpAddr>) -> String {
    ip.map(|i| i.to_string()).unwrap_or_default()
}

/// The request for `net` (pure: tested without an agent).
pub fn network_request(net: &GuestNetwork) -> ConfigureNetworkRequest {
    let m = net.mac;
    ConfigureNetworkRequest {
        interface: Some(NetInterface {
            name: net.host_name.clone(),
            mac: format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            mtu: net.mtu.unwrap_or(0),
            addresses: net
                .addresses
                .iter()
                .map(|a| IpAddress {
                    address: a.addr.to_string(),
                    prefix_len: u32::from(a.prefix_len),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into(),
        routes: net
            .routes
            .iter()
            .map(|r| NetRoute {
                dest: text(r.dest.map(|d| d.0)),
                dest_prefix_len: r.dest.map_or(0, |d| u32::from(d.1)),
                gateway: text(r.gateway),
                scope: u32::from(r.scope),
                ipv6: r.ipv6,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

impl AgentClient {
    /// Gives the guest's interface the pod's MAC, MTU, addresses and
    /// routes (agent API 5).
    pub fn configure_network(
        &self,
        net: &GuestNetwork,
    ) -> Result<NetworkConfigured, AgentClientError> {
        let req = network_request(net);
        let r: ConfigureNetworkResponse =
            self.call("ConfigureNetwork", |c, ctx| c.configure_network(ctx, &req))?;
        Ok(NetworkConfigured {
            guest_interface: r.guest_interface,
            skipped: bounded(r.skipped),
            ipv6: r.ipv6,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::net::Ipv4Addr;

    use husk_netlink::{Address, Route, SCOPE_LINK};

    use super::*;

    #[test]
    fn skipped_lines_are_bounded() {
        let lines = vec!["x".repeat(10_000); 1000];
        let b = bounded(lines);
        assert_eq!(b.len(), SKIPPED_MAX);
        assert!(b.iter().all(|l| l.len() == SKIPPED_LINE_MAX));
        assert_eq!(bounded(vec!["é".into()]), vec!["é".to_string()]);
    }

    #[test]
    fn request_carries_the_veth() {
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        let net = GuestNetwork {
            host_name: "eth0".into(),
            mac: [0x0a, 0x58, 0x0a, 0x58, 0, 0x05],
            mtu: Some(1500),
            addresses: vec![Address {
                addr: v4(10, 88, 0, 5),
                prefix_len: 16,
            }],
            routes: vec![
                Route {
                    dest: None,
                    gateway: Some(v4(10, 88, 0, 1)),
                    oif: Some(2),
                    scope: 0,
                    protocol: 3,
                    ipv6: false,
                },
                Route {
                    dest: Some((v4(10, 99, 0, 0), 16)),
                    gateway: None,
                    oif: Some(2),
                    scope: SCOPE_LINK,
                    protocol: 3,
                    ipv6: false,
                },
            ],
        };
        let r = network_request(&net);
        let i = r.interface.as_ref().unwrap();
        assert_eq!((i.mac.as_str(), i.mtu), ("0a:58:0a:58:00:05", 1500));
        assert_eq!(
            (i.addresses[0].address.as_str(), i.addresses[0].prefix_len),
            ("10.88.0.5", 16)
        );
        assert_eq!(
            (r.routes[0].dest.as_str(), r.routes[0].gateway.as_str()),
            ("", "10.88.0.1")
        );
        assert_eq!(
            (
                r.routes[1].dest.as_str(),
                r.routes[1].dest_prefix_len,
                r.routes[1].scope
            ),
            ("10.99.0.0", 16, 253)
        );
    }
}
