//! The drift monitor against the real kernel: every hand-made change to what trellis owns is
//! signalled within a second and the next reconcile undoes it; changes to what is not
//! trellis's are not signalled.

mod dataplane_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use dataplane_support::{bridge_n, desired, ip_n, vxlan_config, Node, PeerNode};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;
use trellis_agent::dataplane::diff::diff;
use trellis_agent::dataplane::netlink::{Dataplane, DriftMonitor};
use trellis_agent::net::Mac;

/// A hand-made change to what trellis owns.
type Drift<'a> = Box<dyn Fn() + 'a>;

/// Node 1 of 192.168.1.0/24 (podCIDR 10.244.1.0/24), alone.
fn node1(tag: &str) -> Node {
    Node::standalone(
        tag,
        "192.168.1.1",
        "10.244.1.0/24",
        Mac([0x02, 0xaa, 0, 0, 0, 0x01]),
    )
}

/// Its peers, nodes 2 and 3.
fn two_peers() -> Vec<PeerNode> {
    vec![
        PeerNode::new(2, "192.168.1.2"),
        PeerNode::new(3, "192.168.1.3"),
    ]
}

/// Wait until no signal has come for `quiet`; returns how many came meanwhile.
async fn drain(rx: &mut Receiver<()>, quiet: Duration) -> usize {
    let mut n = 0;
    while let Ok(Some(())) = timeout(quiet, rx.recv()).await {
        n += 1;
    }
    n
}

#[test]
fn drift_is_signalled_within_a_second_and_repaired() {
    let node = node1("drift");
    let peers = two_peers();
    let want = desired(node.lease(), &vxlan_config(1, 8472), &peers);
    let ns = node.ns.name.clone();
    let p = peers[0].clone();

    let latencies = node.ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        let (_monitor, mut rx) = DriftMonitor::start().await.expect("monitor");
        let first = dp.reconcile(&want).await.expect("reconcile");
        assert!(
            first.errors.is_empty() && first.ops_applied > 0,
            "{first:?}"
        );
        // Our own changes are notified too; then it goes quiet.
        assert!(drain(&mut rx, Duration::from_millis(200)).await >= 1);

        // Not trellis's: no signal.
        ip_n(
            &ns,
            "route add 10.98.0.0/16 via 192.168.1.254 dev eth0 proto static",
        );
        ip_n(&ns, "link add flannel-x type bridge");
        ip_n(&ns, "link set flannel-x up");
        ip_n(
            &ns,
            "neigh add 192.168.1.77 lladdr 02:00:00:00:00:77 dev eth0 nud permanent",
        );
        ip_n(&ns, "route del 10.98.0.0/16");
        ip_n(&ns, "link del flannel-x");
        assert_eq!(
            drain(&mut rx, Duration::from_millis(300)).await,
            0,
            "foreign changes must not signal"
        );

        let gw = p.gateway();
        let drifts: Vec<(&str, Drift)> = vec![
            (
                "route deleted",
                Box::new(|| ip_n(&ns, &format!("route del {}", p.subnet))),
            ),
            (
                "route moved to another protocol",
                Box::new(|| {
                    ip_n(
                        &ns,
                        &format!(
                            "route replace {} via 192.168.1.9 dev eth0 proto static",
                            p.subnet
                        ),
                    )
                }),
            ),
            (
                "neighbour deleted",
                Box::new(|| ip_n(&ns, &format!("neigh del {gw} dev flannel.1"))),
            ),
            (
                "fdb entry deleted",
                Box::new(|| bridge_n(&ns, &format!("fdb del {} dev flannel.1 self", p.mac))),
            ),
            (
                "address deleted",
                Box::new(|| ip_n(&ns, "addr del 10.244.1.0/32 dev flannel.1")),
            ),
            (
                "device down",
                Box::new(|| ip_n(&ns, "link set flannel.1 down")),
            ),
            (
                "device deleted",
                Box::new(|| ip_n(&ns, "link del flannel.1")),
            ),
        ];
        let mut latencies = Vec::new();
        for (what, drift) in drifts {
            // From before the command: includes starting `ip` (a few ms).
            let t0 = Instant::now();
            drift();
            let got = timeout(Duration::from_secs(1), rx.recv()).await;
            assert!(matches!(got, Ok(Some(()))), "{what}: no signal within 1 s");
            latencies.push((what, t0.elapsed()));
            let r = dp.reconcile(&want).await.expect("reconcile");
            assert!(r.errors.is_empty(), "{what}: {:?}", r.errors);
            assert!(r.ops_applied > 0, "{what}: nothing repaired: {r:?}");
            let actual = dp.read_actual().await.expect("read");
            assert!(diff(&want, &actual).is_empty(), "{what}: not repaired");
            drain(&mut rx, Duration::from_millis(100)).await;
        }
        latencies
    });
    for (what, t) in &latencies {
        eprintln!("drift signal after {what}: {t:?}");
    }
}

