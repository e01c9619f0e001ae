//! Real packets through what the executor programs: two "nodes" (namespaces) joined by a veth
//! underlay, each with `flannel.1` programmed for the other by its own `Dataplane`, and a pod
//! subnet address on a bridge in each. Pings cross the VXLAN tunnel, IPv4 and IPv6, at the
//! full pod MTU; removing the peer from desired state cuts the path.

mod dataplane_support;

use dataplane_support::{backend_config, desired, dual_vxlan_config, v6_mac, Node, PeerNode};
use trellis_agent::dataplane::desired::KernelState;
use trellis_agent::dataplane::netlink::Dataplane;
use trellis_agent::net::Mac;

fn program(node: &Node, want: KernelState) {
    let r = node.ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        dp.reconcile(&want).await.expect("reconcile")
    });
    assert!(r.errors.is_empty(), "{:?}", r.errors);
}

/// A bridge standing in for `cni0`, carrying the first address of the node's pod subnets.
fn pod_gateway(node: &Node, v4: &str, v6: &str) {
    node.ns.ip("link add cni0 type bridge");
    node.ns.ip(&format!("addr add {v4} dev cni0"));
    node.ns.ip(&format!("addr add {v6} dev cni0 nodad"));
    node.ns.ip("link set cni0 up");
}

fn ping(node: &Node, args: &str) -> Result<String, String> {
    node.ns.exec("ping", &format!("-n -q -W 1 {args}"))
}

/// A ping that must fail: fails fast instead of waiting out a reply.
fn ping_fails(node: &Node, args: &str) -> bool {
    node.ns
        .exec("ping", &format!("-n -q -c 1 -W 0.2 {args}"))
        .is_err()
}

#[test]
fn pods_on_two_nodes_reach_each_other_through_vxlan() {
    let (a, b) = Node::pair_on("192.168.77");
    let a = a.with_v6("fd00:77::1", "fd00:10:244:1::/64");
    let b = b.with_v6("fd00:77::2", "fd00:10:244:2::/64");
    pod_gateway(&a, "10.244.1.1/24", "fd00:10:244:1::1/64");
    pod_gateway(&b, "10.244.2.1/24", "fd00:10:244:2::1/64");
    assert_eq!(v6_mac(a.mac), Mac([0x02, 0x66, 0, 0, 0, 1]));

    let config = dual_vxlan_config();
    let want_a = desired(a.lease(), &config, &[PeerNode::of(&b)]);
    let want_b = desired(b.lease(), &config, &[PeerNode::of(&a)]);
    program(&a, want_a);
    program(&b, want_b);

    let before = dataplane_support::tx_packets(&a, "flannel.1");
    ping(&a, "-c 3 -i 0.2 -I 10.244.1.1 10.244.2.1").expect("pod to pod, IPv4");
    // Host to remote pod: source is flannel.1's own address (the subnet's .0).
    ping(&a, "-c 1 10.244.2.1").expect("node to remote pod, IPv4");
    ping(&b, "-c 1 -I 10.244.2.1 10.244.1.1").expect("the other way, IPv4");
    assert!(
        dataplane_support::tx_packets(&a, "flannel.1") >= before + 4,
        "the pings did not go through flannel.1"
    );
    // Full pod MTU (1450 - 20 - 8) passes unfragmented; one byte more cannot leave.
    ping(&a, "-c 1 -M do -s 1422 -I 10.244.1.1 10.244.2.1").expect("MTU-sized ping");
    assert!(ping_fails(&a, "-M do -s 1423 -I 10.244.1.1 10.244.2.1"));

    ping(&a, "-6 -c 2 -i 0.2 -I fd00:10:244:1::1 fd00:10:244:2::1").expect("pod to pod, IPv6");
    assert!(dataplane_support::tx_packets(&a, "flannel-v6.1") >= 2);

    // B departs from A's view: A's entries for it go, and so does the path.
    let alone = desired(a.lease(), &config, &[]);
    program(&a, alone);
    assert!(a.ns.ip("route show proto 116").trim().is_empty());
    assert!(ping_fails(&a, "-I 10.244.1.1 10.244.2.1"));
}

