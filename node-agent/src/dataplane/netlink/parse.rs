//! Kernel messages -> desired-state shapes. Pure: the reader and the drift monitor share it, and
//! unit tests feed it hand-built messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoIpTunnel, InfoKind, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use netlink_packet_route::AddressFamily;

use trellis_common::netlink::{self, route_addr};

use crate::dataplane::desired::{LinkKind, Vxlan, Wireguard};
use crate::net::{Mac, ROUTE_PROTOCOL};
use crate::wg_key::WgSecret;

/// The MTU, 0 when the kernel did not say (a desired link never has MTU 0, so it differs).
pub fn link_mtu(msg: &LinkMessage) -> u32 {
    netlink::link_mtu(msg).unwrap_or(0)
}

/// The link's Ethernet address; `None` for devices without one (IPIP reports its 4-byte local
/// address here).
pub fn link_mac(msg: &LinkMessage) -> Option<Mac> {
    netlink::link_address(msg).and_then(mac_from)
}

pub fn mac_from(bytes: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(bytes).ok().map(Mac)
}

/// The immutable attributes of a link as the diff compares them.
///
/// A link named like a trellis device but of another type (a `dummy` called `flannel.1`)
/// is reported as an IPIP tunnel with an unspecified local address: a value no desired link
/// has, so the diff recreates it (or deletes it when not desired) instead of trusting it.
pub fn link_kind(msg: &LinkMessage) -> LinkKind {
    let infos = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    });
    let mut kind = None;
    let mut data = None;
    for info in infos.into_iter().flatten() {
        match info {
            LinkInfo::Kind(k) => kind = Some(k),
            LinkInfo::Data(d) => data = Some(d),
            _ => {}
        }
    }
    match (kind, data) {
        (Some(InfoKind::Vxlan), Some(InfoData::Vxlan(attrs))) => vxlan_kind(attrs),
        // Key and port are only known through generic netlink: the reader fills them in
        // (`wg_ops::read_devices`); until then no desired device equals this one.
        (Some(InfoKind::Wireguard), _) => LinkKind::Wireguard(Wireguard {
            private_key: WgSecret([0; 32]),
            listen_port: 0,
        }),
        (Some(InfoKind::IpIp), Some(InfoData::IpTunnel(attrs))) => {
            let local = attrs
                .iter()
                .find_map(|a| match a {
                    InfoIpTunnel::Local(IpAddr::V4(ip)) => Some(*ip),
                    _ => None,
                })
                .unwrap_or(Ipv4Addr::UNSPECIFIED);
            LinkKind::Ipip { local }
        }
        _ => LinkKind::Ipip {
            local: Ipv4Addr::UNSPECIFIED,
        },
    }
}

fn vxlan_kind(attrs: &[InfoVxlan]) -> LinkKind {
    let mut vni = 0;
    // The kernel always reports the port; 0 would only mean a message we do not understand.
    let mut port = 0;
    let mut local = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut underlay_index = 0;
    // Learning is on unless turned off, and the kernel always reports it.
    let mut learning = true;
    let mut gbp = false;
    for a in attrs {
        match a {
            InfoVxlan::Id(v) => vni = *v,
            InfoVxlan::Port(p) => port = *p,
            InfoVxlan::Local(ip) => local = IpAddr::V4(*ip),
            InfoVxlan::Local6(ip) => local = IpAddr::V6(*ip),
            InfoVxlan::Link(i) => underlay_index = *i,
            InfoVxlan::Learning(l) => learning = *l,
            InfoVxlan::Gbp => gbp = true,
            _ => {}
        }
    }
    LinkKind::Vxlan(Vxlan {
        vni,
        port,
        local,
        underlay_index,
        learning,
        gbp,
    })
}

/// The address of an address message, with its prefix. IPv4 reports the interface's own
/// address in `IFA_LOCAL` (`IFA_ADDRESS` is the peer on point-to-point links).
pub fn address(msg: &AddressMessage) -> Option<IpNetwork> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let addr = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNetwork::new(local.or(addr)?, msg.header.prefix_len).ok()
}

pub fn is_ipv6_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// A route as the reader and the monitor see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: IpNetwork,
    /// Unspecified when the route has no single gateway (none, or multipath).
    pub gateway: IpAddr,
    pub oif: Option<u32>,
    pub onlink: bool,
}

