//! Underlay discovery against the real kernel, without `--iface` (what the shipped DaemonSet
//! does): the interface of the default route (an ECMP one's first next hop; the IPv6 one on
//! an IPv6-only node), or of the route to `--iface-can-reach`; a namespace without a default
//! route is refused with the error that says what to pass.

mod dataplane_support;

use dataplane_support::{Netns, Node};
use trellis_agent::net::Mac;
use trellis_agent::underlay::{discover, IfaceOptions, UnderlayError};
use trellis_agent::view::Underlay;

fn discover_in(ns: &Netns, opts: IfaceOptions) -> Result<Underlay, UnderlayError> {
    ns.run(move || async move {
        let (conn, handle, _) = rtnetlink::new_connection().expect("netlink socket");
        tokio::spawn(conn);
        discover(&handle, &opts).await
    })
}

fn node() -> Node {
    let node = Node::standalone(
        "udisc",
        "192.168.7.11",
        "10.244.1.0/24",
        Mac([2, 0, 0, 0, 0, 1]),
    );
    // A second interface, so "the first one up" would not pass by luck.
    node.ns.ip("link add aaa0 type veth peer name aaa0-stub");
    node.ns.ip("addr add 172.31.0.1/24 dev aaa0");
    node.ns.ip("link set aaa0 up");
    node.ns.ip("link set aaa0-stub up");
    node
}

#[test]
fn the_default_routes_interface_without_iface() {
    if !trellis_testkit::skip_unless_root("needs root") {
        return;
    }
    let node = node();
    assert!(matches!(
        discover_in(&node.ns, IfaceOptions::default()),
        Err(UnderlayError::NoDefaultRoute)
    ));
    node.ns.ip("route add default via 192.168.7.254 dev eth0");
    let u = discover_in(&node.ns, IfaceOptions::default()).expect("discovered");
    assert_eq!(u.name, "eth0");
    assert_eq!(
        u.addr_v4.map(|a| a.ip().to_string()).as_deref(),
        Some("192.168.7.11")
    );
    // On-link decisions look the routes up, as flannel's route lookup does: the connected
    // prefix is on the link, the rest of the world (the default route) and a host routed
    // through a gateway inside the prefix are not.
    node.ns
        .ip("route add 192.168.7.200/32 via 192.168.7.254 dev eth0");
    let u = discover_in(&node.ns, IfaceOptions::default()).expect("discovered");
    let on = |ip: &str| u.on_link(ip.parse().expect("ip"));
    assert!(on("192.168.7.12"), "{:?}", u.routes);
    assert!(!on("192.168.7.200"), "{:?}", u.routes);
    assert!(!on("8.8.8.8"), "{:?}", u.routes);
}

#[test]
fn the_interface_that_reaches_iface_can_reach() {
    if !trellis_testkit::skip_unless_root("needs root") {
        return;
    }
    let node = node();
    node.ns.ip("route add default via 192.168.7.254 dev eth0");
    let opts = IfaceOptions {
        iface_can_reach: Some("172.31.0.9".parse().expect("ip")),
        ..IfaceOptions::default()
    };
    let u = discover_in(&node.ns, opts).expect("discovered");
    assert_eq!(u.name, "aaa0");
}

#[test]
fn an_ecmp_default_route_and_an_ipv6_only_node() {
    if !trellis_testkit::skip_unless_root("needs root") {
        return;
    }
    let ecmp = node();
    ecmp.ns.ip(
        "route add default nexthop via 172.31.0.254 dev aaa0 nexthop via 192.168.7.254 dev eth0",
    );
    let u = discover_in(&ecmp.ns, IfaceOptions::default()).expect("ECMP discovered");
    assert_eq!(u.name, "aaa0", "the first next hop's interface");

    let v6 = node();
    v6.ns.ip("addr add fd00:7::11/64 dev eth0 nodad");
    v6.ns.ip("-6 route add default via fd00:7::1 dev eth0");
    let u = discover_in(&v6.ns, IfaceOptions::default()).expect("IPv6 default discovered");
    assert_eq!(u.name, "eth0");
}
