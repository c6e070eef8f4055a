//! A CRI pod's network on the host: the VM's tap in the pod's network
//! namespace, wired to the pod's veth with tc (Kata's "tc filter" model).
//!
//! CNI made the pod's netns (`/var/run/netns/cni-…`) and put one end of a
//! veth in it with the pod's addresses and routes. [`PodNetwork::setup`],
//! on a thread of its own that enters that namespace (the shim's other
//! threads stay in the host's):
//! - finds the veth (the one interface besides lo, or `eth0` among several),
//! - creates the tap [`TAP_NAME`] (`/dev/net/tun`, `IFF_TAP | IFF_NO_PI |
//!   IFF_VNET_HDR`, what the VMM's net device expects), IPv6 off (it sends
//!   the guest nothing of its own), MTU = the veth's, up,
//! - adds an ingress qdisc to both and u32 filters with a mirred egress
//!   redirect to the other: the ARP and IPv4 frames the bridge sends the
//!   veth go to the guest, every frame the guest sends leaves by the veth,
//! - reads the veth's MAC, MTU, addresses and routes: what the guest's eth0
//!   is given ([`GuestNetwork`], through the agent's `ConfigureNetwork`).
//!
//! IPv6 frames go in only once the guest has the pod's IPv6 addresses
//! ([`PodNetwork::redirect_ipv6`], after `ConfigureNetwork` said so): until
//! then, and for good in a guest that could not take them, they stay with
//! the veth (whose stack in the pod's namespace has the same addresses and
//! nothing listening) instead of costing a guest that would drop them.
//!
//! The tap's fd goes to the VMM ([`TapSource::Fd`]); the tap is not
//! persistent, so it and its qdisc go when the last fd closes (the VM's and
//! ours). [`PodNetwork`]'s drop removes the veth's qdisc (and with it the
//! filter), so nothing of ours is left in the namespace, which CNI removes.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use husk_netlink::{Address, Link, LinkChange, Netlink, NetlinkError, Route, PROTO_KERNEL};
use husk_vmm::TapSource;

/// The tap's name in the pod's namespace.
pub const TAP_NAME: &str = "tap0_husk";

/// Why the pod's network could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum PodNetError {
    #[error("pod {pod}: opening its network namespace {}: {source}", netns.display())]
    Netns {
        pod: String,
        netns: PathBuf,
        source: io::Error,
    },
    #[error("pod {pod}: entering its network namespace {}: {source}", netns.display())]
    Setns {
        pod: String,
        netns: PathBuf,
        source: io::Error,
    },
    #[error("pod {pod}: its network namespace {} has no interface besides lo to connect the VM to", netns.display())]
    NoInterface { pod: String, netns: PathBuf },
    #[error("pod {pod}: creating tap {TAP_NAME}: {source}")]
    Tap {
        pod: String,
        source: husk_devices::virtio::net::NetError,
    },
    #[error("pod {pod}: {step}: {source}")]
    Netlink {
        pod: String,
        step: String,
        source: NetlinkError,
    },
    #[error("pod {pod}: the network thread: {detail}")]
    Thread { pod: String, detail: String },
}

/// What the guest's interface is given: the veth's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestNetwork {
    /// The veth's name (for logs).
    pub host_name: String,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub addresses: Vec<Address>,
    /// The veth's routes, less those the kernel makes itself for an
    /// address (the guest's kernel makes them again).
    pub routes: Vec<Route>,
}

impl GuestNetwork {
    /// Whether the pod has an IPv6 address (besides link-local ones).
    pub fn has_ipv6(&self) -> bool {
        self.addresses.iter().any(|a| a.addr.is_ipv6())
    }
}

/// The pod's tap and tc redirect; removed on drop.
#[derive(Debug)]
pub struct PodNetwork {
    pod: String,
    /// The namespace, held open: teardown enters it even after its
    /// `/var/run/netns` mount is gone.
    netns: Arc<File>,
    veth_index: u32,
    tap: Arc<OwnedFd>,
    tap_index: u32,
    guest: GuestNetwork,
    /// [`PodNetwork::redirect_ipv6`] done.
    ipv6_redirected: bool,
}

