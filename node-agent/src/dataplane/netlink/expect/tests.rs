use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags};
use netlink_packet_route::RouteNetlinkMessage as M;

use super::*;
use crate::dataplane::desired::{Fdb, Neighbour, Route};
use crate::dataplane::fixtures::vxlan_kind;
use crate::dataplane::netlink::monitor::concerns_owned;
use crate::dataplane::netlink::parse::tests::{link, lladdr, neigh, route};
use crate::net::Mac;

const PEER_MAC: Mac = Mac([0x0a, 0x58, 0, 0, 0, 2]);

fn vxlan_msg(up: bool) -> netlink_packet_route::link::LinkMessage {
    let mut m = link(
        "flannel.1",
        7,
        Some((
            InfoKind::Vxlan,
            InfoData::Vxlan(vec![
                InfoVxlan::Id(1),
                InfoVxlan::Local("192.168.1.1".parse().unwrap()),
                InfoVxlan::Link(2),
                InfoVxlan::Learning(false),
                InfoVxlan::Port(8472),
            ]),
        )),
    );
    if up {
        m.header.flags = LinkFlags::Up;
    }
    m
}

/// A node with one VXLAN peer, as the planner would want it.
fn expected() -> KernelState {
    let mut k = KernelState::default();
    k.add_link(Link {
        name: "flannel.1".into(),
        kind: vxlan_kind(1, 8472),
        mtu: 1450,
        mac: None,
        up: true,
    });
    k.add_address("flannel.1", "10.244.1.0/32".parse().unwrap());
    k.add_route(Route {
        dst: "10.244.2.0/24".parse().unwrap(),
        gateway: Some("10.244.2.0".parse().unwrap()),
        dev: "flannel.1".into(),
        onlink: true,
    });
    k.add_neighbour(Neighbour {
        link: "flannel.1".into(),
        ip: "10.244.2.0".parse().unwrap(),
        mac: PEER_MAC,
    });
    k.add_fdb(Fdb {
        link: "flannel.1".into(),
        mac: PEER_MAC,
        dst: "192.168.1.2".parse().unwrap(),
    });
    k
}

/// The monitor's view after seeing the underlay and the VXLAN device.
fn owned() -> Owned {
    let mut o = Owned::default();
    concerns_owned(&M::NewLink(link("eth0", 2, None)), &mut o);
    concerns_owned(&M::NewLink(vxlan_msg(true)), &mut o);
    o
}

fn our_route(gw: &str, oif: u32) -> netlink_packet_route::route::RouteMessage {
    let mut r = route("10.244.2.0/24", 116, None);
    r.attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(
            gw.parse().unwrap(),
        )));
    r.attributes.push(RouteAttribute::Oif(oif));
    r.header.flags = RouteFlags::Onlink;
    r
}

fn arp(state: NeighbourState, mac: [u8; 6]) -> netlink_packet_route::neighbour::NeighbourMessage {
    neigh(
        AddressFamily::Inet,
        state,
        vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet("10.244.2.0".parse().unwrap())),
            lladdr(mac),
        ],
    )
}

fn fdb(dst: [u8; 4]) -> netlink_packet_route::neighbour::NeighbourMessage {
    let mut m = neigh(
        AddressFamily::Bridge,
        NeighbourState::Other(0xc0),
        vec![
            lladdr(PEER_MAC.0),
            NeighbourAttribute::Destination(NeighbourAddress::Other(dst.to_vec())),
        ],
    );
    m.header.flags = NeighbourFlags::Own;
    m
}

#[test]
fn the_executors_own_changes_agree() {
    let (o, e) = (owned(), expected());
    assert!(agrees(&M::NewLink(vxlan_msg(true)), &o, &e));
    // Registered, not up yet: announced with every flag changed.
    let mut registered = vxlan_msg(false);
    registered.header.change_mask = LinkFlags::from_bits_retain(u32::MAX);
    assert!(agrees(&M::NewLink(registered), &o, &e));
    assert!(agrees(&M::NewRoute(our_route("10.244.2.0", 7)), &o, &e));
    assert!(agrees(
        &M::NewNeighbour(arp(NeighbourState::Permanent, PEER_MAC.0)),
        &o,
        &e
    ));
    assert!(agrees(&M::NewNeighbour(fdb([192, 168, 1, 2])), &o, &e));
    // Deleting what is no longer wanted: a departed peer's entries.
    let mut gone = route("10.244.3.0/24", 116, None);
    gone.attributes.push(RouteAttribute::Oif(7));
    assert!(agrees(&M::DelRoute(gone), &o, &e));
    let mut other_fdb = fdb([192, 168, 1, 3]);
    other_fdb.attributes[0] = lladdr([0x0a, 0x58, 0, 0, 0, 3]);
    assert!(agrees(&M::DelNeighbour(other_fdb), &o, &e));
}

#[test]
fn changes_that_leave_an_object_unlike_the_expectation_are_drift() {
    let (o, e) = (owned(), expected());
    // Taken down, deleted, or an entry removed by hand.
    let mut down = vxlan_msg(false);
    down.header.change_mask = LinkFlags::Up;
    assert!(!agrees(&M::NewLink(down), &o, &e));
    assert!(!agrees(&M::DelLink(vxlan_msg(true)), &o, &e));
    assert!(!agrees(&M::DelRoute(our_route("10.244.2.0", 7)), &o, &e));
    assert!(!agrees(
        &M::DelNeighbour(arp(NeighbourState::Failed, PEER_MAC.0)),
        &o,
        &e
    ));
    assert!(!agrees(&M::DelNeighbour(fdb([192, 168, 1, 2])), &o, &e));
    // Changed in place: another gateway or device, another MAC, another VTEP.
    assert!(!agrees(&M::NewRoute(our_route("10.244.9.0", 7)), &o, &e));
    assert!(!agrees(&M::NewRoute(our_route("10.244.2.0", 2)), &o, &e));
    assert!(!agrees(
        &M::NewNeighbour(arp(NeighbourState::Permanent, [2; 6])),
        &o,
        &e
    ));
    assert!(!agrees(&M::NewNeighbour(fdb([192, 168, 1, 9])), &o, &e));
    // Our permanent entry displaced by a dynamic one; our route by another protocol's.
    assert!(!agrees(
        &M::NewNeighbour(arp(NeighbourState::Reachable, PEER_MAC.0)),
        &o,
        &e
    ));
    let mut replaced = route("10.244.2.0/24", 4, None);
    replaced.attributes.push(RouteAttribute::Oif(2));
    assert!(!agrees(&M::NewRoute(replaced), &o, &e));
    // A device of ours that should not exist at all, and a renamed one.
    let mut extra = vxlan_msg(true);
    extra.attributes[0] = LinkAttribute::IfName("flannel.2".into());
    assert!(!agrees(&M::NewLink(extra), &o, &e));
}

#[test]
fn objects_the_monitor_cannot_name_are_drift() {
    let e = expected();
    let empty = Owned::default();
    assert!(!agrees(
        &M::NewNeighbour(arp(NeighbourState::Permanent, PEER_MAC.0)),
        &empty,
        &e
    ));
    assert!(!agrees(
        &M::NewRoute(our_route("10.244.2.0", 7)),
        &empty,
        &e
    ));
}

#[test]
fn the_expectation_is_shared_and_can_be_withdrawn() {
    let a = Expected::default();
    let b = a.clone();
    assert!(b.get().is_none());
    a.set(Some(std::sync::Arc::new(expected())));
    assert_eq!(b.get().as_deref(), Some(&expected()));
    a.set(None);
    assert!(b.get().is_none());
}