impl RouteInfo {
    /// The gateway as a desired [`Route`](crate::dataplane::desired::Route) holds it.
    pub fn via(&self) -> Option<IpAddr> {
        (!self.gateway.is_unspecified()).then_some(self.gateway)
    }
}

/// The table a route lives in: `RTA_TABLE` wins over the 8-bit header field.
fn route_table(msg: &RouteMessage) -> u32 {
    msg.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(msg.header.table))
}

pub fn is_main_table(msg: &RouteMessage) -> bool {
    route_table(msg) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// Whether the route is one of trellis's: main table, protocol [`ROUTE_PROTOCOL`].
pub fn is_trellis_route(msg: &RouteMessage) -> bool {
    msg.header.protocol == RouteProtocol::from(ROUTE_PROTOCOL) && is_main_table(msg)
}

pub fn unspecified(family: AddressFamily) -> Option<IpAddr> {
    match family {
        AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => None,
    }
}

pub fn route_info(msg: &RouteMessage) -> Option<RouteInfo> {
    let zero = unspecified(msg.header.address_family)?;
    let mut dst = zero;
    let mut gateway = zero;
    let mut oif = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Destination(d) => dst = route_addr(d)?,
            RouteAttribute::Gateway(g) => gateway = route_addr(g).unwrap_or(zero),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    Some(RouteInfo {
        dst: IpNetwork::new(dst, msg.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: msg.header.flags.contains(RouteFlags::Onlink),
    })
}

/// One permanent neighbour or FDB entry: what trellis programs and reads back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighInfo {
    pub ifindex: u32,
    /// `NDA_DST`: the neighbour's IP, or the FDB entry's remote VTEP.
    pub ip: Option<IpAddr>,
    pub mac: Mac,
}

/// `NDA_DST`. The parser only knows its type for AF_INET/AF_INET6 messages; in an AF_BRIDGE
/// (FDB) message it is raw bytes whose length tells the family.
pub fn neigh_ip(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
            if let Ok(v4) = <[u8; 4]>::try_from(b.as_slice()) {
                Some(IpAddr::from(v4))
            } else {
                <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from)
            }
        }
        _ => None,
    })
}

pub fn neigh_mac(msg: &NeighbourMessage) -> Option<Mac> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => mac_from(b),
        _ => None,
    })
}

const NUD_PERMANENT: u16 = 0x80;

/// `ndm_state` is a bit set: iproute2's `bridge fdb add ... permanent` sends
/// `NUD_PERMANENT | NUD_NOARP`, which the parser can only report as `Other(0xc0)`.
pub fn is_permanent(state: NeighbourState) -> bool {
    u16::from(state) & NUD_PERMANENT != 0
}

/// A permanent ARP/NDP entry with a non-zero MAC (what trellis creates); `None` for anything
/// else: dynamic entries, proxies, FDB messages.
pub fn permanent_neighbour(msg: &NeighbourMessage) -> Option<NeighInfo> {
    let h = &msg.header;
    if !matches!(h.family, AddressFamily::Inet | AddressFamily::Inet6)
        || !is_permanent(h.state)
        || h.flags.contains(NeighbourFlags::Proxy)
    {
        return None;
    }
    let mac = neigh_mac(msg).filter(|m| !m.is_zero())?;
    Some(NeighInfo {
        ifindex: h.ifindex,
        ip: Some(neigh_ip(msg)?),
        mac,
    })
}

/// A permanent FDB entry of the device itself (`self`, not a bridge's), with a non-zero MAC.
pub fn permanent_fdb(msg: &NeighbourMessage) -> Option<NeighInfo> {
    let h = &msg.header;
    if h.family != AddressFamily::Bridge
        || !is_permanent(h.state)
        || !h.flags.contains(NeighbourFlags::Own)
    {
        return None;
    }
    let mac = neigh_mac(msg).filter(|m| !m.is_zero())?;
    Some(NeighInfo {
        ifindex: h.ifindex,
        ip: neigh_ip(msg),
        mac,
    })
}

#[cfg(test)]
pub(crate) mod tests;
