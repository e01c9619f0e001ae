//! `uninstall-cni --kernel-state` against the real kernel, in a throwaway network namespace:
//! a dual-stack VXLAN node programmed by the agent's own executors (devices, proto-116 routes,
//! neighbour and FDB entries, iptables and nftables rules, subnet.env) is emptied of exactly
//! what trellis owns, and a second run finds nothing. Root needed (hack/test.sh runs it so).

mod dataplane_support;
mod firewall_common;

use dataplane_support::{dual_vxlan_config, trellis_routes, trellis_routes6, Node, PeerNode};
use firewall_common::{add_foreign_rules, full_rules, full_snapshot, Kind};
use trellis_agent::dataplane::diff::Op;
use trellis_agent::dataplane::netlink::Dataplane;
use trellis_agent::firewall::tool::Exec;
use trellis_agent::firewall::Firewall;
use trellis_agent::net::Mac;
use trellis_agent::uninstall_cni::{remove_node_state, NodeStateReport, Removal};

const LOCAL_MAC: Mac = Mac([0x02, 0xaa, 0, 0, 0, 0x01]);

fn dual_node() -> Node {
    Node::standalone("uninst", "192.168.1.1", "10.244.1.0/24", LOCAL_MAC)
        .with_v6("fd00:192::1", "fd00:10:244:1::/64")
}

fn dual_peers() -> Vec<PeerNode> {
    [(2, "192.168.1.2"), (3, "192.168.1.3")]
        .into_iter()
        .map(|(i, ip)| {
            PeerNode::new(i, ip)
                .with_v6(&format!("fd00:192::{i}"), &format!("fd00:10:244:{i}::/64"))
        })
        .collect()
}

/// The firewall helpers' view of the node's namespace (adopted: the node owns it).
fn fw_ns(node: &Node) -> firewall_common::Netns {
    firewall_common::Netns::adopt(&node.ns.name).expect("the node's namespace")
}

/// Programs the node as a running agent would: the planned kernel state and the firewall
/// rules, through both back ends (as after a switch whose cleanup was interrupted).
fn program_like_the_agent(node: &Node) {
    let want = dataplane_support::desired(node.lease(), &dual_vxlan_config(), &dual_peers());
    let name = node.ns.name.clone();
    node.ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        let report = dp.reconcile(&want).await.expect("reconcile");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        for backend in [
            trellis_agent::firewall::Driver::Iptables,
            trellis_agent::firewall::Driver::Nftables,
        ] {
            let fw = Firewall::detect(backend, Exec::in_netns(&name))
                .await
                .expect("detect firewall");
            fw.apply(&full_rules()).await.expect("apply rules");
        }
    });
}

fn uninstall(node: &Node, subnet_file: &std::path::Path) -> NodeStateReport {
    let name = node.ns.name.clone();
    let path = subnet_file.to_owned();
    node.ns.run(move || async move {
        remove_node_state(Exec::in_netns(&name), &path)
            .await
            .expect("remove node state")
    })
}

fn links(node: &Node) -> String {
    node.ns.ip("-o link show")
}

#[test]
fn kernel_state_removes_exactly_what_trellis_owns_and_is_idempotent() {
    firewall_common::require_root();
    let node = dual_node();
    let fw = fw_ns(&node);
    // What is not trellis's, in every place trellis writes to.
    node.ns
        .ip("route add 10.99.0.0/16 via 192.168.1.254 dev eth0 proto static");
    node.ns.ip("link add flannel-test type bridge");
    node.ns.ip("link add cni0 type bridge");
    node.ns
        .ip("neigh add 192.168.1.77 lladdr 02:00:00:00:00:77 dev eth0 nud permanent");
    add_foreign_rules(&fw, Kind::Iptables);
    let tmp = tempfile::tempdir().expect("temp dir");
    let subnet_env = tmp.path().join("subnet.env");
    std::fs::write(&subnet_env, "FLANNEL_NETWORK=10.244.0.0/16\n").expect("write");
    let foreign_before = full_snapshot(&fw);

    program_like_the_agent(&node);
    assert!(links(&node).contains("flannel.1:"), "{}", links(&node));
    assert!(links(&node).contains("flannel-v6.1:"), "{}", links(&node));
    assert!(!trellis_routes(&node.ns).is_empty());
    assert!(full_snapshot(&fw).contains("FLANNEL-POSTRTG"));
    assert!(full_snapshot(&fw).contains("table inet trellis"));

    let report = uninstall(&node, &subnet_env);

    assert!(report.succeeded(), "{report}");
    assert!(
        report.removed.contains(&Op::DeleteLink("flannel.1".into())),
        "{report}"
    );
    assert!(
        report
            .removed
            .contains(&Op::DeleteLink("flannel-v6.1".into())),
        "{report}"
    );
    for (name, result) in &report.firewall {
        assert!(matches!(result, Ok(true)), "{name}: {result:?}");
    }
    assert_eq!(report.subnet_file, (subnet_env.clone(), Removal::Removed));
    // Gone: the devices, every proto-116 route, both firewalls' rules, subnet.env.
    let after = links(&node);
    assert!(
        !after.contains("flannel.1:") && !after.contains("flannel-v6.1:"),
        "{after}"
    );
    assert!(trellis_routes(&node.ns).is_empty());
    assert!(trellis_routes6(&node.ns).is_empty());
    assert!(!subnet_env.exists());
    // Kept, byte for byte: everything of others' (rules, the look-alike link, the bridge pods
    // still use, a static route, a permanent neighbour).
    assert_eq!(full_snapshot(&fw), foreign_before);
    assert!(
        after.contains("flannel-test:") && after.contains("cni0:"),
        "{after}"
    );
    assert!(node
        .ns
        .ip("route show proto static")
        .contains("10.99.0.0/16"));
    assert!(node.ns.ip("neigh show dev eth0").contains("192.168.1.77"));

    let again = uninstall(&node, &subnet_env);

    assert!(again.succeeded(), "{again}");
    assert!(again.removed.is_empty(), "{again}");
    assert_eq!(again.subnet_file.1, Removal::Absent);
    assert!(again.to_string().contains("no trellis devices"), "{again}");
    assert_eq!(full_snapshot(&fw), foreign_before);
}

#[test]
fn kernel_state_on_a_node_trellis_never_ran_on_changes_nothing() {
    firewall_common::require_root();
    let node = dual_node();
    let fw = fw_ns(&node);
    add_foreign_rules(&fw, Kind::Iptables);
    let links_before = links(&node);
    let fw_before = full_snapshot(&fw);
    let tmp = tempfile::tempdir().expect("temp dir");

    let report = uninstall(&node, &tmp.path().join("subnet.env"));

    assert!(report.succeeded(), "{report}");
    assert!(report.removed.is_empty(), "{report}");
    assert_eq!(links(&node), links_before);
    assert_eq!(full_snapshot(&fw), fw_before);
}
