//! The tc redirect between two interfaces: an ingress qdisc on each, and
//! on its ingress a u32 filter matching every frame (one key, mask 0) with
//! a mirred "egress redirect" action to the other interface (what
//! `tc filter add dev A parent ffff: protocol all u32 match u8 0 0 action
//! mirred egress redirect dev B` sends).

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
    TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle, TcMessage,
    TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::{Netlink, Result};

/// The ingress qdisc's handle (`ffff:`), also the parent of its filters.
pub const INGRESS_HANDLE: u32 = 0xffff_0000;
/// `TC_H_INGRESS`: the parent an ingress qdisc hangs from.
const TC_H_INGRESS: u32 = 0xffff_fff1;
/// Every ethertype (`ETH_P_ALL`), for [`Netlink::add_redirect_of`].
pub const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;

/// A qdisc as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    pub kind: String,
    pub handle: u32,
    pub parent: u32,
}

/// A filter as the kernel lists it (u32 lists its hash table too: a
/// "filter" with no action).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub kind: String,
    /// The interface a mirred action redirects to, if it has one.
    pub redirect_to: Option<u32>,
    /// The ethertype it matches ([`ETH_P_ALL`]: every frame).
    pub protocol: u16,
}

fn tc_message(index: u32) -> TcMessage {
    let mut m = TcMessage::default();
    // The kernel's ifindex is an int; an index above i32::MAX is no
    // interface at all and is refused by the kernel as such.
    m.header.index = i32::try_from(index).unwrap_or(-1);
    m
}

impl Netlink {
    /// Adds the ingress qdisc (`ffff:`) to interface `index`; one already
    /// there is kept.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let mut m = tc_message(index);
        m.header.parent = TcHandle::from(TC_H_INGRESS);
        m.header.handle = TcHandle::from(INGRESS_HANDLE);
        m.attributes.push(TcAttribute::Kind("ingress".into()));
        let r = self.change(
            RouteNetlinkMessage::NewQueueDiscipline(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding the ingress qdisc to interface {index}"),
        );
        match r {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Deletes interface `index`'s ingress qdisc and with it its filters.
    pub fn del_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        let mut m = tc_message(index);
        m.header.parent = TcHandle::from(TC_H_INGRESS);
        m.header.handle = TcHandle::from(INGRESS_HANDLE);
        self.change(
            RouteNetlinkMessage::DelQueueDiscipline(m),
            0,
            &format!("deleting the ingress qdisc of interface {index}"),
        )
    }

    /// The qdiscs of interface `index`.
    pub fn qdiscs(&mut self, index: u32) -> Result<Vec<Qdisc>> {
        let replies = self.dump(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            "listing qdiscs",
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewQueueDiscipline(q) = m else {
                continue;
            };
            if i64::from(q.header.index) != i64::from(index) {
                continue;
            }
            let kind = q
                .attributes
                .iter()
                .find_map(|a| match a {
                    TcAttribute::Kind(k) => Some(k.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            out.push(Qdisc {
                kind,
                handle: u32::from(q.header.handle),
                parent: u32::from(q.header.parent),
            });
        }
        Ok(out)
    }

    /// Redirects every frame arriving on `from` to `to`'s egress: a u32
    /// match-all filter with a mirred action on `from`'s ingress qdisc
    /// (which must exist).
    pub fn add_redirect(&mut self, from: u32, to: u32) -> Result<()> {
        self.add_redirect_of(from, to, ETH_P_ALL)
    }

    /// Redirects the frames of one ethertype (`protocol`, host order;
    /// [`ETH_P_ALL`]: every frame) arriving on `from` to `to`'s egress;
    /// each call adds a filter of its own (the kernel picks its priority).
    pub fn add_redirect_of(&mut self, from: u32, to: u32, protocol: u16) -> Result<()> {
        let mut sel = TcU32Selector::default();
        sel.flags = TcU32SelectorFlags::Terminal;
        sel.nkeys = 1;
        // mask 0, value 0 at offset 0: every frame.
        sel.keys = vec![TcU32Key::default()];
        let mut mirror = TcMirror::default();
        let mut generic = TcActionGeneric::default();
        generic.action = TcActionType::Stolen;
        mirror.generic = generic;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        let mut m = tc_message(from);
        m.header.parent = TcHandle::from(INGRESS_HANDLE);
        // tcm_info: priority (0: the kernel's choice) in the high half,
        // the protocol in network byte order in the low one.
        m.header.info = u32::from(protocol.to_be());
        m.attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
        m.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(sel)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.change(
            RouteNetlinkMessage::NewTrafficFilter(m),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!(
                "redirecting interface {from}'s ingress (ethertype {protocol:#06x}) to interface {to}"
            ),
        )
    }

    /// The filters on interface `index`'s ingress qdisc.
    pub fn ingress_filters(&mut self, index: u32) -> Result<Vec<Filter>> {
        let mut q = tc_message(index);
        q.header.parent = TcHandle::from(INGRESS_HANDLE);
        let replies = self.dump(
            RouteNetlinkMessage::GetTrafficFilter(q),
            &format!("listing the ingress filters of interface {index}"),
        )?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewTrafficFilter(f) = m else {
                continue;
            };
            let mut filter = Filter {
                kind: String::new(),
                redirect_to: None,
                protocol: u16::from_be(f.header.info as u16),
            };
            for a in &f.attributes {
                match a {
                    TcAttribute::Kind(k) => filter.kind = k.clone(),
                    TcAttribute::Options(opts) => {
                        filter.redirect_to = opts.iter().find_map(redirect_of);
                    }
                    _ => {}
                }
            }
            out.push(filter);
        }
        Ok(out)
    }
}

/// The target of a u32 option's mirred redirect.
fn redirect_of(opt: &TcOption) -> Option<u32> {
    let TcOption::U32(TcFilterU32Option::Action(actions)) = opt else {
        return None;
    };
    actions.iter().find_map(|a| {
        a.attributes.iter().find_map(|attr| match attr {
            TcActionAttribute::Options(o) => o.iter().find_map(|o| match o {
                TcActionOption::Mirror(TcActionMirrorOption::Parms(m))
                    if m.eaction == TcMirrorActionType::EgressRedir =>
                {
                    Some(m.ifindex)
                }
                _ => None,
            }),
            _ => None,
        })
    })
}
