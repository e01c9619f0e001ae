//! The netlink helper layer the plugin and the agent share: what a failed call's errno was and
//! how to say it, links looked up where "no such device" is an answer, and the link and route
//! attributes both read. Each side builds its own operations (the plugin's bridge and veths,
//! the agent's planned ops) on top of this.

use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::route::RouteAddress;
use rtnetlink::Handle;

/// The errno a netlink call failed with, if it was the kernel that said no.
pub fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// A failed call in words: the errno's text ("No such device (os error 19)") where the kernel
/// refused, else the library's own message.
pub fn describe(e: &rtnetlink::Error) -> String {
    match errno(e) {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => e.to_string(),
    }
}

/// The link called `name`, or `None` when there is none (ENODEV is an answer, not an error).
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    absent_if_enodev(
        h.link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await,
    )
}

/// The link with this index, or `None` when there is none.
pub async fn link_by_index(
    h: &Handle,
    index: u32,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    absent_if_enodev(h.link().get().match_index(index).execute().try_next().await)
}

fn absent_if_enodev(
    r: Result<Option<LinkMessage>, rtnetlink::Error>,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match r {
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        r => r,
    }
}

pub fn link_name(msg: &LinkMessage) -> Option<&str> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn link_mtu(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The link-layer address as the kernel reports it: six bytes for Ethernet, four (the local
/// address) for an IPIP tunnel, none for some devices.
pub fn link_address(msg: &LinkMessage) -> Option<&[u8]> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

/// The device type (`bridge`, `veth`, `vxlan`, ...).
pub fn link_kind(msg: &LinkMessage) -> Option<&InfoKind> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(k) => Some(k),
            _ => None,
        }),
        _ => None,
    })
}

/// The index of the bridge (or other controller) this link is enslaved to.
pub fn link_controller(msg: &LinkMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(c) => Some(*c),
        _ => None,
    })
}

/// Administrative state (`ip link set up`), not carrier: that is what trellis sets.
pub fn link_is_up(msg: &LinkMessage) -> bool {
    msg.header.flags.contains(LinkFlags::Up)
}

/// Whether an address can carry traffic: not still being checked for duplicates
/// (tentative), not found to be a duplicate.
pub fn address_usable(msg: &AddressMessage) -> bool {
    !msg.header
        .flags
        .intersects(AddressHeaderFlags::Tentative | AddressHeaderFlags::Dadfailed)
}

/// How good a choice for a node's address: 0 a primary, preferred address; 1 a secondary IPv4
/// or temporary (privacy) IPv6 one (the kernel uses one flag for both), or a deprecated one
/// (still valid); 2 one that cannot carry traffic yet ([`address_usable`]).
pub fn address_rank(msg: &AddressMessage) -> u8 {
    let second_choice = AddressHeaderFlags::Secondary | AddressHeaderFlags::Deprecated;
    if !address_usable(msg) {
        2
    } else if msg.header.flags.intersects(second_choice) {
        1
    } else {
        0
    }
}

/// A route attribute's address, for the two families trellis routes.
pub fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::LinkHeader;

    fn link(attrs: Vec<LinkAttribute>, up: bool) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header = LinkHeader::default();
        if up {
            m.header.flags = LinkFlags::Up;
        }
        m.attributes = attrs;
        m
    }

    #[test]
    fn reads_the_attributes_it_is_asked_for_and_nothing_else() {
        let m = link(
            vec![
                LinkAttribute::IfName("cni0".into()),
                LinkAttribute::Mtu(1450),
                LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
                LinkAttribute::Controller(7),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
            ],
            true,
        );
        assert_eq!(link_name(&m), Some("cni0"));
        assert_eq!(link_mtu(&m), Some(1450));
        assert_eq!(link_address(&m), Some(&[2, 0, 0, 0, 0, 1][..]));
        assert_eq!(link_controller(&m), Some(7));
        assert_eq!(link_kind(&m), Some(&InfoKind::Bridge));
        assert!(link_is_up(&m));
        let bare = link(vec![], false);
        assert_eq!(
            (link_name(&bare), link_mtu(&bare), link_address(&bare)),
            (None, None, None)
        );
        assert_eq!((link_controller(&bare), link_kind(&bare)), (None, None));
        assert!(!link_is_up(&bare));
    }
}
