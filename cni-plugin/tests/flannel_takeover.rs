//! Privileged, issue 13: pods that flannel's CNI plugin made stay whole when trellis takes
//! the node over. flannel's plugin delegates to the reference `bridge` with `host-local`
//! (Debian's containernetworking-plugins), rendered from subnet.env the way flannel renders
//! it: name `cbr0`, bridge `cni0`, `isGateway`, `ipMasq` off while flanneld masquerades,
//! `mtu` = FLANNEL_MTU, one host-local range from FLANNEL_SUBNET, a route to FLANNEL_NETWORK,
//! records under `<dataDir>/cbr0`. Here that delegate makes two pods; then trellis, with the
//! same network name and store, deletes one (its address released, its veth gone), adds a pod
//! that never gets the address the other still holds, reaches it over the shared bridge, and
//! deletes it too.

mod common;

use common::*;
use serde_json::json;

const BRIDGE: &str = "/usr/lib/cni/bridge";

/// The delegate flannel's plugin renders for [`SUBNET_ENV`] (FLANNEL_IPMASQ=true).
fn flannel_delegate(node: &Node) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "mtu": 1450,
        "ipam": {
            "type": "host-local",
            "dataDir": node.ipam_dir(),
            "ranges": [[{"subnet": "10.244.1.0/24"}]],
            "routes": [{"dst": "10.244.0.0/16"}],
        },
    })
    .to_string()
}

fn flannel_cni(node: &Node, cmd: &str, container: &str, pod: &Netns) -> Outcome {
    node.run_plugin(BRIDGE, cmd, container, pod, &flannel_delegate(node))
}

/// Makes `held` the address host-local's round robin (and trellis's, which reads the same
/// `last_reserved_ip.0`) tries next.
fn point_round_robin_at(store: &std::path::Path, held: &str) {
    let held: std::net::Ipv4Addr = held.parse().expect("IPv4");
    let before = std::net::Ipv4Addr::from(u32::from(held) - 1);
    std::fs::write(store.join("last_reserved_ip.0"), before.to_string()).expect("last reserved");
}

#[test]
fn pods_flannels_plugin_made_are_deleted_and_respected_by_trellis() {
    let node = Node::new("fltk", SUBNET_ENV);
    let conf = node.conf("1.0.0", "");
    let pods = [netns("fla"), netns("flb")];
    let ips: Vec<String> = ["fa", "fb"]
        .iter()
        .zip(&pods)
        .map(|(id, pod)| {
            let r = flannel_cni(&node, "ADD", id, pod);
            assert!(r.ok, "flannel's ADD {id}: {}", r.stdout);
            pod_ip(&r.json())
        })
        .collect();
    let mut records = node.ipam_records();
    records.sort();
    let mut want = ips.clone();
    want.sort();
    assert_eq!(records, want, "host-local's records");
    let veths = |n: &Node| n.ns.sh(&["ip", "-o", "link", "show", "master", "cni0"]);
    assert_eq!(veths(&node).lines().count(), 2, "{}", veths(&node));

    // DEL through trellis of a pod flannel's plugin made.
    let del = node.cni("DEL", "fa", Some(&pods[0].path()), "eth0", &conf);
    assert!(del.ok, "trellis DEL of flannel's pod: {}", del.stdout);
    assert_eq!(
        node.ipam_records(),
        [ips[1].clone()],
        "fa's address released"
    );
    assert!(
        pods[0]
            .sh(&["ip", "-o", "link", "show"])
            .lines()
            .all(|l| !l.contains("eth0")),
        "the pod's end of the veth is gone"
    );
    assert_eq!(veths(&node).lines().count(), 1, "{}", veths(&node));

    // A trellis ADD on the bridge flannel's delegate made: never fb's address (made the next
    // candidate of the round robin, so only the records can keep it from being handed out),
    // and fb is reachable from it.
    point_round_robin_at(&node.ipam_dir().join("cbr0"), &ips[1]);
    let pod_c = netns("flc");
    let added = node.add("tc", &pod_c, &conf);
    let ip_c = pod_ip(&added.json());
    assert_ne!(ip_c, ips[1], "handed out an address flannel's pod holds");
    assert!(
        pod_c.exec_ok(&["ping", "-c", "1", "-W", "2", &ips[1]]),
        "trellis's pod cannot reach flannel's over cni0"
    );

    for (id, pod) in [("fb", &pods[1]), ("tc", &pod_c)] {
        let r = node.cni("DEL", id, Some(&pod.path()), "eth0", &conf);
        assert!(r.ok, "DEL {id}: {}", r.stdout);
    }
    assert!(node.ipam_records().is_empty(), "{:?}", node.ipam_records());
}
