//! The drift monitor against the real kernel: every hand-made change to what trellis owns is
//! signalled within a second and the next reconcile undoes it; changes to what is not
//! trellis's are not signalled.

mod dataplane_support;

use std::time::{Duration, Instant};

use dataplane_support::{bridge_n, desired, ip_n, vxlan_config, Node, PeerNode};
use tokio::sync::mpsc::Receiver;
use tokio::time::timeout;
use trellis_agent::dataplane::desired::Mac;
use trellis_agent::dataplane::diff::diff;
use trellis_agent::dataplane::netlink::{Dataplane, DriftMonitor};

/// A hand-made change to what trellis owns.
type Drift<'a> = Box<dyn Fn() + 'a>;

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
    let node = Node::standalone(
        "drift",
        "192.168.1.1",
        "10.244.1.0/24",
        Mac([0x02, 0xaa, 0, 0, 0, 0x01]),
    );
    let peers = vec![
        PeerNode::new(2, "192.168.1.2"),
        PeerNode::new(3, "192.168.1.3"),
    ];
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
    let node = Node::standalone(
        "drop",
        "192.168.1.1",
        "10.244.1.0/24",
        Mac([0x02, 0xaa, 0, 0, 0, 0x01]),
    );
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
