//! husk's rtnetlink client: a blocking `NETLINK_ROUTE` socket and the few
//! requests pod networking needs.
//!
//! - [`Netlink::links`], [`Netlink::set_link`]: find interfaces, set MTU,
//!   MAC and up.
//! - [`Netlink::addresses`], [`Netlink::add_address`], [`Netlink::routes`],
//!   [`Netlink::add_route`]: what CNI gave the pod's veth, given again to
//!   the guest's eth0.
//! - [`Netlink::add_ingress_qdisc`], [`Netlink::add_redirect`] and their
//!   readers: the tc redirect between a pod's veth and its tap (ingress
//!   qdisc, u32 match-all, mirred egress redirect: what this host's kernel
//!   has; no matchall/flower).
//!
//! The shim uses it on the host (on a thread that entered the pod's network
//! namespace) and the agent in the guest, so it is synchronous (neither has
//! an async runtime) and small. A socket acts in the network namespace of
//! the thread that opened it, for its whole life.
//!
//! Message types come from `netlink-packet-route`; this crate only frames
//! requests, matches replies by sequence number and turns kernel errors
//! into [`NetlinkError::Kernel`] naming the request.

mod link;
mod route;
mod tc;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::io;

use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

pub use link::{Link, LinkChange};
pub use route::{Address, Route, RouteScope, PROTO_KERNEL, SCOPE_HOST, SCOPE_LINK, SCOPE_UNIVERSE};
pub use tc::{Filter, Qdisc, ETH_P_ALL, INGRESS_HANDLE};

/// Why a netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket: {what}: {source}")]
    Socket {
        what: &'static str,
        source: io::Error,
    },
    /// The kernel refused the request (its errno).
    #[error("{what}: {source}")]
    Kernel { what: String, source: io::Error },
    #[error("{what}: undecodable reply: {detail}")]
    Decode { what: String, detail: String },
    #[error("no interface named {0:?}")]
    NoLink(String),
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// Receive buffer: larger than any dump chunk the kernel sends (32 KiB).
const RECV_BUF: usize = 64 * 1024;

/// A `NETLINK_ROUTE` socket in the network namespace of the thread that
/// opened it.
pub struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("seq", &self.seq).finish()
    }
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink> {
        let sock_err = |what| move |source| NetlinkError::Socket { what, source };
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(sock_err("socket"))?;
        sock.bind_auto().map_err(sock_err("bind"))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(sock_err("connect"))?;
        // Errors carry the failing attribute's message where the kernel has
        // one; failing to ask for it costs nothing but detail.
        let _ = sock.set_ext_ack(true);
        Ok(Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// A change (create, delete, set): answered by an ACK.
    fn change(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> Result<()> {
        self.exchange(msg, NLM_F_ACK | flags, what).map(|_| ())
    }

    /// A dump: every object of a kind.
    fn dump(&mut self, msg: RouteNetlinkMessage, what: &str) -> Result<Vec<RouteNetlinkMessage>> {
        self.exchange(msg, NLM_F_DUMP, what)
    }

    /// Sends one request and collects its replies until the ACK, the error
    /// or the end of the dump.
    fn exchange(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        what: &str,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = seq;
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock
            .send(&out, 0)
            .map_err(|source| NetlinkError::Kernel {
                what: format!("{what}: sending"),
                source,
            })?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            self.sock
                .recv(&mut self.buf, 0)
                .map_err(|source| NetlinkError::Kernel {
                    what: format!("{what}: receiving"),
                    source,
                })?;
            let mut off = 0;
            while off < self.buf.len() {
                let bytes = &self.buf[off..];
                let msg =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                        NetlinkError::Decode {
                            what: what.to_string(),
                            detail: e.to_string(),
                        }
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(NetlinkError::Decode {
                        what: what.to_string(),
                        detail: "a message of length 0".into(),
                    });
                }
                off += len.next_multiple_of(4);
                if msg.header.sequence_number != seq {
                    // A late answer to an earlier request: not ours.
                    continue;
                }
                let multipart = msg.header.flags & NLM_F_MULTIPART != 0;
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(NetlinkError::Kernel {
                                what: what.to_string(),
                                source: e.to_io(),
                            }),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && !multipart && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