/// `count` pings 10 ms apart from A's pod address to B's, running once this returns.
fn pinging(a: &Node, count: u32) -> std::process::Child {
    let count = count.to_string();
    let pinger = std::process::Command::new("ip")
        .args([
            "netns", "exec", &a.ns.name, "ping", "-n", "-q", "-c", &count, "-i", "0.01",
        ])
        .args(["-W", "1", "-I", "10.244.1.1", "10.244.2.1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start ping");
    std::thread::sleep(std::time::Duration::from_millis(100));
    pinger
}

/// Every one of the `count` pings was answered across `what`.
fn all_answered(pinger: std::process::Child, count: u32, what: &str) {
    let out = pinger.wait_with_output().expect("ping output");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.contains(&format!("{count} packets transmitted, {count} received")),
        "packets lost during {what}: {summary}"
    );
}

fn desired_for(node: &Node, own: &str, peer: &Node, peer_backend: &'static str) -> KernelState {
    desired(
        node.lease(),
        &backend_config(own),
        &[PeerNode::of(peer).with_backend(peer_backend)],
    )
}

/// Each node advertises its backend and is programmed for the other's.
fn advertise((a, a_backend): (&Node, &'static str), (b, b_backend): (&Node, &'static str)) {
    program(a, desired_for(a, a_backend, b, b_backend));
    program(b, desired_for(b, b_backend, a, a_backend));
}

fn assert_route(node: &Node, route: &str) {
    let routes = node.ns.ip("route show proto 116");
    assert!(routes.contains(route), "want {route:?} in:\n{routes}");
}

/// The live backend switch of issue 4, node by node, under a 10 ms ping: VXLAN on both, then
/// node A on host-gw (A keeps reaching B through VXLAN, B reaches A by host-gw, as each
/// advertises), then both on host-gw. No packet may be lost; `flannel.1` goes once no peer
/// needs it.
#[test]
fn vxlan_to_host_gw_switch_loses_no_packet() {
    let (a, b) = Node::pair_on("192.168.78");
    pod_gateway(&a, "10.244.1.1/24", "fd00:10:244:1::1/64");
    pod_gateway(&b, "10.244.2.1/24", "fd00:10:244:2::1/64");
    advertise((&a, "vxlan"), (&b, "vxlan"));
    ping(&a, "-c 1 -I 10.244.1.1 10.244.2.1").expect("vxlan path");

    // 150 pings 10 ms apart cover the switch below (checked: ping still running after it).
    let mut pinger = pinging(&a, 150);

    // A switches: it advertises host-gw; B still advertises VXLAN.
    advertise((&a, "host-gw"), (&b, "vxlan"));
    assert!(
        a.ns.try_ip("link show flannel.1").is_ok(),
        "A still needs flannel.1 for B"
    );
    assert_route(&b, "10.244.1.0/24 via 192.168.78.1 dev eth0");
    // B switches too.
    advertise((&a, "host-gw"), (&b, "host-gw"));
    assert!(
        matches!(pinger.try_wait(), Ok(None)),
        "the switch outlasted the ping: it was not all under traffic"
    );

    all_answered(pinger, 150, "the switch");
    for n in [&a, &b] {
        assert!(
            n.ns.try_ip("link show flannel.1").is_err(),
            "flannel.1 left behind"
        );
    }
    assert_route(&a, "10.244.2.0/24 via 192.168.78.2 dev eth0");
    ping(&a, "-c 1 -I 10.244.1.1 10.244.2.1").expect("host-gw path");
}

