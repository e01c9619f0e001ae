use std::net::{IpAddr, Ipv4Addr};

use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkInfo};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol,
};
use netlink_packet_route::AddressFamily;

use trellis_common::netlink::{link_is_up, link_name};

use super::*;
use crate::dataplane::fixtures::vxlan_kind;

pub(crate) fn link(name: &str, index: u32, kind: Option<(InfoKind, InfoData)>) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes.push(LinkAttribute::IfName(name.into()));
    m.attributes.push(LinkAttribute::Mtu(1450));
    m.attributes
        .push(LinkAttribute::Address(vec![2, 0xaa, 0, 0, 0, 1]));
    if let Some((k, d)) = kind {
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(k),
            LinkInfo::Data(d),
        ]));
    }
    m
}

#[test]
fn vxlan_attributes_are_read_as_the_diff_compares_them() {
    let m = link(
        "flannel.1",
        7,
        Some((
            InfoKind::Vxlan,
            InfoData::Vxlan(vec![
                InfoVxlan::Id(1),
                InfoVxlan::Local(Ipv4Addr::new(192, 168, 1, 1)),
                InfoVxlan::Link(2),
                InfoVxlan::Learning(false),
                InfoVxlan::Port(8472),
                InfoVxlan::Ttl(0),
            ]),
        )),
    );
    assert_eq!(link_name(&m), Some("flannel.1"));
    assert_eq!(link_mtu(&m), 1450);
    assert_eq!(link_mac(&m), Some(Mac([2, 0xaa, 0, 0, 0, 1])));
    assert!(!link_is_up(&m));
    assert_eq!(link_kind(&m), vxlan_kind(1, 8472));
}

#[test]
fn a_lookalike_of_another_type_never_equals_a_desired_link() {
    let bridge = link("flannel.1", 7, None);
    assert_eq!(
        link_kind(&bridge),
        LinkKind::Ipip {
            local: Ipv4Addr::UNSPECIFIED
        }
    );
}

#[test]
fn ipip_has_no_mac() {
    let mut m = LinkMessage::default();
    m.attributes
        .push(LinkAttribute::Address(vec![192, 168, 1, 1]));
    assert_eq!(link_mac(&m), None);
}

pub(crate) fn neigh(
    family: AddressFamily,
    state: NeighbourState,
    attrs: Vec<NeighbourAttribute>,
) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = 7;
    m.header.state = state;
    m.attributes = attrs;
    m
}

pub(crate) fn lladdr(b: [u8; 6]) -> NeighbourAttribute {
    NeighbourAttribute::LinkLayerAddress(b.to_vec())
}

#[test]
fn permanent_is_a_bit_not_a_value() {
    assert!(is_permanent(NeighbourState::Permanent));
    // NUD_PERMANENT | NUD_NOARP, what `bridge fdb add ... permanent` sends.
    assert!(is_permanent(NeighbourState::Other(0xc0)));
    assert!(!is_permanent(NeighbourState::Reachable));
    assert!(!is_permanent(NeighbourState::Noarp));
}

#[test]
fn only_permanent_neighbours_with_a_mac_are_ours() {
    let dst = NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(10, 244, 2, 0)));
    let ok = neigh(
        AddressFamily::Inet,
        NeighbourState::Permanent,
        vec![dst.clone(), lladdr([0x0a, 0x58, 0, 0, 0, 2])],
    );
    assert_eq!(
        permanent_neighbour(&ok),
        Some(NeighInfo {
            ifindex: 7,
            ip: Some("10.244.2.0".parse().unwrap()),
            mac: Mac([0x0a, 0x58, 0, 0, 0, 2]),
        })
    );
    let dynamic = neigh(
        AddressFamily::Inet,
        NeighbourState::Reachable,
        vec![dst.clone(), lladdr([0x0a, 0x58, 0, 0, 0, 2])],
    );
    assert_eq!(permanent_neighbour(&dynamic), None);
    let zero = neigh(
        AddressFamily::Inet,
        NeighbourState::Permanent,
        vec![dst.clone(), lladdr([0; 6])],
    );
    assert_eq!(permanent_neighbour(&zero), None);
    let mut proxy = ok.clone();
    proxy.header.flags = NeighbourFlags::Proxy;
    assert_eq!(permanent_neighbour(&proxy), None);
    // An FDB message is not a neighbour, and the reverse.
    let mut bridge = ok.clone();
    bridge.header.family = AddressFamily::Bridge;
    bridge.header.flags = NeighbourFlags::Own;
    assert_eq!(permanent_neighbour(&bridge), None);
    assert_eq!(permanent_fdb(&ok), None);
}

