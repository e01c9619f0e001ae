//! 5000 VXLAN peers in one namespace: the executor programs 15000 entries, a resync with
//! nothing to do stays cheap, one more peer is three ops, and a deleted device (with every
//! entry on it) is signalled and rebuilt. Timings are printed next to iproute2's `-batch`
//! applying the identical entries in a fresh namespace, the yardstick of issue 3.

mod dataplane_support;

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane_support::{desired, wide_vxlan_config, Node, PeerNode};
use tokio::time::timeout;
use trellis_agent::dataplane::diff::diff;
use trellis_agent::dataplane::netlink::{Dataplane, DriftMonitor};
use trellis_agent::net::Mac;

const PEERS: u32 = 5000;
const LOCAL_MAC: Mac = Mac([0x02, 0xaa, 0, 0, 0, 0x01]);

fn node(tag: &str) -> Node {
    Node::standalone(tag, "192.168.1.1", "10.255.0.0/24", LOCAL_MAC)
}

fn count_lines(s: &str) -> usize {
    s.lines().filter(|l| !l.trim().is_empty()).count()
}

/// Feed `script` to `PROG -n NS -batch -`; returns the wall time.
fn batch(prog: &str, ns: &str, script: &str) -> Duration {
    let t = Instant::now();
    let mut child = Command::new(prog)
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write batch");
    assert!(
        child.wait().expect("wait batch").success(),
        "{prog} -batch failed"
    );
    t.elapsed()
}

/// What `ip -batch` and `bridge -batch` need for the same state the executor programs.
fn iproute2_scripts(peers: &[PeerNode]) -> (String, String) {
    let mut ip = String::new();
    let _ = writeln!(
        ip,
        "link add flannel.1 address {LOCAL_MAC} mtu 1450 type vxlan id 1 dev eth0 local 192.168.1.1 dstport 8472 nolearning"
    );
    let _ = writeln!(ip, "link set flannel.1 up");
    let _ = writeln!(ip, "addr add 10.255.0.0/32 dev flannel.1");
    let mut br = String::new();
    for p in peers {
        let _ = writeln!(
            ip,
            "neigh replace {} lladdr {} dev flannel.1 nud permanent",
            p.gateway(),
            p.mac
        );
        let _ = writeln!(
            br,
            "fdb replace {} dev flannel.1 dst {} self permanent",
            p.mac, p.public_ip
        );
    }
    let mut routes = String::new();
    for p in peers {
        let _ = writeln!(
            routes,
            "route replace {} via {} dev flannel.1 onlink proto 116",
            p.subnet,
            p.gateway()
        );
    }
    (ip + "\n" + &routes, br)
}

#[test]
fn five_thousand_peers() {
    let peers: Vec<PeerNode> = (1..=PEERS).map(PeerNode::numbered).collect();
    let more: Vec<PeerNode> = (1..=PEERS + 1).map(PeerNode::numbered).collect();

    // The yardstick first, in its own namespace.
    let reference = node("ref");
    let (ip_script, bridge_script) = iproute2_scripts(&peers);
    // Links, addresses and neighbours, then FDB, then routes, as the executor orders them.
    let (links_neigh, routes) = ip_script
        .split_once("\n\n")
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .expect("script parts");
    let t_ref = batch("ip", &reference.ns.name, &links_neigh)
        + batch("bridge", &reference.ns.name, &bridge_script)
        + batch("ip", &reference.ns.name, &routes);
    assert_eq!(
        count_lines(&reference.ns.ip("route show proto 116")),
        PEERS as usize
    );
    drop(reference);

    let node = node("scale");
    let want = desired(node.lease(), &wide_vxlan_config(), &peers);
    let want_more = desired(node.lease(), &wide_vxlan_config(), &more);
    let ns = node.ns.name.clone();
    let (first, noop, one_more, signal, repair) = node.ns.run(move || async move {
        let mut dp = Dataplane::new().expect("dataplane");
        let first = dp.reconcile(&want).await.expect("reconcile");
        assert!(first.errors.is_empty(), "{:?}", &first.errors[..1]);
        assert_eq!(first.ops_applied, 2 + 3 * PEERS as usize);

        let noop = dp.reconcile(&want).await.expect("resync");
        assert_eq!(noop.ops_planned, 0);

        let one_more = dp.reconcile(&want_more).await.expect("one more");
        assert_eq!(one_more.ops_applied, 3, "{one_more:?}");

        let (monitor, mut rx) = DriftMonitor::start().await.expect("monitor");
        let t = Instant::now();
        dataplane_support::ip_n(&ns, "link del flannel.1");
        let got = timeout(Duration::from_secs(1), rx.recv()).await;
        assert!(matches!(got, Ok(Some(()))), "device deletion not signalled");
        let signal = t.elapsed();
        let repair = dp.reconcile(&want_more).await.expect("repair");
        assert!(repair.errors.is_empty());
        assert_eq!(repair.ops_applied, 2 + 3 * (PEERS as usize + 1));
        let actual = dp.read_actual().await.expect("read");
        assert!(diff(&want_more, &actual).is_empty());
        eprintln!("monitor after deletion and rebuild: {:?}", monitor.stats());
        (first, noop, one_more, signal, repair)
    });

    let n = PEERS as usize + 1;
    assert_eq!(count_lines(&node.ns.ip("route show proto 116")), n);
    assert_eq!(
        count_lines(&node.ns.ip("neigh show dev flannel.1 nud permanent")),
        n
    );
    let fdb = node.ns.bridge("fdb show dev flannel.1");
    assert_eq!(fdb.lines().filter(|l| l.contains(" dst ")).count(), n);

    eprintln!(
        "{PEERS} peers: iproute2 -batch {t_ref:?}; reconcile {:?} ({} ops); \
         no-op resync {:?}; one more peer {:?}; device deletion signalled after {signal:?}, \
         rebuilt in {:?}",
        first.duration, first.ops_applied, noop.duration, one_more.duration, repair.duration
    );
    // Loose bounds: a shared 2-core machine must not make this flaky; the figures above are
    // what to watch.
    assert!(first.duration < Duration::from_secs(10));
    assert!(noop.duration < Duration::from_secs(2));
}