/// What flannel's vxlan backend leaves on a node, written with `ip`/`bridge` the way flannel
/// makes it (pkg/backend/vxlan): `flannel.1` (nolearning, dstport 8472, MTU underlay - 50,
/// the MAC its Node annotation advertises, the subnet's .0/32), and per peer a permanent
/// neighbour, a permanent FDB entry and an onlink route, which flannel adds with netlink's
/// default protocol (boot).
fn flannel_state(node: &Node, peer: &Node) {
    let ns = &node.ns;
    ns.ip(&format!(
        "link add flannel.1 type vxlan id 1 local {} dev eth0 nolearning dstport 8472",
        node.addr
    ));
    ns.ip(&format!(
        "link set flannel.1 address {} mtu 1450 up",
        node.mac
    ));
    let subnet: ipnetwork::Ipv4Network = node.subnet.parse().expect("subnet");
    ns.ip(&format!("addr add {}/32 dev flannel.1", subnet.network()));
    let peer_net: ipnetwork::Ipv4Network = peer.subnet.parse().expect("subnet");
    let gw = peer_net.network();
    ns.ip(&format!(
        "neigh replace {gw} lladdr {} dev flannel.1 nud permanent",
        peer.mac
    ));
    ns.exec(
        "bridge",
        &format!(
            "fdb replace {} dev flannel.1 dst {} self permanent",
            peer.mac, peer.addr
        ),
    )
    .expect("fdb");
    ns.ip(&format!(
        "route replace {peer_net} via {gw} dev flannel.1 onlink"
    ));
}

/// Issue 13, the kernel side of taking over a node flannel ran: trellis programs the state it
/// wants over flannel's under a 10 ms ping between pods. No packet is lost; `flannel.1` is
/// kept (same device, same MAC the peers know); flannel's routes change owner in place
/// (replaced, not doubled: one route per peer subnet, protocol 116, none of flannel's left);
/// the neighbour and FDB entries stay single.
#[test]
fn a_node_flannel_ran_is_taken_over_without_a_lost_packet() {
    let (a, b) = Node::pair_on("192.168.79");
    pod_gateway(&a, "10.244.1.1/24", "fd00:10:244:1::1/64");
    pod_gateway(&b, "10.244.2.1/24", "fd00:10:244:2::1/64");
    flannel_state(&a, &b);
    flannel_state(&b, &a);
    ping(&a, "-c 1 -I 10.244.1.1 10.244.2.1").expect("flannel's path");
    let index = |n: &Node| n.ns.ip("-o link show flannel.1");
    let before = [index(&a), index(&b)];

    let mut pinger = pinging(&a, 100);
    advertise((&a, "vxlan"), (&b, "vxlan"));
    assert!(
        matches!(pinger.try_wait(), Ok(None)),
        "the takeover outlasted the ping: it was not all under traffic"
    );
    all_answered(pinger, 100, "the takeover");

    assert_eq!([index(&a), index(&b)], before, "flannel.1 was recreated");
    for (n, peer_net, peer) in [(&a, "10.244.2.0/24", &b), (&b, "10.244.1.0/24", &a)] {
        let routes = n.ns.ip(&format!("route show {peer_net}"));
        assert_eq!(routes.lines().count(), 1, "{routes}");
        assert!(routes.contains("proto 116"), "still flannel's: {routes}");
        assert!(
            n.ns.ip("route show proto boot").trim().is_empty(),
            "flannel's routes left behind"
        );
        let neigh = n.ns.ip("neigh show dev flannel.1 nud permanent");
        assert_eq!(neigh.lines().count(), 1, "{neigh}");
        let fdb =
            n.ns.exec("bridge", "fdb show dev flannel.1")
                .expect("fdb")
                .lines()
                .filter(|l| l.contains(&peer.mac.to_string()))
                .count();
        assert_eq!(fdb, 1, "one FDB entry for the peer's VTEP");
    }
    ping(&a, "-c 1 -I 10.244.1.1 10.244.2.1").expect("trellis's path");
}