#[test]
fn fdb_destination_comes_as_raw_bytes_in_bridge_messages() {
    let mut m = neigh(
        AddressFamily::Bridge,
        NeighbourState::Other(0xc0),
        vec![
            lladdr([0x0a, 0x58, 0, 0, 0, 3]),
            NeighbourAttribute::Destination(NeighbourAddress::Other(vec![192, 168, 1, 3])),
        ],
    );
    m.header.flags = NeighbourFlags::Own;
    assert_eq!(
        permanent_fdb(&m).and_then(|i| i.ip),
        Some("192.168.1.3".parse().unwrap())
    );
    let mut v6 = m.clone();
    v6.attributes[1] = NeighbourAttribute::Destination(NeighbourAddress::Other(
        "fd00::3"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets()
            .to_vec(),
    ));
    assert_eq!(
        permanent_fdb(&v6).and_then(|i| i.ip),
        Some("fd00::3".parse().unwrap())
    );
    // A bridge's entry (master), not the device's own.
    let mut master = m.clone();
    master.header.flags = NeighbourFlags::Controller;
    assert_eq!(permanent_fdb(&master), None);
    // The device's multicast/default entries have an all-zero MAC.
    let mut zero = m.clone();
    zero.attributes[0] = lladdr([0; 6]);
    assert_eq!(permanent_fdb(&zero), None);
}

pub(crate) fn route(dst: &str, proto: u8, table: Option<u32>) -> RouteMessage {
    let net: IpNetwork = dst.parse().unwrap();
    let mut m = RouteMessage::default();
    m.header.address_family = AddressFamily::Inet;
    m.header.destination_prefix_length = net.prefix();
    m.header.protocol = RouteProtocol::from(proto);
    m.header.table = 254;
    if let IpAddr::V4(ip) = net.ip() {
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(ip)));
    }
    if let Some(t) = table {
        m.header.table = 252;
        m.attributes.push(RouteAttribute::Table(t));
    }
    m
}

#[test]
fn trellis_routes_are_protocol_116_in_the_main_table() {
    assert!(is_trellis_route(&route("10.244.2.0/24", 116, None)));
    assert!(is_trellis_route(&route("10.244.2.0/24", 116, Some(254))));
    assert!(!is_trellis_route(&route("10.244.2.0/24", 116, Some(1000))));
    assert!(!is_trellis_route(&route("10.244.2.0/24", 4, None)));
}

#[test]
fn route_info_reads_gateway_device_and_onlink() {
    let mut m = route("10.244.2.0/24", 116, None);
    m.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
            10, 244, 2, 0,
        ))));
    m.attributes.push(RouteAttribute::Oif(9));
    m.header.flags = RouteFlags::Onlink;
    assert_eq!(
        route_info(&m),
        Some(RouteInfo {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: "10.244.2.0".parse().unwrap(),
            oif: Some(9),
            onlink: true,
        })
    );
    // The default route has no RTA_DST.
    let mut default = RouteMessage::default();
    default.header.address_family = AddressFamily::Inet;
    assert_eq!(
        route_info(&default).map(|r| r.dst),
        Some("0.0.0.0/0".parse().unwrap())
    );
}