#[test]
fn monitor_receiver_closes_when_the_monitor_is_dropped() {
    let node = node1("drop");
    node.ns.run(|| async {
        let (monitor, mut rx) = DriftMonitor::start().await.expect("monitor");
        drop(monitor);
        let got = timeout(Duration::from_secs(1), rx.recv()).await;
        assert!(
            matches!(got, Ok(None)),
            "receiver must see the end: {got:?}"
        );
    });
}

/// With the executor's expectation shared, its own changes (a first build, one more peer, a
/// departed peer) are not signalled, drift still is, and a light pass applies only the diff.
#[test]
fn own_changes_are_not_drift_when_the_monitor_knows_what_to_expect() {
    let node = node1("expect");
    let peers = two_peers();
    let config = vxlan_config(1, 8472);
    let want = desired(node.lease(), &config, &peers);
    let want_more = desired(
        node.lease(),
        &config,
        &[peers.clone(), vec![PeerNode::new(4, "192.168.1.4")]].concat(),
    );
    let want_fewer = desired(node.lease(), &config, &peers[..1]);
    let ns = node.ns.name.clone();
    let p = peers[0].clone();

    let stats = node.ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        let (monitor, mut rx) = DriftMonitor::start_expecting(dp.expected(), None)
            .await
            .expect("monitor");
        let first = dp.reconcile(&want).await.expect("reconcile");
        assert!(first.errors.is_empty() && first.read_kernel, "{first:?}");
        assert_eq!(drain(&mut rx, Duration::from_millis(300)).await, 0);

        let more = dp
            .reconcile_known(Arc::new(want_more.clone()))
            .await
            .expect("one more");
        assert!(!more.read_kernel, "a light pass must not read the kernel");
        assert_eq!((more.ops_planned, more.ops_applied), (3, 3), "{more:?}");
        let fewer = dp
            .reconcile_known(Arc::new(want_fewer.clone()))
            .await
            .expect("two fewer");
        assert_eq!(fewer.ops_applied, 6, "{fewer:?}");
        assert_eq!(drain(&mut rx, Duration::from_millis(300)).await, 0);
        let actual = dp.read_actual().await.expect("read");
        assert!(diff(&want_fewer, &actual).is_empty());

        // Real drift is still signalled.
        let t0 = Instant::now();
        ip_n(&ns, &format!("route del {}", p.subnet));
        let got = timeout(Duration::from_secs(1), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "drift not signalled");
        eprintln!("drift signalled after {:?}", t0.elapsed());
        let repair = dp.reconcile(&want_fewer).await.expect("repair");
        assert_eq!(repair.ops_applied, 1, "{repair:?}");

        // A failed op withdraws the expectation: the next light pass reads the kernel.
        let mut broken = want_fewer.clone();
        if let Some(r) = broken.routes.values_mut().next() {
            r.dev = "no-such-dev".into();
        }
        let failed = dp.reconcile_known(Arc::new(broken)).await.expect("broken");
        assert!(!failed.errors.is_empty());
        assert!(dp.expected().get().is_none());
        let after = dp
            .reconcile_known(Arc::new(want_fewer.clone()))
            .await
            .expect("after failure");
        assert!(after.read_kernel && after.errors.is_empty(), "{after:?}");
        monitor.stats()
    });
    eprintln!("monitor: {stats:?}");
    assert!(stats.expected > 0, "own changes were seen and recognised");
}
