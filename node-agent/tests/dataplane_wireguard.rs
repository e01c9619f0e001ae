//! WireGuard through the netlink executor and the drift monitor. This host's kernel has no
//! WireGuard, so these tests are ignored here and run in the test VM (hack/vm), whose kernel
//! has it (`hack/test-vm.sh` runs them):
//!
//! ```sh
//! cargo test -p trellis-agent --test dataplane_wireguard --no-run   # prints the binary's path
//! hack/vm/run.sh "$CARGO_TARGET_DIR"/debug/deps/dataplane_wireguard-HASH --ignored --test-threads 1
//! ```

mod dataplane_support;

use std::time::{Duration, Instant};

use dataplane_support::{backend_config, desired, Node, PeerNode};
use tokio::time::timeout;
use trellis_agent::dataplane::desired::KernelState;
use trellis_agent::dataplane::netlink::wireguard::{WgPeerConfig, WgPeerState, WgSocket};
use trellis_agent::dataplane::netlink::{Dataplane, DriftMonitor};

fn wireguard_state(node: &Node, peer: &Node) -> KernelState {
    desired(
        node.lease(),
        &backend_config("wireguard"),
        &[PeerNode::of(peer).with_backend("wireguard")],
    )
}

/// Change node `a`'s WireGuard device behind the agent's back with `change`, and return how
/// long the drift monitor took to signal it; the reconcile after it must repair it.
fn drift_is_repaired(a: &Node, want: &KernelState, change: fn(&mut WgSocket)) -> Duration {
    let want = want.clone();
    a.ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        dp.reconcile(&want).await.expect("reconcile");
        let (_monitor, mut rx) = DriftMonitor::start_expecting(dp.expected(), None)
            .await
            .expect("monitor");
        let t0 = Instant::now();
        change(&mut WgSocket::open().expect("wireguard"));
        let got = timeout(Duration::from_secs(5), rx.recv()).await;
        let took = t0.elapsed();
        assert!(matches!(got, Ok(Some(()))), "not signalled in 5 s");
        let r = dp.reconcile(&want).await.expect("repair");
        assert!(r.errors.is_empty() && r.ops_applied >= 1, "{r:?}");
        let again = dp.reconcile(&want).await.expect("reconcile again");
        assert_eq!(again.ops_planned, 0, "not repaired: {again:?}");
        took
    })
}

/// `p` as a peer config at another endpoint.
fn moved_to(p: &WgPeerState, endpoint: &str) -> WgPeerConfig {
    WgPeerConfig {
        public_key: p.public_key,
        preshared_key: None,
        endpoint: endpoint.parse().expect("endpoint"),
        persistent_keepalive: 0,
        allowed_ips: p.allowed_ips.clone(),
    }
}

#[test]
#[ignore = "needs the wireguard kernel module: run in hack/vm (see module docs)"]
fn wireguard_carries_pods_and_drift_is_repaired() {
    let (a, b) = Node::pair_on("192.168.78");
    let (a, b) = (a.with_wg_key(), b.with_wg_key());
    a.pod_gateway("10.244.1.1/24");
    b.pod_gateway("10.244.2.1/24");
    let want_a = wireguard_state(&a, &b);
    a.program(want_a.clone());
    b.program(wireguard_state(&b, &a));
    for n in [&a, &b] {
        let link = &n.ns.ip_json("-d link show dev flannel-wg")[0];
        assert_eq!(link["linkinfo"]["info_kind"], "wireguard");
        assert_eq!(link["mtu"], 1420);
        assert!(n
            .ns
            .ip("route show proto 116")
            .contains("10.244.0.0/16 dev flannel-wg scope link"));
    }
    let before = dataplane_support::tx_packets(&a, "flannel-wg");
    a.ping_from("10.244.1.1", "10.244.2.1");
    b.ping_from("10.244.2.1", "10.244.1.1");
    assert!(dataplane_support::tx_packets(&a, "flannel-wg") >= before + 2);

    // A peer removed by hand (`wg set flannel-wg peer K remove`): no netlink notification
    // exists for it, the monitor's poll finds it.
    let removed = drift_is_repaired(&a, &want_a, |s| {
        let dev = s.device("flannel-wg").expect("read").expect("device");
        let keys: Vec<[u8; 32]> = dev.peers.iter().map(|p| p.public_key).collect();
        s.remove_peers("flannel-wg", &keys).expect("remove");
    });
    // A peer with a live session whose endpoint moved (WireGuard roams to where the peer's
    // packets come from: NAT, a second address) is left alone, as flannel leaves it.
    let want = want_a.clone();
    let kept = a.ns.run(move || async move {
        let mut s = WgSocket::open().expect("wireguard");
        let dev = s.device("flannel-wg").expect("read").expect("device");
        let p = &dev.peers[0];
        assert!(p.last_handshake.is_some(), "no session to roam: {p:?}");
        s.set_peers("flannel-wg", &[moved_to(p, "192.168.78.99:51820")])
            .expect("set");
        let mut dp = Dataplane::new().expect("dataplane");
        let r = dp.reconcile(&want).await.expect("reconcile");
        let dev = s.device("flannel-wg").expect("read").expect("device");
        (r.ops_planned, dev.peers[0].endpoint)
    });
    assert_eq!(kept.0, 0, "a roamed endpoint was reverted");
    assert_eq!(
        kept.1,
        Some("192.168.78.99:51820".parse().expect("endpoint"))
    );
    // A peer put back by hand without a session and at a wrong endpoint is repaired.
    let moved = drift_is_repaired(&a, &want_a, |s| {
        let dev = s.device("flannel-wg").expect("read").expect("device");
        let p = dev.peers[0].clone();
        s.remove_peers("flannel-wg", &[p.public_key])
            .expect("remove");
        s.set_peers("flannel-wg", &[moved_to(&p, "192.168.78.98:51820")])
            .expect("set");
    });
    println!(
        "FIGURE wireguard drift signalled after {} ms (peer removed), {} ms (put back at a wrong endpoint, no session); poll every 500 ms",
        removed.as_millis(),
        moved.as_millis()
    );
    assert!(removed < Duration::from_secs(2) && moved < Duration::from_secs(2));
    a.ping_from("10.244.1.1", "10.244.2.1");
}