impl PodNetwork {
    /// Sets up the pod's tap and redirect in the namespace at `netns`.
    pub fn setup(pod: &str, netns: &Path) -> Result<PodNetwork, PodNetError> {
        let file = File::open(netns).map_err(|source| PodNetError::Netns {
            pod: pod.into(),
            netns: netns.into(),
            source,
        })?;
        let netns_file = Arc::new(file);
        let (pod_s, path) = (pod.to_string(), netns.to_path_buf());
        let ns = netns_file.clone();
        let t0 = std::time::Instant::now();
        let r = in_netns(pod, &netns_file, netns, move || setup_here(&pod_s, &path))?;
        let (tap, tap_index, veth_index, guest) = r?;
        tracing::info!(pod, veth = %guest.host_name, tap = TAP_NAME, mtu = ?guest.mtu,
            addresses = guest.addresses.len(), routes = guest.routes.len(),
            setup_ms = t0.elapsed().as_millis() as u64, "pod network: tap redirected to the veth");
        Ok(PodNetwork {
            pod: pod.to_string(),
            netns: ns,
            veth_index,
            tap: Arc::new(tap),
            tap_index,
            guest,
            ipv6_redirected: false,
        })
    }

    /// The VM's net device backend: the tap's fd (the VMM takes a copy).
    pub fn tap_source(&self) -> TapSource {
        TapSource::Fd(self.tap.clone())
    }

    /// What the guest's interface is given.
    pub fn guest(&self) -> &GuestNetwork {
        &self.guest
    }

    /// The tap's interface index in the pod's namespace.
    pub fn tap_index(&self) -> u32 {
        self.tap_index
    }

    /// The veth's interface index in the pod's namespace.
    pub fn veth_index(&self) -> u32 {
        self.veth_index
    }

    /// Passes the veth's IPv6 frames to the guest too: call once the
    /// guest's eth0 has the pod's IPv6 addresses. Once: a second call is a
    /// no-op. One filter, added whole or not at all; what was added goes
    /// with the veth's qdisc on drop.
    pub fn redirect_ipv6(&mut self) -> Result<(), PodNetError> {
        if self.ipv6_redirected {
            return Ok(());
        }
        let (veth, tap) = (self.veth_index, self.tap_index);
        let r = in_netns(&self.pod, &self.netns, Path::new("(held)"), move || {
            Netlink::new()?.add_redirect_of(veth, tap, libc::ETH_P_IPV6 as u16)
        })?;
        r.map_err(|source| PodNetError::Netlink {
            pod: self.pod.clone(),
            step: format!("redirecting {}'s IPv6 to {TAP_NAME}", self.guest.host_name),
            source,
        })?;
        self.ipv6_redirected = true;
        tracing::info!(pod = %self.pod, veth = %self.guest.host_name, "pod network: IPv6 redirected to the guest");
        Ok(())
    }

    /// Whether the veth's IPv6 frames go to the guest.
    pub fn ipv6_redirected(&self) -> bool {
        self.ipv6_redirected
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        // The tap goes with its last fd (this one and the VM's); the veth's
        // qdisc must be removed. A veth already gone (CNI DEL ran) took it.
        let veth = self.veth_index;
        let pod = self.pod.clone();
        let r = in_netns(&self.pod, &self.netns, Path::new("(held)"), move || {
            let mut nl = Netlink::new()?;
            nl.del_ingress_qdisc(veth)
        });
        match r {
            Ok(Ok(())) => tracing::info!(pod, "pod network: redirect removed"),
            Ok(Err(e)) if matches!(e.errno(), Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)) => {
                tracing::debug!(pod, error = %e, "pod network: the veth or its qdisc is gone already")
            }
            Ok(Err(e)) => tracing::warn!(pod, error = %e, "pod network: removing the veth's qdisc"),
            Err(e) => {
                tracing::warn!(pod, error = %e, "pod network: entering its namespace for teardown")
            }
        }
    }
}

/// Runs `f` on a new thread that entered the namespace `netns` (the
/// caller's threads stay where they are).
fn in_netns<T: Send + 'static>(
    pod: &str,
    netns: &Arc<File>,
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, PodNetError> {
    let ns = netns.clone();
    let handle = std::thread::Builder::new()
        .name("husk-netns".into())
        .spawn(move || {
            // SAFETY: setns on an open namespace fd we hold; it changes
            // only this thread's network namespace, and the thread ends
            // with `f`.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .map_err(|e| PodNetError::Thread {
            pod: pod.into(),
            detail: e.to_string(),
        })?;
    let joined = handle.join().map_err(|_| PodNetError::Thread {
        pod: pod.into(),
        detail: "panicked".into(),
    })?;
    joined.map_err(|source| PodNetError::Setns {
        pod: pod.into(),
        netns: path.into(),
        source,
    })
}

/// The veth: the one interface besides lo and our tap; `eth0` (what CRI
/// asks CNI for) when there are several.
fn pick_veth(links: &[Link]) -> Option<&Link> {
    let candidates: Vec<&Link> = links
        .iter()
        .filter(|l| !l.loopback && l.name != TAP_NAME && l.mac.is_some())
        .collect();
    match candidates.as_slice() {
        [one] => Some(one),
        many => many.iter().copied().find(|l| l.name == "eth0"),
    }
}

