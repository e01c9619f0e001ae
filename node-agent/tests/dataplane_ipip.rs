//! IPIP through the netlink executor. This host's kernel has no `ipip` module, so these tests
//! are ignored here and run in the test VM (hack/vm), whose kernel has it:
//!
//! ```sh
//! cargo test -p trellis-agent --test dataplane_ipip --no-run   # prints the binary's path
//! hack/vm/run.sh "$CARGO_TARGET_DIR"/debug/deps/dataplane_ipip-HASH --ignored --test-threads 1
//! ```

mod dataplane_support;

use std::time::Duration;

use dataplane_support::{backend_config, desired, Node, PeerNode};
use tokio::time::timeout;
use trellis_agent::dataplane::desired::KernelState;
use trellis_agent::dataplane::netlink::{Dataplane, DriftMonitor};

fn desired_for(node: &Node, own: &str, peer: &Node, peer_backend: &'static str) -> KernelState {
    desired(
        node.lease(),
        &backend_config(own),
        &[PeerNode::of(peer).with_backend(peer_backend)],
    )
}

#[test]
#[ignore = "needs the ipip kernel module: run in hack/vm (see module docs)"]
fn ipip_device_routes_packets_switch_and_repair() {
    let (a, b) = Node::pair_on("192.168.79");
    a.pod_gateway("10.244.1.1/24");
    b.pod_gateway("10.244.2.1/24");

    // VXLAN first, then A switches to IPIP, then B.
    a.program(desired_for(&a, "vxlan", &b, "vxlan"));
    b.program(desired_for(&b, "vxlan", &a, "vxlan"));
    a.ping_from("10.244.1.1", "10.244.2.1");

    a.program(desired_for(&a, "ipip", &b, "vxlan"));
    b.program(desired_for(&b, "vxlan", &a, "ipip"));
    a.ping_from("10.244.1.1", "10.244.2.1");
    b.ping_from("10.244.2.1", "10.244.1.1");

    a.program(desired_for(&a, "ipip", &b, "ipip"));
    b.program(desired_for(&b, "ipip", &a, "ipip"));
    for (n, local) in [(&a, "192.168.79.1"), (&b, "192.168.79.2")] {
        assert!(
            n.ns.try_ip("link show flannel.1").is_err(),
            "flannel.1 left"
        );
        let link = &n.ns.ip_json("-d link show dev flannel.ipip")[0];
        assert_eq!(link["linkinfo"]["info_kind"], "ipip");
        assert_eq!(link["linkinfo"]["info_data"]["local"], local);
        assert_eq!(link["mtu"], 1480);
    }
    assert!(a
        .ns
        .ip("route show proto 116")
        .contains("10.244.2.0/24 via 192.168.79.2 dev flannel.ipip onlink"));
    let before = dataplane_support::tx_packets(&a, "flannel.ipip");
    a.ping_from("10.244.1.1", "10.244.2.1");
    assert!(dataplane_support::tx_packets(&a, "flannel.ipip") >= before + 2);

    // Drift: the device deleted by hand is signalled and rebuilt.
    let want = desired_for(&a, "ipip", &b, "ipip");
    let ns = a.ns.name.clone();
    let r = a.ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        let (_monitor, mut rx) = DriftMonitor::start().await.expect("monitor");
        dataplane_support::ip_n(&ns, "link del flannel.ipip");
        let got = timeout(Duration::from_secs(2), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "deletion not signalled");
        dp.reconcile(&want).await.expect("repair")
    });
    assert!(r.errors.is_empty() && r.ops_applied >= 3, "{r:?}");
    a.ping_from("10.244.1.1", "10.244.2.1");
}