type Setup = (OwnedFd, u32, u32, GuestNetwork);

/// The work done inside the namespace. On failure what it made is undone.
fn setup_here(pod: &str, netns: &Path) -> Result<Setup, PodNetError> {
    let nl_err = |step: String| {
        let pod = pod.to_string();
        move |source| PodNetError::Netlink { pod, step, source }
    };
    let mut nl = Netlink::new().map_err(nl_err("opening a netlink socket".into()))?;
    let links = nl.links().map_err(nl_err("listing interfaces".into()))?;
    let veth = pick_veth(&links)
        .cloned()
        .ok_or_else(|| PodNetError::NoInterface {
            pod: pod.into(),
            netns: netns.into(),
        })?;
    let tap = open_tap(pod)?;
    let result = (|| {
        let t = nl
            .link_by_name(TAP_NAME)
            .map_err(nl_err("finding the new tap".into()))?;
        let change = LinkChange {
            mtu: veth.mtu,
            mac: None,
            up: Some(true),
        };
        if let Err(e) = tap_ipv6_off() {
            tracing::warn!(pod, error = %e, "pod network: turning IPv6 off on {TAP_NAME}");
        }
        nl.set_link(t.index, change)
            .map_err(nl_err(format!("setting {TAP_NAME}'s MTU and up")))?;
        for (i, name) in [(veth.index, &veth.name), (t.index, &t.name)] {
            nl.add_ingress_qdisc(i)
                .map_err(nl_err(format!("adding an ingress qdisc to {name}")))?;
        }
        // IPv6 link-local addresses are the interface's own (the guest's
        // kernel makes its eth0 one).
        let addresses: Vec<_> = nl
            .addresses(veth.index)
            .map_err(nl_err(format!("reading {}'s addresses", veth.name)))?
            .into_iter()
            .filter(|a| !matches!(a.addr, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80))
            .collect();
        for protocol in GUEST_ETHERTYPES {
            nl.add_redirect_of(veth.index, t.index, protocol)
                .map_err(nl_err(format!("redirecting {} to {TAP_NAME}", veth.name)))?;
        }
        nl.add_redirect(t.index, veth.index)
            .map_err(nl_err(format!("redirecting {TAP_NAME} to {}", veth.name)))?;
        let routes = nl
            .routes()
            .map_err(nl_err("reading the routes".into()))?
            .into_iter()
            .filter(|r| r.oif == Some(veth.index) && r.protocol != PROTO_KERNEL)
            .collect();
        Ok((t.index, addresses, routes))
    })();
    match result {
        Ok((tap_index, addresses, routes)) => {
            let guest = GuestNetwork {
                host_name: veth.name.clone(),
                // pick_veth takes only interfaces with a MAC.
                mac: veth.mac.unwrap_or_default(),
                mtu: veth.mtu,
                addresses,
                routes,
            };
            Ok((tap, tap_index, veth.index, guest))
        }
        Err(e) => {
            // The tap (and its qdisc) goes with its fd; the veth's qdisc
            // may have been added.
            let _ = nl.del_ingress_qdisc(veth.index);
            Err(e)
        }
    }
}

/// What the veth passes on to the guest from the start: ARP and IPv4.
/// IPv6 follows once the guest has the pod's IPv6 addresses
/// ([`PodNetwork::redirect_ipv6`]); an IPv4-only pod never gets it: the
/// IPv6 neighbour, router and multicast-listener chatter every new veth on
/// the bridge sends, flooded to every pod, would only cost its guest an
/// interrupt and a frame handled in its kernel, to be dropped. Other
/// ethertypes have no use in a pod.
const GUEST_ETHERTYPES: [u16; 2] = [libc::ETH_P_ARP as u16, libc::ETH_P_IP as u16];

/// Turns IPv6 off on the tap [`TAP_NAME`] of this thread's namespace,
/// before it goes up. The tap is only a pipe to the guest: with IPv6 on,
/// the pod namespace's kernel would send the guest IPv6 of its own (the
/// tap's link-local probe, multicast reports, and router solicitations
/// backing off to hourly for ever), each an interrupt in an idle guest. A
/// host without IPv6 has no such setting: nothing to do.
fn tap_ipv6_off() -> io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{TAP_NAME}/disable_ipv6");
    match std::fs::write(&path, "1") {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Creates the tap [`TAP_NAME`] in this thread's namespace.
fn open_tap(pod: &str) -> Result<OwnedFd, PodNetError> {
    husk_devices::virtio::net::tap::create_tap(TAP_NAME).map_err(|source| PodNetError::Tap {
        pod: pod.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests;
